//! east: entropy-based adaptive weighting for self-training (EAST) on Candle.
//!
//! The pipeline of one round, each stage a module and a subcommand:
//! `sample` (model → samples.jsonl) → `cluster` (grade and group answers → clusters.jsonl) →
//! `weight` (entropy → per-question weights → train.jsonl) → `train` → `eval`.

pub mod config;
pub mod data;
pub mod eval;
pub mod grade;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod runtime;
pub mod sample;
pub mod schema;
pub mod train;
pub mod weight;
