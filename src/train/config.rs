//! `[train]`: the weighted loss, the optimiser and its schedule, LoRA, and the engine.

use serde::{Deserialize, Serialize};

use super::engine::{EngineChoice, LoraSpec};
use super::loss::{LossConfig, Weighting};
use super::optim::Schedule;
use crate::schema::Loss;
use crate::tensorboard::ReportTo;

/// The DPO/KTO β of TRL's `DPOConfig` and `KTOConfig`, for a config that sets none.
pub const DEFAULT_BETA: f64 = 0.1;

/// `[train]`: the weighted loss and its optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training objective (decides the rows `east weight` writes).
    pub loss: Loss,
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Examples per forward pass (gradients accumulate up to `batch_size`).
    pub micro_batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// DPO/KTO temperature (TRL's default; the paper's values depend on the model: its configs
    /// set them).
    pub beta: f64,
    /// KTO weights of desirable and undesirable examples.
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// Share of the steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    /// Learning-rate decay after warmup.
    pub schedule: Schedule,
    /// Decoupled AdamW weight decay.
    pub weight_decay: f64,
    /// Gradients are scaled down to this global norm.
    pub max_grad_norm: f64,
    /// Stop after this many optimiser steps (overrides `epochs`, as in Hugging Face).
    pub max_steps: Option<usize>,
    /// Truncate prompt + response to this many tokens.
    pub max_length: usize,
    /// Where example weights come from.
    pub weighting: Weighting,
    /// Train LoRA adapters instead of every weight.
    pub lora: bool,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Projections that get adapters.
    pub lora_targets: Vec<String>,
    /// With LoRA, also write a merged full checkpoint (`out/merged/`).
    pub merge: bool,
    /// Seeds the epoch shuffles, LoRA initialisation and dropout.
    pub seed: u64,
    /// The training engine.
    pub engine: EngineChoice,
    /// Write a resume checkpoint every this many optimiser steps (0: never).
    pub save_steps: usize,
    /// Activation checkpointing in the autograd engine: keep each decoder layer's input only
    /// and recompute the layer in the backward pass (`false`, `true`, or `"auto"`: on when the
    /// memory estimate without it exceeds `memory_limit` or the GPU's free memory).
    pub gradient_checkpointing: Checkpointing,
    /// Memory budget in GiB for `gradient_checkpointing = "auto"` (unset: the CUDA device's
    /// free memory; on the CPU, no limit).
    pub memory_limit: Option<f64>,
    /// Dashboards the step metrics go to besides `train_log.jsonl` (TRL's `report_to`):
    /// `["tensorboard"]` writes event files in `<out>/tensorboard/`. Does not change the weights.
    pub report_to: ReportTo,
}

/// `train.gradient_checkpointing`: `false`, `true` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    Off,
    On,
    /// On when the estimated peak without it exceeds the memory available.
    #[default]
    Auto,
}

impl std::str::FromStr for Checkpointing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "false" | "off" => Ok(Self::Off),
            "true" | "on" => Ok(Self::On),
            "auto" => Ok(Self::Auto),
            other => Err(format!("expected false, true or auto, got `{other}`")),
        }
    }
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "false",
            Self::On => "true",
            Self::Auto => "auto",
        })
    }
}

impl Serialize for Checkpointing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::On => s.serialize_bool(true),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Checkpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Bool(true) => Ok(Self::On),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: Loss::Sft,
            epochs: 3,
            batch_size: 16,
            micro_batch_size: 2,
            lr: 2e-6,
            beta: DEFAULT_BETA,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            warmup_ratio: 0.1,
            schedule: Schedule::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            max_steps: None,
            max_length: 2048,
            weighting: Weighting::Data,
            lora: false,
            lora_rank: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_targets: super::engine::PROJECTIONS.map(String::from).to_vec(),
            merge: false,
            seed: 42,
            engine: EngineChoice::Auto,
            save_steps: 50,
            gradient_checkpointing: Checkpointing::Auto,
            memory_limit: None,
            report_to: ReportTo::default(),
        }
    }
}

impl TrainConfig {
    /// The loss's hyperparameters.
    pub fn loss_config(&self) -> LossConfig {
        LossConfig {
            loss: self.loss,
            beta: self.beta,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
            weighting: self.weighting,
        }
    }

    /// The adapters to train, with `lora = true`.
    pub fn lora_spec(&self) -> Option<LoraSpec> {
        self.lora.then(|| LoraSpec {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        })
    }

    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let finite = |key: &'static str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err((key, format!("must be finite, got {v}")))
            }
        };
        if self.epochs == 0 {
            return Err(("epochs", "must be at least 1".into()));
        }
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            return Err(("batch_size", "batch sizes must be at least 1".into()));
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            return Err((
                "micro_batch_size",
                format!(
                    "must divide train.batch_size ({}), got {}",
                    self.batch_size, self.micro_batch_size
                ),
            ));
        }
        finite("lr", self.lr)?;
        if self.lr <= 0.0 {
            return Err(("lr", format!("must be > 0, got {}", self.lr)));
        }
        finite("beta", self.beta)?;
        if self.beta <= 0.0 {
            return Err(("beta", format!("must be > 0, got {}", self.beta)));
        }
        for (key, v) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            finite(key, v)?;
            if v < 0.0 {
                return Err((key, format!("must be ≥ 0, got {v}")));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err((
                "warmup_ratio",
                format!("must be in [0, 1), got {}", self.warmup_ratio),
            ));
        }
        finite("weight_decay", self.weight_decay)?;
        if self.weight_decay < 0.0 {
            return Err((
                "weight_decay",
                format!("must be ≥ 0, got {}", self.weight_decay),
            ));
        }
        finite("max_grad_norm", self.max_grad_norm)?;
        if self.max_grad_norm <= 0.0 {
            return Err((
                "max_grad_norm",
                format!("must be > 0, got {}", self.max_grad_norm),
            ));
        }
        if self.max_steps == Some(0) {
            return Err(("max_steps", "must be at least 1 when set".into()));
        }
        if self.max_length < 2 {
            return Err(("max_length", "must be at least 2".into()));
        }
        if let Some(m) = self.memory_limit {
            if !m.is_finite() || m <= 0.0 {
                return Err(("memory_limit", format!("must be > 0 GiB, got {m}")));
            }
        }
        self.validate_lora()
    }

    fn validate_lora(&self) -> Result<(), (&'static str, String)> {
        if self.lora_rank == 0 {
            return Err(("lora_rank", "must be at least 1".into()));
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha <= 0.0 {
            return Err((
                "lora_alpha",
                format!("must be > 0, got {}", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err((
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        if self.lora_targets.is_empty() {
            return Err(("lora_targets", "must name at least one module".into()));
        }
        let known = super::engine::PROJECTIONS;
        if let Some(bad) = self
            .lora_targets
            .iter()
            .find(|m| !known.contains(&m.as_str()))
        {
            return Err((
                "lora_targets",
                format!("unknown module `{bad}` (known: {})", known.join(", ")),
            ));
        }
        if self.merge && !self.lora {
            return Err(("merge", "only applies with train.lora = true (full fine-tuning writes a full checkpoint anyway)".into()));
        }
        Ok(())
    }
}
