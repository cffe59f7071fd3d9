//! The models east runs (the Llama, Mistral, Qwen2 and Qwen3 families): configuration, weights
//! loading (Hugging Face hub, local safetensors folders, GGUF), tokenizers, chat prompts, a
//! differentiable forward for training/scoring and a KV-cached batched forward for sampling.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use east::model::{load, KvCache};
//! # fn main() -> anyhow::Result<()> {
//! let dev = Device::Cpu;
//! let m = load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &dev, DType::F32)?;
//! let ids = m.east_prompt_ids("What is 2 + 3?")?;
//! let mut cache = KvCache::new(&m.config, 1, ids.len() + 64, vec![0], DType::F32, &dev)?;
//! let logits = m.model.forward_step(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?, &mut cache)?;
//! # Ok(()) }
//! ```
//!
//! # Map
//! * [`load()`] (`load.rs`): `--model` spec → [`LoadedModel`] {model, tokenizer, config, chat,
//!   eos_ids, bos_id, pad_id, …}; typed [`ModelError`]s; [`load::save_checkpoint`].
//! * [`LlamaConfig`] (`config.rs`): shapes, RoPE, special tokens and the [`Arch`]: what the
//!   families differ in (q/k/v and o biases, per-head q/k norms, sliding window), read from
//!   config.json or GGUF metadata; every forward, checkpoints, the LoRA targets, the memory
//!   estimate and the GGUF export read it.
//! * [`Llama`] (`llama.rs`): the decoder of every family: HF tensor names, GQA, RoPE
//!   (rotate_half, llama3/linear scaling), biases and q/k norms as the [`Arch`] says, tied or
//!   untied head.
//!   - [`Llama::forward_hidden`] `(B,T)` ids + optional `(B,T)` mask → `(B,T,hidden)` final-norm
//!     states, every op differentiable (norms, RoPE, softmax and SwiGLU through
//!     [`train_ops`], one graph node each with a hand-written backward); [`Llama::logits`] maps any `(…, hidden)` to the vocab
//!     (apply per chunk of positions to bound memory).
//!   - [`Llama::forward_step`] `(B,T)` ids + [`KvCache`] → `(B,vocab)` f32 logits of the last
//!     column; prefill (left-padded, `T` = prompt length) and decode (`T = 1`).
//!   - [`LinearLayer`] / [`LinearAdapter`]: every projection is a `LinearLayer`; attach an
//!     adapter (LoRA) by HF module name via [`Llama::linear_layers_mut`]. Frozen weights go
//!     through a matmul whose backward skips the weight gradient.
//!   - [`Llama::trainable_copy`] (VarMap-backed copy for full fine-tuning),
//!     [`Llama::named_tensors`] (HF names, for checkpoints), [`Llama::expected_tensors`].
//! * [`ModelConfig`] (`runtime.rs`): the `[model]` section, [`DeviceChoice`], [`DTypeChoice`],
//!   [`load_model`] (a `[model]` section → weights with adapters merged, on its device).
//! * [`KvCache`] (`cache.rs`): preallocated `(B, n_kv, capacity, D)` per layer, shared column
//!   count, per-row left padding, `select_rows` / `repeat_rows`, `bytes_needed`; f32 or f16.
//! * [`chat`]: [`Chat`] executes the model's own Jinja chat template (minijinja, as
//!   transformers' `apply_chat_template`); `east_prompt` (style `chat` or `authors`),
//!   `render_training` (TRL's prompt/completion split); built-in [`ChatFormat`]s only for
//!   template-less models; [`EAST_SYSTEM_PROMPT`].
//! * [`tokenizer`]: `encode` (no special tokens added; those spelled in the text are parsed),
//!   `decode`, GGUF → `tokenizers::Tokenizer` (byte-level BPE, `smollm` / `llama-bpe` / `gpt2`
//!   pre-tokenizers).
//! * [`gguf`]: dequantization, llama.cpp ↔ HF names (one table), Q/K un-permutation of
//!   `llama` GGUFs.
//! * [`testing`]: a tiny seeded model folder of any family for tests
//!   ([`testing::write_tiny_model`]).
//!
//! # Conventions
//! Token ids are `u32`. Weights: f32 on the CPU (candle's CPU bf16 matmul converts on every
//! call), bf16 on CUDA ([`default_dtype`]). On the CPU, frozen projection weights are stored
//! transposed `(in, out)` for gemm's sake (`LinearLayer::weight` still shows `(out, in)`).
//!
//! # Speed (CPU)
//! A decode step for 128 rows is gemm (AVX-512 via gemm's `x86-v4` feature, enabled in
//! Cargo.toml) plus reading the whole KV cache: a dedicated kernel (`attention.rs`) does
//! `softmax(q·Kᵀ)·V` per (row, kv head) straight from the cache. See benches/decode.rs.

#[doc(hidden)]
pub mod attention;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod load;
pub mod lora;
pub mod packed;
pub mod runtime;
pub mod testing;
pub mod tokenizer;
pub mod train_ops;

pub use cache::KvCache;
pub use chat::{
    east_messages, Chat, ChatFormat, ChatSettings, Message, PromptStyle, EAST_SYSTEM_PROMPT,
};
pub use config::{Arch, Family, LlamaConfig, RopeScaling, SlidingWindow};
pub use error::ModelError;
pub use llama::{LayerFn, LayerRunner, LinearAdapter, LinearLayer, Llama};
pub use load::{load, load_text, LoadedModel, ModelSource, ModelText};
pub use runtime::{load_model, load_model_text, DTypeChoice, DeviceChoice, ModelConfig};
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
