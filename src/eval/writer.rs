//! What `east eval` writes as completions arrive: each graded into one predictions.jsonl line,
//! `batch` lines with the accuracy so far in `eval.log.jsonl`, and the progress bar.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;

use super::{metrics_path, Prediction};
use crate::data::Question;
use crate::generate::{Completion, Note, Sink, Span};
use crate::grade::GradeOptions;
use crate::io::{AppendLog, InputError};
use crate::progress::{self, MetricsLog};

/// The [`Sink`] of an evaluation.
pub(super) struct EvalWriter<'a> {
    questions: &'a [Question],
    grading: &'a GradeOptions,
    log: AppendLog,
    metrics: MetricsLog,
    bar: ProgressBar,
    started: Instant,
    generated: usize,
    /// Predictions written by this attempt, and how many of them are correct.
    finished: usize,
    correct: usize,
}

impl<'a> EvalWriter<'a> {
    /// Grades with `grading` and writes to `log` (predictions.jsonl in `dir`, opened for
    /// appending, already holding `resumed` predictions).
    pub(super) fn open(
        dir: &Path,
        questions: &'a [Question],
        grading: &'a GradeOptions,
        log: AppendLog,
        resumed: usize,
    ) -> anyhow::Result<Self> {
        let metrics = MetricsLog::open(&metrics_path(dir))?;
        let bar = progress::items_bar(questions.len() as u64, "eval");
        bar.set_position(resumed as u64);
        Ok(EvalWriter {
            questions,
            grading,
            log,
            metrics,
            bar,
            started: Instant::now(),
            generated: 0,
            finished: 0,
            correct: 0,
        })
    }

    /// Clears the progress bar and closes predictions.jsonl.
    pub(super) fn finish(self) {
        self.bar.finish_and_clear();
    }

    fn path(&self) -> PathBuf {
        self.log.path().to_path_buf()
    }
}

impl Sink for EvalWriter<'_> {
    fn progress(&mut self, tokens: usize) {
        self.generated += tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("{:.0} tok/s", self.generated as f64 / secs));
    }

    fn question(&mut self, index: usize, completions: Vec<Completion>) -> anyhow::Result<()> {
        // greedy evaluation asks one completion per question
        let Some(completion) = completions.into_iter().next() else {
            anyhow::bail!("the engine gave no completion for question {index}");
        };
        let prediction = Prediction::new(&self.questions[index], completion, self.grading);
        self.finished += 1;
        self.correct += usize::from(prediction.correct);
        let path = self.path();
        self.log
            .append(&prediction)
            .map_err(|e| InputError::io(&path, e))?;
        self.bar.inc(1);
        Ok(())
    }

    fn flush(&mut self, spans: &[Span]) -> anyhow::Result<()> {
        let path = self.path();
        self.log.sync().map_err(|e| InputError::io(&path, e))?;
        // `seconds` of every batch line of every attempt add up to eval.json's decoding time
        let accuracy = self.correct as f64 / self.finished.max(1) as f64;
        for span in spans {
            let mut line = span.log_line("batch");
            line["accuracy_so_far"] = accuracy.into();
            self.metrics.log(&line)?;
        }
        Ok(())
    }

    fn note(&mut self, note: Note) -> anyhow::Result<()> {
        match note {
            Note::PerRequest { n, reason } => self.metrics.log(&serde_json::json!({
                "event": "n_per_request", "n_per_request": n, "reason": reason})),
        }
        .map_err(Into::into)
    }
}
