//! `east sample`: n completions per question from the current policy, appended question by
//! question to samples.jsonl so that a killed run resumes where it stopped.
//!
//! Work is cut into *units* in the global question order: one question when n fills a batch,
//! else `batch_rows / n` consecutive questions decoded together. Shards take whole units
//! (unit u goes to shard u mod N), and a resumed run redoes only unfinished units, writing only
//! the questions still missing; since a unit always decodes the same way, sharded, resumed and
//! uninterrupted runs give identical samples.
//!
//! With `sample.backend = "openai"` the completions come from a serving engine instead
//! (`openai.rs`), with the same files, resumption and shards.

mod openai;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, Question};
use crate::decode::{
    fit_context, generate_group, DecodeSettings, Generation, Request, SamplerPlacement, Sampling,
};
use crate::io::{read_jsonl, write_json_atomic, AppendLog, InputError};
use crate::model::{LoadedModel, ModelText};
use crate::progress::{self, MetricsLog};
use crate::schema::SampleRecord;
pub use crate::serve::Engine;
use crate::serve::{Backend, Served};

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
        }
    }

    /// The same settings for samples from `server` (`sample.backend = "openai"`).
    pub fn served_by(mut self, server: &Served) -> Self {
        self.served_model = Some(server.client.model.clone());
        self
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

/// Samples `questions` (already limited; the shard is applied here) into `out` with east's
/// own decoder.
pub fn sample_questions(
    lm: &LoadedModel,
    questions: &[Question],
    settings: &SampleSettings,
    shard: Option<Shard>,
    out: &Path,
) -> anyhow::Result<SampleReport> {
    sample_questions_on(lm, questions, settings, shard, out, &Engine::Native(lm))
}

/// Samples `questions` into `out` with `engine` (which must be what `settings.sample.backend`
/// says); `text` renders the prompts (for the native engine, its model, which derefs to it).
pub fn sample_questions_on(
    text: &ModelText,
    questions: &[Question],
    settings: &SampleSettings,
    shard: Option<Shard>,
    out: &Path,
    engine: &Engine,
) -> anyhow::Result<SampleReport> {
    let cfg = &settings.sample;
    match (engine, cfg.backend) {
        (Engine::Native(_), Backend::Native) | (Engine::Server(_), Backend::Openai) => {}
        _ => anyhow::bail!(
            "sample.backend = {:?} does not match the engine given",
            cfg.backend
        ),
    }
    let all_units = units(questions.len(), cfg.n, cfg.batch_rows);
    let my_units: Vec<std::ops::Range<usize>> = all_units
        .into_iter()
        .enumerate()
        .filter(|(u, _)| shard.is_none_or(|s| u % s.count == s.index))
        .map(|(_, r)| r)
        .collect();
    let mine: usize = my_units.iter().map(|r| r.len()).sum();

    let meta_file = meta_path(out);
    let mut meta = SampleMeta {
        settings: settings.clone(),
        shard,
        questions: mine,
        total: Some(questions.len()),
        complete: false,
        server: match engine {
            Engine::Native(_) => None,
            Engine::Server(s) => Some(ServerSource {
                backend: Backend::Openai,
                urls: s.client.urls().to_vec(),
                model: s.client.model.clone(),
            }),
        },
    };
    if out.exists() {
        match std::fs::read_to_string(&meta_file) {
            Ok(text) => {
                let old: SampleMeta = serde_json::from_str(&text)
                    .map_err(|e| InputError::file(&meta_file, format!("unreadable: {e}")))?;
                if old.settings.sample.backend != cfg.backend
                    || old.settings.served_model != settings.served_model
                {
                    anyhow::bail!(
                        "{} was sampled with backend {} (served model {}), not {} (served model {}); refusing to mix samples: remove it or choose another --out",
                        out.display(),
                        backend_name(old.settings.sample.backend),
                        old.settings.served_model.as_deref().unwrap_or("none"),
                        backend_name(cfg.backend),
                        settings.served_model.as_deref().unwrap_or("none"),
                    );
                }
                if old.settings != meta.settings || old.shard != meta.shard {
                    anyhow::bail!(
                        "{} was sampled with other settings ({}); refusing to mix samples: remove it or choose another --out",
                        out.display(),
                        meta_file.display()
                    );
                }
            }
            Err(_) => anyhow::bail!(
                "{} exists without {}; refusing to append to a file of unknown origin",
                out.display(),
                meta_file.display()
            ),
        }
    }
    // Every prompt, not only this shard's: the longest one decides how many new tokens fit the
    // model's context, which must be the same in every shard.
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| text.east_prompt_ids(&q.question))
        .collect::<Result<_, _>>()?;
    let mut decode = cfg.decode_settings();
    let id = |i: usize| questions[i].id.as_str();
    decode.max_new_tokens = fit_context(
        text,
        &prompts,
        id,
        cfg.max_new_tokens,
        "sample.max_new_tokens",
    )?;
    write_json_atomic(&meta_file, &meta)?;
    let (mut log, done_ids) = AppendLog::open(out)?;
    let done: HashSet<String> = done_ids.into_iter().collect();
    let resumed = done.len();
    let mut metrics = MetricsLog::open(&log_path(out))?;

    let bar = progress::items_bar(mine as u64, "sample");
    bar.set_position(resumed as u64);
    let started = Instant::now();
    let mut generated = 0usize;
    if let Engine::Server(server) = engine {
        let todo = openai::todo_of(&my_units, questions, &done);
        let params = crate::serve::GenParams {
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            max_tokens: decode.max_new_tokens,
            stop: cfg.stop.clone(),
        };
        generated = openai::sample_via_server(
            text,
            server,
            questions,
            &todo,
            cfg.n,
            &params,
            cfg.seed,
            &mut log,
            &mut metrics,
            &bar,
        )?;
    }
    let native_units: Vec<(&LoadedModel, std::ops::Range<usize>)> = match engine {
        Engine::Native(lm) => my_units.into_iter().map(|u| (*lm, u)).collect(),
        Engine::Server(_) => Vec::new(),
    };
    for (lm, unit) in native_units {
        let todo: Vec<usize> = unit
            .clone()
            .filter(|&i| !done.contains(&questions[i].id))
            .collect();
        if todo.is_empty() {
            continue;
        }
        // The whole unit is decoded even when part of it was written before a crash: its
        // samples depend on which rows share the batch.
        let mut per_question: Vec<Vec<Generation>> = vec![Vec::new(); unit.len()];
        // n larger than a batch: the question's samples are decoded in chunks of batch_rows.
        let chunk = cfg.batch_rows.min(cfg.n).max(1);
        let mut first = 0;
        while first < cfg.n {
            let take = chunk.min(cfg.n - first);
            let requests: Vec<Request> = unit
                .clone()
                .map(|i| Request {
                    prompt_ids: prompts[i].clone(),
                    id: questions[i].id.clone(),
                    first_sample: first,
                    samples: take,
                })
                .collect();
            let unit_start = Instant::now();
            let (gens, stats) = generate_group(lm, &requests, &decode, |k| {
                generated += k;
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{:.0} tok/s", generated as f64 / secs));
            })?;
            metrics.log(&serde_json::json!({
                "event": "unit", "first_question": unit.start, "questions": unit.len(), "first_sample": first,
                "rows": take * unit.len(), "prompt_tokens": stats.prompt_tokens, "generated_tokens": stats.generated,
                "steps": stats.steps, "seconds": unit_start.elapsed().as_secs_f64(),
                "tokens_per_s": stats.generated as f64 / unit_start.elapsed().as_secs_f64().max(1e-9),
            }))?;
            for (slot, g) in per_question.iter_mut().zip(gens) {
                slot.extend(g);
            }
            first += take;
        }
        for (k, i) in unit.clone().enumerate() {
            let q = &questions[i];
            if done.contains(&q.id) {
                continue;
            }
            let gens = std::mem::take(&mut per_question[k]);
            let record = SampleRecord {
                id: q.id.clone(),
                question: q.question.clone(),
                answer: q.answer.clone(),
                finish: Some(gens.iter().map(|g| g.finish).collect()),
                tokens: Some(gens.iter().map(|g| g.token_ids.len() as u32).collect()),
                completions: gens.into_iter().map(|g| g.text).collect(),
                index: Some(i),
            };
            log.append(&record).map_err(|e| InputError::io(out, e))?;
            bar.inc(1);
        }
        log.sync().map_err(|e| InputError::io(out, e))?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    meta.complete = true;
    write_json_atomic(&meta_file, &meta)?;
    metrics.log(&serde_json::json!({"event": "done", "questions": mine, "resumed": resumed,
        "generated_tokens": generated, "seconds": seconds, "tokens_per_s": generated as f64 / seconds.max(1e-9)}))?;
    Ok(SampleReport {
        out: out.to_path_buf(),
        questions: mine,
        resumed,
        generated_tokens: generated,
        seconds,
        tokens_per_s: generated as f64 / seconds.max(1e-9),
    })
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

/// Reads a samples file's `<out>.meta.json`.
fn read_meta(input: &Path) -> Result<SampleMeta, InputError> {
    let path = meta_path(input);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| InputError::file(&path, format!("unreadable: {e}")))
}

/// `i/N`, or "unsharded".
fn shard_name(shard: Option<Shard>) -> String {
    shard.map_or("unsharded".into(), |s| {
        format!("shard {}/{}", s.index, s.count)
    })
}

/// Joins the shard files of one sampling run into one samples file in question order. Every
/// shard 0..N−1 must be given exactly once, complete, made with the same settings, and hold the
/// questions its meta says (an empty shard is valid: with few decoding units some shards get no
/// question); no question may be missing or duplicated.
pub fn merge_shards(inputs: &[PathBuf], out: &Path) -> anyhow::Result<usize> {
    let mut all: Vec<(usize, SampleRecord)> = Vec::new();
    let mut first: Option<(&PathBuf, SampleMeta)> = None;
    let mut given: std::collections::BTreeMap<usize, &PathBuf> = Default::default();
    for input in inputs {
        let meta = read_meta(input)?;
        if !meta.complete {
            anyhow::bail!(
                "{} is not complete (its sampling run has not finished)",
                input.display()
            );
        }
        let shard = meta.shard.unwrap_or(Shard { index: 0, count: 1 });
        if let Some((p0, m0)) = &first {
            if m0.settings != meta.settings {
                anyhow::bail!(
                    "{} was sampled with other settings than {}",
                    input.display(),
                    p0.display()
                );
            }
            if m0.shard.map_or(1, |s| s.count) != shard.count || m0.total != meta.total {
                anyhow::bail!(
                    "{} ({}) and {} ({}) are not shards of one run",
                    input.display(),
                    shard_name(meta.shard),
                    p0.display(),
                    shard_name(m0.shard)
                );
            }
        }
        if let Some(other) = given.insert(shard.index, input) {
            anyhow::bail!(
                "{} and {} are both {}: give each shard once",
                other.display(),
                input.display(),
                shard_name(meta.shard)
            );
        }
        let empty = std::fs::metadata(input)
            .map_err(|e| InputError::io(input, e))?
            .len()
            == 0;
        let records = if empty {
            Vec::new()
        } else {
            read_jsonl::<SampleRecord>(input)?
        };
        if records.len() != meta.questions {
            anyhow::bail!(
                "{} holds {} questions, but {} says {}",
                input.display(),
                records.len(),
                meta_path(input).display(),
                meta.questions
            );
        }
        for (line, r) in records {
            r.validate(input, line)?;
            let index = r.index.ok_or_else(|| {
                InputError::field(
                    input,
                    line,
                    "index",
                    "missing: only files written by east sample can be merged",
                )
            })?;
            all.push((index, r));
        }
        if first.is_none() {
            first = Some((input, meta));
        }
    }
    let (_, meta) = first.ok_or_else(|| anyhow::anyhow!("no input files"))?;
    let count = meta.shard.map_or(1, |s| s.count);
    let missing: Vec<String> = (0..count)
        .filter(|i| !given.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "shard {} missing: the run has {count} shards and {} were given; east merge needs every shard once",
            missing.join(", "),
            given.len()
        );
    }
    all.sort_by_key(|(i, _)| *i);
    let mut seen = HashSet::new();
    for (i, r) in &all {
        if !seen.insert(*i) {
            anyhow::bail!(
                "question `{}` (index {i}) appears in more than one input",
                r.id
            );
        }
    }
    if let Some(gap) = (0..all.len()).find(|&k| all[k].0 != k) {
        anyhow::bail!("question index {gap} is missing from the inputs: is a shard left out?");
    }
    if let Some(total) = meta.total.filter(|&t| t != all.len()) {
        anyhow::bail!(
            "the shards hold {} questions of the run's {total}: question index {} is missing",
            all.len(),
            all.len()
        );
    }
    let mut writer = crate::io::AtomicFile::create(out)?;
    for (_, r) in &all {
        writer.write_json_line(r)?;
    }
    write_json_atomic(
        &meta_path(out),
        &SampleMeta {
            settings: meta.settings,
            shard: None,
            questions: all.len(),
            total: Some(all.len()),
            complete: true,
            server: meta.server,
        },
    )?;
    writer.commit()?;
    Ok(all.len())
}
