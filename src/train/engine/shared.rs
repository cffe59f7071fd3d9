//! What both training engines share: the float types they compute in, LoRA dropout masks (the
//! same mask on the CPU and on a GPU, regenerated in the backward instead of stored), the seed
//! mixing that gives every (layer, projection) its own dropout stream, and the AdamW update of
//! one tensor on the host.

use rayon::prelude::*;

use crate::train::optim::AdamW;

/// The element types the engine runs in.
pub trait Float:
    num_traits::Float
    + candle_core::WithDType
    + Default
    + std::fmt::Debug
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Send
    + Sync
    + 'static
{
    fn from_f64c(x: f64) -> Self;
    fn to_f64c(self) -> f64;
    /// `exp(x)` (the standard library's; a branch-free polynomial measured no faster here,
    /// since baseline x86-64 code does not vectorise it).
    fn fexp(self) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn from_f64c(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64c(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
}

impl Float for f64 {
    #[inline(always)]
    fn from_f64c(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64c(self) -> f64 {
        self
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
}

/// A deterministic keep/drop decision for dropout element `i` of stream `seed`
/// (SplitMix64 hash; the same mask is regenerated in the backward).
#[inline(always)]
pub fn dropout_keep(seed: u64, i: u64, p: f64) -> bool {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) >= p
}

/// `out = x · mask / (1 − p)` with the mask of stream `seed`.
pub fn dropout<T: Float>(x: &[T], out: &mut [T], seed: u64, p: f64) {
    let scale = T::from_f64c(1.0 / (1.0 - p));
    let c = 1 << 14;
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .enumerate()
        .for_each(|(ci, (o, xs))| {
            for (j, (a, &b)) in o.iter_mut().zip(xs).enumerate() {
                *a = if dropout_keep(seed, (ci * c + j) as u64, p) {
                    b * scale
                } else {
                    T::zero()
                };
            }
        });
}

/// The dropout stream of projection `which` of layer `layer` within the stream `seed`.
pub fn layer_seed(seed: u64, layer: usize, which: usize) -> u64 {
    let b = (layer * 8 + which) as u64;
    let mut z = seed ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 33)
}

/// One AdamW step for one tensor (PyTorch's `torch.optim.AdamW`, non-fused): with `t` the step
/// number after increment (1 for the first step),
/// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)`.
/// `g` is the raw gradient times `grad_scale`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<T: Float>(
    opt: &AdamW,
    t: u64,
    lr: f64,
    grad_scale: f64,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    use rayon::prelude::*;
    let bc1 = 1.0 - opt.beta1.powi(t as i32);
    let bc2 = 1.0 - opt.beta2.powi(t as i32);
    let step = T::from_f64c(lr / bc1);
    let bc2_sqrt = T::from_f64c(bc2.sqrt());
    let decay = T::from_f64c(1.0 - lr * opt.weight_decay);
    let (b1, b2) = (T::from_f64c(opt.beta1), T::from_f64c(opt.beta2));
    let (c1, c2) = (T::from_f64c(1.0 - opt.beta1), T::from_f64c(1.0 - opt.beta2));
    let eps = T::from_f64c(opt.eps);
    let scale = T::from_f64c(grad_scale);
    let chunk = 1 << 14;
    p.par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(m.par_chunks_mut(chunk).zip(v.par_chunks_mut(chunk)))
        .for_each(|((pc, gc), (mc, vc))| {
            for (((pi, &gi), mi), vi) in pc.iter_mut().zip(gc).zip(mc.iter_mut()).zip(vc.iter_mut())
            {
                let gi = gi * scale;
                *pi *= decay;
                *mi = b1 * *mi + c1 * gi;
                *vi = b2 * *vi + c2 * gi * gi;
                let denom = vi.sqrt() / bc2_sqrt + eps;
                *pi -= step * *mi / denom;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        // Two steps on p = [1, -2], grads [0.5, 0.25] then [-1, 0.5], lr 0.1, wd 0.01.
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut p = vec![1.0f64, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_update(&opt, 1, 0.1, 1.0, &mut p, &[0.5, 0.25], &mut m, &mut v);
        // step 1: p·(1 − 0.001); m = 0.1 g, v = 0.001 g²; m̂ = g, v̂ = g² → update = lr·g/(|g| + eps)
        let want0 = 1.0 * (1.0 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8);
        let want1 = -2.0 * (1.0 - 0.001) - 0.1 * 0.25 / (0.25 + 1e-8);
        assert!(
            (p[0] - want0).abs() < 1e-12 && (p[1] - want1).abs() < 1e-12,
            "{p:?}"
        );
        adamw_update(&opt, 2, 0.1, 1.0, &mut p, &[-1.0, 0.5], &mut m, &mut v);
        let m0 = 0.9 * 0.05 - 0.1;
        let v0: f64 = 0.999 * 0.001 * 0.25 + 0.001 * 1.0;
        let want0b = want0 * (1.0 - 0.001)
            - 0.1 / (1.0 - 0.81) * m0 / (v0.sqrt() / (1.0 - 0.998001f64).sqrt() + 1e-8);
        assert!((p[0] - want0b).abs() < 1e-12, "{} vs {want0b}", p[0]);
        // the same numbers PyTorch gives (torch.optim.AdamW, float64; see scripts/reference/adamw_reference.py)
        assert!(
            (p[0] - 0.9347113542386).abs() < 1e-12 && (p[1] + 2.1924201961448).abs() < 1e-12,
            "{p:?}"
        );
    }

    #[test]
    fn dropout_masks_are_reproducible_and_have_the_right_rate() {
        let kept = (0..100_000u64)
            .filter(|&i| dropout_keep(7, i, 0.25))
            .count();
        assert!((kept as f64 / 1e5 - 0.75).abs() < 0.01, "{kept}");
        assert!((0..1000u64).all(|i| dropout_keep(7, i, 0.25) == dropout_keep(7, i, 0.25)));
    }
}
