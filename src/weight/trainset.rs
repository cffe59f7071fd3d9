//! `east weight`: choose which questions train, weight them, pick each question's chosen and
//! rejected completions, and write train.jsonl in TRL's conversational conventions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::mapping::{map_weights, MappingError, Metric};
use super::pairs::{DropReason, Question};
use super::questions::{admit, Admitted};
use super::WeightOptions;
use crate::io::{
    parse_line, read_jsonl, write_json_atomic, AtomicFile, InputError, JsonlBatches, RawLine,
};
use crate::model::{east_messages, Message};
use crate::progress;
use crate::schema::{ClusterRecord, Loss, SampleRecord, TrainRow};

/// Min, mean and max of a list.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        Some(Stats {
            min: values.iter().cloned().fold(f64::INFINITY, f64::min),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// The summary JSON written beside train.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct WeightSummary {
    pub clusters: PathBuf,
    pub samples: PathBuf,
    pub out: PathBuf,
    pub options: WeightOptions,
    pub questions: usize,
    pub kept: usize,
    pub dropped: BTreeMap<DropReason, usize>,
    pub examples: usize,
    /// Of the metric over kept questions.
    pub metric_stats: Option<Stats>,
    pub weight_stats: Option<Stats>,
}

impl WeightSummary {
    /// "24 all_wrong, 8 no_boxed_correct", or "none".
    pub fn dropped_text(&self) -> String {
        dropped_text(&self.dropped)
    }
}

fn dropped_text(dropped: &BTreeMap<DropReason, usize>) -> String {
    if dropped.is_empty() {
        return "none".into();
    }
    dropped
        .iter()
        .map(|(reason, n)| format!("{n} {}", reason.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `east weight` wrote nothing (besides bad input, an [`InputError`]).
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{}: no training examples: none of its {questions} questions can train (dropped: {dropped}); {hint}", .clusters.display())]
    NothingKept {
        clusters: PathBuf,
        questions: usize,
        dropped: String,
        hint: &'static str,
    },
    #[error("{}: cannot weight {kept} questions: {source}", .clusters.display())]
    Mapping {
        clusters: PathBuf,
        kept: usize,
        source: MappingError,
    },
}

/// One kept question: what its rows need.
struct Kept {
    id: String,
    question: String,
    /// The chosen completion, then the rejected one (DPO/KTO).
    texts: Vec<String>,
    value: f64,
    entropy: f64,
    accuracy: f64,
    rejection: f64,
}

/// The questions a samples file yields: kept ones in file order, and drop counts.
#[derive(Default)]
struct Admissions {
    kept: Vec<Kept>,
    dropped: BTreeMap<DropReason, usize>,
}

/// Reads clusters and samples, writes train.jsonl and `<out stem>.summary.json` atomically.
/// Writing no example is an error ([`WeightError::NothingKept`]), as a training set without
/// examples cannot train.
pub fn weight_files(
    clusters: &Path,
    samples: &Path,
    out: &Path,
    options: &WeightOptions,
) -> anyhow::Result<WeightSummary> {
    let records = read_clusters(clusters)?;
    let questions = records.order.len();
    let admissions = admit_samples(clusters, samples, records, options)?;
    if admissions.kept.is_empty() {
        return Err(WeightError::NothingKept {
            clusters: clusters.to_path_buf(),
            questions,
            dropped: dropped_text(&admissions.dropped),
            hint: hint(&admissions.dropped),
        }
        .into());
    }
    let values: Vec<f64> = admissions.kept.iter().map(|k| k.value).collect();
    let weights = weights_of(&values, options).map_err(|source| WeightError::Mapping {
        clusters: clusters.to_path_buf(),
        kept: values.len(),
        source,
    })?;

    let mut writer = AtomicFile::create(out)?;
    let mut examples = 0;
    for (kept, weight) in admissions.kept.iter().zip(&weights) {
        for row in rows(kept, *weight, options.loss) {
            writer.write_json_line(&row)?;
            examples += 1;
        }
    }
    let summary = WeightSummary {
        clusters: clusters.to_path_buf(),
        samples: samples.to_path_buf(),
        out: out.to_path_buf(),
        options: options.clone(),
        questions,
        kept: admissions.kept.len(),
        dropped: admissions.dropped,
        examples,
        metric_stats: Stats::of(&values),
        weight_stats: Stats::of(&weights),
    };
    // The summary goes first: train.jsonl appearing under its final name means both are complete.
    write_json_atomic(&summary_path(out), &summary)?;
    writer.commit()?;
    Ok(summary)
}

/// What to change when nothing trains, from the reasons questions were dropped.
fn hint(dropped: &BTreeMap<DropReason, usize>) -> &'static str {
    let has = |r| dropped.contains_key(&r);
    if has(DropReason::NoBoxedCorrect) || has(DropReason::NoBoxedWrong) {
        "for a model that does not write \\boxed{} set weight.require_boxed = false; \
         weight.questions = \"answered\" also keeps questions without a boxed wrong answer (SFT)"
    } else {
        "sample more completions or questions (sample.n, data.limit) or start from a stronger model"
    }
}

/// A clusters file: every question's record by id (small: no completion text), and the ids in
/// file order.
struct Clusters {
    by_id: HashMap<String, ClusterRecord>,
    order: Vec<String>,
}

/// Reads and checks a clusters file.
fn read_clusters(clusters: &Path) -> Result<Clusters, InputError> {
    let mut c = Clusters {
        by_id: HashMap::new(),
        order: Vec::new(),
    };
    for (line, r) in read_jsonl::<ClusterRecord>(clusters)? {
        r.validate(clusters, line)?;
        let id = r.id.clone();
        if c.by_id.insert(id.clone(), r).is_some() {
            return Err(InputError::field(
                clusters,
                line,
                "id",
                format!("duplicate id `{id}`"),
            ));
        }
        c.order.push(id);
    }
    Ok(c)
}

/// The mapping's weights, or 1 for every question with the uniform metric.
fn weights_of(values: &[f64], options: &WeightOptions) -> Result<Vec<f64>, MappingError> {
    let w = &options.weight;
    if w.metric == Metric::Uniform {
        return Ok(vec![1.0; values.len()]);
    }
    map_weights(values, w.mapping, w.a, w.range)
}

/// One pass over the (large) samples file: each line is checked against its clusters record
/// and admitted or dropped; only the kept questions' picked texts stay in memory.
fn admit_samples(
    clusters: &Path,
    samples: &Path,
    records: Clusters,
    options: &WeightOptions,
) -> anyhow::Result<Admissions> {
    let mut out = Admissions::default();
    let mut sample_ids = HashSet::new();
    let total_bytes = std::fs::metadata(samples)
        .map_err(|e| InputError::io(samples, e))?
        .len();
    let bar = progress::bytes_bar(total_bytes, "weight");
    let mut batches = JsonlBatches::open(samples, 256)?;
    while let Some(batch) = batches.next_batch()? {
        let admitted: Vec<_> = batch
            .par_iter()
            .map(|line| admit_line(clusters, samples, line, &records.by_id, options))
            .collect();
        for (line, result) in batch.iter().zip(admitted) {
            bar.inc(line.text.len() as u64 + 1);
            let (id, admission) = result?;
            if !sample_ids.insert(id.clone()) {
                return Err(InputError::field(
                    samples,
                    line.number,
                    "id",
                    format!("duplicate id `{id}`"),
                )
                .into());
            }
            match admission {
                Some(Ok(kept)) => out.kept.push(kept),
                Some(Err(reason)) => *out.dropped.entry(reason).or_default() += 1,
                None => {}
            }
        }
    }
    bar.finish_and_clear();
    let missing: Vec<&String> = records
        .order
        .iter()
        .filter(|id| !sample_ids.contains(*id))
        .collect();
    if !missing.is_empty() {
        let named: Vec<String> = missing.iter().take(5).map(|id| format!("`{id}`")).collect();
        return Err(InputError::file(
            samples,
            format!(
                "{} question(s) of {} are missing: {}{}",
                missing.len(),
                clusters.display(),
                named.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            ),
        )
        .into());
    }
    Ok(out)
}

/// One samples line: its id and, when the clusters file has the question, whether it trains.
fn admit_line(
    clusters: &Path,
    samples: &Path,
    line: &RawLine,
    records: &HashMap<String, ClusterRecord>,
    options: &WeightOptions,
) -> Result<(String, Option<Result<Kept, DropReason>>), InputError> {
    let sample: SampleRecord = parse_line(samples, line)?;
    sample.validate(samples, line.number)?;
    let Some(record) = records.get(&sample.id) else {
        return Ok((sample.id, None));
    };
    if sample.completions.len() != record.n() {
        return Err(InputError::field(
            samples,
            line.number,
            "completions",
            format!(
                "question `{}` has {} completions but {} in {}",
                sample.id,
                sample.completions.len(),
                record.n(),
                clusters.display()
            ),
        ));
    }
    if !graded_from(record, &sample) {
        return Err(InputError::field(
            samples,
            line.number,
            "completions",
            format!(
                "question `{}` is not the one {c} was graded from: {c} and {s} come from different sampling runs (rerun east cluster on {s})",
                sample.id,
                c = clusters.display(),
                s = samples.display(),
            ),
        ));
    }
    let question = Question {
        record,
        completions: &sample.completions,
        require_boxed: options.weight.require_boxed,
    };
    let admission = admit(&question, options).map(|a| keep(record, &sample, a));
    Ok((sample.id, Some(admission)))
}

/// What a kept question's rows need, with its picked completions' text.
fn keep(record: &ClusterRecord, sample: &SampleRecord, a: Admitted) -> Kept {
    Kept {
        id: record.id.clone(),
        question: sample.question.clone(),
        texts: std::iter::once(a.pick.chosen)
            .chain(a.pick.rejected)
            .map(|i| sample.completions[i].clone())
            .collect(),
        value: a.value,
        entropy: record.entropy,
        accuracy: record.accuracy,
        rejection: a.rejection,
    }
}

/// Whether `sample` is the samples line `record` was graded from: its fingerprint where the
/// clusters file has one, else (files of older versions) every completion's extracted answer.
fn graded_from(record: &ClusterRecord, sample: &SampleRecord) -> bool {
    if sample.completions.len() != record.n() {
        return false;
    }
    match &record.samples_sha256 {
        Some(fp) => *fp == sample.fingerprint(),
        None => sample.completions.iter().zip(&record.preds).all(|(c, p)| {
            crate::grade::extract_answer(c).map(|raw| crate::grade::Answer::parse(&raw).normalized)
                == *p
        }),
    }
}

/// `train.jsonl` → `train.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "train".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

fn rows(kept: &Kept, weight: f64, loss: Loss) -> Vec<TrainRow> {
    let assistant = |t: &String| Some(vec![Message::new("assistant", t)]);
    let base = TrainRow {
        id: kept.id.clone(),
        prompt: east_messages(&kept.question),
        completion: None,
        chosen: None,
        rejected: None,
        label: None,
        weight,
        entropy: kept.entropy,
        accuracy: kept.accuracy,
        dominant_wrong: kept.rejection,
    };
    let texts = &kept.texts;
    match loss {
        Loss::Sft => vec![TrainRow {
            completion: assistant(&texts[0]),
            ..base
        }],
        Loss::Dpo => vec![TrainRow {
            chosen: assistant(&texts[0]),
            rejected: assistant(&texts[1]),
            ..base
        }],
        Loss::Kto => vec![
            TrainRow {
                completion: assistant(&texts[0]),
                label: Some(true),
                ..base.clone()
            },
            TrainRow {
                completion: assistant(&texts[1]),
                label: Some(false),
                ..base
            },
        ],
    }
}
