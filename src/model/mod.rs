//! Llama-family models for east: configuration, weights loading (Hugging Face hub, local
//! safetensors folders, GGUF), tokenizers, chat prompts, a differentiable forward for
//! training/scoring and a KV-cached batched forward for sampling.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use east::model::{load, KvCache, tokenizer};
//! # fn main() -> anyhow::Result<()> {
//! let dev = Device::Cpu;
//! let m = load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &dev, DType::F32)?;
//! let prompt = m.chat.east_prompt("What is 2 + 3?");
//! let ids = tokenizer::encode(&m.tokenizer, &prompt)?;
//! let mut cache = KvCache::new(&m.config, 1, ids.len() + 64, vec![0], DType::F32, &dev)?;
//! let logits = m.model.forward_step(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, &mut cache)?;
//! # Ok(()) }
//! ```
//!
//! Conventions: token ids are `u32`; `forward_step` returns f32 logits `(B, vocab)` of the last
//! column; `forward_hidden` returns final-norm hidden states `(B, T, hidden)` and `logits`
//! maps them to the vocabulary.

#[doc(hidden)]
pub mod attention;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod load;
pub mod testing;
pub mod tokenizer;

pub use cache::KvCache;
pub use chat::{east_messages, ChatFormat, Message, EAST_SYSTEM_PROMPT};
pub use config::{LlamaConfig, RopeScaling};
pub use error::ModelError;
pub use llama::{LinearAdapter, LinearLayer, Llama};
pub use load::{load, LoadedModel, ModelSource};
pub use tokenizer::Tokenizer;

/// The device east runs on: CUDA 0 when built with `--features cuda` and a GPU is present,
/// else the CPU.
pub fn default_device() -> candle_core::Device {
    candle_core::Device::cuda_if_available(0).unwrap_or(candle_core::Device::Cpu)
}

/// The weight dtype east uses on a device: bf16 on CUDA, f32 on the CPU (candle's CPU bf16
/// matmul converts to f32 on every call).
pub fn default_dtype(device: &candle_core::Device) -> candle_core::DType {
    if device.is_cuda() {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    }
}
