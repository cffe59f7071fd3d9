//! llama.cpp's `llama-server` for the tests that talk to a real engine: the binary
//! (`scripts/install-llama-server.sh` builds it into `.tools/llama-server/`, or
//! `EAST_LLAMA_SERVER`) and a server on a free port of 127.0.0.1. A missing server FAILS the
//! test: CI installs it (`scripts/test.sh`).

// Each test file that includes this uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The llama-server binary; panics with what to run when it is missing.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("EAST_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/llama-server/llama-server")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-llama-server.sh (scripts/test.sh does) or set EAST_LLAMA_SERVER",
        path.display()
    );
    path
}

/// A llama-server serving one model on 127.0.0.1; killed when dropped.
pub struct LlamaServer {
    child: Child,
    /// `http://127.0.0.1:PORT`: llama.cpp's own endpoints (`/completion`, `/health`).
    pub root: String,
    /// `ROOT/v1`: the OpenAI-compatible base URL east's `--url` takes.
    pub url: String,
}

impl LlamaServer {
    /// Starts `model` with a context of `ctx` tokens over `slots` parallel slots, on 2 threads,
    /// and waits (up to 120 s) until it answers `/health`.
    pub fn start(model: &Path, ctx: usize, slots: usize) -> LlamaServer {
        let port = east::serve::launch::free_port().unwrap();
        let child = Command::new(binary())
            .args(["-m", model.to_str().unwrap(), "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["-c", &ctx.to_string(), "-np", &slots.to_string(), "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        // /health answers 503 while the model loads, which ureq reports as an error
        while ureq::get(&format!("{root}/health")).call().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "llama-server did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let url = format!("{root}/v1");
        LlamaServer { child, root, url }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
