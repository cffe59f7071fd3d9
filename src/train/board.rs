//! Where a training's step metrics go besides `train_log.jsonl`: TensorBoard event files, in
//! the output folder's `tensorboard/` (`train.report_to`) and in a folder another stage owns
//! (`east run`'s `run.report_to`, one TensorBoard run for all its rounds).
//!
//! Either way a resumed training logs no step twice: before its first step, the events of the
//! steps after its resume checkpoint are cut from the folder.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::tensorboard::{self, Event, EventWriter, ReportTo, Retained, What};

/// The tag prefix of a training's scalars (`train/loss`, …).
pub const TRAIN_PREFIX: &str = "train/";

/// An event folder another stage writes to, shared with this training: `east run`'s, whose
/// x axis counts every optimiser step of the run, so each round's steps follow the last one's.
#[derive(Debug, Clone)]
pub struct SharedBoard {
    pub writer: Arc<Mutex<EventWriter>>,
    /// Optimiser steps of the trainings before this one: step `s` is logged at `before + s`.
    pub before: i64,
}

/// One destination of the step metrics.
#[derive(Debug)]
pub(super) enum Board {
    /// `<out>/tensorboard/`: this session's file.
    Own(EventWriter),
    Shared(SharedBoard),
}

/// The boards of a training resuming after `start` steps (0: fresh): `out/tensorboard/` cut back
/// to those steps (emptied on a fresh start, as `train_log.jsonl` is) and, with `report_to`,
/// a new file there, opened by a restart mark on a resume; and `shared` cut back the same way.
pub(super) fn open(
    out: &Path,
    report_to: ReportTo,
    shared: Option<&SharedBoard>,
    start: usize,
) -> anyhow::Result<Vec<Board>> {
    let start = start as i64;
    let dir = out.join("tensorboard");
    warn_damaged(&tensorboard::retain(&dir, |e| e.step <= start)?);
    let mut boards = Vec::new();
    if report_to.tensorboard {
        let mut own = EventWriter::create(&dir)?;
        if start > 0 {
            own.session_start(start + 1)?;
        }
        boards.push(Board::Own(own));
    }
    if let Some(shared) = shared {
        // other stages' tags share the folder (and other axes): only this training's go
        let last = shared.before + start;
        let kept = lock(&shared.writer).retain(|e| e.step <= last || !is_training(e))?;
        warn_damaged(&kept);
        boards.push(Board::Shared(shared.clone()));
    }
    Ok(boards)
}

impl Board {
    /// Logs the `train_log.jsonl` line of step `step` (1-based) as scalars `train/<key>`.
    pub(super) fn log(&mut self, step: usize, line: &Value) -> anyhow::Result<()> {
        let scalars = tensorboard::scalars_of(TRAIN_PREFIX, line, &["step"]);
        match self {
            Board::Own(w) => w.scalars(step as i64, &scalars)?,
            Board::Shared(s) => lock(&s.writer).scalars(s.before + step as i64, &scalars)?,
        }
        Ok(())
    }
}

/// Whether `e` holds a training's scalars.
fn is_training(e: &Event) -> bool {
    matches!(&e.what, What::Summary(values) if values.iter().any(|v| v.tag.starts_with(TRAIN_PREFIX)))
}

/// The writer, even if a thread panicked holding it (each write is one whole record).
fn lock(writer: &Mutex<EventWriter>) -> std::sync::MutexGuard<'_, EventWriter> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

fn warn_damaged(kept: &Retained) {
    for (path, offset) in &kept.damaged {
        eprintln!(
            "east train: {}: a damaged record at byte {offset}; the events after it were dropped",
            path.display()
        );
    }
}
