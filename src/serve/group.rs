//! The process group of a launched server, and the watchdog that stops it when east dies.
//!
//! A launch command may fork (a shell wrapper, vLLM's API server with its engine process), so
//! the server is a whole process group: the command's shell is its leader, every process it
//! starts is a member. Signals go to the group ([`signal`]), and a group is gone only when no
//! member is left ([`alive`]: zombies waiting for their parent do not count).
//!
//! `PR_SET_PDEATHSIG` reaches only east's direct child, so a [`Watchdog`] outside the group
//! stops it when east dies in a way east cannot handle (`kill -9`, the OOM killer): a small
//! `sh` that blocks reading a pipe whose only writer is east. When east dies the kernel closes
//! the writer, the read ends, and the watchdog sends SIGTERM to the group, then SIGKILL after the
//! grace period. When east stops the server itself it writes `stop` and the watchdog exits.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// Sends `sig` to every process of `group` (no-op for group 0).
pub fn signal(group: i32, sig: i32) {
    if group > 0 {
        // SAFETY: kill has no memory effects; a negative pid names the process group.
        unsafe {
            libc::kill(-group, sig);
        }
    }
}

/// Whether `group` still has a member that is not a zombie. A member whose parent died is
/// reaped by init (or never, in a container whose init does not reap), so zombies are skipped
/// by reading `/proc/PID/stat` rather than trusting `kill(-group, 0)` alone.
pub fn alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    if group <= 0 || unsafe { libc::kill(-group, 0) } != 0 {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|entry| {
        let name = entry.file_name();
        let is_pid = name
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
        is_pid
            && std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| member_state(&stat, group))
                .is_some_and(|state| state != 'Z')
    })
}

/// The state letter of a `/proc/PID/stat` line when the process belongs to `group`.
/// The line is `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so the
/// fields are read after the last `)`.
fn member_state(stat: &str, group: i32) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp: i32 = fields.nth(1)?.parse().ok()?;
    (pgrp == group).then_some(state)
}

/// The watchdog's script: `$1` is the group, `$2` the grace period in tenths of a second, `$3`
/// the pid of east (for its log line). It ignores the signals a terminal or a job scheduler
/// sends to east's group, so that it is still there when east is gone.
const SCRIPT: &str = r#"trap '' INT TERM HUP
read -r line
[ "$line" = stop ] && exit 0
kill -s 0 -- "-$1" 2>/dev/null || exit 0
echo "east (pid $3) is gone: its watchdog stops the server's process group $1"
kill -s TERM -- "-$1" 2>/dev/null
i=0
while [ "$i" -lt "$2" ] && kill -s 0 -- "-$1" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
kill -s KILL -- "-$1" 2>/dev/null
exit 0"#;

/// A process that stops a server's process group when east dies (see the module docs).
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    /// The write end of the pipe the watchdog reads; only east holds it (close-on-exec).
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog for `group`, writing its one line to `log` if it has to act.
    pub fn start(group: i32, grace: Duration, log: &Path) -> anyhow::Result<Watchdog> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| crate::io::InputError::io(log, e))?;
        let ticks = (grace.as_secs_f64() * 10.0).ceil() as u64;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("east-watchdog")
            .arg(group.to_string())
            .arg(ticks.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::null())
            // its own group: a Ctrl-C to east's group does not reach it
            .process_group(0)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the server's watchdog (sh): {e}"))?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }

    /// Tells the watchdog that east stopped the server itself, and waits for it to exit.
    pub fn dismiss(mut self) {
        self.dismiss_inner();
    }

    fn dismiss_inner(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.dismiss_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn pid_alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().chars().next())
            })
            .flatten()
            .is_some_and(|state| state != 'Z')
    }

    #[test]
    fn stat_lines_with_odd_process_names_are_read() {
        assert_eq!(member_state("12 (a) b (c) S 1 77 77 0 -1", 77), Some('S'));
        assert_eq!(member_state("12 (vllm) Z 1 77 77 0 -1", 77), Some('Z'));
        assert_eq!(member_state("12 (vllm) R 1 78 78 0 -1", 77), None);
        assert_eq!(member_state("garbage", 77), None);
    }

    /// A forked group (a shell with a background child) whose watchdog loses east's end of the
    /// pipe, as when east is killed: the whole group is stopped; a dismissed watchdog leaves
    /// its group alone.
    #[test]
    fn a_watchdog_stops_the_whole_group_when_its_pipe_closes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let pidfile = dir.path().join("grandchild");
        let start_group = || {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "sleep 300 & echo $! > {}; sleep 300",
                    pidfile.display()
                ))
                .process_group(0);
            let child = c.spawn().unwrap();
            let started = Instant::now();
            while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
                assert!(started.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(10));
            }
            let grandchild: i32 = std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            std::fs::remove_file(&pidfile).unwrap();
            (child, grandchild)
        };

        let (mut leader, grandchild) = start_group();
        let group = leader.id() as i32;
        let mut dog = Watchdog::start(group, Duration::from_secs(5), &log).unwrap();
        assert!(alive(group));
        drop(dog.pipe.take()); // what the kernel does when east dies
        let _ = leader.wait();
        let started = Instant::now();
        while alive(group) || pid_alive(grandchild) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "group {group} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = dog.child.wait();
        let said = std::fs::read_to_string(&log).unwrap();
        assert!(said.contains(&format!("process group {group}")), "{said}");

        let (mut leader, grandchild) = start_group();
        let group = leader.id() as i32;
        let dog = Watchdog::start(group, Duration::from_secs(5), &log).unwrap();
        dog.dismiss();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            alive(group) && pid_alive(grandchild),
            "a dismissed watchdog killed its group"
        );
        signal(group, libc::SIGKILL);
        let _ = leader.wait();
        let started = Instant::now();
        while alive(group) {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
