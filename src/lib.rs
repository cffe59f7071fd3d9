//! east: entropy-based adaptive weighting for self-training (EAST) on Candle.
//!
//! The stages of one round, each a module and a subcommand, in pipeline order:
//! [`sample`] (model → samples.jsonl) → [`cluster`] (grade and group answers → clusters.jsonl)
//! → [`weight`] (entropy → per-question weights → train.jsonl) → [`train`] (→ checkpoint) →
//! [`eval`] (→ eval.json); [`pipeline`] runs T rounds of them (`east run`) and [`report`] reads
//! the run directories. Below the stages, modules that import no stage: [`schema`] (the file
//! records between stages), [`data`] (datasets), [`decode`] (the batched decoder of sample and
//! eval), [`grade`] (answer extraction and equivalence), [`model`] (Llama, loading, tokenizers),
//! [`io`], [`progress`], [`stats`] (Wilson intervals, McNemar, pass@k) and [`tensorboard`]
//! (event files for dashboards); [`serve`] (a server's client) and [`generate`] (the one engine
//! interface of sample and eval, over [`decode`] and [`serve`]). [`config`] gathers the
//! stages' config sections into one TOML file.

// Shared leaves.
pub mod data;
pub mod decode;
pub mod grade;
pub mod io;
pub mod model;
pub mod progress;
pub mod schema;
pub mod tensorboard;
// Intervals and tests of accuracies (the report's statistics, and summary.json's intervals).
pub mod stats;
// The serving-engine backend of sample and eval (imports no stage).
pub mod serve;
// Where sample and eval get completions: east's decoder or a server, behind one trait.
pub mod generate;

// The stages, in pipeline order.
pub mod cluster;
pub mod eval;
pub mod sample;
pub mod train;
pub mod weight;

// The whole run.
pub mod config;
pub mod pipeline;
pub mod report;
