//! Which completions of a question become training text: a random correct completion (the
//! chosen one) and, for DPO and KTO, a wrong one (the rejected one), drawn from a generator
//! seeded per question so that any run with the same seed picks the same completions.

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::schema::{ClusterRecord, Loss};

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

/// Why a question produced no training example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No correct completion.
    AllWrong,
    /// Every completion is correct (dropped unless `weight.keep_all_correct`).
    AllCorrect,
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
            DropReason::AllCorrect => "all_correct",
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
    let correct_boxed: Vec<usize> = (0..record.n())
        .filter(|&i| record.correct[i] && (!require_boxed || boxed(i)))
        .collect();
    if correct_boxed.is_empty() {
        return Err(DropReason::NoBoxedCorrect);
    }
    let mut rng = question_rng(seed, &record.id);
    let chosen = *correct_boxed.choose(&mut rng).expect("non-empty");
    if !loss.needs_rejected() {
        return Ok(Pick {
            chosen,
            rejected: None,
        });
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
                Some(c) => (0..record.n())
                    .filter(|&i| record.cluster_of[i] == c)
                    .collect(),
                None => Vec::new(),
            }
        }
        PairStrategy::Random => (0..record.n()).filter(|&i| !record.correct[i]).collect(),
    };
    let rejected = *wrong.choose(&mut rng).ok_or(DropReason::NoRejected)?;
    Ok(Pick {
        chosen,
        rejected: Some(rejected),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::schema::Cluster;

    /// A question's cluster record for tests: the `correct` flag and cluster of each completion.
    pub(crate) fn record(
        correct: &[bool],
        cluster_of: &[usize],
        clusters: &[(usize, bool)],
    ) -> ClusterRecord {
        ClusterRecord {
            id: "q1".into(),
            answer: "1".into(),
            preds: vec![Some("x".into()); correct.len()],
            correct: correct.to_vec(),
            clusters: clusters
                .iter()
                .map(|&(count, correct)| Cluster {
                    answer: None,
                    count,
                    correct,
                })
                .collect(),
            cluster_of: cluster_of.to_vec(),
            entropy: 1.0,
            accuracy: 0.5,
            dominant_wrong: 0.25,
            samples_sha256: None,
        }
    }

    #[test]
    fn authors_pairs_reject_from_the_most_frequent_wrong_answer() {
        // completions 0,1 correct; 2 wrong (cluster 1, size 1); 3,4 wrong (cluster 2, size 2)
        let r = record(
            &[true, true, false, false, false],
            &[0, 0, 1, 2, 2],
            &[(2, true), (1, false), (2, false)],
        );
        let texts: Vec<String> = ["\\boxed{1}", "1", "\\boxed{2}", "\\boxed{3}", "\\boxed{3}"]
            .map(String::from)
            .to_vec();
        for seed in 0..20 {
            let p = pick_pair(&r, &texts, Loss::Dpo, PairStrategy::Authors, seed, true).unwrap();
            assert_eq!(p.chosen, 0, "only completion 0 is correct and boxed");
            assert!(matches!(p.rejected, Some(3 | 4)), "{p:?}");
        }
        let random: HashSet<usize> = (0..64)
            .map(|s| {
                pick_pair(&r, &texts, Loss::Dpo, PairStrategy::Random, s, true)
                    .unwrap()
                    .rejected
                    .unwrap()
            })
            .collect();
        assert_eq!(random, HashSet::from([2, 3, 4]));
        assert_eq!(
            pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 1, true)
                .unwrap()
                .rejected,
            None
        );
    }

    #[test]
    fn ties_between_wrong_clusters_go_to_the_first_seen() {
        let r = record(
            &[true, false, false],
            &[0, 1, 2],
            &[(1, true), (1, false), (1, false)],
        );
        let texts: Vec<String> = ["\\boxed{1}", "a", "b"].map(String::from).to_vec();
        for seed in 0..10 {
            assert_eq!(
                pick_pair(&r, &texts, Loss::Kto, PairStrategy::Authors, seed, true)
                    .unwrap()
                    .rejected,
                Some(1)
            );
        }
    }

    #[test]
    fn picks_are_seeded_per_question() {
        let r = record(&[true; 8], &[0; 8], &[(8, true)]);
        let texts: Vec<String> = vec!["\\boxed{1}".to_string(); 8];
        let a: Vec<usize> = (0..10)
            .map(|s| {
                pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, s, true)
                    .unwrap()
                    .chosen
            })
            .collect();
        let b: Vec<usize> = (0..10)
            .map(|s| {
                pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, s, true)
                    .unwrap()
                    .chosen
            })
            .collect();
        assert_eq!(a, b);
        assert!(
            a.iter().collect::<HashSet<_>>().len() > 1,
            "different seeds pick differently: {a:?}"
        );
    }

    #[test]
    fn unboxed_correct_answers_cannot_be_chosen() {
        let r = record(&[true, false], &[0, 1], &[(1, true), (1, false)]);
        let texts: Vec<String> = ["The answer is 1", "\\boxed{2}"].map(String::from).to_vec();
        assert_eq!(
            pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 0, true),
            Err(DropReason::NoBoxedCorrect)
        );
        // Without the filter the unboxed correct completion is the only choice.
        assert_eq!(
            pick_pair(&r, &texts, Loss::Sft, PairStrategy::Authors, 0, false)
                .unwrap()
                .chosen,
            0
        );
    }
}
