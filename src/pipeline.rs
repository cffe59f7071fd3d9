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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, ModelConfig};
use crate::data::{self, DatasetSpec};
use crate::eval::{self, EvalSettings};
use crate::grade::GradeOptions;
use crate::io::write_json_atomic;
use crate::progress::MetricsLog;
use crate::sample::{self, SampleSettings};
use crate::weight::{self, ClusterOptions, WeightOptions};

/// Bumped when a stage's output format or meaning changes, so old stamps stop matching.
const STAMP_VERSION: u32 = 1;

/// The state of one stage output, written beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stamp {
    key: String,
    done: bool,
    stage: String,
    /// Wall time of the attempt that finished it.
    #[serde(default)]
    seconds: f64,
    /// What went into the key, for people reading the run directory.
    inputs: serde_json::Value,
}

fn stamp_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!("{name}.stamp.json"))
}

/// Short hash of a JSON value (serde_json writes object keys in sorted order, so equal values
/// hash equally).
pub fn key_of(value: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(STAMP_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(value).expect("a JSON value serialises"));
    short_hex(&h.finalize())
}

/// The first 12 bytes of a digest in hex: short enough for file names, long enough not to collide.
fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// `name` with every character that is not safe in a file name replaced by `_`.
pub fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What happened to a stage in this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Its output was complete and made from the same inputs.
    Skipped,
    /// Run from scratch.
    Ran,
    /// Continued from an interrupted attempt with the same inputs.
    Resumed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Ran => "ran",
            Outcome::Resumed => "resumed",
        }
    }
}

/// One stage of one round, as recorded in `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub outcome: Outcome,
    /// Wall time of the attempt that completed the stage (for a skipped stage, of the earlier run).
    pub seconds: f64,
    pub key: String,
}

/// A stage: an output path (file or folder) plus the sidecars that belong to it.
struct Stage<'a> {
    name: &'a str,
    round: usize,
    output: &'a Path,
    /// Files the stage writes beside `output`; removed with it when the inputs change.
    sidecars: Vec<PathBuf>,
    inputs: serde_json::Value,
}

impl Stage<'_> {
    /// Runs `work` unless the output is already complete for these inputs.
    fn run(self, log: &mut MetricsLog, work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<StageRecord> {
        let key = key_of(&self.inputs);
        let stamp_file = stamp_path(self.output);
        let old: Option<Stamp> = std::fs::read_to_string(&stamp_file).ok().and_then(|t| serde_json::from_str(&t).ok());
        let outcome = match &old {
            Some(s) if s.key == key && s.done && self.output.exists() => {
                log.log(&serde_json::json!({"event": "stage", "stage": self.name, "round": self.round, "outcome": "skipped", "key": key}))?;
                return Ok(StageRecord { stage: self.name.to_string(), outcome: Outcome::Skipped, seconds: s.seconds, key });
            }
            // Same inputs, interrupted: the stage's own resume logic continues from what is there.
            Some(s) if s.key == key && self.output.exists() => Outcome::Resumed,
            // Other inputs, or an output of unknown origin: start clean.
            _ => {
                for p in std::iter::once(&self.output.to_path_buf()).chain(&self.sidecars) {
                    remove_path(p).with_context(|| format!("removing the stale {}", p.display()))?;
                }
                Outcome::Ran
            }
        };
        if let Some(parent) = self.output.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut stamp = Stamp { key: key.clone(), done: false, stage: self.name.to_string(), seconds: 0.0, inputs: self.inputs };
        write_json_atomic(&stamp_file, &stamp).with_context(|| format!("writing {}", stamp_file.display()))?;
        eprintln!(
            "east run: round {} {}: {}",
            self.round,
            self.name,
            if outcome == Outcome::Resumed { "resuming an interrupted attempt" } else { "running" }
        );
        let started = Instant::now();
        work().with_context(|| format!("round {}, stage {}", self.round, self.name))?;
        let seconds = started.elapsed().as_secs_f64();
        stamp.done = true;
        stamp.seconds = seconds;
        write_json_atomic(&stamp_file, &stamp).with_context(|| format!("writing {}", stamp_file.display()))?;
        log.log(&serde_json::json!({"event": "stage", "stage": self.name, "round": self.round,
            "outcome": outcome, "key": key, "seconds": seconds}))?;
        Ok(StageRecord { stage: self.name.to_string(), outcome, seconds, key })
    }
}

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunLayout {
    /// `<run.dir>/<run.name>`.
    pub root: PathBuf,
    /// Samples cache shared by the runs under the same `run.dir`.
    pub samples_cache: PathBuf,
}

impl RunLayout {
    pub fn new(config: &Config) -> Self {
        let parent = PathBuf::from(&config.run.dir);
        RunLayout { root: parent.join(&config.run.name), samples_cache: parent.join("_samples") }
    }

    /// The layout of an existing run directory.
    pub fn at(root: &Path) -> Self {
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_default();
        RunLayout { root: root.to_path_buf(), samples_cache: parent.join("_samples") }
    }

    pub fn round(&self, t: usize) -> PathBuf {
        self.root.join(format!("round{t}"))
    }

    /// `eval.json` and `predictions.jsonl` of round `t` on `dataset`.
    pub fn eval_dir(&self, t: usize, dataset: &str) -> PathBuf {
        self.round(t).join("eval").join(dataset_dir_name(dataset))
    }

    pub fn samples(&self, t: usize) -> PathBuf {
        self.round(t).join("samples.jsonl")
    }

    pub fn clusters(&self, t: usize) -> PathBuf {
        self.round(t).join("clusters.jsonl")
    }

    pub fn train_data(&self, t: usize) -> PathBuf {
        self.round(t).join("train.jsonl")
    }

    pub fn checkpoint(&self, t: usize) -> PathBuf {
        self.round(t).join("checkpoint")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
}

/// A dataset name usable as a folder name: `gsm8k`, or the file stem of a JSONL path.
pub fn dataset_dir_name(dataset: &str) -> String {
    let name = match DatasetSpec::parse(dataset) {
        DatasetSpec::File(p) => p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| dataset.to_string()),
        _ => dataset.to_string(),
    };
    file_safe(&name)
}

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
        let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64;
        Some(serde_json::json!([f.file_name()?.to_string_lossy(), m.len(), mtime]))
    };
    if p.is_file() {
        return describe(p).unwrap_or(serde_json::Value::Null);
    }
    if let Ok(entries) = std::fs::read_dir(p) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| f.is_file()).collect();
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
        }));
        let label = match &m.adapter {
            Some(a) => format!("{} + {a}", m.path),
            None => m.path.clone(),
        };
        ModelRef { model: m.clone(), key, label }
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

/// A lock held for as long as the value lives (flock: released by the kernel when the process
/// dies, so a killed run never leaves a stale lock).
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Takes the lock at `path` or fails at once, saying who holds it.
    pub fn acquire(path: &Path, what: &str) -> anyhow::Result<FileLock> {
        use std::io::Write;
        use std::os::unix::io::AsRawFd;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "pid unknown" } else { holder.trim() };
            anyhow::bail!("{what} is in use by another east process ({holder}; lock {})", path.display());
        }
        file.set_len(0)?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(FileLock { _file: file })
    }
}

/// Runs (or continues) the whole pipeline described by `config`.
pub fn run(config: &Config) -> anyhow::Result<Vec<RoundSummary>> {
    let layout = RunLayout::new(config);
    std::fs::create_dir_all(&layout.root).with_context(|| format!("creating {}", layout.root.display()))?;
    std::fs::create_dir_all(&layout.samples_cache).with_context(|| format!("creating {}", layout.samples_cache.display()))?;
    let _lock = FileLock::acquire(&layout.root.join(".lock"), &format!("run directory {}", layout.root.display()))?;
    crate::io::write_atomic(&layout.root.join("config.toml"), config.to_toml().as_bytes())?;
    let mut log = MetricsLog::open(&layout.root.join("run_log.jsonl"))?;
    log.log(&serde_json::json!({"event": "start", "run": config.run.name, "rounds": config.run.rounds, "pid": std::process::id()}))?;

    let mut summaries = Vec::new();
    let base = ModelRef::base(config);
    if config.run.eval_base {
        let mut s = RoundSummary { round: 0, model: base.label.clone(), accuracy: BTreeMap::new(), stages: vec![] };
        evaluate_round(config, &layout, 0, &base, &mut log, &mut s)?;
        summaries.push(s);
        write_json_atomic(&layout.summary(), &summaries)?;
    }
    let mut current = base;
    for t in 1..=config.run.rounds {
        let mut s = RoundSummary { round: t, model: String::new(), accuracy: BTreeMap::new(), stages: vec![] };
        current = self_train_round(config, &layout, t, &current, &mut log, &mut s)?;
        s.model = current.label.clone();
        evaluate_round(config, &layout, t, &current, &mut log, &mut s)?;
        summaries.push(s);
        write_json_atomic(&layout.summary(), &summaries)?;
    }
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
) -> anyhow::Result<ModelRef> {
    let round_dir = layout.round(t);
    std::fs::create_dir_all(&round_dir).with_context(|| format!("creating {}", round_dir.display()))?;

    // Sample, into the cache shared by every run under run.dir.
    let sample_settings = SampleSettings::from_config(
        config,
        format!("{} [{}]", if t == 1 { current.label.as_str() } else { "trained" }, current.key),
    );
    let (samples_source, record) = match (&config.run.samples, t) {
        (Some(external), 1) => external_samples(Path::new(external), t, log)?,
        _ => {
            let questions_key = questions_fingerprint(config)?;
            let sample_inputs = serde_json::json!({"settings": sample_settings, "model": current.key, "questions": questions_key});
            let cached = layout.samples_cache.join(format!("{}.jsonl", key_of(&sample_inputs)));
            let _cache_lock = FileLock::acquire(&cached.with_extension("lock"), &format!("samples cache file {}", cached.display()))?;
            let record = Stage {
                name: "sample",
                round: t,
                output: &cached,
                sidecars: vec![sample::meta_path(&cached), sample::log_path(&cached)],
                inputs: sample_inputs,
            }
            .run(log, || {
                let lm = crate::runtime::load_model(&current.model)?;
                let questions = load_questions(config)?;
                sample::sample_questions(&lm, &questions, &sample_settings, None, &cached)?;
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
        inputs: serde_json::json!({"samples": sample_key, "cluster": config.cluster}),
    }
    .run(log, || {
        let options = ClusterOptions {
            by: config.cluster.by,
            grade: GradeOptions { percent_rule: config.cluster.percent_rule, ..GradeOptions::default() },
            references: None,
        };
        weight::cluster_file(&samples, &clusters, &options)?;
        Ok(())
    })?;
    let cluster_key = record.key.clone();
    summary.stages.push(record);

    // Weight.
    let train_data = layout.train_data(t);
    let options = WeightOptions::from_config(config);
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
    let checkpoint = layout.checkpoint(t);
    let mut train = config.train.clone();
    train.merge |= train.lora && t < config.run.rounds;
    let record = Stage {
        name: "train",
        round: t,
        output: &checkpoint,
        sidecars: vec![],
        inputs: serde_json::json!({"model": current.key, "data": weight_key, "train": train_key_settings(&train), "beta": config.beta()}),
    }
    .run(log, || {
        let job = crate::train::TrainJob {
            model: current.model.clone(),
            data: train_data.clone(),
            out: checkpoint.clone(),
            train: train.clone(),
            beta: config.beta(),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        profile: false,
        };
        crate::train::train(&job)?;
        Ok(())
    })?;
    let train_key = record.key.clone();
    summary.stages.push(record);

    let merged = checkpoint.join("merged");
    let path = if merged.join("config.json").exists() { merged } else { checkpoint };
    Ok(ModelRef {
        model: ModelConfig { path: path.display().to_string(), adapter: None, ..current.model.clone() },
        key: train_key,
        label: path.display().to_string(),
    })
}

/// Round 1's samples from a file made elsewhere: its key is the hash of its bytes, so editing or
/// replacing the file reruns everything after sampling.
fn external_samples(path: &Path, t: usize, log: &mut MetricsLog) -> anyhow::Result<(PathBuf, StageRecord)> {
    use std::io::Read;
    let started = Instant::now();
    let mut file = std::fs::File::open(path).with_context(|| format!("run.samples: opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("run.samples: reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let key = short_hex(&hasher.finalize());
    log.log(&serde_json::json!({"event": "stage", "stage": "sample", "round": t, "outcome": "external", "key": key, "file": path}))?;
    let record = StageRecord { stage: "sample".into(), outcome: Outcome::Skipped, seconds: started.elapsed().as_secs_f64(), key };
    Ok((path.to_path_buf(), record))
}

/// Points `link` (in the round folder) at the cached samples file.
fn link_into_round(cached: &Path, link: &Path) -> anyhow::Result<()> {
    let target = std::fs::canonicalize(cached).with_context(|| format!("resolving {}", cached.display()))?;
    if std::fs::read_link(link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let tmp = crate::io::tmp_name(link);
    remove_path(&tmp)?;
    std::os::unix::fs::symlink(&target, &tmp).with_context(|| format!("linking {}", link.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}

/// The `[train]` keys that decide the trained weights (how often resume checkpoints are written
/// does not).
fn train_key_settings(train: &crate::config::TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(train).expect("the train config serialises");
    if let Some(o) = v.as_object_mut() {
        o.remove("save_steps");
    }
    v
}


/// Greedy evaluation of `model` on every `[eval] datasets` entry, recorded as round `t`.
fn evaluate_round(
    config: &Config,
    layout: &RunLayout,
    t: usize,
    model: &ModelRef,
    log: &mut MetricsLog,
    summary: &mut RoundSummary,
) -> anyhow::Result<()> {
    for dataset in &config.eval.datasets {
        let dir = layout.eval_dir(t, dataset);
        let settings = EvalSettings::from_config(config, model.label.clone(), dataset);
        let record = Stage {
            name: &format!("eval {}", dataset_dir_name(dataset)),
            round: t,
            output: &dir,
            sidecars: vec![],
            inputs: serde_json::json!({"model": model.key, "eval": settings, "fields": config.data.fields,
                "questions": dataset_fingerprint(dataset)}),
        }
        .run(log, || {
            let mut questions = data::load(&DatasetSpec::parse(dataset), &config.eval.split, &config.data.fields)?;
            if let Some(limit) = config.eval.limit {
                questions.truncate(limit);
            }
            if questions.is_empty() {
                anyhow::bail!("eval dataset {dataset} ({}) has no questions", config.eval.split);
            }
            let lm = crate::runtime::load_model(&model.model)?;
            eval::evaluate(&lm, &questions, &settings, &dir)?;
            Ok(())
        })?;
        summary.stages.push(record);
        let path = eval::report_path(&dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let report: eval::EvalReport = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        summary.accuracy.insert(dataset.clone(), report.accuracy);
        log.log(&serde_json::json!({"event": "eval", "round": t, "dataset": dataset, "accuracy": report.accuracy,
            "correct": report.correct, "n": report.n}))?;
    }
    Ok(())
}

fn load_questions(config: &Config) -> anyhow::Result<Vec<data::Question>> {
    let mut questions = data::load(&DatasetSpec::parse(&config.data.dataset), &config.data.split, &config.data.fields)?;
    if let Some(limit) = config.data.limit {
        questions.truncate(limit);
    }
    if questions.is_empty() {
        anyhow::bail!("dataset {} ({}) has no questions", config.data.dataset, config.data.split);
    }
    Ok(questions)
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
    Ok(serde_json::json!({"dataset": dataset_fingerprint(&config.data.dataset), "fields": config.data.fields}))
}
