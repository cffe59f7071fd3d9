//! Which questions of a round train, and with which metric value and completions.
//!
//! `weight.questions = "authors"` keeps exactly the questions that have a pair in the authors'
//! `construct_pair_fn` (`data_generation/util.py`, github mandyyyyii/east): at least one correct
//! completion containing `\boxed` and at least one wrong one with a boxed answer. Their SFT, DPO
//! and KTO data all come from those pairs, so every loss and every metric trains on the same
//! questions. `"answered"` is east's earlier, looser rule: every question with a boxed correct
//! completion that the metric can weigh; only DPO and KTO need a wrong completion.

use serde::{Deserialize, Serialize};

use super::mapping::Metric;
use super::pairs::{DropReason, Pick, Question};
use super::WeightOptions;

/// `weight.questions`: the rule that decides which questions train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QuestionSet {
    /// The questions that have an authors' pair (a boxed correct completion and a boxed wrong
    /// answer), for every loss and metric.
    Authors,
    /// Every question with a boxed correct completion that the metric can weigh (and, for DPO
    /// and KTO, a wrong completion to pair it with).
    Answered,
}

impl QuestionSet {
    pub fn name(self) -> &'static str {
        match self {
            QuestionSet::Authors => "authors",
            QuestionSet::Answered => "answered",
        }
    }
}

/// A question that trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    /// Its metric value (the mapping's input).
    pub value: f64,
    /// The rejection metric R (the share of the authors' rejected answer), for inspection.
    pub rejection: f64,
    pub pick: Pick,
}

/// Decides whether `q` trains under `options`, and with what; or says why it does not.
pub fn admit(q: &Question, options: &WeightOptions) -> Result<Admitted, DropReason> {
    let r = q.record;
    let w = &options.weight;
    if !r.correct.iter().any(|&c| c) {
        return Err(DropReason::AllWrong);
    }
    let all_correct = r.correct.iter().all(|&c| c);
    let rejection = q.rejection();
    let value = metric_value(w.metric, q, rejection);
    match w.questions {
        // util.py's order: all negative (line 74), all positive (line 88), no boxed positive
        // (line 92), no boxed negative (line 98).
        QuestionSet::Authors => {
            if all_correct {
                return Err(DropReason::AllCorrect);
            }
            if q.chosen_candidates().is_empty() {
                return Err(DropReason::NoBoxedCorrect);
            }
            if q.rejected_answer().is_none() {
                return Err(DropReason::NoBoxedWrong);
            }
        }
        QuestionSet::Answered => {
            if all_correct && !w.keep_all_correct {
                return Err(DropReason::AllCorrect);
            }
        }
    }
    if w.metric.drops_zero() && value == 0.0 {
        return Err(DropReason::ZeroMetric);
    }
    if options.loss.needs_rejected() && all_correct {
        return Err(DropReason::NoRejected);
    }
    let pick = q.pick(options.loss, w.pairs, w.seed)?;
    Ok(Admitted {
        value,
        rejection,
        pick,
    })
}

/// The metric of a question: the clusters file's entropy and accuracy, and the rejection
/// metric R from the completions' boxes (which the clusters file does not see).
fn metric_value(metric: Metric, q: &Question, rejection: f64) -> f64 {
    match metric {
        Metric::Entropy => q.record.entropy,
        Metric::Accuracy => 1.0 - q.record.accuracy,
        Metric::Rejection => rejection,
        Metric::Uniform => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Loss;
    use crate::weight::pairs::tests::record;
    use crate::weight::WeightConfig;

    fn options(metric: Metric, loss: Loss, questions: QuestionSet, keep: bool) -> WeightOptions {
        WeightOptions {
            loss,
            weight: WeightConfig {
                metric,
                questions,
                keep_all_correct: keep,
                ..WeightConfig::default()
            },
        }
    }

    fn admit_with(
        r: &crate::schema::ClusterRecord,
        texts: &[String],
        opts: &WeightOptions,
    ) -> Result<Admitted, DropReason> {
        let q = Question {
            record: r,
            completions: texts,
            require_boxed: opts.weight.require_boxed,
        };
        admit(&q, opts)
    }

    const METRICS: [Metric; 4] = [
        Metric::Entropy,
        Metric::Rejection,
        Metric::Accuracy,
        Metric::Uniform,
    ];
    const LOSSES: [Loss; 3] = [Loss::Sft, Loss::Dpo, Loss::Kto];

    #[test]
    fn answered_admission_rules() {
        let boxed = vec!["\\boxed{1}".to_string(); 2];
        let r = record(&[false, false], &[0, 0], &[(2, false)]);
        for keep in [false, true] {
            let o = options(Metric::Uniform, Loss::Sft, QuestionSet::Answered, keep);
            assert_eq!(admit_with(&r, &boxed, &o), Err(DropReason::AllWrong));
        }
        let mut r = record(&[true, true], &[0, 0], &[(2, true)]);
        r.entropy = 0.0;
        r.accuracy = 1.0;
        // All correct: dropped for every metric and loss by default.
        for metric in METRICS {
            for loss in LOSSES {
                let o = options(metric, loss, QuestionSet::Answered, false);
                assert_eq!(admit_with(&r, &boxed, &o), Err(DropReason::AllCorrect));
            }
        }
        // keep_all_correct: only where the metric can weigh them and no wrong one is needed.
        let kept = |metric, loss| {
            admit_with(
                &r,
                &boxed,
                &options(metric, loss, QuestionSet::Answered, true),
            )
            .map(|a| a.value)
        };
        assert_eq!(
            kept(Metric::Entropy, Loss::Sft),
            Err(DropReason::ZeroMetric)
        );
        assert_eq!(
            kept(Metric::Rejection, Loss::Sft),
            Err(DropReason::ZeroMetric)
        );
        assert_eq!(kept(Metric::Accuracy, Loss::Sft), Ok(0.0));
        assert_eq!(kept(Metric::Uniform, Loss::Sft), Ok(1.0));
        assert_eq!(
            kept(Metric::Uniform, Loss::Dpo),
            Err(DropReason::NoRejected)
        );
    }

    #[test]
    fn the_authors_set_needs_a_boxed_correct_and_a_boxed_wrong_answer() {
        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = record(&[true, false], &[0, 1], &[(1, true), (1, false)]);
        let cases = [
            (texts(&["\\boxed{1}", "\\boxed{2}"]), Ok(())),
            (texts(&["1", "\\boxed{2}"]), Err(DropReason::NoBoxedCorrect)),
            (texts(&["\\boxed{1}", "2"]), Err(DropReason::NoBoxedWrong)),
        ];
        for (t, want) in cases {
            for metric in METRICS {
                for loss in LOSSES {
                    let o = options(metric, loss, QuestionSet::Authors, false);
                    let got = admit_with(&r, &t, &o).map(|_| ());
                    assert_eq!(got, want, "{t:?} {metric:?} {loss:?}");
                }
            }
        }
        // The looser rule keeps the unboxed-wrong question for SFT.
        let o = options(Metric::Entropy, Loss::Sft, QuestionSet::Answered, false);
        assert!(admit_with(&r, &texts(&["\\boxed{1}", "2"]), &o).is_ok());
    }
}
