//! Stage skipping: every stage output carries a stamp (`<output>.stamp.json`) holding the hash of
//! everything that determines it. A stage whose stamp matches and says done is skipped; one whose
//! stamp matches but was never marked done was interrupted and resumes; one whose stamp differs is
//! redone from scratch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::write_json_atomic;
use crate::progress::MetricsLog;

/// Bumped when a stage's output format or meaning changes, so old stamps stop matching.
const STAMP_VERSION: u32 = 1;

/// The state of one stage output, written beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Stamp {
    key: String,
    done: bool,
    stage: String,
    /// Wall time of the attempt that finished it.
    #[serde(default)]
    seconds: f64,
    /// What went into the key, for people reading the run directory.
    inputs: serde_json::Value,
}

fn stamp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!("{name}.stamp.json"))
}

/// Short hash of a JSON value (serde_json writes object keys in sorted order, so equal values
/// hash equally).
pub fn key_of(value: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(STAMP_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(value).expect("a JSON value serialises"));
    short_hex(&h.finalize())
}

/// The first 12 bytes of a digest in hex: short enough for file names, long enough not to collide.
pub(super) fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

pub(super) fn remove_path(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What happened to a stage in this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Its output was complete and made from the same inputs.
    Skipped,
    /// Run from scratch.
    Ran,
    /// Continued from an interrupted attempt with the same inputs.
    Resumed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Ran => "ran",
            Outcome::Resumed => "resumed",
        }
    }
}

/// One stage of one round, as recorded in `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub outcome: Outcome,
    /// Wall time of the attempt that completed the stage (for a skipped stage, of the earlier run).
    pub seconds: f64,
    pub key: String,
}

/// A stage: an output path (file or folder) plus the sidecars that belong to it.
pub(super) struct Stage<'a> {
    pub(super) name: &'a str,
    pub(super) round: usize,
    pub(super) output: &'a Path,
    /// Files the stage writes beside `output`; removed with it when the inputs change.
    pub(super) sidecars: Vec<PathBuf>,
    pub(super) inputs: serde_json::Value,
}

impl Stage<'_> {
    /// Runs `work` unless the output is already complete for these inputs.
    pub(super) fn run(
        self,
        log: &mut MetricsLog,
        work: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<StageRecord> {
        let key = key_of(&self.inputs);
        let stamp_file = stamp_path(self.output);
        let old: Option<Stamp> = std::fs::read_to_string(&stamp_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let outcome = match &old {
            Some(s) if s.key == key && s.done && self.output.exists() => {
                log.log(&serde_json::json!({"event": "stage", "stage": self.name, "round": self.round, "outcome": "skipped", "key": key}))?;
                return Ok(StageRecord {
                    stage: self.name.to_string(),
                    outcome: Outcome::Skipped,
                    seconds: s.seconds,
                    key,
                });
            }
            // Same inputs, interrupted: the stage's own resume logic continues from what is there.
            Some(s) if s.key == key && self.output.exists() => Outcome::Resumed,
            // Other inputs, or an output of unknown origin: start clean.
            _ => {
                for p in std::iter::once(&self.output.to_path_buf()).chain(&self.sidecars) {
                    remove_path(p)
                        .with_context(|| format!("removing the stale {}", p.display()))?;
                }
                Outcome::Ran
            }
        };
        if let Some(parent) = self.output.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut stamp = Stamp {
            key: key.clone(),
            done: false,
            stage: self.name.to_string(),
            seconds: 0.0,
            inputs: self.inputs,
        };
        write_json_atomic(&stamp_file, &stamp)?;
        eprintln!(
            "east run: round {} {}: {}",
            self.round,
            self.name,
            if outcome == Outcome::Resumed {
                "resuming an interrupted attempt"
            } else {
                "running"
            }
        );
        let started = Instant::now();
        work().with_context(|| format!("round {}, stage {}", self.round, self.name))?;
        let seconds = started.elapsed().as_secs_f64();
        stamp.done = true;
        stamp.seconds = seconds;
        write_json_atomic(&stamp_file, &stamp)?;
        log.log(
            &serde_json::json!({"event": "stage", "stage": self.name, "round": self.round,
            "outcome": outcome, "key": key, "seconds": seconds}),
        )?;
        Ok(StageRecord {
            stage: self.name.to_string(),
            outcome,
            seconds,
            key,
        })
    }
}
