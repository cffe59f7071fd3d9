//! `run.report_to = ["tensorboard"]`: one TensorBoard run per run directory, in
//! `<run>/tensorboard/`, so that `tensorboard --logdir runs/` shows a sweep's runs side by side.
//!
//! Two x axes share the folder: the training scalars (`train/…`) count every optimiser step of
//! the run (round t's steps follow round t−1's), and the per-round values are logged at step =
//! round: `eval/<dataset>/accuracy` (round 0: the base model), `sample/tokens_per_s`, and the
//! histograms `cluster/entropy` (bits, per question) and `weight/question_weight`.
//!
//! The per-round values are read from the stage's files each time the run passes the stage,
//! done now or skipped, and put idempotently ([`EventWriter::put`]): a rerun logs nothing twice,
//! a redone stage replaces its values, and turning `run.report_to` on for a finished run fills
//! them in. Training scalars come live from the trainer (a [`SharedBoard`]), which cuts the steps
//! after its resume checkpoint before its first step.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use serde::Deserialize;

use super::layout::RunLayout;
use crate::io::read_jsonl;
use crate::tensorboard::{histogram, scalars_of, EventWriter, Value};
use crate::train::{SharedBoard, TRAIN_PREFIX};

/// The event folder of a run.
pub struct RunBoard {
    writer: Arc<Mutex<EventWriter>>,
}

impl RunBoard {
    /// A new session file in `<root>/tensorboard/`.
    pub fn open(root: &Path) -> anyhow::Result<RunBoard> {
        let writer = EventWriter::create(&root.join("tensorboard"))?;
        Ok(RunBoard {
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    fn writer(&self) -> MutexGuard<'_, EventWriter> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where round `t`'s training logs: after the steps of the rounds before it.
    pub fn training(&self, layout: &RunLayout, t: usize) -> anyhow::Result<SharedBoard> {
        Ok(SharedBoard {
            writer: Arc::clone(&self.writer),
            before: steps_before(layout, t)?,
        })
    }

    /// Round `t`'s training scalars from its `train_log.jsonl`, those the folder lacks: the
    /// steps of a training that ran before `run.report_to` was on, or whose events were lost.
    pub fn trained(&self, layout: &RunLayout, t: usize) -> anyhow::Result<()> {
        let before = steps_before(layout, t)?;
        let log = layout.checkpoint(t).join("train_log.jsonl");
        let steps = read_jsonl::<serde_json::Value>(&log)?
            .into_iter()
            .filter_map(|(_, line)| {
                let step = line["step"].as_i64()?;
                let values = scalars_of(TRAIN_PREFIX, &line, &["step"]);
                Some((
                    before + step,
                    values
                        .into_iter()
                        .map(|(k, v)| Value::scalar(k, v))
                        .collect(),
                ))
            })
            .collect();
        Ok(self.writer().put(steps)?)
    }

    /// Round `t`'s sampling throughput, from the units of the samples' metric log (every
    /// session's: generated tokens over decoding seconds). No log (samples made elsewhere):
    /// nothing.
    pub fn sampled(&self, t: usize, log: &Path) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Line {
            event: String,
            #[serde(default)]
            generated_tokens: f64,
            #[serde(default)]
            seconds: f64,
        }
        if !log.exists() {
            return Ok(());
        }
        let (tokens, seconds) = read_jsonl::<Line>(log)?
            .into_iter()
            .filter(|(_, l)| l.event == "unit")
            .fold((0.0, 0.0), |(t, s), (_, l)| {
                (t + l.generated_tokens, s + l.seconds)
            });
        if seconds <= 0.0 {
            return Ok(());
        }
        let values = vec![
            Value::scalar("sample/tokens_per_s", tokens / seconds),
            Value::scalar("sample/generated_tokens", tokens),
        ];
        Ok(self.writer().put(vec![(t as i64, values)])?)
    }

    /// Round `t`'s entropy per question (bits), from `clusters.jsonl`.
    pub fn clustered(&self, t: usize, clusters: &Path) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Line {
            entropy: f64,
        }
        let entropies: Vec<f64> = read_jsonl::<Line>(clusters)?
            .into_iter()
            .map(|(_, l)| l.entropy)
            .collect();
        self.put_histogram(t, "cluster/entropy", &entropies)
    }

    /// Round `t`'s weight per question, from `train.jsonl` (a question's rows share its weight).
    pub fn weighted(&self, t: usize, train: &Path) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Line {
            id: String,
            weight: f64,
        }
        let by_question: BTreeMap<String, f64> = read_jsonl::<Line>(train)?
            .into_iter()
            .map(|(_, l)| (l.id, l.weight))
            .collect();
        let weights: Vec<f64> = by_question.into_values().collect();
        self.put_histogram(t, "weight/question_weight", &weights)
    }

    /// Round `t`'s greedy accuracy on `dataset` (its folder name).
    pub fn evaluated(&self, t: usize, dataset: &str, accuracy: f64) -> anyhow::Result<()> {
        let tag = format!("eval/{dataset}/accuracy");
        Ok(self
            .writer()
            .put(vec![(t as i64, vec![Value::scalar(tag, accuracy)])])?)
    }

    fn put_histogram(&self, t: usize, tag: &str, values: &[f64]) -> anyhow::Result<()> {
        let Some(h) = histogram(values) else {
            return Ok(());
        };
        Ok(self
            .writer()
            .put(vec![(t as i64, vec![Value::histogram(tag, h)])])?)
    }
}

/// Optimiser steps of the trainings of the rounds before round `t` (each complete: round t
/// trains on the model they made), from their `trainer_state.json`.
fn steps_before(layout: &RunLayout, t: usize) -> anyhow::Result<i64> {
    let mut before = 0;
    for r in 1..t {
        let path = layout.checkpoint(r).join("trainer_state.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        before += state["global_step"]
            .as_i64()
            .with_context(|| format!("{}: no global_step", path.display()))?;
    }
    Ok(before)
}
