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
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamW {
    /// One step for one tensor (PyTorch's `torch.optim.AdamW`, non-fused): with `t` the step
    /// number after increment (1 for the first step),
    /// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
    /// `p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)`.
    /// `g` is the raw gradient times `grad_scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn update<T: super::cpu::Float>(&self, t: u64, lr: f64, grad_scale: f64, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
        use rayon::prelude::*;
        let bc1 = 1.0 - self.beta1.powi(t as i32);
        let bc2 = 1.0 - self.beta2.powi(t as i32);
        let step = T::from_f64c(lr / bc1);
        let bc2_sqrt = T::from_f64c(bc2.sqrt());
        let decay = T::from_f64c(1.0 - lr * self.weight_decay);
        let (b1, b2) = (T::from_f64c(self.beta1), T::from_f64c(self.beta2));
        let (c1, c2) = (T::from_f64c(1.0 - self.beta1), T::from_f64c(1.0 - self.beta2));
        let eps = T::from_f64c(self.eps);
        let scale = T::from_f64c(grad_scale);
        let chunk = 1 << 14;
        p.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk).zip(v.par_chunks_mut(chunk)))
            .for_each(|((pc, gc), (mc, vc))| {
                for (((pi, &gi), mi), vi) in pc.iter_mut().zip(gc).zip(mc.iter_mut()).zip(vc.iter_mut()) {
                    let gi = gi * scale;
                    *pi *= decay;
                    *mi = b1 * *mi + c1 * gi;
                    *vi = b2 * *vi + c2 * gi * gi;
                    let denom = vi.sqrt() / bc2_sqrt + eps;
                    *pi -= step * *mi / denom;
                }
            });
    }
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

impl Schedule {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            "constant" => Schedule::Constant,
            other => anyhow::bail!("unknown schedule `{other}` (linear, cosine or constant)"),
        })
    }
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
        Schedule::Linear => ((total as f64 - s) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0),
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
    fn adamw_matches_a_hand_computed_step() {
        // Two steps on p = [1, -2], grads [0.5, 0.25] then [-1, 0.5], lr 0.1, wd 0.01.
        let opt = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        opt.update(1, 0.1, 1.0, &mut p, &[0.5, 0.25], &mut m, &mut v);
        // step 1: p·(1 − 0.001); m = 0.1 g, v = 0.001 g²; m̂ = g, v̂ = g² → update = lr·g/(|g| + eps)
        let want0 = 1.0 * (1.0 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8);
        let want1 = -2.0 * (1.0 - 0.001) - 0.1 * 0.25 / (0.25 + 1e-8);
        assert!((p[0] - want0).abs() < 1e-12 && (p[1] - want1).abs() < 1e-12, "{p:?}");
        opt.update(2, 0.1, 1.0, &mut p, &[-1.0, 0.5], &mut m, &mut v);
        let m0 = 0.9 * 0.05 - 0.1;
        let v0: f64 = 0.999 * 0.001 * 0.25 + 0.001 * 1.0;
        let want0b = want0 * (1.0 - 0.001) - 0.1 / (1.0 - 0.81) * m0 / (v0.sqrt() / (1.0 - 0.998001f64).sqrt() + 1e-8);
        assert!((p[0] - want0b).abs() < 1e-12, "{} vs {want0b}", p[0]);
        // the same numbers PyTorch gives (torch.optim.AdamW, float64; see scripts/reference/adamw_reference.py)
        assert!((p[0] - 0.9347113542386).abs() < 1e-12 && (p[1] + 2.1924201961448).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn schedule_matches_hugging_face() {
        // total 10 steps, warmup ceil(10·0.1) = 1
        assert_eq!(warmup_steps(10, 0.1), 1);
        let lrs: Vec<f64> = (0..10).map(|s| lr_at(1.0, s, 10, 1, Schedule::Linear)).collect();
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
