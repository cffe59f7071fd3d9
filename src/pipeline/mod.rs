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

mod layout;
mod serving;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::data::{self, DatasetSpec};
use crate::eval::{self, EvalSettings};
use crate::io::{write_json_atomic, FileLock};
use crate::model::ModelConfig;
use crate::progress::MetricsLog;
use crate::sample::{self, SampleSettings};
use crate::serve::Backend;
use crate::train::TrainJob;
use crate::{cluster, weight};
use serving::ServerSlot;

pub use layout::{dataset_dir_name, RunLayout};
pub use stage::{key_of, Outcome, StageRecord};
use stage::{remove_path, short_hex, Stage};

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
        let label = match &m.adapter {
            Some(a) => format!("{} + {a}", m.path),
            None => m.path.clone(),
        };
        ModelRef {
            model: m.clone(),
            key,
            label,
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
    let base = ModelRef::base(config);
    if config.run.eval_base {
        let mut s = RoundSummary {
            round: 0,
            model: base.label.clone(),
            accuracy: BTreeMap::new(),
            stages: vec![],
        };
        evaluate_round(config, &layout, 0, &base, &mut log, &mut s, &mut server)?;
        summaries.push(s);
        write_json_atomic(&layout.summary(), &summaries)?;
    }
    let mut current = base;
    for t in 1..=config.run.rounds {
        let mut s = RoundSummary {
            round: t,
            model: String::new(),
            accuracy: BTreeMap::new(),
            stages: vec![],
        };
        current = self_train_round(config, &layout, t, &current, &mut log, &mut s, &mut server)?;
        s.model = current.label.clone();
        evaluate_round(config, &layout, t, &current, &mut log, &mut s, &mut server)?;
        summaries.push(s);
        write_json_atomic(&layout.summary(), &summaries)?;
    }
    server.stop()?;
    log.log(&serde_json::json!({"event": "done", "run": config.run.name}))?;
    Ok(summaries)
}

/// Sample → cluster → weight → train for round `t`; returns the trained model.
fn self_train_round(
    config: &Config,
    layout: &RunLayout,
    t: usize,
    current: &ModelRef,
    log: &mut MetricsLog,
    summary: &mut RoundSummary,
    server: &mut ServerSlot,
) -> anyhow::Result<ModelRef> {
    let round_dir = layout.round(t);
    std::fs::create_dir_all(&round_dir)
        .with_context(|| format!("creating {}", round_dir.display()))?;

    // Sample, into the cache shared by every run under run.dir.
    let model_name = format!(
        "{} [{}]",
        if t == 1 {
            current.label.as_str()
        } else {
            "trained"
        },
        current.key
    );
    let sample_settings = SampleSettings::new(model_name, &config.data, &config.sample);
    let (samples_source, record) = match (&config.run.samples, t) {
        (Some(external), 1) => external_samples(Path::new(external), t, log)?,
        _ => {
            let questions_key = questions_fingerprint(config)?;
            let sample_inputs = serde_json::json!({"settings": sample_settings, "model": current.key, "questions": questions_key});
            let cached = layout
                .samples_cache
                .join(format!("{}.jsonl", key_of(&sample_inputs)));
            let _cache_lock = FileLock::acquire(
                &crate::io::output_lock_path(&cached),
                &format!("samples cache file {}", cached.display()),
            )?;
            let record = Stage {
                name: "sample",
                round: t,
                output: &cached,
                sidecars: vec![sample::meta_path(&cached), sample::log_path(&cached)],
                inputs: sample_inputs,
            }
            .run(log, || {
                let questions = config.data.questions()?;
                if config.sample.backend == Backend::Openai {
                    // the server of round t−1's model (0: the base); east renders the prompts
                    let served = server.get(config, layout, t - 1, current, config.sample.n)?;
                    let text = crate::model::load_model_text(&current.model)?;
                    let settings = sample_settings.clone().served_by(served);
                    let engine = sample::Engine::Server(served);
                    sample::sample_questions_on(
                        &text, &questions, &settings, None, &cached, &engine,
                    )?;
                } else {
                    let lm = crate::model::load_model(&current.model)?;
                    sample::sample_questions(&lm, &questions, &sample_settings, None, &cached)?;
                }
                Ok(())
            })?;
            (cached, record)
        }
    };
    let sample_key = record.key.clone();
    summary.stages.push(record);
    let samples = layout.samples(t);
    link_into_round(&samples_source, &samples)?;

    // Cluster.
    let clusters = layout.clusters(t);
    let record = Stage {
        name: "cluster",
        round: t,
        output: &clusters,
        sidecars: vec![],
        inputs: serde_json::json!({"samples": sample_key, "cluster": config.cluster, "grader": crate::grade::VERSION}),
    }
    .run(log, || {
        cluster::cluster_file(&samples, &clusters, &config.cluster, None)?;
        Ok(())
    })?;
    let cluster_key = record.key.clone();
    summary.stages.push(record);

    // Weight.
    let train_data = layout.train_data(t);
    let options = config.weight_options();
    let record = Stage {
        name: "weight",
        round: t,
        output: &train_data,
        sidecars: vec![weight::trainset::summary_path(&train_data)],
        inputs: serde_json::json!({"clusters": cluster_key, "samples": sample_key, "weight": options}),
    }
    .run(log, || {
        let s = weight::weight_files(&clusters, &samples, &train_data, &options)?;
        if s.examples == 0 {
            anyhow::bail!(
                "no training examples: none of the {} questions passed the filters (dropped: {}); sample more (sample.n, data.limit) or use a stronger model",
                s.questions,
                s.dropped_text()
            );
        }
        Ok(())
    })?;
    let weight_key = record.key.clone();
    summary.stages.push(record);

    // Train. With LoRA and another round to come, the merged model is written too: the next
    // round trains a fresh adapter on top of it.
    // Training needs the GPU memory a serving engine holds.
    server.stop()?;
    let checkpoint = layout.checkpoint(t);
    let mut train = config.train.clone();
    train.merge |= train.lora && t < config.run.rounds;
    let record = Stage {
        name: "train",
        round: t,
        output: &checkpoint,
        sidecars: vec![],
        inputs: serde_json::json!({"model": current.key, "data": weight_key, "train": train.identity(), "beta": train.beta()}),
    }
    .run(log, || {
        let job = TrainJob::new(current.model.clone(), train.clone(), train_data.clone(), checkpoint.clone());
        crate::train::train(&job)?;
        Ok(())
    })?;
    let train_key = record.key.clone();
    summary.stages.push(record);

    let merged = checkpoint.join("merged");
    let path = if merged.join("config.json").exists() {
        merged
    } else {
        checkpoint
    };
    Ok(ModelRef {
        model: ModelConfig {
            path: path.display().to_string(),
            adapter: None,
            ..current.model.clone()
        },
        key: train_key,
        label: path.display().to_string(),
    })
}

/// Round 1's samples from a file made elsewhere: its key is the hash of its bytes, so editing or
/// replacing the file reruns everything after sampling.
fn external_samples(
    path: &Path,
    t: usize,
    log: &mut MetricsLog,
) -> anyhow::Result<(PathBuf, StageRecord)> {
    use std::io::Read;
    let started = Instant::now();
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("run.samples: opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("run.samples: reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let key = short_hex(&hasher.finalize());
    log.log(&serde_json::json!({"event": "stage", "stage": "sample", "round": t, "outcome": "external", "key": key, "file": path}))?;
    let record = StageRecord {
        stage: "sample".into(),
        outcome: Outcome::Skipped,
        seconds: started.elapsed().as_secs_f64(),
        key,
    };
    Ok((path.to_path_buf(), record))
}

/// Points `link` (in the round folder) at the cached samples file.
fn link_into_round(cached: &Path, link: &Path) -> anyhow::Result<()> {
    let target =
        std::fs::canonicalize(cached).with_context(|| format!("resolving {}", cached.display()))?;
    if std::fs::read_link(link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let tmp = crate::io::tmp_name(link);
    remove_path(&tmp)?;
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("linking {}", link.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}

/// Greedy evaluation of `model` on every `[eval] datasets` entry, recorded as round `t`.
fn evaluate_round(
    config: &Config,
    layout: &RunLayout,
    t: usize,
    model: &ModelRef,
    log: &mut MetricsLog,
    summary: &mut RoundSummary,
    server: &mut ServerSlot,
) -> anyhow::Result<()> {
    for dataset in &config.eval.datasets {
        let dir = layout.eval_dir(t, dataset);
        let settings = EvalSettings::new(&config.eval, model.label.clone(), dataset);
        let record = Stage {
            name: &format!("eval {}", dataset_dir_name(dataset)),
            round: t,
            output: &dir,
            sidecars: vec![],
            inputs: serde_json::json!({"model": model.key, "eval": settings, "fields": config.data.fields, "grader": crate::grade::VERSION,
                "questions": dataset_fingerprint(dataset)}),
        }
        .run(log, || {
            let questions = data::load_questions(dataset, &config.eval.split, config.eval.limit, &config.data.fields)?;
            if config.eval.backend == Backend::Openai {
                let served = server.get(config, layout, t, model, 1)?;
                let text = crate::model::load_model_text(&model.model)?;
                let settings = settings.clone().served_by(served);
                eval::evaluate_on(&text, &questions, &settings, &dir, &crate::serve::Engine::Server(served))?;
            } else {
                eval::evaluate(&crate::model::load_model(&model.model)?, &questions, &settings, &dir)?;
            }
            Ok(())
        })?;
        summary.stages.push(record);
        let path = eval::report_path(&dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let report: eval::EvalReport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        summary.accuracy.insert(dataset.clone(), report.accuracy);
        log.log(&serde_json::json!({"event": "eval", "round": t, "dataset": dataset, "accuracy": report.accuracy,
            "correct": report.correct, "n": report.n}))?;
    }
    Ok(())
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
