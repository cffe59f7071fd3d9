//! Which completions of a question become training text: a random correct completion (the
//! chosen one) and, for DPO and KTO, a wrong one (the rejected one), drawn from a generator
//! seeded per question so that any run with the same seed picks the same completions.
//!
//! The authors' rule is `construct_pair_fn` in their `data_generation/util.py` (github
//! mandyyyyii/east): the chosen completion is a random correct one containing `\boxed` (lines
//! 91 and 104); the rejected one is a random completion of the most frequent wrong answer among
//! the wrong completions that contain `\boxed` (lines 96-103 and 108), and that answer's count
//! over n is the rejection metric R (line 110).

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
    /// The authors' `construct_pair_fn`: a random correct completion containing `\boxed`, and a
    /// random completion of the most frequent boxed wrong answer (ties: the first seen).
    Authors,
    /// A random correct completion containing `\boxed` and a random wrong completion, with or
    /// without an answer (the paper's "randomly select a positive–negative pair").
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
    /// No wrong completion contains `\boxed` and an answer, so there is no authors' rejected
    /// answer.
    NoBoxedWrong,
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
            DropReason::NoBoxedWrong => "no_boxed_wrong",
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

/// Whether a completion states its answer in a box (the authors' `check_box`, util.py line 58,
/// which looks for `\boxed`; `\fbox` is the same box and east's extractor reads it too).
pub fn is_boxed(completion: &str) -> bool {
    completion.contains("\\boxed") || completion.contains("\\fbox")
}

/// What the pair rules see of one question: its clusters and which completions are boxed.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub record: &'a ClusterRecord,
    pub completions: &'a [String],
    /// Whether the box filter applies (`weight.require_boxed`); off, every completion counts as
    /// boxed.
    pub require_boxed: bool,
}

impl Question<'_> {
    fn boxed(&self, i: usize) -> bool {
        !self.require_boxed || is_boxed(&self.completions[i])
    }

    /// Correct completions that may be chosen: those containing `\boxed`.
    pub fn chosen_candidates(&self) -> Vec<usize> {
        (0..self.record.n())
            .filter(|&i| self.record.correct[i] && self.boxed(i))
            .collect()
    }

    /// The cluster of the authors' rejected answer: the answer most frequent among the wrong
    /// completions that contain `\boxed` (counted over those completions only, as util.py's
    /// `Counter(incorrect_answers_string).most_common(1)`, whose ties go to the answer seen
    /// first). Completions without an extractable answer have no answer to be frequent, so the
    /// no-answer cluster never is the rejected answer.
    pub fn rejected_answer(&self) -> Option<usize> {
        let r = self.record;
        // (boxed count, first completion) per cluster.
        let mut seen: Vec<(usize, usize)> = vec![(0, usize::MAX); r.clusters.len()];
        for i in (0..r.n()).filter(|&i| !r.correct[i] && self.boxed(i)) {
            let c = r.cluster_of[i];
            if r.preds[i].is_none() {
                continue;
            }
            seen[c].0 += 1;
            seen[c].1 = seen[c].1.min(i);
        }
        (0..seen.len())
            .filter(|&c| seen[c].0 > 0)
            .max_by_key(|&c| (seen[c].0, std::cmp::Reverse(seen[c].1)))
    }

    /// The rejection metric R: the authors' rejected answer's share of all n completions (boxed
    /// or not, util.py line 110); 0 when there is no such answer.
    pub fn rejection(&self) -> f64 {
        self.rejected_answer().map_or(0.0, |c| {
            self.record.clusters[c].count as f64 / self.record.n() as f64
        })
    }

    /// Picks the chosen and (for DPO/KTO) rejected completion, or says why it cannot.
    pub fn pick(&self, loss: Loss, strategy: PairStrategy, seed: u64) -> Result<Pick, DropReason> {
        let r = self.record;
        let chosen_from = self.chosen_candidates();
        if chosen_from.is_empty() {
            return Err(DropReason::NoBoxedCorrect);
        }
        let mut rng = question_rng(seed, &r.id);
        let chosen = *chosen_from.choose(&mut rng).expect("non-empty");
        if !loss.needs_rejected() {
            return Ok(Pick {
                chosen,
                rejected: None,
            });
        }
        let rejected_from: Vec<usize> = match strategy {
            // Every completion of that answer, boxed or not (util.py line 103).
            PairStrategy::Authors => {
                let c = self.rejected_answer().ok_or(DropReason::NoBoxedWrong)?;
                (0..r.n()).filter(|&i| r.cluster_of[i] == c).collect()
            }
            PairStrategy::Random => (0..r.n()).filter(|&i| !r.correct[i]).collect(),
        };
        let rejected = *rejected_from
            .choose(&mut rng)
            .ok_or(DropReason::NoRejected)?;
        Ok(Pick {
            chosen,
            rejected: Some(rejected),
        })
    }
}

/// A per-question generator seeded from (seed, question id): picks do not depend on the order or
/// sharding of the files, so any run with the same seed picks the same completions.
pub fn question_rng(seed: u64, id: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::schema::Cluster;

    /// A question's cluster record for tests: the `correct` flag and cluster of each completion;
    /// completions of a cluster whose `answer` is `None` have no extracted answer.
    pub(crate) fn record(
        correct: &[bool],
        cluster_of: &[usize],
        clusters: &[(usize, bool)],
    ) -> ClusterRecord {
        record_with_answers(correct, cluster_of, clusters, &[])
    }

    /// As [`record`], with the clusters listed in `no_answer` holding completions without an
    /// answer.
    pub(crate) fn record_with_answers(
        correct: &[bool],
        cluster_of: &[usize],
        clusters: &[(usize, bool)],
        no_answer: &[usize],
    ) -> ClusterRecord {
        let answer = |c: usize| (!no_answer.contains(&c)).then(|| format!("a{c}"));
        ClusterRecord {
            id: "q1".into(),
            answer: "1".into(),
            preds: cluster_of.iter().map(|&c| answer(c)).collect(),
            correct: correct.to_vec(),
            clusters: clusters
                .iter()
                .enumerate()
                .map(|(c, &(count, correct))| Cluster {
                    answer: answer(c),
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

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn question<'a>(r: &'a ClusterRecord, t: &'a [String]) -> Question<'a> {
        Question {
            record: r,
            completions: t,
            require_boxed: true,
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
        let t = texts(&["\\boxed{1}", "1", "\\boxed{2}", "\\boxed{3}", "\\boxed{3}"]);
        let q = question(&r, &t);
        for seed in 0..20 {
            let p = q.pick(Loss::Dpo, PairStrategy::Authors, seed).unwrap();
            assert_eq!(p.chosen, 0, "only completion 0 is correct and boxed");
            assert!(matches!(p.rejected, Some(3 | 4)), "{p:?}");
        }
        let random: HashSet<usize> = (0..64)
            .map(|s| {
                q.pick(Loss::Dpo, PairStrategy::Random, s)
                    .unwrap()
                    .rejected
                    .unwrap()
            })
            .collect();
        assert_eq!(random, HashSet::from([2, 3, 4]));
        assert_eq!(
            q.pick(Loss::Sft, PairStrategy::Authors, 1)
                .unwrap()
                .rejected,
            None
        );
        assert_eq!(q.rejection(), 2.0 / 5.0);
    }

    #[test]
    fn the_rejected_answer_is_counted_over_boxed_wrong_completions_only() {
        // Cluster 1 ("a1") has 3 wrong completions, one boxed; cluster 2 ("a2") has 2, both
        // boxed; cluster 3 holds 3 completions without an answer (one mentions \boxed).
        let r = record_with_answers(
            &[true, false, false, false, false, false, false, false, false],
            &[0, 1, 1, 1, 2, 2, 3, 3, 3],
            &[(1, true), (3, false), (2, false), (3, false)],
            &[3],
        );
        let t = texts(&[
            "\\boxed{1}",
            "so a1",
            "\\boxed{a1}",
            "the answer is a1",
            "\\boxed{a2}",
            "\\boxed{a2}",
            "\\boxed{",
            "...",
            "...",
        ]);
        let q = question(&r, &t);
        assert_eq!(q.rejected_answer(), Some(2));
        // R counts every completion of that answer, boxed or not, over n.
        assert_eq!(q.rejection(), 2.0 / 9.0);
        for seed in 0..20 {
            let p = q.pick(Loss::Kto, PairStrategy::Authors, seed).unwrap();
            assert!(matches!(p.rejected, Some(4 | 5)), "{p:?}");
        }
        // Without the box filter "a1" (3 completions) is the most frequent wrong answer, and
        // any of its completions may be rejected; the no-answer cluster never is.
        let q = Question {
            require_boxed: false,
            ..q
        };
        assert_eq!(q.rejected_answer(), Some(1));
        assert_eq!(q.rejection(), 3.0 / 9.0);
    }

    #[test]
    fn unboxed_members_of_the_rejected_answer_can_be_rejected() {
        // One boxed "a1" and two unboxed ones: the answer is chosen by its boxed completion,
        // the rejected completion is any of the three (util.py line 103).
        let r = record(
            &[true, false, false, false],
            &[0, 1, 1, 1],
            &[(1, true), (3, false)],
        );
        let t = texts(&["\\boxed{1}", "a1", "\\boxed{a1}", "a1"]);
        let q = question(&r, &t);
        let picked: HashSet<usize> = (0..64)
            .map(|s| {
                q.pick(Loss::Dpo, PairStrategy::Authors, s)
                    .unwrap()
                    .rejected
                    .unwrap()
            })
            .collect();
        assert_eq!(picked, HashSet::from([1, 2, 3]));
        assert_eq!(q.rejection(), 0.75);
    }

    #[test]
    fn wrong_answers_without_a_box_give_no_authors_pair() {
        let r = record(&[true, false, false], &[0, 1, 1], &[(1, true), (2, false)]);
        let t = texts(&["\\boxed{1}", "a1", "it is a1"]);
        let q = question(&r, &t);
        assert_eq!(q.rejected_answer(), None);
        assert_eq!(q.rejection(), 0.0);
        assert_eq!(
            q.pick(Loss::Dpo, PairStrategy::Authors, 0),
            Err(DropReason::NoBoxedWrong)
        );
        // `random` pairs draw from every wrong completion.
        assert!(q.pick(Loss::Dpo, PairStrategy::Random, 0).is_ok());
        // SFT needs no rejected completion.
        assert!(q.pick(Loss::Sft, PairStrategy::Authors, 0).is_ok());
    }

    #[test]
    fn ties_between_wrong_answers_go_to_the_first_seen() {
        // "a2" is seen first (completion 1), "a1" later; both are boxed twice.
        let r = record(
            &[true, false, false, false, false],
            &[0, 2, 1, 1, 2],
            &[(1, true), (2, false), (2, false)],
        );
        let t = texts(&[
            "\\boxed{1}",
            "\\boxed{b}",
            "\\boxed{a}",
            "\\boxed{a}",
            "\\boxed{b}",
        ]);
        let q = question(&r, &t);
        assert_eq!(q.rejected_answer(), Some(2));
        for seed in 0..10 {
            let p = q.pick(Loss::Kto, PairStrategy::Authors, seed).unwrap();
            assert!(matches!(p.rejected, Some(1 | 4)), "{p:?}");
        }
    }

    #[test]
    fn picks_are_seeded_per_question() {
        let r = record(&[true; 8], &[0; 8], &[(8, true)]);
        let t: Vec<String> = vec!["\\boxed{1}".to_string(); 8];
        let q = question(&r, &t);
        let picks = || -> Vec<usize> {
            (0..10)
                .map(|s| q.pick(Loss::Sft, PairStrategy::Authors, s).unwrap().chosen)
                .collect()
        };
        let a = picks();
        assert_eq!(a, picks());
        assert!(
            a.iter().collect::<HashSet<_>>().len() > 1,
            "different seeds pick differently: {a:?}"
        );
    }

    #[test]
    fn unboxed_correct_answers_cannot_be_chosen() {
        let r = record(&[true, false], &[0, 1], &[(1, true), (1, false)]);
        let t = texts(&["The answer is 1", "\\boxed{2}"]);
        let q = question(&r, &t);
        assert_eq!(
            q.pick(Loss::Sft, PairStrategy::Authors, 0),
            Err(DropReason::NoBoxedCorrect)
        );
        // Without the filter the unboxed correct completion is the only choice.
        let q = Question {
            require_boxed: false,
            ..q
        };
        assert_eq!(
            q.pick(Loss::Sft, PairStrategy::Authors, 0).unwrap().chosen,
            0
        );
    }
}
