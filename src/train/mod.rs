//! `east train`: the entropy-weighted SFT/DPO/KTO training stage.

pub mod autograd;
pub mod cpu;
pub mod data;
pub mod engine;
pub mod loss;
pub mod optim;

pub use engine::{Engine, LoraSpec, Packed, RowStats};
