//! `east eval`: greedy accuracy on a benchmark split, graded with the same grader as training.
//!
//! Questions are decoded in batches of similar prompt length (less padding), predictions are
//! appended as they finish (a killed evaluation resumes), and `eval.json` is written at the end
//! with accuracy overall, by MATH level and by subject.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Question;
use crate::decode::{
    fit_context, generate_group, DecodeSettings, Request, SamplerPlacement, Sampling,
};
use crate::grade::{extract_answer, Answer, GradeOptions};
use crate::io::{read_jsonl, write_json_atomic, AppendLog, InputError};
use crate::model::{LoadedModel, ModelText};
use crate::progress::{self, MetricsLog};
use crate::schema::Finish;
use crate::serve::{Backend, Engine, Served};

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
        Ok(())
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
        }
    }

    /// The same settings for predictions from `server` (`eval.backend = "openai"`).
    pub fn served_by(mut self, server: &Served) -> Self {
        self.served_model = Some(server.client.model.clone());
        self
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

/// Evaluates `questions` greedily and writes predictions.jsonl and eval.json into `dir`.
pub fn evaluate(
    lm: &LoadedModel,
    questions: &[Question],
    settings: &EvalSettings,
    dir: &Path,
) -> anyhow::Result<EvalReport> {
    evaluate_on(lm, questions, settings, dir, &Engine::Native(lm))
}

/// [`evaluate`] with `engine`: a server (`eval.backend = "openai"`) gives temperature 0, one
/// completion per question, the same grading and files. `text` renders the prompts (for the
/// native engine, its model, which derefs to it).
pub fn evaluate_on(
    text: &ModelText,
    questions: &[Question],
    settings: &EvalSettings,
    dir: &Path,
    engine: &Engine,
) -> anyhow::Result<EvalReport> {
    let (native, server) = match *engine {
        Engine::Native(lm) => (Some(lm), None),
        Engine::Server(s) => (None, Some(s)),
    };
    if server.is_some() != (settings.backend == Backend::Openai) {
        anyhow::bail!(
            "eval.backend = {:?} does not match the engine given",
            settings.backend
        );
    }
    std::fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
    let preds_file = predictions_path(dir);
    let settings_file = settings_path(dir);
    if preds_file.exists() {
        let old: Option<EvalSettings> = std::fs::read_to_string(&settings_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if old.as_ref() != Some(settings) {
            anyhow::bail!(
                "{} holds predictions made with other settings (see {}); remove the folder or choose another --out",
                dir.display(),
                settings_file.display()
            );
        }
    }
    let metrics_file = dir.join("eval.log.jsonl");
    if !preds_file.exists() {
        // A fresh evaluation: the timings of an older one do not count.
        match std::fs::remove_file(&metrics_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(InputError::io(&metrics_file, e).into())
            }
            _ => {}
        }
    }
    write_json_atomic(&settings_file, settings)?;
    let (mut log, done_ids) = AppendLog::open(&preds_file)?;
    let done: HashSet<String> = done_ids.into_iter().collect();
    let mut metrics = MetricsLog::open(&metrics_file)?;

    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| text.east_prompt_ids(&q.question))
        .collect::<Result<_, _>>()?;
    // Batches of similar length waste little on padding; the order is fixed by the data, so a
    // resumed run forms the same batches.
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let opts = GradeOptions::default();
    let id = |i: usize| questions[i].id.as_str();
    let max_new_tokens = fit_context(
        text,
        &prompts,
        id,
        settings.max_new_tokens,
        "eval.max_new_tokens",
    )?;
    let decode = DecodeSettings {
        sampling: Sampling::GREEDY,
        max_new_tokens,
        seed: 0,
        stop: Vec::new(),
        sampler: SamplerPlacement::Auto,
        kv_dtype: None,
        cpu_shards: None,
    };
    let bar = progress::items_bar(questions.len() as u64, "eval");
    bar.set_position(done.len() as u64);
    let started = Instant::now();
    let mut generated = 0usize;
    let mut correct_so_far = 0usize;
    let mut finished_now = 0usize;
    if let Some(server) = server {
        let todo: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| !done.contains(&questions[i].id))
            .collect();
        let t = Instant::now();
        let jobs: Vec<crate::serve::Job> = todo
            .iter()
            .map(|&i| {
                Ok(crate::serve::Job {
                    id: questions[i].id.clone(),
                    prompt: server.prompt(text, &questions[i].question)?,
                    first_sample: 0,
                    samples: 1,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        let params = crate::serve::GenParams {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: max_new_tokens,
            stop: Vec::new(),
        };
        let mut tokens_now = 0usize;
        let mut last = Instant::now();
        crate::serve::generate(server, &jobs, &params, 0, &|_, _| {}, |j, mut choices| {
            let q = &questions[todo[j]];
            let c = choices.remove(0);
            let tokens = crate::model::tokenizer::encode(&text.tokenizer, &c.text)?.len();
            tokens_now += tokens;
            let (pred, correct) = grade(&c.text, &Answer::parse(&q.answer), &opts);
            correct_so_far += usize::from(correct);
            finished_now += 1;
            log.append(&Prediction {
                id: q.id.clone(),
                tokens,
                completion: c.text,
                pred,
                answer: q.answer.clone(),
                correct,
                finish: c.finish,
                level: q.level.clone(),
                subject: q.subject.clone(),
            })
            .map_err(|e| InputError::io(&preds_file, e))?;
            log.sync().map_err(|e| InputError::io(&preds_file, e))?;
            bar.inc(1);
            bar.set_message(format!(
                "{:.0} tok/s",
                tokens_now as f64 / t.elapsed().as_secs_f64().max(1e-9)
            ));
            // One "batch" line per question, with the wall time since the previous one, so the
            // seconds of every attempt add up in eval.json.
            metrics.log(&serde_json::json!({"event": "batch", "questions": 1, "generated_tokens": tokens,
                "seconds": last.elapsed().as_secs_f64(), "accuracy_so_far": correct_so_far as f64 / finished_now.max(1) as f64}))?;
            last = Instant::now();
            Ok(())
        })?;
    }
    let native_batches: Vec<(&LoadedModel, &[usize])> = match native {
        Some(lm) => order
            .chunks(settings.batch_size.max(1))
            .map(|b| (lm, b))
            .collect(),
        None => Vec::new(),
    };
    for (lm, batch) in native_batches {
        if batch.iter().all(|&i| done.contains(&questions[i].id)) {
            continue;
        }
        let requests: Vec<Request> = batch
            .iter()
            .map(|&i| Request {
                prompt_ids: prompts[i].clone(),
                id: questions[i].id.clone(),
                first_sample: 0,
                samples: 1,
            })
            .collect();
        let t = Instant::now();
        let (gens, stats) = generate_group(lm, &requests, &decode, |k| {
            generated += k;
            bar.set_message(format!(
                "{:.0} tok/s",
                generated as f64 / started.elapsed().as_secs_f64().max(1e-9)
            ));
        })?;
        for (&i, mut g) in batch.iter().zip(gens) {
            let q = &questions[i];
            if done.contains(&q.id) {
                continue;
            }
            let g = g.remove(0);
            let (pred, correct) = grade(&g.text, &Answer::parse(&q.answer), &opts);
            correct_so_far += usize::from(correct);
            finished_now += 1;
            log.append(&Prediction {
                id: q.id.clone(),
                tokens: g.token_ids.len(),
                completion: g.text,
                pred,
                answer: q.answer.clone(),
                correct,
                finish: g.finish,
                level: q.level.clone(),
                subject: q.subject.clone(),
            })
            .map_err(|e| InputError::io(&preds_file, e))?;
            bar.inc(1);
        }
        log.sync().map_err(|e| InputError::io(&preds_file, e))?;
        metrics.log(&serde_json::json!({"event": "batch", "questions": batch.len(), "generated_tokens": stats.generated,
            "seconds": t.elapsed().as_secs_f64(), "tokens_per_s": stats.generated as f64 / t.elapsed().as_secs_f64().max(1e-9),
            "accuracy_so_far": correct_so_far as f64 / finished_now.max(1) as f64}))?;
    }
    bar.finish_and_clear();
    drop(log);

    // The report is computed from the file, so resumed and uninterrupted runs agree.
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
        settings: settings.clone(),
        seconds: decode_seconds(&metrics_file)?,
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
        report.n += 1;
        report.generated_tokens += p.tokens;
        report.correct += usize::from(p.correct);
        report.no_answer += usize::from(p.pred.is_none());
        report.truncated += usize::from(p.finish == Finish::Length);
        if let Some(level) = &q.level {
            report
                .by_level
                .entry(level.clone())
                .or_default()
                .add(p.correct);
        }
        if let Some(subject) = &q.subject {
            report
                .by_type
                .entry(subject.clone())
                .or_default()
                .add(p.correct);
        }
    }
    report.accuracy = report.correct as f64 / report.n.max(1) as f64;
    write_json_atomic(&report_path(dir), &report)?;
    Ok(report)
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
