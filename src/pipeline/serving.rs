//! The serving engine of an `east run` whose `sample.backend` or `eval.backend` is `openai`:
//! one server per model, started from `server.launch` when a stage first needs it (a rerun
//! whose stages are all done starts none), kept for the evaluation of that model and the
//! sampling of the next round, and stopped before training so that the engine's GPU memory
//! is free. Without `server.launch` the running `server.url` is used, which serves one model
//! only: the base model's sampling of a one-round run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::progress::MetricsLog;
use crate::serve::launch::{free_port, render, Launched, GRACE};
use crate::serve::{Backend, CheckpointFormat, Served};

use super::layout::RunLayout;
use super::ModelRef;

/// The server of the model being sampled or evaluated now, if any.
pub(super) struct ServerSlot {
    current: Option<Running>,
    /// run_log.jsonl, opened a second time (appends are whole lines): server starts and stops.
    log: MetricsLog,
}

struct Running {
    model_key: String,
    served: Served,
    // dropped after `served`: stops the launched process
    _launched: Option<Launched>,
}

/// Adds to a stage's `inputs` what of `[server]` decides the requests of a stage on `backend`:
/// `server.api` (east's rendered prompt or the messages) and `server.model` (the `model` of
/// every request). Nothing for the native decoder, so its keys stay as they were. How requests
/// travel (URLs, concurrency, timeouts, retries, `n_per_request`, `max_response_mb`) is not
/// part of it: changing it must not discard samples.
pub(super) fn key_requests(inputs: &mut serde_json::Value, config: &Config, backend: Backend) {
    if backend == Backend::Openai {
        inputs["server"] =
            serde_json::json!({"api": config.server.api, "model": config.server.model});
    }
}

/// Refuses `east run` settings no server can satisfy, before any work.
pub(super) fn check(config: &Config) -> anyhow::Result<()> {
    let sample = config.sample.backend == Backend::Openai;
    let eval = config.eval.backend == Backend::Openai;
    if !(sample || eval) || config.server.launch.is_some() {
        return Ok(());
    }
    if config.run.rounds > 1 && sample {
        anyhow::bail!(
            "sample.backend = \"openai\" with run.rounds = {}: rounds 2.. sample from each round's trained model, which a running server (server.url) does not have; set server.launch (e.g. \"vllm serve {{model}} --port {{port}} --seed {{seed}}\") so that east starts a server for each round's model",
            config.run.rounds
        );
    }
    if eval {
        anyhow::bail!(
            "eval.backend = \"openai\" in east run evaluates each round's trained model, which a running server (server.url) does not have; set server.launch so that east starts a server for each model"
        );
    }
    Ok(())
}

impl ServerSlot {
    pub(super) fn new(run_log: &Path) -> anyhow::Result<Self> {
        Ok(ServerSlot {
            current: None,
            log: MetricsLog::open(run_log)?,
        })
    }

    /// The server for `model` (round `round`'s model: 0 is the base), started if needed.
    pub(super) fn get(
        &mut self,
        config: &Config,
        layout: &RunLayout,
        round: usize,
        model: &ModelRef,
        n: usize,
    ) -> anyhow::Result<&Served> {
        if self
            .current
            .as_ref()
            .is_some_and(|r| r.model_key != model.key)
        {
            self.stop()?;
        }
        if self.current.is_none() {
            let (urls, launched) = match &config.server.launch {
                None => (config.server.url.clone(), None),
                Some(template) => {
                    let l = start(config, layout, round, model, template, &mut self.log)?;
                    (vec![l.url.clone()], Some(l))
                }
            };
            let served = Served::connect(&config.server, &urls, n)?;
            self.current = Some(Running {
                model_key: model.key.clone(),
                served,
                _launched: launched,
            });
        }
        let r = self.current.as_mut().expect("started above");
        r.served.per_request =
            crate::serve::PerRequest::new(config.server.n_per_request.unwrap_or(n).min(n.max(1)));
        Ok(&r.served)
    }

    /// Stops a launched server (SIGTERM, then SIGKILL after a grace period).
    pub(super) fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(r) = self.current.take() {
            if let Some(l) = &r._launched {
                self.log
                    .log(&serde_json::json!({"event": "server_stop", "pid": l.pid()}))?;
            }
            drop(r);
        }
        Ok(())
    }
}

/// Starts `server.launch` for `model`, logging to `round<round>/server.log`.
fn start(
    config: &Config,
    layout: &RunLayout,
    round: usize,
    model: &ModelRef,
    template: &str,
    log: &mut MetricsLog,
) -> anyhow::Result<Launched> {
    let (path, adapter) = launch_model(config, layout, round, model)?;
    let port = free_port()?;
    let command = render(
        template,
        &path.display().to_string(),
        adapter.as_ref().map(|a| a.display().to_string()).as_deref(),
        port,
        config.sample.seed,
    )?;
    let server_log = layout.round(round).join("server.log");
    let l = Launched::start(
        &command,
        port,
        &server_log,
        Duration::from_secs_f64(config.server.startup_timeout_s),
        GRACE,
    )?;
    log.log(
        &serde_json::json!({"event": "server_start", "round": round, "pid": l.pid(), "url": l.url,
        "command": command, "log": server_log}),
    )?;
    Ok(l)
}

/// What `{model}` and `{adapter}` are for a round's model, in `server.checkpoint_format`.
fn launch_model(
    config: &Config,
    layout: &RunLayout,
    round: usize,
    model: &ModelRef,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let path = Path::new(&model.model.path);
    let is_gguf = model.model.path.to_ascii_lowercase().ends_with(".gguf");
    match config.server.checkpoint_format {
        CheckpointFormat::Hf => {
            if is_gguf {
                anyhow::bail!(
                    "server.launch would be given the GGUF file {}, which vLLM and SGLang do not serve as it is: set server.checkpoint_format = \"gguf\" for llama.cpp's server, or model.path to a Hugging Face model",
                    path.display()
                );
            }
            let adapter_config = path.join("adapter_config.json");
            if adapter_config.is_file() {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&adapter_config)?)?;
                let base = v["base_model_name_or_path"].as_str().ok_or_else(|| {
                    anyhow::anyhow!("{}: no base_model_name_or_path", adapter_config.display())
                })?;
                return Ok((PathBuf::from(base), Some(path.to_path_buf())));
            }
            Ok((
                path.to_path_buf(),
                model.model.adapter.as_ref().map(PathBuf::from),
            ))
        }
        CheckpointFormat::Gguf => {
            let base = &config.model.path;
            if !base.to_ascii_lowercase().ends_with(".gguf") {
                anyhow::bail!(
                    "server.checkpoint_format = \"gguf\" exports each round's model with the base GGUF's metadata and tokenizer, but model.path ({base}) is not a .gguf file: use \"hf\" (vLLM, SGLang) or a GGUF base model"
                );
            }
            if is_gguf && model.model.adapter.is_none() {
                return Ok((path.to_path_buf(), None));
            }
            let out = layout.round(round).join("model.gguf");
            crate::serve::gguf_export::export_cached(
                &model.model,
                Path::new(base),
                &out,
                &model.key,
            )?;
            Ok((out, None))
        }
    }
}
