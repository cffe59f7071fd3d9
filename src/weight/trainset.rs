//! `east weight`: choose which questions train, weight them, pick each question's chosen and
//! rejected completions, and write train.jsonl in TRL's conversational conventions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::mapping::{map_weights, Metric};
use super::pairs::{pick_pair, DropReason, Pick};
use super::WeightOptions;
use crate::io::{parse_line, read_jsonl, write_json_atomic, AtomicFile, InputError, JsonlBatches};
use crate::model::{east_messages, Message};
use crate::progress;
use crate::schema::{ClusterRecord, Loss, SampleRecord, TrainRow};

/// Decides, for one question, whether it trains and with which metric value. All-wrong
/// questions never train; all-correct ones only with `keep_all_correct` (and then only for a
/// metric that can weigh them and a loss that needs no wrong completion), so that by default
/// every metric trains on exactly the questions EAST trains on.
fn admit(
    record: &ClusterRecord,
    metric: Metric,
    loss: Loss,
    keep_all_correct: bool,
) -> Result<f64, DropReason> {
    if !record.correct.iter().any(|&c| c) {
        return Err(DropReason::AllWrong);
    }
    let all_correct = record.correct.iter().all(|&c| c);
    if all_correct && !keep_all_correct {
        return Err(DropReason::AllCorrect);
    }
    let value = metric.value(record);
    if metric.drops_zero() && value == 0.0 {
        return Err(DropReason::ZeroMetric);
    }
    if loss.needs_rejected() && all_correct {
        return Err(DropReason::NoRejected);
    }
    Ok(value)
}

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

/// One kept question: its weight and picks, waiting for its completions' text.
struct Kept {
    weight: f64,
    record: ClusterRecord,
}

impl WeightSummary {
    /// "24 all_wrong, 8 no_boxed_correct", or "none".
    pub fn dropped_text(&self) -> String {
        if self.dropped.is_empty() {
            return "none".into();
        }
        self.dropped
            .iter()
            .map(|(reason, n)| format!("{n} {}", reason.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads clusters and samples, writes train.jsonl and `<out stem>.summary.json` atomically.
pub fn weight_files(
    clusters: &Path,
    samples: &Path,
    out: &Path,
    options: &WeightOptions,
) -> anyhow::Result<WeightSummary> {
    // Pass 1: every question's cluster summary (small: no completion text) decides who trains,
    // since the normalisation of the weights needs all kept questions at once.
    let records: Vec<(usize, ClusterRecord)> = read_jsonl(clusters)?;
    let mut seen = HashSet::new();
    for (line, r) in &records {
        r.validate(clusters, *line)?;
        if !seen.insert(r.id.clone()) {
            return Err(InputError::field(
                clusters,
                *line,
                "id",
                format!("duplicate id `{}`", r.id),
            )
            .into());
        }
    }
    let questions = records.len();
    let mut dropped: BTreeMap<DropReason, usize> = BTreeMap::new();
    let mut candidates: Vec<(f64, ClusterRecord)> = Vec::new();
    for (_, r) in records {
        match admit(
            &r,
            options.weight.metric,
            options.loss,
            options.weight.keep_all_correct,
        ) {
            Ok(v) => candidates.push((v, r)),
            Err(reason) => *dropped.entry(reason).or_default() += 1,
        }
    }

    // Pass 2 over the (large) samples: pick completions, which needs their text. Questions whose
    // picks fail are dropped before weights are computed, so the kept weights average exactly 1.
    let mut by_id: HashMap<String, (f64, ClusterRecord)> = candidates
        .into_iter()
        .map(|(v, r)| (r.id.clone(), (v, r)))
        .collect();
    let mut picks: HashMap<String, (f64, Pick)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut prompts: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut sample_ids = HashSet::new();
    let total_bytes = std::fs::metadata(samples)
        .map_err(|e| InputError::io(samples, e))?
        .len();
    let bar = progress::bytes_bar(total_bytes, "weight");
    let mut batches = JsonlBatches::open(samples, 256)?;
    while let Some(batch) = batches.next_batch()? {
        let parsed: Vec<Result<(SampleRecord, bool), InputError>> = batch
            .par_iter()
            .map(|line| {
                let r: SampleRecord = parse_line(samples, line)?;
                r.validate(samples, line.number)?;
                let same = by_id
                    .get(&r.id)
                    .is_none_or(|(_, record)| graded_from(record, &r));
                Ok((r, same))
            })
            .collect();
        for (line, result) in batch.iter().zip(parsed) {
            bar.inc(line.text.len() as u64 + 1);
            let (sample, same) = result?;
            if !sample_ids.insert(sample.id.clone()) {
                return Err(InputError::field(
                    samples,
                    line.number,
                    "id",
                    format!("duplicate id `{}`", sample.id),
                )
                .into());
            }
            let Some((value, record)) = by_id.get(&sample.id) else {
                continue;
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
                )
                .into());
            }
            if !same {
                return Err(InputError::field(
                    samples,
                    line.number,
                    "completions",
                    format!(
                        "question `{}` is not the one {} was graded from: {} and {} come from different sampling runs (rerun east cluster on {})",
                        sample.id,
                        clusters.display(),
                        clusters.display(),
                        samples.display(),
                        samples.display()
                    ),
                )
                .into());
            }
            match pick_pair(
                record,
                &sample.completions,
                options.loss,
                options.weight.pairs,
                options.weight.seed,
                options.weight.require_boxed,
            ) {
                Ok(pick) => {
                    let texts = std::iter::once(pick.chosen)
                        .chain(pick.rejected)
                        .map(|i| sample.completions[i].clone())
                        .collect();
                    prompts.insert(sample.id.clone(), (sample.question, texts));
                    picks.insert(sample.id.clone(), (*value, pick));
                    order.push(sample.id);
                }
                Err(reason) => *dropped.entry(reason).or_default() += 1,
            }
        }
    }
    bar.finish_and_clear();
    if let Some(missing) = by_id.keys().find(|id| !sample_ids.contains(*id)) {
        return Err(InputError::file(
            samples,
            format!("question `{missing}` of {} is missing", clusters.display()),
        )
        .into());
    }

    let values: Vec<f64> = order.iter().map(|id| picks[id].0).collect();
    let weights = if order.is_empty() {
        Vec::new()
    } else if options.weight.metric == Metric::Uniform {
        vec![1.0; order.len()]
    } else {
        map_weights(
            &values,
            options.weight.mapping,
            options.weight.a,
            options.weight.range,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot weight {} questions: {e}",
                clusters.display(),
                values.len()
            )
        })?
    };

    let mut writer = AtomicFile::create(out)?;
    let mut examples = 0;
    for (id, weight) in order.iter().zip(&weights) {
        let (_, record) = by_id
            .remove(id)
            .expect("picked questions come from candidates");
        let kept = Kept {
            weight: *weight,
            record,
        };
        let (question, texts) = &prompts[id];
        for row in rows(&kept, question, texts, options.loss) {
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
        kept: order.len(),
        dropped,
        examples,
        metric_stats: Stats::of(&values),
        weight_stats: Stats::of(&weights),
    };
    // The summary goes first: train.jsonl appearing under its final name means both are complete.
    write_json_atomic(&summary_path(out), &summary)?;
    writer.commit()?;
    Ok(summary)
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

fn rows(kept: &Kept, question: &str, texts: &[String], loss: Loss) -> Vec<TrainRow> {
    let assistant = |t: &String| Some(vec![Message::new("assistant", t)]);
    let base = TrainRow {
        id: kept.record.id.clone(),
        prompt: east_messages(question),
        completion: None,
        chosen: None,
        rejected: None,
        label: None,
        weight: kept.weight,
        entropy: kept.record.entropy,
        accuracy: kept.record.accuracy,
        dominant_wrong: kept.record.dominant_wrong,
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight::pairs::tests::record;

    #[test]
    fn admission_rules() {
        let mut r = record(&[false, false], &[0, 0], &[(2, false)]);
        for keep in [false, true] {
            assert_eq!(
                admit(&r, Metric::Uniform, Loss::Sft, keep),
                Err(DropReason::AllWrong)
            );
        }
        r = record(&[true, true], &[0, 0], &[(2, true)]);
        r.entropy = 0.0;
        r.accuracy = 1.0;
        r.dominant_wrong = 0.0;
        // All correct: dropped for every metric and loss by default.
        for metric in [
            Metric::Entropy,
            Metric::Rejection,
            Metric::Accuracy,
            Metric::Uniform,
        ] {
            for loss in [Loss::Sft, Loss::Dpo, Loss::Kto] {
                assert_eq!(admit(&r, metric, loss, false), Err(DropReason::AllCorrect));
            }
        }
        // keep_all_correct: only where the metric can weigh them and no wrong one is needed.
        assert_eq!(
            admit(&r, Metric::Entropy, Loss::Sft, true),
            Err(DropReason::ZeroMetric)
        );
        assert_eq!(
            admit(&r, Metric::Rejection, Loss::Sft, true),
            Err(DropReason::ZeroMetric)
        );
        assert_eq!(admit(&r, Metric::Accuracy, Loss::Sft, true), Ok(0.0));
        assert_eq!(admit(&r, Metric::Uniform, Loss::Sft, true), Ok(1.0));
        assert_eq!(
            admit(&r, Metric::Uniform, Loss::Dpo, true),
            Err(DropReason::NoRejected)
        );
    }
}
