//! `east train`: the entropy-weighted SFT/DPO/KTO training stage.

pub mod autograd;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod engine;
pub mod inplace_adamw;
pub mod loss;
pub mod optim;
pub mod profile;
pub mod trainer;

pub use engine::{Engine, LoraSpec, Packed, RowStats};
pub use trainer::{train, TrainJob, TrainReport};
