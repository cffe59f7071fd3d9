//! `east run`: T rounds of sample → cluster → weight → train → eval in one run directory.
//!
//! Every stage output carries a stamp (`<output>.stamp.json`) holding the hash of everything that
//! determines it: its own settings and the keys of its inputs. A stage whose stamp matches and
//! says done is skipped; one whose stamp matches but was never marked done was interrupted and
//! resumes (sampling, training and evaluation pick up where they stopped; clustering and
//! weighting are redone, they take seconds); one whose stamp differs is redone from scratch. So
//! rerunning after `kill -9` continues, and changing `weight.a` reruns weight, train and eval only.
//!
//! Samples live in a cache beside the runs (`<run.dir>/_samples/<key>.jsonl`), named by the hash
//! of what determines them (model, questions, sampling settings, seed), so a sweep over `a`, or
//! SFT vs DPO vs KTO on the same round, samples once.

mod board;
mod layout;
mod round;
mod serving;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::data::DatasetSpec;
use crate::io::{write_json_atomic, FileLock};
use crate::model::ModelConfig;
use crate::progress::MetricsLog;
use crate::stats::Accuracy;
use board::RunBoard;
use round::Round;
use serving::ServerSlot;

pub use layout::{dataset_dir_name, RunLayout};
pub use stage::{key_of, Outcome, StageRecord};

/// The model a round starts from: how to load it and a key naming its contents.
#[derive(Debug, Clone)]
struct ModelRef {
    model: ModelConfig,
    /// Changes whenever the weights could differ; independent of where the run directory is.
    key: String,
    /// A readable name for logs and metadata.
    label: String,
}

/// What identifies a local model file or folder's contents cheaply: names, sizes and mtimes.
fn local_fingerprint(path: &str) -> serde_json::Value {
    let p = Path::new(path);
    let describe = |f: &Path| -> Option<serde_json::Value> {
        let m = std::fs::metadata(f).ok()?;
        let mtime = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as u64;
        Some(serde_json::json!([
            f.file_name()?.to_string_lossy(),
            m.len(),
            mtime
        ]))
    };
    if p.is_file() {
        return describe(p).unwrap_or(serde_json::Value::Null);
    }
    if let Ok(entries) = std::fs::read_dir(p) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file())
            .collect();
        files.sort();
        return serde_json::Value::Array(files.iter().filter_map(|f| describe(f)).collect());
    }
    serde_json::Value::Null // a hub id: the id (and revision in it) is the identity
}

impl ModelRef {
    fn base(config: &Config) -> Self {
        let m = &config.model;
        let key = key_of(&serde_json::json!({
            "path": m.path, "adapter": m.adapter, "device": m.device, "dtype": m.dtype,
            "files": local_fingerprint(&m.path),
            "adapter_files": m.adapter.as_deref().map(local_fingerprint),
            // What decides the prompt text besides the model's files: a changed style, date or
            // way of rendering must not reuse samples or evaluations made with other prompts.
            "prompt": [m.prompt_style, m.date, crate::model::chat::RENDERING],
        }));
        ModelRef {
            model: m.clone(),
            key,
            label: m.label(),
        }
    }
}

/// Per-round results, as written to `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: usize,
    /// The model evaluated in this round (round 0: the base model; round t: trained in round t).
    pub model: String,
    /// Dataset → greedy accuracy.
    pub accuracy: BTreeMap<String, f64>,
    /// Dataset → the same accuracy with its number of questions and Wilson's 95% interval
    /// (absent from summaries written before east 0.1's report statistics).
    #[serde(default)]
    pub evals: BTreeMap<String, Accuracy>,
    pub stages: Vec<StageRecord>,
}

/// Runs (or continues) the whole pipeline described by `config`.
pub fn run(config: &Config) -> anyhow::Result<Vec<RoundSummary>> {
    serving::check(config)?;
    let layout = RunLayout::new(config);
    std::fs::create_dir_all(&layout.root)
        .with_context(|| format!("creating {}", layout.root.display()))?;
    std::fs::create_dir_all(&layout.samples_cache)
        .with_context(|| format!("creating {}", layout.samples_cache.display()))?;
    let _lock = FileLock::acquire(
        &layout.root.join(".lock"),
        &format!("run directory {}", layout.root.display()),
    )?;
    crate::io::write_atomic(
        &layout.root.join("config.toml"),
        config.to_toml().as_bytes(),
    )?;
    let mut log = MetricsLog::open(&layout.root.join("run_log.jsonl"))?;
    log.log(&serde_json::json!({"event": "start", "run": config.run.name, "rounds": config.run.rounds, "pid": std::process::id()}))?;

    let mut summaries = Vec::new();
    // Dropped on every way out of this function (errors included): stops a launched server.
    let mut server = ServerSlot::new(&layout.root.join("run_log.jsonl"))?;
    let board = match config.run.report_to.tensorboard {
        true => Some(RunBoard::open(&layout.root)?),
        false => None,
    };
    let base = ModelRef::base(config);
    let first = if config.run.eval_base { 0 } else { 1 };
    let mut current = base;
    for t in first..=config.run.rounds {
        let mut round = Round {
            config,
            layout: &layout,
            t,
            log: &mut log,
            summary: RoundSummary {
                round: t,
                model: current.label.clone(),
                accuracy: BTreeMap::new(),
                evals: BTreeMap::new(),
                stages: vec![],
            },
            board: board.as_ref(),
        };
        // round 0 evaluates the base model; round t trains on its samples first
        if t > 0 {
            current = round.self_train(&current, &mut server)?;
            round.summary.model = current.label.clone();
        }
        round.evaluate(&current, &mut server)?;
        summaries.push(round.summary);
        write_json_atomic(&layout.summary(), &summaries)?;
    }
    server.stop()?;
    log.log(&serde_json::json!({"event": "done", "run": config.run.name}))?;
    Ok(summaries)
}

/// Identity of a dataset's contents: bundled datasets are fixed by the binary; a JSONL file by
/// its bytes' hash (so editing the file invalidates the samples and evaluations made from it).
fn dataset_fingerprint(dataset: &str) -> serde_json::Value {
    match DatasetSpec::parse(dataset) {
        DatasetSpec::File(p) => match std::fs::read(&p) {
            Ok(bytes) => serde_json::json!(format!("{:x}", Sha256::digest(&bytes))),
            Err(_) => serde_json::Value::Null,
        },
        _ => serde_json::json!(dataset),
    }
}

fn questions_fingerprint(config: &Config) -> anyhow::Result<serde_json::Value> {
    Ok(
        serde_json::json!({"dataset": dataset_fingerprint(&config.data.dataset), "fields": config.data.fields}),
    )
}
