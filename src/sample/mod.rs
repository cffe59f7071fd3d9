//! `east sample`: n completions per question from the current policy, appended question by
//! question to samples.jsonl so that a killed run resumes where it stopped.
//!
//! Work is cut into *units* in the global question order: one question when n fills a batch,
//! else `batch_rows / n` consecutive questions decoded together. Shards take whole units
//! (unit u goes to shard u mod N), and a resumed run redoes only unfinished units, writing only
//! the questions still missing; since a unit always decodes the same way, sharded, resumed and
//! uninterrupted runs give identical samples.
//!
//! The stage reads as: resume check → prompts → generate ([`crate::generate`]: east's decoder,
//! or a server with `sample.backend = "openai"`, with the same files, resumption and shards) →
//! records written by [`writer`] → log. `east merge` joins shard files ([`merge`]).

mod merge;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, Question};
use crate::decode::{DecodeSettings, SamplerPlacement, Sampling};
use crate::generate::{self, Generator, PromptKey, Work};
use crate::io::{write_json_atomic, AppendLog, InputError};
use crate::serve::{Backend, Served};
pub use merge::merge_shards;
use writer::SampleWriter;

/// `[sample]`: n completions per question from the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Completions per question.
    pub n: usize,
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f64,
    /// Most tokens generated per completion.
    pub max_new_tokens: usize,
    /// Seeds every (question, sample) stream.
    pub seed: u64,
    /// Most sequences decoded together (several questions share a batch when n is small).
    pub batch_rows: usize,
    /// Extra stop strings besides the model's EOS tokens.
    pub stop: Vec<String>,
    /// `native` (east's decoder) or `openai` (a server, see `[server]`).
    pub backend: Backend,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            n: 128,
            temperature: 0.7,
            top_p: 1.0,
            max_new_tokens: 2048,
            seed: 42,
            batch_rows: 128,
            stop: Vec::new(),
            backend: Backend::Native,
        }
    }
}

impl SampleConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.n == 0 {
            return Err(("n", "must be at least 1".into()));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err((
                "temperature",
                format!("must be a finite number ≥ 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        if self.max_new_tokens == 0 {
            return Err(("max_new_tokens", "must be at least 1".into()));
        }
        if self.batch_rows == 0 {
            return Err(("batch_rows", "must be at least 1".into()));
        }
        Ok(())
    }

    /// How the decoder draws these samples.
    pub fn decode_settings(&self) -> DecodeSettings {
        DecodeSettings {
            sampling: Sampling {
                temperature: self.temperature,
                top_p: self.top_p,
            },
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            stop: self.stop.clone(),
            sampler: SamplerPlacement::Auto,
            kv_dtype: None,
            cpu_shards: None,
        }
    }
}

/// Everything that decides the samples (and so must match to resume into an existing file):
/// the model, the questions and the `[sample]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    pub model: String,
    pub dataset: String,
    pub split: String,
    pub limit: Option<usize>,
    #[serde(flatten)]
    pub sample: SampleConfig,
    /// The served model's name (`openai` backend): resuming from another one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// How the prompts were rendered and sent (set from the engine; absent in files of older
    /// versions, which are then not resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptKey>,
}

impl SampleSettings {
    /// The settings of sampling `data`'s questions from the model named `model`.
    pub fn new(model: String, data: &DataConfig, sample: &SampleConfig) -> Self {
        SampleSettings {
            model,
            dataset: data.dataset.clone(),
            split: data.split.clone(),
            limit: data.limit,
            sample: sample.clone(),
            served_model: None,
            prompt: None,
        }
    }

    /// The same settings for samples from `engine`, which must be the engine of
    /// `sample.backend`: a server's also name the model it serves.
    pub fn for_engine(mut self, engine: &dyn Generator) -> anyhow::Result<Self> {
        if engine.backend() != self.sample.backend {
            anyhow::bail!(
                "sample.backend = {:?} does not match the engine given",
                self.sample.backend
            );
        }
        self.served_model = engine.served().map(|s| s.client.model.clone());
        self.prompt = Some(engine.prompt_key());
        Ok(self)
    }
}

/// Where an `openai` samples file came from (recorded, not compared on resume: a server may
/// move).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSource {
    pub backend: Backend,
    pub urls: Vec<String>,
    pub model: String,
}

impl ServerSource {
    /// Where samples from `server` come from.
    fn of(server: &Served) -> Self {
        ServerSource {
            backend: Backend::Openai,
            urls: server.client.urls().to_vec(),
            model: server.client.model.clone(),
        }
    }
}

/// `i/N`: this process samples shard i (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: expected i/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: shard index `{i}` is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: shard count `{n}` is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: need 0 ≤ i < N"));
        }
        Ok(Shard { index, count })
    }
}

/// The sidecar `<out>.meta.json`: the settings a samples file was made with, which shard of how
/// many it is, how many questions it holds, and whether it is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    pub settings: SampleSettings,
    /// `index` of `count` (`east merge` needs every index 0..count−1 once); `null`: unsharded.
    pub shard: Option<Shard>,
    /// Questions in this file.
    pub questions: usize,
    /// Questions of the whole run, every shard together (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    pub complete: bool,
    /// The server's URL(s) and model, for samples made with the `openai` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSource>,
}

pub fn meta_path(out: &Path) -> PathBuf {
    sidecar(out, "meta.json")
}

pub fn log_path(out: &Path) -> PathBuf {
    sidecar(out, "log.jsonl")
}

fn sidecar(out: &Path, ext: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{ext}"))
}

/// Groups of question indices decoded together.
pub fn units(questions: usize, n: usize, batch_rows: usize) -> Vec<std::ops::Range<usize>> {
    let per_unit = (batch_rows / n.max(1)).max(1);
    (0..questions)
        .step_by(per_unit)
        .map(|s| s..(s + per_unit).min(questions))
        .collect()
}

/// What a sampling run did.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    pub out: PathBuf,
    pub questions: usize,
    pub resumed: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// Samples `questions` (already limited; the shard is applied here) into `out` with `engine`,
/// which must be the engine of `settings.sample.backend` ([`crate::generate::open`]).
pub fn sample_questions(
    engine: &dyn Generator,
    questions: &[Question],
    settings: &SampleSettings,
    shard: Option<Shard>,
    out: &Path,
) -> anyhow::Result<SampleReport> {
    let settings = settings.clone().for_engine(engine)?;
    let cfg = &settings.sample;
    let groups: Vec<Vec<usize>> = units(questions.len(), cfg.n, cfg.batch_rows)
        .into_iter()
        .enumerate()
        .filter(|(u, _)| shard.is_none_or(|s| u % s.count == s.index))
        .map(|(_, r)| r.collect())
        .collect();
    let mut meta = SampleMeta {
        settings: settings.clone(),
        shard,
        questions: groups.iter().map(Vec::len).sum(),
        total: Some(questions.len()),
        complete: false,
        server: engine.served().map(ServerSource::of),
    };
    check_resume(out, &meta)?;
    let (prompt_ids, max_new_tokens) = generate::prompt_ids(
        engine.text(),
        questions,
        cfg.max_new_tokens,
        "sample.max_new_tokens",
    )?;
    write_json_atomic(&meta_path(out), &meta)?;
    let (log, done_ids) = AppendLog::open(out)?;
    let done: HashSet<String> = done_ids.into_iter().collect();
    let mut writer = SampleWriter::open(out, questions, log, meta.questions, done.len())?;
    let work = Work {
        questions,
        prompt_ids: &prompt_ids,
        groups,
        done: &done,
        samples: cfg.n,
        chunk: cfg.batch_rows,
        decode: DecodeSettings {
            max_new_tokens,
            ..cfg.decode_settings()
        },
    };
    engine.generate(&work, &mut writer)?;
    meta.complete = true;
    write_json_atomic(&meta_path(out), &meta)?;
    writer.finish()
}

/// Refuses to append to `out` unless it was sampled with `meta`'s settings and shard.
fn check_resume(out: &Path, meta: &SampleMeta) -> anyhow::Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let meta_file = meta_path(out);
    let Ok(text) = std::fs::read_to_string(&meta_file) else {
        anyhow::bail!(
            "{} exists without {}; refusing to append to a file of unknown origin",
            out.display(),
            meta_file.display()
        );
    };
    let old: SampleMeta = serde_json::from_str(&text)
        .map_err(|e| InputError::file(&meta_file, format!("unreadable: {e}")))?;
    let (was, now) = (&old.settings, &meta.settings);
    if was.sample.backend != now.sample.backend || was.served_model != now.served_model {
        anyhow::bail!(
            "{} was sampled with backend {} (served model {}), not {} (served model {}); refusing to mix samples: remove it or choose another --out",
            out.display(),
            backend_name(was.sample.backend),
            was.served_model.as_deref().unwrap_or("none"),
            backend_name(now.sample.backend),
            now.served_model.as_deref().unwrap_or("none"),
        );
    }
    if was.prompt != now.prompt {
        anyhow::bail!(
            "{} was sampled with prompts rendered or sent otherwise ({}, now {}: model.prompt_style, model.date, server.api); refusing to mix prompts: remove it or choose another --out",
            out.display(),
            serde_json::to_string(&was.prompt).unwrap_or_default(),
            serde_json::to_string(&now.prompt).unwrap_or_default(),
        );
    }
    if was != now || old.shard != meta.shard {
        anyhow::bail!(
            "{} was sampled with other settings ({}); refusing to mix samples: remove it or choose another --out",
            out.display(),
            meta_file.display()
        );
    }
    Ok(())
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Native => "native",
        Backend::Openai => "openai",
    }
}

/// Whether `out` is a complete samples file made with `settings` (what `east run` checks to skip
/// sampling).
pub fn is_complete(out: &Path, settings: &SampleSettings) -> bool {
    let Ok(text) = std::fs::read_to_string(meta_path(out)) else {
        return false;
    };
    let Ok(meta) = serde_json::from_str::<SampleMeta>(&text) else {
        return false;
    };
    meta.complete && meta.shard.is_none() && &meta.settings == settings && out.exists()
}
