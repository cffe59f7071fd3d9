//! AdamW (PyTorch semantics, decoupled weight decay), the learning-rate schedules of
//! Hugging Face's Trainer, and global gradient-norm clipping.

use serde::{Deserialize, Serialize};

/// AdamW hyperparameters (defaults: Hugging Face TrainingArguments).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear decay to 0 (Hugging Face's default).
    Linear,
    /// Half a cosine down to 0.
    Cosine,
    /// The peak rate until the end.
    Constant,
}

/// Warmup steps for a ratio, as Hugging Face computes them: `ceil(total · ratio)`.
pub fn warmup_steps(total: usize, ratio: f64) -> usize {
    (total as f64 * ratio).ceil() as usize
}

/// The learning rate of optimiser step `step` (0-based), exactly as Hugging Face's
/// `get_{linear,cosine,constant}_schedule_with_warmup` + Trainer give it: the scheduler is
/// advanced after each step, so step 0 runs at `lambda(0)` (0 when there is warmup).
pub fn lr_at(base: f64, step: usize, total: usize, warmup: usize, schedule: Schedule) -> f64 {
    let s = step as f64;
    if step < warmup {
        return base * s / warmup.max(1) as f64;
    }
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => {
            ((total as f64 - s) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
        }
        Schedule::Cosine => {
            let progress = (s - warmup as f64) / (total.saturating_sub(warmup)).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    };
    base * factor
}

/// The factor gradients are multiplied by so their global norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_hugging_face() {
        // total 10 steps, warmup ceil(10·0.1) = 1
        assert_eq!(warmup_steps(10, 0.1), 1);
        let lrs: Vec<f64> = (0..10)
            .map(|s| lr_at(1.0, s, 10, 1, Schedule::Linear))
            .collect();
        assert_eq!(lrs[0], 0.0);
        assert!((lrs[1] - 1.0).abs() < 1e-12);
        assert!((lrs[5] - 5.0 / 9.0).abs() < 1e-12);
        assert!((lrs[9] - 1.0 / 9.0).abs() < 1e-12);
        assert!((lr_at(1.0, 1, 10, 1, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 10, 10, 1, Schedule::Cosine)).abs() < 1e-12);
        assert_eq!(lr_at(2.0, 7, 10, 0, Schedule::Constant), 2.0);
        assert_eq!(warmup_steps(3, 0.1), 1);
        assert_eq!(warmup_steps(20, 0.0), 0);
    }

    #[test]
    fn clipping_follows_pytorch() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    }
}
