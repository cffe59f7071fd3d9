//! What `east sample` writes as completions arrive: one samples.jsonl line per question (the
//! only place a [`SampleRecord`] is built), throughput lines in `samples.log.jsonl`, and the
//! progress bar.

use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;

use super::{log_path, SampleReport};
use crate::data::Question;
use crate::generate::{Completion, Note, Sink, Span};
use crate::io::{AppendLog, InputError};
use crate::progress::{self, MetricsLog};
use crate::schema::SampleRecord;

/// The [`Sink`] of a sampling run.
pub(super) struct SampleWriter<'a> {
    questions: &'a [Question],
    log: AppendLog,
    metrics: MetricsLog,
    bar: ProgressBar,
    started: Instant,
    /// Questions of this run (this shard) and those already in the file when it started.
    total: usize,
    resumed: usize,
    generated: usize,
    completions: usize,
}

impl<'a> SampleWriter<'a> {
    /// Writes to `log` (samples.jsonl at `out`, opened for appending, holding `resumed` of
    /// the run's `total` questions).
    pub(super) fn open(
        out: &Path,
        questions: &'a [Question],
        log: AppendLog,
        total: usize,
        resumed: usize,
    ) -> anyhow::Result<Self> {
        let metrics = MetricsLog::open(&log_path(out))?;
        let bar = progress::items_bar(total as u64, "sample");
        bar.set_position(resumed as u64);
        Ok(SampleWriter {
            questions,
            log,
            metrics,
            bar,
            started: Instant::now(),
            total,
            resumed,
            generated: 0,
            completions: 0,
        })
    }

    /// Logs the totals of this attempt and says what it did.
    pub(super) fn finish(mut self) -> anyhow::Result<SampleReport> {
        self.bar.finish_and_clear();
        let seconds = self.started.elapsed().as_secs_f64();
        let tokens_per_s = self.generated as f64 / seconds.max(1e-9);
        self.metrics.log(
            &serde_json::json!({"event": "done", "questions": self.total,
            "resumed": self.resumed, "generated_tokens": self.generated, "seconds": seconds,
            "tokens_per_s": tokens_per_s}),
        )?;
        Ok(SampleReport {
            out: self.log.path().to_path_buf(),
            questions: self.total,
            resumed: self.resumed,
            generated_tokens: self.generated,
            seconds,
            tokens_per_s,
        })
    }

    fn show_rates(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "{:.1} completions/s, {:.0} tok/s",
            self.completions as f64 / secs,
            self.generated as f64 / secs
        ));
    }
}

/// Question `index`'s line of samples.jsonl.
fn record(q: &Question, index: usize, completions: Vec<Completion>) -> SampleRecord {
    SampleRecord {
        id: q.id.clone(),
        question: q.question.clone(),
        answer: q.answer.clone(),
        finish: Some(completions.iter().map(|c| c.finish).collect()),
        tokens: Some(completions.iter().map(|c| c.tokens as u32).collect()),
        completions: completions.into_iter().map(|c| c.text).collect(),
        index: Some(index),
    }
}

impl Sink for SampleWriter<'_> {
    fn progress(&mut self, tokens: usize) {
        self.generated += tokens;
        self.show_rates();
    }

    fn question(&mut self, index: usize, completions: Vec<Completion>) -> anyhow::Result<()> {
        self.completions += completions.len();
        let line = record(&self.questions[index], index, completions);
        let out = self.log.path().to_path_buf();
        self.log
            .append(&line)
            .map_err(|e| InputError::io(&out, e))?;
        self.bar.inc(1);
        self.show_rates();
        Ok(())
    }

    fn flush(&mut self, spans: &[Span]) -> anyhow::Result<()> {
        let out = self.log.path().to_path_buf();
        self.log.sync().map_err(|e| InputError::io(&out, e))?;
        for span in spans {
            self.metrics.log(&span.log_line("unit"))?;
        }
        Ok(())
    }

    fn note(&mut self, note: Note) -> anyhow::Result<()> {
        match note {
            Note::PerRequest { n, reason } => {
                // on stderr whether or not the bar is drawn (println shows only on a terminal)
                self.bar.suspend(|| {
                    eprintln!("server: {n} completion(s) per request from now on ({reason})")
                });
                self.metrics
                    .log(&serde_json::json!({"event": "n_per_request",
                    "n_per_request": n, "reason": reason}))?;
            }
        }
        Ok(())
    }
}
