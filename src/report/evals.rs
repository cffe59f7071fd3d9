//! One evaluation as the report reads it: the counts and the grading of `eval.json`, and, for the
//! paired comparisons, each question's outcome from `predictions.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::eval::{predictions_path, report_path};
use crate::io::{read_jsonl, InputError};
pub use crate::stats::Accuracy;

/// The grading an `eval.json` without a `grading` field was made with.
pub const DEFAULT_GRADING: &str = "exact";

/// A finished evaluation of one model on one dataset.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The evaluation's folder (`eval.json`, `predictions.jsonl`).
    pub dir: PathBuf,
    pub n: usize,
    pub correct: usize,
    /// How answers were graded (`eval.json`'s `grading`; `exact` when absent).
    pub grading: String,
}

/// What the report takes from `eval.json` (the rest of the file is the eval stage's business).
#[derive(Deserialize)]
struct EvalCounts {
    n: usize,
    correct: usize,
    #[serde(default)]
    grading: Option<serde_json::Value>,
}

/// The fields of a `predictions.jsonl` line a paired comparison needs.
#[derive(Deserialize)]
struct Outcome {
    id: String,
    answer: String,
    correct: bool,
}

/// Each question's reference answer and whether it was answered correctly, by question id.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// The `predictions.jsonl` they were read from.
    pub path: PathBuf,
    pub by_id: BTreeMap<String, (String, bool)>,
}

impl Evaluation {
    /// Reads `dir/eval.json`; `None` when the evaluation has not finished (no such file).
    pub fn read(dir: &Path) -> anyhow::Result<Option<Evaluation>> {
        let path = report_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(InputError::io(&path, e).into()),
        };
        let counts: EvalCounts = serde_json::from_str(&text)
            .map_err(|e| InputError::line(&path, e.line(), e.to_string()))?;
        if counts.n == 0 || counts.correct > counts.n {
            let message = format!("correct = {} of n = {}", counts.correct, counts.n);
            return Err(InputError::field(&path, 1, "n", message).into());
        }
        let grading = match counts.grading {
            None | Some(serde_json::Value::Null) => DEFAULT_GRADING.to_string(),
            Some(serde_json::Value::String(name)) => name,
            Some(other) => other.to_string(),
        };
        Ok(Some(Evaluation {
            dir: dir.to_path_buf(),
            n: counts.n,
            correct: counts.correct,
            grading,
        }))
    }

    pub fn accuracy(&self) -> Accuracy {
        Accuracy::of(self.correct, self.n)
    }

    /// Each question's outcome, checked against `eval.json`'s counts; `None` when the folder
    /// has no `predictions.jsonl`.
    pub fn outcomes(&self) -> anyhow::Result<Option<Outcomes>> {
        let path = predictions_path(&self.dir);
        if !path.exists() {
            return Ok(None);
        }
        let mut by_id = BTreeMap::new();
        for (line, o) in read_jsonl::<Outcome>(&path)? {
            if by_id.insert(o.id.clone(), (o.answer, o.correct)).is_some() {
                let message = format!("duplicate id `{}`", o.id);
                return Err(InputError::field(&path, line, "id", message).into());
            }
        }
        let correct = by_id.values().filter(|(_, c)| *c).count();
        if by_id.len() != self.n || correct != self.correct {
            anyhow::bail!(
                "{} holds {correct} correct of {} questions, but {} says {} of {}: the two files \
                 are not from the same evaluation",
                path.display(),
                by_id.len(),
                report_path(&self.dir).display(),
                self.correct,
                self.n
            );
        }
        Ok(Some(Outcomes { path, by_id }))
    }
}

/// Each question's (A correct, B correct), over the questions both evaluated. The two must have
/// evaluated the same questions with the same reference answers: anything else is an error
/// naming both files, never a comparison over a silently narrowed set.
pub fn paired(a: &Outcomes, b: &Outcomes) -> anyhow::Result<Vec<(bool, bool)>> {
    let only = |x: &Outcomes, y: &Outcomes| {
        x.by_id
            .keys()
            .find(|id| !y.by_id.contains_key(*id))
            .cloned()
    };
    if let Some(id) = only(a, b).or_else(|| only(b, a)) {
        let holder = if a.by_id.contains_key(&id) { a } else { b };
        anyhow::bail!(
            "{} ({} questions) and {} ({} questions) evaluate different questions (`{id}` is only \
             in {}): a paired comparison needs the same questions on both sides",
            a.path.display(),
            a.by_id.len(),
            b.path.display(),
            b.by_id.len(),
            holder.path.display()
        );
    }
    a.by_id
        .iter()
        .map(|(id, (answer_a, correct_a))| {
            let (answer_b, correct_b) = &b.by_id[id];
            if answer_a != answer_b {
                anyhow::bail!(
                    "question `{id}` has reference answer `{answer_a}` in {} but `{answer_b}` in \
                     {}: the two evaluations are of different datasets",
                    a.path.display(),
                    b.path.display()
                );
            }
            Ok((*correct_a, *correct_b))
        })
        .collect()
}
