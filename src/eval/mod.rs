//! `east eval`: greedy accuracy on a benchmark split, graded with the same grader as training.
//!
//! Questions are decoded in batches of similar prompt length (less padding), predictions are
//! appended as they finish (a killed evaluation resumes), and `eval.json` is written at the end
//! with accuracy overall, by MATH level and by subject.
//!
//! The stage reads as: resume check → prompts → generate ([`crate::generate`]: east's decoder,
//! or a server with `eval.backend = "openai"`) → grade and write ([`writer`]) → eval.json from
//! the predictions file.

mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Question;
use crate::decode::{DecodeSettings, SamplerPlacement, Sampling};
use crate::generate::{self, Completion, Generator, PromptKey, Work};
use crate::grade::{extract_answer, Answer, GradeOptions, Grading};
use crate::io::{read_jsonl, write_json_atomic, AppendLog, InputError};
use crate::schema::Finish;
use crate::serve::Backend;
use writer::EvalWriter;

/// `[eval]`: greedy accuracy on benchmark splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Benchmarks to evaluate on: `gsm8k`, `math`, `math500` or JSONL files.
    pub datasets: Vec<String>,
    pub split: String,
    /// Use only the first `limit` questions of each.
    pub limit: Option<usize>,
    /// Most tokens generated per answer.
    pub max_new_tokens: usize,
    /// Questions decoded together.
    pub batch_size: usize,
    /// `native` (east's decoder) or `openai` (a server, see `[server]`).
    pub backend: Backend,
    /// How predictions are graded: `"exact"`, `"qwen"` (the numeric rules of the Qwen2.5-Math
    /// toolkit the paper evaluates with) or a table of the grader's numeric rules.
    pub grade: Grading,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            datasets: vec!["gsm8k".into()],
            split: "test".into(),
            limit: None,
            max_new_tokens: 2048,
            batch_size: 32,
            backend: Backend::Native,
            grade: Grading::default(),
        }
    }
}

impl EvalConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.datasets.is_empty() {
            return Err(("datasets", "must name at least one dataset".into()));
        }
        if self.limit == Some(0) {
            return Err(("limit", "must be at least 1 when set".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(("max_new_tokens", "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(("batch_size", "must be at least 1".into()));
        }
        self.grade
            .validate()
            .map_err(|(rule, message)| ("grade", format!("{rule}: {message}")))
    }
}

/// What decides an evaluation (must match to resume into an existing folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    pub model: String,
    pub dataset: String,
    pub split: String,
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// `openai`: the predictions came from a server (absent for the native decoder, so older
    /// evaluations still match).
    #[serde(default, skip_serializing_if = "Backend::is_native")]
    pub backend: Backend,
    /// The served model's name (`openai` backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// How the prompts were rendered and sent (set from the engine; absent in evaluations of
    /// older versions, which are then not resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptKey>,
    /// How the predictions are graded (absent when exact, so older evaluations still match).
    #[serde(default, skip_serializing_if = "Grading::is_exact")]
    pub grading: Grading,
}

impl EvalSettings {
    /// The `[eval]` settings for one dataset and the model named `model`.
    pub fn new(e: &EvalConfig, model: String, dataset: &str) -> Self {
        EvalSettings {
            model,
            dataset: dataset.to_string(),
            split: e.split.clone(),
            limit: e.limit,
            max_new_tokens: e.max_new_tokens,
            batch_size: e.batch_size,
            backend: e.backend,
            served_model: None,
            prompt: None,
            grading: e.grade,
        }
    }

    /// The same settings for predictions from `engine`, which must be the engine of
    /// `backend`: a server's also name the model it serves.
    pub fn for_engine(mut self, engine: &dyn Generator) -> anyhow::Result<Self> {
        if engine.backend() != self.backend {
            anyhow::bail!(
                "eval.backend = {:?} does not match the engine given",
                self.backend
            );
        }
        self.served_model = engine.served().map(|s| s.client.model.clone());
        self.prompt = Some(engine.prompt_key());
        Ok(self)
    }
}

/// One line of predictions.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub completion: String,
    pub pred: Option<String>,
    pub answer: String,
    pub correct: bool,
    pub finish: Finish,
    pub tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Prediction {
    /// Question `q`'s prediction: `completion` graded against its answer with `opts`.
    pub fn new(q: &Question, completion: Completion, opts: &GradeOptions) -> Self {
        let (pred, correct) = grade(&completion.text, &Answer::parse(&q.answer), opts);
        Prediction {
            id: q.id.clone(),
            tokens: completion.tokens,
            completion: completion.text,
            pred,
            answer: q.answer.clone(),
            correct,
            finish: completion.finish,
            level: q.level.clone(),
            subject: q.subject.clone(),
        }
    }
}

/// Accuracy of a subset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Bucket {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
}

impl Bucket {
    fn add(&mut self, correct: bool) {
        self.n += 1;
        self.correct += usize::from(correct);
        self.accuracy = self.correct as f64 / self.n as f64;
    }
}

/// eval.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub dataset: String,
    pub split: String,
    pub model: String,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub by_level: BTreeMap<String, Bucket>,
    pub by_type: BTreeMap<String, Bucket>,
    /// Completions with no extractable answer, and those cut by the token limit.
    pub no_answer: usize,
    pub truncated: usize,
    /// How the predictions were graded (`eval.grade`): a preset name or the numeric rules.
    #[serde(default)]
    pub grading: Grading,
    pub settings: EvalSettings,
    /// Decoding time of the predictions, summed over every attempt (a resumed evaluation counts
    /// its earlier attempts too).
    pub seconds: f64,
    /// Tokens of all predictions (whichever attempt generated them).
    pub generated_tokens: usize,
}

pub fn predictions_path(dir: &Path) -> PathBuf {
    dir.join("predictions.jsonl")
}

pub fn report_path(dir: &Path) -> PathBuf {
    dir.join("eval.json")
}

fn settings_path(dir: &Path) -> PathBuf {
    dir.join("eval.settings.json")
}

fn metrics_path(dir: &Path) -> PathBuf {
    dir.join("eval.log.jsonl")
}

/// Whether `dir` holds a finished evaluation with these settings.
pub fn is_complete(dir: &Path, settings: &EvalSettings) -> bool {
    let Ok(text) = std::fs::read_to_string(report_path(dir)) else {
        return false;
    };
    serde_json::from_str::<EvalReport>(&text).is_ok_and(|r| &r.settings == settings)
}

/// Grades one completion against a reference answer.
pub fn grade(completion: &str, reference: &Answer, opts: &GradeOptions) -> (Option<String>, bool) {
    match extract_answer(completion) {
        Some(raw) => {
            let answer = Answer::parse(&raw);
            let correct = answer.equivalent(reference, opts);
            (Some(answer.normalized), correct)
        }
        None => (None, false),
    }
}

/// Evaluates `questions` greedily with `engine` (the engine of `settings.backend`,
/// [`crate::generate::open`]; a server gives temperature 0, one completion per question) and
/// writes predictions.jsonl and eval.json into `dir`.
pub fn evaluate(
    engine: &dyn Generator,
    questions: &[Question],
    settings: &EvalSettings,
    dir: &Path,
) -> anyhow::Result<EvalReport> {
    let settings = settings.clone().for_engine(engine)?;
    prepare_dir(dir, &settings)?;
    let (log, done_ids) = AppendLog::open(&predictions_path(dir))?;
    let done: HashSet<String> = done_ids.into_iter().collect();
    let (prompt_ids, max_new_tokens) = generate::prompt_ids(
        engine.text(),
        questions,
        settings.max_new_tokens,
        "eval.max_new_tokens",
    )?;
    // Batches of similar length waste little on padding; the order is fixed by the data, so a
    // resumed run forms the same batches.
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&i| (prompt_ids[i].len(), i));
    let work = Work {
        questions,
        prompt_ids: &prompt_ids,
        groups: order
            .chunks(settings.batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect(),
        done: &done,
        samples: 1,
        chunk: 1,
        decode: DecodeSettings {
            sampling: Sampling::GREEDY,
            max_new_tokens,
            seed: 0,
            stop: Vec::new(),
            sampler: SamplerPlacement::Auto,
            kv_dtype: None,
            cpu_shards: None,
        },
    };
    let grading = settings.grading.options();
    let mut writer = EvalWriter::open(dir, questions, &grading, log, done.len())?;
    engine.generate(&work, &mut writer)?;
    writer.finish();
    // The report is computed from the file, so resumed and uninterrupted runs agree.
    let report = summarize(questions, &settings, dir)?;
    write_json_atomic(&report_path(dir), &report)?;
    Ok(report)
}

/// Makes `dir` ready for `settings`' predictions: refuses predictions made with other
/// settings, forgets the timings of an older evaluation when starting afresh, and records the
/// settings.
fn prepare_dir(dir: &Path, settings: &EvalSettings) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
    let settings_file = settings_path(dir);
    if predictions_path(dir).exists() {
        let old: Option<EvalSettings> = std::fs::read_to_string(&settings_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(old) = old.as_ref().filter(|o| o.prompt != settings.prompt) {
            anyhow::bail!(
                "{} holds predictions of prompts rendered or sent otherwise ({}, now {}: model.prompt_style, model.date, server.api); remove the folder or choose another --out",
                dir.display(),
                serde_json::to_string(&old.prompt).unwrap_or_default(),
                serde_json::to_string(&settings.prompt).unwrap_or_default(),
            );
        }
        if old.as_ref() != Some(settings) {
            anyhow::bail!(
                "{} holds predictions made with other settings (see {}); remove the folder or choose another --out",
                dir.display(),
                settings_file.display()
            );
        }
    } else {
        // A fresh evaluation: the timings of an older one do not count.
        let metrics_file = metrics_path(dir);
        match std::fs::remove_file(&metrics_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(InputError::io(&metrics_file, e).into())
            }
            _ => {}
        }
    }
    write_json_atomic(&settings_file, settings)?;
    Ok(())
}

/// eval.json from the predictions file of `questions` in `dir`.
fn summarize(
    questions: &[Question],
    settings: &EvalSettings,
    dir: &Path,
) -> anyhow::Result<EvalReport> {
    let preds_file = predictions_path(dir);
    let mut by_id: HashMap<String, Prediction> = HashMap::new();
    for (_, p) in read_jsonl::<Prediction>(&preds_file)? {
        by_id.insert(p.id.clone(), p);
    }
    let mut report = EvalReport {
        dataset: settings.dataset.clone(),
        split: settings.split.clone(),
        model: settings.model.clone(),
        n: 0,
        correct: 0,
        accuracy: 0.0,
        by_level: BTreeMap::new(),
        by_type: BTreeMap::new(),
        no_answer: 0,
        truncated: 0,
        grading: settings.grading,
        settings: settings.clone(),
        seconds: decode_seconds(&metrics_path(dir))?,
        generated_tokens: 0,
    };
    for q in questions {
        let p = by_id.get(&q.id).ok_or_else(|| {
            anyhow::anyhow!(
                "prediction for `{}` missing from {}",
                q.id,
                preds_file.display()
            )
        })?;
        report.add(q, p);
    }
    report.accuracy = report.correct as f64 / report.n.max(1) as f64;
    Ok(report)
}

impl EvalReport {
    /// Counts question `q`'s prediction `p`.
    fn add(&mut self, q: &Question, p: &Prediction) {
        self.n += 1;
        self.generated_tokens += p.tokens;
        self.correct += usize::from(p.correct);
        self.no_answer += usize::from(p.pred.is_none());
        self.truncated += usize::from(p.finish == Finish::Length);
        if let Some(level) = &q.level {
            self.by_level
                .entry(level.clone())
                .or_default()
                .add(p.correct);
        }
        if let Some(subject) = &q.subject {
            self.by_type
                .entry(subject.clone())
                .or_default()
                .add(p.correct);
        }
    }
}

/// The decoding seconds of every batch in `eval.log.jsonl`, over all attempts.
fn decode_seconds(path: &Path) -> Result<f64, InputError> {
    let text = std::fs::read_to_string(path).map_err(|e| InputError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "batch")
        .filter_map(|v| v["seconds"].as_f64())
        .sum())
}
