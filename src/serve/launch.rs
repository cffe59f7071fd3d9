//! The server `east run` starts for a round's model (`server.launch`): a command template
//! filled with `{model}`, `{adapter}`, `{port}` and `{seed}` ([`render`]), run by `sh -c` (so
//! `VAR=value cmd`, `cd dir && cmd` and pipelines work) as the leader of its own process group,
//! with its output in `roundN/server.log`, waited for until `/v1/models` answers, and stopped
//! with SIGTERM to the whole group, then SIGKILL after a grace period.
//!
//! No orphans, even of a command that forks (a shell wrapper, vLLM's engine processes):
//! dropping a [`Launched`] stops its group (errors and panics unwind through it); Ctrl-C or
//! SIGTERM to east stops the running server's group before east exits (a signal handler); and
//! if east is killed outright (`kill -9`, the OOM killer) a [`Watchdog`] process outside the
//! group stops it ([`super::group`]).

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::group::{self, Watchdog};

/// Time between SIGTERM and SIGKILL when stopping a server (engines flush and free the GPU).
pub const GRACE: Duration = Duration::from_secs(15);

/// The process group of the server running now (0: none), for the signal handler.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// A started server.
#[derive(Debug)]
pub struct Launched {
    /// `sh -c COMMAND`, the leader of the server's process group.
    child: Child,
    watchdog: Option<Watchdog>,
    /// `http://127.0.0.1:PORT/v1`.
    pub url: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// The command as run (for logs; holds no secret: keys come from the environment).
    pub command: String,
    grace: Duration,
    stopped: bool,
}

/// Fills the placeholders of `template` in one pass, so that a value holding a placeholder's
/// text (a model path with `{port}` in it) is kept as it is. `{model}` and `{adapter}` are
/// shell-quoted. `adapter` is `None` when the model has no separate adapter; a template without
/// `{adapter}` cannot serve one.
pub fn render(
    template: &str,
    model: &str,
    adapter: Option<&str>,
    port: u16,
    seed: u64,
) -> anyhow::Result<String> {
    if adapter.is_some() && !template.contains("{adapter}") {
        anyhow::bail!(
            "this round's model is a base model plus a LoRA adapter, but server.launch has no {{adapter}} placeholder: add one (vLLM: `--enable-lora --lora-modules east={{adapter}}` with server.model = \"east\") or set train.merge = true so that a merged model is served"
        );
    }
    let values = [
        ("{model}", shell_quote(model)),
        ("{adapter}", adapter.map(shell_quote).unwrap_or_default()),
        ("{port}", port.to_string()),
        ("{seed}", seed.to_string()),
    ];
    let mut out = String::with_capacity(template.len() + model.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match values.iter().find(|(name, _)| rest.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &rest[name.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A TCP port nobody listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Launched {
    /// Starts `command` (already rendered, listening on `port`) with `sh -c`, appending its
    /// output to `log`, and waits up to `timeout` for `/v1/models` to answer. On failure the
    /// server is stopped and the error holds the last lines of its log. Stopping waits `grace`
    /// between SIGTERM and SIGKILL ([`GRACE`]).
    pub fn start(
        command: &str,
        port: u16,
        log: &Path,
        timeout: Duration,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        install_signal_handler();
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| crate::io::InputError::io(dir, e))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| crate::io::InputError::io(log, e))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when
        // east dies (before the watchdog below exists, the only guard there is).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("server.launch: cannot start `{command}`: {e}"))?;
        RUNNING_GROUP.store(child.id() as i32, Ordering::SeqCst);
        let mut me = Launched {
            child,
            watchdog: None,
            url: format!("http://127.0.0.1:{port}/v1"),
            log: log.to_path_buf(),
            command: command.to_string(),
            grace,
            stopped: false,
        };
        // dropping `me` on an error below stops the group
        me.watchdog = Some(Watchdog::start(me.group(), grace, log)?);
        me.wait_ready(timeout)?;
        Ok(me)
    }

    /// The process id of the launch command's shell (or of the command, where the shell execs
    /// it), which is also the server's process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn group(&self) -> i32 {
        self.child.id() as i32
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let started = Instant::now();
        let probe = format!("{}/models", self.url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the server exited ({status}) before answering {probe}; `{}` (run with sh -c); last lines of {}:\n{}",
                    self.command,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            // llama.cpp answers 503 while loading; any 200 means ready
            if agent.get(&probe).call().is_ok() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "the server did not answer {probe} within {:.0} s (server.startup_timeout_s); `{}`; last lines of {}:\n{}",
                    timeout.as_secs_f64(),
                    self.command,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM to the server's process group, SIGKILL after the grace period to what is left,
    /// and a wait until no process of the group runs (the port and GPU memory are free).
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // the leader is reaped only at the end, so that its pid (the group's id) cannot be
        // reused by an unrelated process while the group is signalled
        let group = self.group();
        group::signal(group, libc::SIGTERM);
        let term = Instant::now();
        while group::alive(group) && term.elapsed() < self.grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        group::signal(group, libc::SIGKILL);
        let killed = Instant::now();
        while group::alive(group) && killed.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        RUNNING_GROUP.store(0, Ordering::SeqCst);
        if let Some(w) = self.watchdog.take() {
            w.dismiss();
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Longest line quoted from a log (a progress bar redrawn with `\r` is one line).
const LINE_CHARS: usize = 400;

/// The last `n` lines of a log file, read as bytes: invalid UTF-8 (a cut multi-byte character,
/// binary output) becomes U+FFFD instead of ending the excerpt, and overlong lines are cut.
pub fn tail(path: &Path, n: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    let mut bytes = Vec::new();
    if f.seek(std::io::SeekFrom::Start(start)).is_err()
        || f.take(WINDOW).read_to_end(&mut bytes).is_err()
    {
        return "(log unreadable)".into();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && lines.len() > 1 {
        lines.remove(0); // began inside a line
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

extern "C" fn on_signal(signal: libc::c_int) {
    let group = RUNNING_GROUP.load(Ordering::SeqCst);
    // SAFETY: kill, waitpid, nanosleep, signal and raise are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGTERM);
            for _ in 0..100 {
                // reap the leader (east's child): its zombie would keep the group "existing"
                libc::waitpid(group, std::ptr::null_mut(), libc::WNOHANG);
                if libc::kill(-group, 0) != 0 {
                    break;
                }
                let t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                libc::nanosleep(&t, std::ptr::null_mut());
            }
            libc::kill(-group, libc::SIGKILL);
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

fn install_signal_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installing a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_quoted() {
        let c = render(
            "llama-server -m {model} --port {port} --seed {seed}",
            "runs/x/round 1/model.gguf",
            None,
            8123,
            7,
        )
        .unwrap();
        assert_eq!(
            c,
            "llama-server -m 'runs/x/round 1/model.gguf' --port 8123 --seed 7"
        );
        let e = render("vllm serve {model} --port {port}", "base", Some("ad"), 1, 1).unwrap_err();
        assert!(e.to_string().contains("{adapter}"), "{e}");
    }

    /// A value is not searched for placeholders again; braces that are no placeholder (shell
    /// `${VAR}`, JSON arguments) stay as they are.
    #[test]
    fn substituted_values_are_not_substituted_again() {
        let c = render(
            "X=${HOME} serve {model} --lora {adapter} --port {port} --kw '{\"a\": 1}' {seed}{",
            "/m/{port}/{seed}",
            Some("/a/{model}"),
            9,
            3,
        )
        .unwrap();
        assert_eq!(
            c,
            "X=${HOME} serve '/m/{port}/{seed}' --lora '/a/{model}' --port 9 --kw '{\"a\": 1}' 3{"
        );
    }

    /// `sh -c TEMPLATE`: environment assignments, `cd … &&` and pipes work (with `exec
    /// TEMPLATE` they exited 127, "not found").
    #[test]
    fn launch_commands_are_shell_commands() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let e = Launched::start(
            &format!(
                "cd {} && EAST_X=5 sh -c 'echo \"in $(pwd) with X=$EAST_X\"; exit 3' | cat",
                dir.path().display()
            ),
            free_port().unwrap(),
            &log,
            Duration::from_secs(20),
            GRACE,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("in {} with X=5", dir.path().display())),
            "{e}"
        );
    }

    /// The log's last 64 KiB begin inside a multi-byte character and hold invalid UTF-8 (and
    /// an endless line): the excerpt still quotes the last lines.
    #[test]
    fn log_excerpts_survive_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut bytes = "é".repeat(40_000).into_bytes(); // 80,000 bytes: the window starts mid-character
        bytes.extend_from_slice(b"\nloading \xff\xfe weights\n");
        bytes.extend_from_slice(&[b'#'; 5000]);
        bytes.extend_from_slice(b"\nCUDA error: out of memory\n");
        std::fs::write(&log, bytes).unwrap();
        let t = tail(&log, 3);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert_eq!(lines[0], "loading \u{fffd}\u{fffd} weights");
        assert_eq!(lines[1], format!("{}…", "#".repeat(LINE_CHARS)));
        assert_eq!(lines[2], "CUDA error: out of memory");
        assert_eq!(tail(&dir.path().join("none"), 3), "(no log)");
    }

    #[test]
    fn a_server_that_dies_at_once_is_an_error_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let port = free_port().unwrap();
        let e = Launched::start(
            "sh -c 'echo loading weights; echo out of memory >&2; exit 3'",
            port,
            &log,
            Duration::from_secs(20),
            GRACE,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exited") && e.contains("out of memory"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let port = free_port().unwrap();
        let pidfile = dir.path().join("pid");
        let e = Launched::start(
            &format!(
                "sh -c 'echo $$ > {}; echo still loading; trap \"\" TERM; sleep 60'",
                pidfile.display()
            ),
            port,
            &log,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("within 1 s") && e.contains("still loading"),
            "{e}"
        );
        // it ignored SIGTERM; SIGKILL after the grace period ended it (a zombie left for init
        // to reap is not running)
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "server {pid} still running: {state}"
        );
    }
}
