//! The server `east run` starts for a round's model (`server.launch`): a command template
//! filled with `{model}`, `{adapter}`, `{port}` and `{seed}`, started in its own process group
//! with its output in `roundN/server.log`, waited for until `/v1/models` answers, and stopped
//! with SIGTERM, then SIGKILL after a grace period.
//!
//! No orphans: dropping a [`Launched`] stops it (errors and panics unwind through it); Ctrl-C
//! or SIGTERM to east stops the running server's group before east exits (a signal handler);
//! and the server gets SIGKILL from the kernel if east itself is killed (`PR_SET_PDEATHSIG`).

use std::io::{BufRead, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Time between SIGTERM and SIGKILL when stopping a server (engines flush and free the GPU).
pub const GRACE: Duration = Duration::from_secs(15);

/// The process group of the server running now (0: none), for the signal handler.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// A started server.
#[derive(Debug)]
pub struct Launched {
    child: Child,
    /// `http://127.0.0.1:PORT/v1`.
    pub url: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// The command as run (for logs; holds no secret: keys come from the environment).
    pub command: String,
    grace: Duration,
}

/// Fills the placeholders of `template`. `adapter` is `None` when the model has no separate
/// adapter; a template without `{adapter}` cannot serve one.
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
    Ok(template
        .replace("{model}", &shell_quote(model))
        .replace("{adapter}", &adapter.map(shell_quote).unwrap_or_default())
        .replace("{port}", &port.to_string())
        .replace("{seed}", &seed.to_string()))
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
    /// Starts `command` (already rendered, listening on `port`), appending its output to `log`,
    /// and waits up to `timeout` for `/v1/models` to answer. On failure the server is stopped
    /// and the error holds the last lines of its log. Stopping waits `grace` between SIGTERM
    /// and SIGKILL ([`GRACE`]).
    pub fn start(
        command: &str,
        port: u16,
        log: &Path,
        timeout: Duration,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        install_signal_handler();
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| crate::io::InputError::io(log, e))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when
        // east dies.
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
            url: format!("http://127.0.0.1:{port}/v1"),
            log: log.to_path_buf(),
            command: command.to_string(),
            grace,
        };
        if let Err(e) = me.wait_ready(timeout) {
            me.stop();
            return Err(e);
        }
        Ok(me)
    }

    /// The server's process id (also its process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
                    "the server exited ({status}) before answering {probe}; `{}`; last lines of {}:\n{}",
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

    /// SIGTERM to the server's process group, then SIGKILL after the grace period.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            RUNNING_GROUP.store(0, Ordering::SeqCst);
            kill_group(self.child.id() as i32, libc::SIGKILL); // stragglers of the group
            return;
        }
        let group = self.child.id() as i32;
        kill_group(group, libc::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < self.grace {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_group(group, libc::SIGKILL);
        let _ = self.child.wait();
        RUNNING_GROUP.store(0, Ordering::SeqCst);
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill_group(group: i32, signal: i32) {
    if group > 0 {
        // SAFETY: sending a signal to a process group east created.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

extern "C" fn on_signal(signal: libc::c_int) {
    let group = RUNNING_GROUP.load(Ordering::SeqCst);
    // SAFETY: kill, nanosleep, signal and raise are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGTERM);
            for _ in 0..100 {
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
        // it ignored SIGTERM; SIGKILL after the grace period ended it
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server {pid} still running"
        );
    }
}
