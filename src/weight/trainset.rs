//! `east weight`: choose which questions train, weight them, pick each question's chosen and
//! rejected completions, and write train.jsonl in TRL's conversational conventions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mapping::{map_weights, Mapping, Metric};
use crate::data::{east_messages, Message};
use crate::io::{parse_line, read_jsonl, write_json_atomic, AtomicFile, InputError, JsonlBatches};
use crate::progress;
use crate::schema::{ClusterRecord, SampleRecord};

/// The training objective, which decides the shape of train.jsonl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Sft,
    Dpo,
    Kto,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::Sft => "sft",
            Loss::Dpo => "dpo",
            Loss::Kto => "kto",
        }
    }

    /// DPO and KTO learn from a wrong completion too.
    pub fn needs_rejected(self) -> bool {
        matches!(self, Loss::Dpo | Loss::Kto)
    }
}

/// How a question's chosen/rejected completions are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PairStrategy {
    /// The reference code: a random correct completion containing `\boxed`, and a random
    /// completion of the most frequent wrong answer (ties: the first seen).
    Authors,
    /// A random correct completion containing `\boxed` and a random wrong completion.
    Random,
}

/// Settings of `east weight`.
#[derive(Debug, Clone, Serialize)]
pub struct WeightOptions {
    pub loss: Loss,
    pub metric: Metric,
    pub mapping: Mapping,
    pub a: f64,
    pub range: f64,
    pub pairs: PairStrategy,
    pub seed: u64,
    /// Chosen completions must contain `\boxed` (the authors' filter).
    pub require_boxed: bool,
}

impl WeightOptions {
    /// The `[weight]` settings of `config`, with the rows `train.loss` needs.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let w = &config.weight;
        WeightOptions {
            loss: config.train.loss,
            metric: w.metric,
            mapping: w.mapping,
            a: w.a,
            range: w.range,
            pairs: w.pairs,
            seed: w.seed,
            require_boxed: w.require_boxed,
        }
    }
}

/// Why a question produced no training example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No correct completion.
    AllWrong,
    /// The metric is 0 for a metric where that means "nothing to learn" (entropy: all agree).
    ZeroMetric,
    /// No correct completion contains `\boxed` (the chosen completion must).
    NoBoxedCorrect,
    /// DPO/KTO need a wrong completion and there is none.
    NoRejected,
}

impl DropReason {
    /// The name used in `train.summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::AllWrong => "all_wrong",
            DropReason::ZeroMetric => "zero_metric",
            DropReason::NoBoxedCorrect => "no_boxed_correct",
            DropReason::NoRejected => "no_rejected",
        }
    }
}

/// The indices of a question's chosen and rejected completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub chosen: usize,
    pub rejected: Option<usize>,
}

/// A per-question generator seeded from (seed, question id): picks do not depend on the order or
/// sharding of the files, so any run with the same seed picks the same completions.
pub fn question_rng(seed: u64, id: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Picks the chosen and (for DPO/KTO) rejected completion of a question, or says why it cannot.
pub fn pick_pair(
    record: &ClusterRecord,
    completions: &[String],
    loss: Loss,
    strategy: PairStrategy,
    seed: u64,
    require_boxed: bool,
) -> Result<Pick, DropReason> {
    let boxed = |i: usize| completions[i].contains("\\boxed") || completions[i].contains("\\fbox");
    let correct_boxed: Vec<usize> = (0..record.n()).filter(|&i| record.correct[i] && (!require_boxed || boxed(i))).collect();
    if correct_boxed.is_empty() {
        return Err(DropReason::NoBoxedCorrect);
    }
    let mut rng = question_rng(seed, &record.id);
    let chosen = *correct_boxed.choose(&mut rng).expect("non-empty");
    if !loss.needs_rejected() {
        return Ok(Pick { chosen, rejected: None });
    }
    let wrong: Vec<usize> = match strategy {
        PairStrategy::Authors => {
            // Most frequent wrong cluster; `max_by_key` keeps the last maximum, so scan in
            // reverse to keep the first seen on ties.
            let dominant = record
                .clusters
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| !c.correct)
                .max_by_key(|(_, c)| c.count)
                .map(|(i, _)| i);
            match dominant {
                Some(c) => (0..record.n()).filter(|&i| record.cluster_of[i] == c).collect(),
                None => Vec::new(),
            }
        }
        PairStrategy::Random => (0..record.n()).filter(|&i| !record.correct[i]).collect(),
    };
    let rejected = *wrong.choose(&mut rng).ok_or(DropReason::NoRejected)?;
    Ok(Pick { chosen, rejected: Some(rejected) })
}

/// Decides, for one question, whether it trains and with which metric value.
fn admit(record: &ClusterRecord, metric: Metric, loss: Loss) -> Result<f64, DropReason> {
    if !record.correct.iter().any(|&c| c) {
        return Err(DropReason::AllWrong);
    }
    let value = metric.value(record);
    if metric.drops_zero() && value == 0.0 {
        return Err(DropReason::ZeroMetric);
    }
    if loss.needs_rejected() && record.correct.iter().all(|&c| c) {
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
        self.dropped.iter().map(|(reason, n)| format!("{n} {}", reason.name())).collect::<Vec<_>>().join(", ")
    }
}

/// Reads clusters and samples, writes train.jsonl and `<out stem>.summary.json` atomically.
pub fn weight_files(clusters: &Path, samples: &Path, out: &Path, options: &WeightOptions) -> anyhow::Result<WeightSummary> {
    // Pass 1: every question's cluster summary (small: no completion text) decides who trains,
    // since the normalisation of the weights needs all kept questions at once.
    let records: Vec<(usize, ClusterRecord)> = read_jsonl(clusters)?;
    let mut seen = HashSet::new();
    for (line, r) in &records {
        r.validate(clusters, *line)?;
        if !seen.insert(r.id.clone()) {
            return Err(InputError::field(clusters, *line, "id", format!("duplicate id `{}`", r.id)).into());
        }
    }
    let questions = records.len();
    let mut dropped: BTreeMap<DropReason, usize> = BTreeMap::new();
    let mut candidates: Vec<(f64, ClusterRecord)> = Vec::new();
    for (_, r) in records {
        match admit(&r, options.metric, options.loss) {
            Ok(v) => candidates.push((v, r)),
            Err(reason) => *dropped.entry(reason).or_default() += 1,
        }
    }

    // Pass 2 over the (large) samples: pick completions, which needs their text. Questions whose
    // picks fail are dropped before weights are computed, so the kept weights average exactly 1.
    let mut by_id: HashMap<String, (f64, ClusterRecord)> =
        candidates.into_iter().map(|(v, r)| (r.id.clone(), (v, r))).collect();
    let mut picks: HashMap<String, (f64, Pick)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut prompts: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut sample_ids = HashSet::new();
    let total_bytes = std::fs::metadata(samples).map_err(|e| InputError::io(samples, e))?.len();
    let bar = progress::bytes_bar(total_bytes, "weight");
    let mut batches = JsonlBatches::open(samples, 256)?;
    while let Some(batch) = batches.next_batch()? {
        let parsed: Vec<Result<SampleRecord, InputError>> = batch
            .par_iter()
            .map(|line| {
                let r: SampleRecord = parse_line(samples, line)?;
                r.validate(samples, line.number)?;
                Ok(r)
            })
            .collect();
        for (line, result) in batch.iter().zip(parsed) {
            bar.inc(line.text.len() as u64 + 1);
            let sample = result?;
            if !sample_ids.insert(sample.id.clone()) {
                return Err(InputError::field(samples, line.number, "id", format!("duplicate id `{}`", sample.id)).into());
            }
            let Some((value, record)) = by_id.get(&sample.id) else { continue };
            if sample.completions.len() != record.n() {
                return Err(InputError::field(
                    samples,
                    line.number,
                    "completions",
                    format!("question `{}` has {} completions but {} in {}", sample.id, sample.completions.len(), record.n(), clusters.display()),
                )
                .into());
            }
            match pick_pair(record, &sample.completions, options.loss, options.pairs, options.seed, options.require_boxed) {
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
        return Err(InputError::file(samples, format!("question `{missing}` of {} is missing", clusters.display())).into());
    }

    let values: Vec<f64> = order.iter().map(|id| picks[id].0).collect();
    let weights = if order.is_empty() {
        Vec::new()
    } else if options.metric == Metric::Uniform {
        vec![1.0; order.len()]
    } else {
        map_weights(&values, options.mapping, options.a, options.range)
            .map_err(|e| anyhow::anyhow!("{}: cannot weight {} questions: {e}", clusters.display(), values.len()))?
    };

    let mut writer = AtomicFile::create(out).map_err(|e| InputError::io(out, e))?;
    let mut examples = 0;
    for (id, weight) in order.iter().zip(&weights) {
        let (_, record) = by_id.remove(id).expect("picked questions come from candidates");
        let kept = Kept { weight: *weight, record };
        let (question, texts) = &prompts[id];
        for row in rows(&kept, question, texts, options.loss) {
            writer.write_json_line(&row).map_err(|e| InputError::io(out, e))?;
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
    write_json_atomic(&summary_path(out), &summary).map_err(|e| InputError::io(out, e))?;
    writer.commit().map_err(|e| InputError::io(out, e))?;
    Ok(summary)
}

/// `train.jsonl` → `train.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "train".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

/// A train.jsonl row. TRL's conversational form: `prompt` holds the system and user messages,
/// completions a single assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRow {
    pub id: String,
    pub prompt: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<bool>,
    pub weight: f64,
    /// The question's uncertainty figures, for inspection.
    pub entropy: f64,
    pub accuracy: f64,
    pub dominant_wrong: f64,
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
        Loss::Sft => vec![TrainRow { completion: assistant(&texts[0]), ..base }],
        Loss::Dpo => vec![TrainRow { chosen: assistant(&texts[0]), rejected: assistant(&texts[1]), ..base }],
        Loss::Kto => vec![
            TrainRow { completion: assistant(&texts[0]), label: Some(true), ..base.clone() },
            TrainRow { completion: assistant(&texts[1]), label: Some(false), ..base },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Cluster;

    fn record(correct: &[bool], cluster_of: &[usize], clusters: &[(usize, bool)]) -> ClusterRecord {
        ClusterRecord {
            id: "q1".into(),
            answer: "1".into(),
            preds: vec![Some("x".into()); correct.len()],
            correct: correct.to_vec(),
            clusters: clusters.iter().map(|&(count, correct)| Cluster { answer: None, count, correct }).collect(),
            cluster_of: cluster_of.to_vec(),
            entropy: 1.0,
            accuracy: 0.5,
            dominant_wrong: 0.25,
        }
    }

    #[test]
    fn authors_pairs_reject_from_the_most_frequent_wrong_answer() {
        // completions 0,1 correct; 2 wrong (cluster 1, size 1); 3,4 wrong (cluster 2, size 2)
        let r = record(&[true, true, false, false, false], &[0, 0, 1, 2, 2], &[(2, true), (1, false), (2, false)]);
        let texts: Vec<String> = ["\\boxed{1}", "1", "\\boxed{2}", "\\boxed{3}", "\\boxed{3}"].map(String::from).to_vec();
        for seed in 0..20 {
            let p = pick_pair(&r, &texts, Loss::Dpo, PairStrategy::Authors, seed, true).unwrap();
            assert_eq!(p.chosen, 0, "only completion 0 is correct and boxed");
            assert!(matches!(p.rejected, Some(3 | 4)), "{p:?}");
        }
        let random: HashSet<usize> =
            (0..64).map(|s| pick_pair(&r, &texts, Loss::Dpo, PairStrategy::Random, s, true).unwrap().rejected.unwrap()).collect();
        assert_eq!(random, HashSet::from([2, 3, 4]));
        assert_eq!(pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 1, true).unwrap().rejected, None);
    }

    #[test]
    fn ties_between_wrong_clusters_go_to_the_first_seen() {
        let r = record(&[true, false, false], &[0, 1, 2], &[(1, true), (1, false), (1, false)]);
        let texts: Vec<String> = ["\\boxed{1}", "a", "b"].map(String::from).to_vec();
        for seed in 0..10 {
            assert_eq!(pick_pair(&r, &texts, Loss::Kto, PairStrategy::Authors, seed, true).unwrap().rejected, Some(1));
        }
    }

    #[test]
    fn picks_are_seeded_per_question() {
        let r = record(&[true; 8], &[0; 8], &[(8, true)]);
        let texts: Vec<String> = vec!["\\boxed{1}".to_string(); 8];
        let a: Vec<usize> = (0..10).map(|s| pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, s, true).unwrap().chosen).collect();
        let b: Vec<usize> = (0..10).map(|s| pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, s, true).unwrap().chosen).collect();
        assert_eq!(a, b);
        assert!(a.iter().collect::<HashSet<_>>().len() > 1, "different seeds pick differently: {a:?}");
    }

    #[test]
    fn unboxed_correct_answers_cannot_be_chosen() {
        let r = record(&[true, false], &[0, 1], &[(1, true), (1, false)]);
        let texts: Vec<String> = ["The answer is 1", "\\boxed{2}"].map(String::from).to_vec();
        assert_eq!(pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 0, true), Err(DropReason::NoBoxedCorrect));
        // Without the filter the unboxed correct completion is the only choice.
        assert_eq!(pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 0, false).unwrap().chosen, 0);
    }

    #[test]
    fn admission_rules() {
        let mut r = record(&[false, false], &[0, 0], &[(2, false)]);
        assert_eq!(admit(&r, Metric::Uniform, Loss::Sft), Err(DropReason::AllWrong));
        r = record(&[true, true], &[0, 0], &[(2, true)]);
        r.entropy = 0.0;
        r.accuracy = 1.0;
        r.dominant_wrong = 0.0;
        assert_eq!(admit(&r, Metric::Entropy, Loss::Sft), Err(DropReason::ZeroMetric));
        assert_eq!(admit(&r, Metric::Rejection, Loss::Sft), Err(DropReason::ZeroMetric));
        assert_eq!(admit(&r, Metric::Accuracy, Loss::Sft), Ok(0.0));
        assert_eq!(admit(&r, Metric::Uniform, Loss::Sft), Ok(1.0));
        assert_eq!(admit(&r, Metric::Uniform, Loss::Dpo), Err(DropReason::NoRejected));
    }
}
