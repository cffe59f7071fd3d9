//! The records of the files passed between stages (see the README's "Files" section), read and
//! written through these types only: `samples.jsonl` ([`SampleRecord`], written by `sample`),
//! `clusters.jsonl` ([`ClusterRecord`], by `cluster`) and `train.jsonl` ([`TrainRow`], by
//! `weight`, for the training objective [`Loss`]). Any sampler may produce `samples.jsonl` as
//! long as it follows [`SampleRecord`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::InputError;
use crate::model::Message;

/// The training objective, which decides the shape of train.jsonl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Weighted negative log-likelihood of a correct completion.
    Sft,
    /// Weighted sigmoid DPO on (correct, wrong) pairs.
    Dpo,
    /// Weighted KTO on correct (desirable) and wrong (undesirable) completions.
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

/// Why a completion stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An EOS token or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
}

/// One line of `samples.jsonl`: a question and its n completions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub id: String,
    pub question: String,
    /// Ground-truth final answer.
    pub answer: String,
    pub completions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<Vec<Finish>>,
    /// Generated token count per completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<u32>>,
    /// Position of the question in the sampled dataset (written by `east sample`, used to
    /// merge shards back into dataset order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl SampleRecord {
    /// SHA-256 (hex) of what a training row takes from this record: the id, the question and
    /// the completions. `east cluster` stores it in each [`ClusterRecord`] so that `east weight`
    /// can tell when it is given another samples file than the clusters were made from.
    pub fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(&(&self.id, &self.question, &self.completions))
            .expect("strings serialise");
        format!("{:x}", Sha256::digest(&bytes))
    }

    /// Checks what the types cannot: at least one completion, parallel arrays of equal length.
    pub fn validate(&self, path: &Path, line: usize) -> Result<(), InputError> {
        if self.id.is_empty() {
            return Err(InputError::field(path, line, "id", "must not be empty"));
        }
        if self.completions.is_empty() {
            return Err(InputError::field(
                path,
                line,
                "completions",
                format!("question `{}` has no completions", self.id),
            ));
        }
        let n = self.completions.len();
        if let Some(f) = &self.finish {
            if f.len() != n {
                return Err(InputError::field(
                    path,
                    line,
                    "finish",
                    format!("has {} entries for {n} completions", f.len()),
                ));
            }
        }
        if let Some(t) = &self.tokens {
            if t.len() != n {
                return Err(InputError::field(
                    path,
                    line,
                    "tokens",
                    format!("has {} entries for {n} completions", t.len()),
                ));
            }
        }
        Ok(())
    }
}

/// One group of completions that gave the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Normalised answer of the cluster (its first member); `null` for completions with no answer.
    pub answer: Option<String>,
    pub count: usize,
    pub correct: bool,
}

/// One line of `clusters.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    /// Ground-truth final answer.
    pub answer: String,
    /// Normalised extracted answer per completion (`null`: none found).
    pub preds: Vec<Option<String>>,
    pub correct: Vec<bool>,
    pub clusters: Vec<Cluster>,
    /// Index into `clusters` per completion.
    pub cluster_of: Vec<usize>,
    /// Entropy of the cluster proportions, in bits (as the reference code).
    pub entropy: f64,
    /// Fraction of correct completions.
    pub accuracy: f64,
    /// Size of the largest incorrect cluster (the no-answer cluster included) over n.
    pub dominant_wrong: f64,
    /// [`SampleRecord::fingerprint`] of the samples line this record was graded from (absent in
    /// files of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_sha256: Option<String>,
}

impl ClusterRecord {
    pub fn n(&self) -> usize {
        self.preds.len()
    }

    /// Checks the internal consistency of a record read back from disk.
    pub fn validate(&self, path: &Path, line: usize) -> Result<(), InputError> {
        let n = self.preds.len();
        if n == 0 {
            return Err(InputError::field(
                path,
                line,
                "preds",
                format!("question `{}` has no completions", self.id),
            ));
        }
        if self.correct.len() != n {
            return Err(InputError::field(
                path,
                line,
                "correct",
                format!("has {} entries for {n} completions", self.correct.len()),
            ));
        }
        if self.cluster_of.len() != n {
            return Err(InputError::field(
                path,
                line,
                "cluster_of",
                format!("has {} entries for {n} completions", self.cluster_of.len()),
            ));
        }
        if let Some(bad) = self.cluster_of.iter().find(|&&c| c >= self.clusters.len()) {
            return Err(InputError::field(
                path,
                line,
                "cluster_of",
                format!("points at cluster {bad} of {}", self.clusters.len()),
            ));
        }
        let total: usize = self.clusters.iter().map(|c| c.count).sum();
        if total != n {
            return Err(InputError::field(
                path,
                line,
                "clusters",
                format!("counts add up to {total}, not {n}"),
            ));
        }
        // Entropy in bits of n completions is at most log2(n); the others are fractions of n.
        let max_entropy = (n as f64).log2() + 1e-9;
        for (field, v, max, what) in [
            (
                "entropy",
                self.entropy,
                max_entropy,
                "log2 of the completions",
            ),
            ("accuracy", self.accuracy, 1.0, "1"),
            ("dominant_wrong", self.dominant_wrong, 1.0, "1"),
        ] {
            if !v.is_finite() || v < 0.0 || v > max {
                return Err(InputError::field(
                    path,
                    line,
                    field,
                    format!("must be a number from 0 to {what} ({max:.4}), got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// One line of `train.jsonl`. TRL's conversational form: `prompt` holds the system and user
/// messages, completions a single assistant message; which completion fields are set depends on
/// the [`Loss`] (sft: `completion`; dpo: `chosen` and `rejected`; kto: `completion` and `label`).
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
