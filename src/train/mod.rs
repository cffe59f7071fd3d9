//! `east train`: the entropy-weighted SFT/DPO/KTO training stage.
//!
//! * [`trainer`]: the training loop (`train`), read top to bottom.
//! * [`loss`]: the weighted losses and their gradient coefficients, as pure functions.
//! * [`data`]: train.jsonl → tokenised examples → packed micro-batches.
//! * [`optim`]: AdamW hyperparameters, learning-rate schedules, gradient clipping.
//! * [`engine`]: the [`Engine`] trait and its two implementations (the CPU engine with
//!   hand-written backward passes, and candle autograd for CUDA).
//! * [`checkpoint`]: final checkpoints (HF folder or PEFT adapter) and resume checkpoints.
//! * [`reference`]: DPO/KTO's frozen reference log-probabilities, cached beside the data.
//! * [`identity`]: the fingerprints that decide whether a rerun resumes, skips or refuses.
//! * [`memory`]: the peak-memory estimate by part (`--estimate-memory`, checkpointing "auto").
//! * [`board`]: the step metrics as TensorBoard event files (`train.report_to`, `east run`).
//! * [`config`]: the `[train]` section.

pub mod board;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod engine;
pub mod identity;
pub mod loss;
pub mod memory;
pub mod optim;
pub mod reference;
pub mod trainer;

pub use board::{SharedBoard, TRAIN_PREFIX};
pub use config::TrainConfig;
pub use engine::{Engine, EngineChoice, LoraSpec, Packed, RowStats};
pub use trainer::{train, TrainJob, TrainReport};
