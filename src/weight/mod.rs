//! `east weight`, the stage between clustering and training: decide which questions train
//! ([`questions`]), pick their chosen and rejected completions ([`pairs`]), turn each one's
//! uncertainty into a weight ([`mapping`]) and write the weighted training set ([`trainset`]).
//! It needs no model.

pub mod mapping;
pub mod pairs;
pub mod questions;
pub mod trainset;

use serde::{Deserialize, Serialize};

pub use mapping::{map_weights, Mapping, MappingError, Metric};
pub use pairs::{DropReason, PairStrategy, Pick, Question};
pub use questions::QuestionSet;
pub use trainset::{weight_files, WeightError, WeightSummary};

use crate::schema::Loss;

/// `[weight]`: from uncertainty to per-question weights and training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightConfig {
    /// Per-question uncertainty fed to the mapping.
    pub metric: Metric,
    /// Mapping from uncertainty to weight.
    pub mapping: Mapping,
    /// Exponent of the power mapping.
    pub a: f64,
    /// Output range R of the linear mapping.
    pub range: f64,
    /// Which questions train.
    pub questions: QuestionSet,
    /// How chosen/rejected completions are picked.
    pub pairs: PairStrategy,
    /// Seeds the per-question picks.
    pub seed: u64,
    /// Chosen completions, and the wrong ones that decide the authors' rejected answer, must
    /// contain `\boxed` (the authors' filter; turn off for models that state answers another way).
    pub require_boxed: bool,
    /// Keep questions whose completions are all correct (for the metrics that can weigh them:
    /// uniform and accuracy; only with `questions = "answered"`). Off by default: every metric
    /// then trains on the same questions as EAST, which drops them (entropy 0), as the authors'
    /// code does for every method.
    pub keep_all_correct: bool,
}

impl Default for WeightConfig {
    fn default() -> Self {
        Self {
            metric: Metric::Entropy,
            mapping: Mapping::Power,
            a: 1.0,
            range: 1.0,
            questions: QuestionSet::Authors,
            pairs: PairStrategy::Authors,
            seed: 42,
            require_boxed: true,
            keep_all_correct: false,
        }
    }
}

impl WeightConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [("a", self.a), ("range", self.range)] {
            if !v.is_finite() {
                return Err((key, format!("must be finite, got {v}")));
            }
        }
        if self.range <= 0.0 {
            return Err(("range", format!("must be > 0, got {}", self.range)));
        }
        if self.keep_all_correct && self.questions == QuestionSet::Authors {
            return Err((
                "keep_all_correct",
                "needs weight.questions = \"answered\": the authors' question set drops the \
                 questions whose completions are all correct (they have no wrong answer to pair)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Everything that decides `train.jsonl`: the `[weight]` section and the rows the training
/// objective needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightOptions {
    pub loss: Loss,
    #[serde(flatten)]
    pub weight: WeightConfig,
}
