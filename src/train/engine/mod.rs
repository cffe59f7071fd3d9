//! What a training engine does, independent of how: score packed rows, keep what the backward
//! needs, back-propagate per-row loss coefficients, clip and step AdamW.
//!
//! Every loss of east is, for its gradient, `Σ_rows c_r · log π(response_r)` with per-row
//! coefficients `c_r` that depend only on per-row statistics (summed log-probabilities, token
//! counts, the WPO term). So the engine never sees the loss: the trainer gets [`RowStats`]
//! from [`Engine::forward`], computes the loss and the coefficients (`train::loss`), and calls
//! [`Engine::backward`] with them. When the coefficients are known before the forward (SFT with
//! data weights), they are passed to the forward and the output layer's gradient is computed in
//! the same pass (the logits of a chunk of positions are never needed twice).
//!
//! The vocabulary projection is computed in chunks of positions and only at the positions that
//! predict a response token, so `tokens × vocab` logits are never materialised.

pub mod autograd;
pub mod cpu;
pub mod inplace_adamw;
pub mod profile;
pub mod shared;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::optim::AdamW;

/// Which engine trains (`train.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// The CPU engine for f32/f64 weights on the CPU, else candle autograd.
    #[default]
    Auto,
    /// The CPU engine (hand-written backward passes; f32 or f64 on the CPU only).
    Cpu,
    /// Candle autograd with east's training ops (CUDA, or any dtype).
    Autograd,
}

/// One predicted token: the hidden state at packed position `pos` predicts token `id` of row `row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pos: usize,
    pub id: u32,
    pub row: usize,
}

/// Rows of token ids laid end to end (no padding): row `r` is `tokens[rows[r]..rows[r + 1]]`,
/// its positions start at 0. `targets` are sorted by position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub tokens: Vec<u32>,
    pub rows: Vec<usize>,
    pub targets: Vec<Target>,
}

impl Packed {
    pub fn new() -> Self {
        Packed {
            tokens: Vec::new(),
            rows: vec![0],
            targets: Vec::new(),
        }
    }

    /// Appends a row `prompt ++ response` whose response tokens are the targets.
    /// The prompt must not be empty (the first response token needs a position to predict it).
    pub fn push(&mut self, prompt: &[u32], response: &[u32]) {
        assert!(
            !prompt.is_empty(),
            "a packed row needs at least one prompt token"
        );
        let row = self.rows.len() - 1;
        let base = self.tokens.len();
        self.tokens.extend_from_slice(prompt);
        self.tokens.extend_from_slice(response);
        for (i, &id) in response.iter().enumerate() {
            self.targets.push(Target {
                pos: base + prompt.len() - 1 + i,
                id,
                row,
            });
        }
        self.rows.push(self.tokens.len());
    }

    pub fn num_rows(&self) -> usize {
        self.rows.len() - 1
    }

    pub fn row_len(&self, r: usize) -> usize {
        self.rows[r + 1] - self.rows[r]
    }

    pub fn max_row_len(&self) -> usize {
        (0..self.num_rows())
            .map(|r| self.row_len(r))
            .max()
            .unwrap_or(0)
    }

    /// Position of every token within its row.
    pub fn positions(&self) -> Vec<u32> {
        let mut pos = Vec::with_capacity(self.tokens.len());
        for r in 0..self.num_rows() {
            pos.extend((0..self.row_len(r)).map(|p| p as u32));
        }
        pos
    }
}

/// Per-row statistics of the response tokens under the current policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowStats {
    /// `Σ_t log π(y_t | x, y_<t)`.
    pub logp: f64,
    /// Number of response tokens.
    pub tokens: usize,
    /// `Σ_t [log π(y_t|·) − log Σ_v π(v|·)²]` (the WPO weight's exponent, times `tokens`).
    pub wpo: f64,
}

/// LoRA settings (PEFT semantics: `W x + (α/r) · B A dropout(x)`, `A` Kaiming-uniform, `B` 0).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names among q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub targets: Vec<String>,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The projections of a decoder layer, in the order engines index them (the LoRA targets).
pub use crate::model::lora::LORA_TARGETS as PROJECTIONS;

/// HF module path of projection `which` (index into [`PROJECTIONS`]) of layer `layer`.
pub fn projection_path(layer: usize, which: usize) -> String {
    let group = if which < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{layer}.{group}.{}", PROJECTIONS[which])
}

/// PEFT's name of a LoRA matrix: `base_model.model.{module}.lora_A.weight` (`ab` = "A" or "B").
pub fn peft_name(layer: usize, which: usize, ab: &str) -> String {
    format!(
        "base_model.model.{}.lora_{ab}.weight",
        projection_path(layer, which)
    )
}

/// A trainable tensor's name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The state an engine needs to resume: trainable parameters and AdamW moments (all f32 or
/// the engine's float type, on the CPU), and the number of optimiser steps taken.
pub struct EngineState {
    pub step: u64,
    pub params: Vec<(String, Tensor)>,
    pub exp_avg: Vec<(String, Tensor)>,
    pub exp_avg_sq: Vec<(String, Tensor)>,
}

pub trait Engine {
    /// Response statistics of every row; no gradient, nothing kept (reference log-probs, KL rows).
    fn score(&mut self, batch: &Packed) -> anyhow::Result<Vec<RowStats>>;

    /// Forward pass keeping what [`Engine::backward`] needs. With `coefs` (one per row) the
    /// output layer's gradient is computed now and `backward` must be called with `None`.
    /// `dropout_seed` seeds LoRA dropout (ignored without it).
    fn forward(
        &mut self,
        batch: &Packed,
        coefs: Option<&[f64]>,
        dropout_seed: u64,
    ) -> anyhow::Result<Vec<RowStats>>;

    /// Accumulates into the gradients `d/dθ Σ_r c_r · logp_r` for the last forward.
    fn backward(&mut self, coefs: Option<&[f64]>) -> anyhow::Result<()>;

    /// Drops what the last forward kept (e.g. after a non-finite loss).
    fn discard(&mut self);

    /// `Σ g²` over the accumulated gradients of every trainable tensor.
    fn grad_sq_norm(&self) -> anyhow::Result<f64>;

    /// One AdamW step on the gradients scaled by `grad_scale` (clipping), then zero them.
    fn step(&mut self, opt: &AdamW, lr: f64, grad_scale: f64) -> anyhow::Result<()>;

    /// Trainable tensors, in a fixed order.
    fn trainable(&self) -> Vec<ParamInfo>;

    /// Snapshot for a resume checkpoint.
    fn state(&self) -> anyhow::Result<EngineState>;

    /// Restores [`Engine::state`] (names and shapes must match).
    fn load_state(&mut self, state: EngineState) -> anyhow::Result<()>;

    /// Every base weight under its HF name (frozen base for LoRA), on the CPU.
    fn base_weights(&self) -> anyhow::Result<Vec<(String, Tensor)>>;

    /// The LoRA matrices under their PEFT names (None without LoRA).
    fn lora_weights(&self) -> anyhow::Result<Option<Vec<(String, Tensor)>>>;

    /// Training is over: frees the gradients and the optimiser moments (twice the trainable
    /// weights) so writing the checkpoint does not stack its copies on top of them. Only the
    /// weight accessors may be used afterwards.
    fn release_training_state(&mut self);

    /// Seconds and calls per phase when the engine was asked to profile (see
    /// [`crate::train::profile`]); empty otherwise.
    fn phase_times(&self) -> std::collections::BTreeMap<&'static str, (f64, u64)> {
        std::collections::BTreeMap::new()
    }
}
