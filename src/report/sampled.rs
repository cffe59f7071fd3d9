//! pass@k and maj@k of a sampled round, from its `clusters.jsonl`: every question's samples,
//! graded, and grouped into answer clusters in the samples file's order.

use serde::Serialize;
use std::fmt::Write;

use super::evals::Accuracy;
use crate::schema::ClusterRecord;
use crate::stats::{
    bootstrap_mean, ks, majority_correct, pass_at_k, Interval, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
};

/// pass@k over a round's questions: the mean of each question's unbiased estimate, with a
/// percentile bootstrap interval over questions.
#[derive(Debug, Clone, Serialize)]
pub struct PassAtK {
    pub k: usize,
    pub value: f64,
    pub ci95: Interval,
}

/// maj@k over a round's questions: the share whose majority answer is right, with Wilson's
/// interval.
#[derive(Debug, Clone, Serialize)]
pub struct MajAtK {
    pub k: usize,
    #[serde(flatten)]
    pub accuracy: Accuracy,
}

/// A sampled round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SampledRound {
    pub round: usize,
    /// The sampled dataset and split (`data.dataset`, `data.split`).
    pub dataset: String,
    pub questions: usize,
    /// Fewest and most samples of a question (equal unless the samples file was made so).
    pub samples_min: usize,
    pub samples_max: usize,
    pub pass_at_k: Vec<PassAtK>,
    pub maj_at_k: Vec<MajAtK>,
}

/// One question as pass@k and maj@k see it.
struct Question {
    n: usize,
    c: usize,
    /// Each sample's answer cluster; `None`: the sample gave no answer.
    votes: Vec<Option<usize>>,
    cluster_correct: Vec<bool>,
}

impl Question {
    fn of(r: &ClusterRecord) -> Question {
        let votes = r
            .cluster_of
            .iter()
            .map(|&j| r.clusters[j].answer.as_ref().map(|_| j))
            .collect();
        Question {
            n: r.n(),
            c: r.correct.iter().filter(|&&c| c).count(),
            votes,
            cluster_correct: r.clusters.iter().map(|c| c.correct).collect(),
        }
    }
}

/// Round `round`'s figures from its clustered questions, for k in 1, 4, 16, … up to the fewest
/// samples any question has; `None` without questions.
pub fn sampled_round(
    records: &[ClusterRecord],
    round: usize,
    dataset: &str,
) -> Option<SampledRound> {
    let questions: Vec<Question> = records.iter().map(Question::of).collect();
    let (Some(min), Some(max)) = (
        questions.iter().map(|q| q.n).min(),
        questions.iter().map(|q| q.n).max(),
    ) else {
        return None;
    };
    let ks = ks(min);
    let pass_at_k = ks
        .iter()
        .map(|&k| {
            let values: Vec<f64> = questions.iter().map(|q| pass_at_k(q.n, q.c, k)).collect();
            PassAtK {
                k,
                value: values.iter().sum::<f64>() / values.len() as f64,
                ci95: bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
            }
        })
        .collect();
    let maj_at_k = ks
        .iter()
        .map(|&k| {
            let right = questions
                .iter()
                .filter(|q| majority_correct(&q.votes, &q.cluster_correct, k))
                .count();
            MajAtK {
                k,
                accuracy: Accuracy::of(right, questions.len()),
            }
        })
        .collect();
    Some(SampledRound {
        round,
        dataset: dataset.to_string(),
        questions: questions.len(),
        samples_min: min,
        samples_max: max,
        pass_at_k,
        maj_at_k,
    })
}

/// One run's sampled rounds as a Markdown table: a row per round and k.
pub fn render(run: &str, rounds: &[SampledRound]) -> String {
    let mut md = format!("### {run}\n\n");
    md.push_str("| round | dataset | questions | k | pass@k % [95%] | maj@k % [95%] (right/questions) |\n|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    for r in rounds {
        for (pass, maj) in r.pass_at_k.iter().zip(&r.maj_at_k) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1} [{:.1}, {:.1}] | {} |",
                r.round,
                r.dataset,
                r.questions,
                pass.k,
                100.0 * pass.value,
                100.0 * pass.ci95.low,
                100.0 * pass.ci95.high,
                maj.accuracy.cell()
            );
        }
        if r.samples_min != r.samples_max {
            notes.push(format!(
                "- Round {}: questions have {} to {} samples; k goes up to {}, the fewest.",
                r.round, r.samples_min, r.samples_max, r.samples_min
            ));
        }
    }
    if !notes.is_empty() {
        md.push('\n');
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    md.push('\n');
    md
}
