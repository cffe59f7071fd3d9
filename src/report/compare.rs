//! Paired comparisons of two evaluations on the same questions: the difference in accuracy, its
//! bootstrap interval over questions, and the exact McNemar test on the discordant questions.

use std::fmt::Write;

use serde::Serialize;

use super::evals::{paired, Accuracy, Evaluation};
use crate::stats::{bootstrap_mean, mcnemar_exact, Interval, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};

/// The level a difference is called significant at.
pub const ALPHA: f64 = 0.05;

/// One side of a comparison: a run's round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub run: String,
    pub round: usize,
    pub grading: String,
}

impl Side {
    fn label(&self) -> String {
        format!("{} round {}", self.run, self.round)
    }
}

/// B against A on one dataset. Differences are B − A, as fractions.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub dataset: String,
    pub a: Side,
    pub b: Side,
    /// Questions compared (both sides evaluated each of them).
    pub questions: usize,
    pub a_accuracy: Accuracy,
    pub b_accuracy: Accuracy,
    pub difference: f64,
    /// Percentile bootstrap over questions, [`BOOTSTRAP_RESAMPLES`] resamples from
    /// [`BOOTSTRAP_SEED`].
    pub ci95: Interval,
    /// Questions only A answered correctly, and only B: McNemar's discordant pairs.
    pub a_only: usize,
    pub b_only: usize,
    pub mcnemar_p: f64,
    /// McNemar's p below [`ALPHA`].
    pub significant: bool,
}

/// What stands between two evaluations and a comparison.
#[derive(Debug, Clone)]
pub enum Outcome {
    Compared(Box<Comparison>),
    /// A side has no `predictions.jsonl` (named): the per-question outcomes are unknown.
    NoPredictions(String),
}

/// Compares `b` with `a`, which must have evaluated the same questions (else an error naming
/// both `predictions.jsonl`).
pub fn compare(
    dataset: &str,
    (a, eval_a): (Side, &Evaluation),
    (b, eval_b): (Side, &Evaluation),
) -> anyhow::Result<Outcome> {
    let (outcomes_a, outcomes_b) = match (eval_a.outcomes()?, eval_b.outcomes()?) {
        (Some(x), Some(y)) => (x, y),
        (None, _) => return Ok(Outcome::NoPredictions(eval_a.dir.display().to_string())),
        (_, None) => return Ok(Outcome::NoPredictions(eval_b.dir.display().to_string())),
    };
    let pairs = paired(&outcomes_a, &outcomes_b)?;
    Ok(Outcome::Compared(Box::new(Comparison::of_pairs(
        dataset, a, b, &pairs,
    ))))
}

impl Comparison {
    /// The statistics of `pairs`, each question's (A correct, B correct); at least one question.
    pub fn of_pairs(dataset: &str, a: Side, b: Side, pairs: &[(bool, bool)]) -> Comparison {
        let count = |f: fn(&(bool, bool)) -> bool| pairs.iter().filter(|p| f(p)).count();
        let (a_correct, b_correct) = (count(|p| p.0), count(|p| p.1));
        let (a_only, b_only) = (count(|p| p.0 && !p.1), count(|p| !p.0 && p.1));
        let deltas: Vec<f64> = pairs
            .iter()
            .map(|&(x, y)| f64::from(u8::from(y)) - f64::from(u8::from(x)))
            .collect();
        let mcnemar_p = mcnemar_exact(a_only, b_only);
        Comparison {
            dataset: dataset.to_string(),
            a,
            b,
            questions: pairs.len(),
            a_accuracy: Accuracy::of(a_correct, pairs.len()),
            b_accuracy: Accuracy::of(b_correct, pairs.len()),
            difference: (b_correct as f64 - a_correct as f64) / pairs.len() as f64,
            ci95: bootstrap_mean(&deltas, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
            a_only,
            b_only,
            mcnemar_p,
            significant: mcnemar_p < ALPHA,
        }
    }

    /// The verdict in words.
    pub fn verdict(&self) -> String {
        if self.significant {
            format!("significant at {ALPHA}")
        } else {
            format!("not significant at {ALPHA}")
        }
    }
}

/// A p-value as it reads best: three decimals, or two significant digits when smaller.
pub fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else if p > 0.0 {
        format!("{p:.1e}")
    } else {
        // Below the smallest positive double: the binomial tail underflowed.
        "< 1e-300".into()
    }
}

/// The Markdown table of `outcomes` under `heading`, then one sentence per comparison that is
/// not significant or mixes gradings, and a line per comparison that could not be made.
pub fn render(heading: &str, intro: &str, outcomes: &[Outcome]) -> String {
    let mut md = format!("## {heading}\n\n{intro}\n\n");
    md.push_str("| dataset | A | B | questions | A % [95%] | B % [95%] | B − A (points) | 95% interval | only A / only B right | McNemar p | verdict |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    for outcome in outcomes {
        let c = match outcome {
            Outcome::Compared(c) => c,
            Outcome::NoPredictions(dir) => {
                notes.push(format!("- {dir} has no predictions.jsonl: its comparison needs each question's outcome and is left out."));
                continue;
            }
        };
        let pct = |a: &Accuracy| {
            let (p, i) = (a.accuracy, a.ci95);
            format!(
                "{:.1} [{:.1}, {:.1}]",
                100.0 * p,
                100.0 * i.low,
                100.0 * i.high
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:+.1} | [{:+.1}, {:+.1}] | {} / {} | {} | {} |",
            c.dataset,
            c.a.label(),
            c.b.label(),
            c.questions,
            pct(&c.a_accuracy),
            pct(&c.b_accuracy),
            100.0 * c.difference,
            100.0 * c.ci95.low,
            100.0 * c.ci95.high,
            c.a_only,
            c.b_only,
            fmt_p(c.mcnemar_p),
            c.verdict()
        );
        notes.extend(sentences(c));
    }
    if !notes.is_empty() {
        md.push('\n');
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    md.push('\n');
    md
}

/// What a reader must not miss about one comparison, in words.
fn sentences(c: &Comparison) -> Vec<String> {
    let mut out = Vec::new();
    if !c.significant {
        out.push(format!(
            "- {}: {} against {}, {:+.1} points on {} questions, is not significant at {ALPHA} \
             (McNemar p = {}): a difference this size is consistent with chance.",
            c.dataset,
            c.b.label(),
            c.a.label(),
            100.0 * c.difference,
            c.questions,
            fmt_p(c.mcnemar_p)
        ));
    }
    if !c.significant && !c.ci95.contains(0.0) {
        out.push(format!(
            "- {}: the bootstrap interval of {} against {} leaves out 0 while the exact test is \
             not significant: the evidence is borderline (the exact test is the more cautious \
             of the two with few discordant questions).",
            c.dataset,
            c.b.label(),
            c.a.label()
        ));
    }
    if c.a.grading != c.b.grading {
        out.push(format!(
            "- {}: {} was graded `{}` and {} `{}`: the difference mixes the grading with the \
             model.",
            c.dataset,
            c.a.label(),
            c.a.grading,
            c.b.label(),
            c.b.grading
        ));
    }
    out
}
