//! Turning a step's logits into next tokens: greedy, or temperature + nucleus (top-p) sampling
//! driven by one uniform number per row, so every (question, sample) stream draws from its own
//! generator and the result never depends on which other rows share the batch.

use rayon::prelude::*;

/// How a row picks its next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables the filter.
    pub top_p: f64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// Draws a token from `softmax(logits / temperature)` restricted to the nucleus `top_p`, by
/// inverse transform of the uniform `u` in [0, 1).
pub fn sample_one(logits: &[f32], sampling: Sampling, u: f64) -> u32 {
    if sampling.is_greedy() {
        return argmax(logits);
    }
    let inv_t = 1.0 / sampling.temperature;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(logits);
    }
    // Unnormalised probabilities in f64: the sums over a 128k vocabulary stay exact enough.
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l.is_nan() {
                0.0
            } else {
                (((l - max) as f64) * inv_t).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if sampling.top_p >= 1.0 {
        return inverse_cdf(weights.iter().cloned().enumerate(), u * total)
            .map_or_else(|| argmax(logits), |i| i as u32);
    }
    // Nucleus: the smallest set of most likely tokens whose mass reaches top_p. A token with
    // probability below (1 − top_p)/V can never be in it (everything likelier already holds
    // more than top_p), so only the few tokens above that bound are sorted.
    let bound = total * (1.0 - sampling.top_p) / weights.len() as f64;
    let mut candidates: Vec<(usize, f64)> = weights
        .iter()
        .cloned()
        .enumerate()
        .filter(|&(_, w)| w >= bound)
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let target = sampling.top_p * total;
    let mut mass = 0.0;
    let mut keep = candidates.len();
    for (k, &(_, w)) in candidates.iter().enumerate() {
        mass += w;
        if mass >= target {
            keep = k + 1;
            break;
        }
    }
    candidates.truncate(keep);
    let kept: f64 = candidates.iter().map(|&(_, w)| w).sum();
    inverse_cdf(candidates.into_iter(), u * kept).map_or_else(|| argmax(logits), |i| i as u32)
}

/// The first index whose cumulative weight exceeds `target`; when rounding left the target just
/// past the total, the last index with weight; None when no weight is positive.
pub(crate) fn inverse_cdf(
    weights: impl Iterator<Item = (usize, f64)>,
    target: f64,
) -> Option<usize> {
    let mut acc = 0.0;
    let mut last = None;
    for (i, w) in weights {
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = Some(i);
        if acc > target {
            return Some(i);
        }
    }
    last
}

/// Samples every row of a `(rows × vocab)` row-major logits buffer in parallel; `uniforms[r]` is
/// row r's draw (ignored when greedy).
pub fn sample_rows(logits: &[f32], vocab: usize, sampling: Sampling, uniforms: &[f64]) -> Vec<u32> {
    logits
        .par_chunks(vocab)
        .zip(uniforms.par_iter())
        .map(|(row, &u)| sample_one(row, sampling, u))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
        assert_eq!(sample_one(&[0.0, 2.0, 1.0], Sampling::GREEDY, 0.99), 1);
    }

    #[test]
    fn inverse_cdf_follows_the_softmax() {
        // logits ln(1), ln(2), ln(7) at T = 1 → p = (0.1, 0.2, 0.7)
        let logits = [0.0f32, 2f32.ln(), 7f32.ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        assert_eq!(sample_one(&logits, s, 0.05), 0);
        assert_eq!(sample_one(&logits, s, 0.15), 1);
        assert_eq!(sample_one(&logits, s, 0.29), 1);
        assert_eq!(sample_one(&logits, s, 0.31), 2);
        assert_eq!(sample_one(&logits, s, 0.999), 2);
    }

    #[test]
    fn temperature_sharpens() {
        // T = 0.5 squares the probabilities: (1, 4, 49)/54. The logits are f32, so the
        // boundaries are probed a little (1e-5) away from where exact arithmetic puts them.
        let logits = [0.0f32, 2f32.ln(), 7f32.ln()];
        let s = Sampling {
            temperature: 0.5,
            top_p: 1.0,
        };
        assert_eq!(sample_one(&logits, s, 1.0 / 54.0 - 1e-5), 0);
        assert_eq!(sample_one(&logits, s, 1.0 / 54.0 + 1e-5), 1);
        assert_eq!(sample_one(&logits, s, 5.0 / 54.0 - 1e-5), 1);
        assert_eq!(sample_one(&logits, s, 5.0 / 54.0 + 1e-5), 2);
    }

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_top_p() {
        // p = (0.1, 0.2, 0.7): top_p 0.75 keeps {0.7, 0.2}, renormalised to (0.2/0.9, 0.7/0.9),
        // drawn in descending order: token 2 for u < 7/9, then token 1.
        let logits = [0.0f32, 2f32.ln(), 7f32.ln()];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.75,
        };
        for u in [0.0, 0.3, 0.7, 0.77] {
            assert_eq!(sample_one(&logits, s, u), 2, "u = {u}");
        }
        for u in [0.78, 0.9, 0.999] {
            assert_eq!(sample_one(&logits, s, u), 1, "u = {u}");
        }
        // top_p 0.65 is reached by the first token alone.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.65,
        };
        assert!((0..10).all(|k| sample_one(&logits, s, k as f64 / 10.0) == 2));
    }

    #[test]
    fn empirical_frequencies_match_probabilities() {
        use rand::{Rng, SeedableRng};
        let logits = [1.0f32, 0.0, -1.0, 0.5];
        let s = Sampling {
            temperature: 0.8,
            top_p: 1.0,
        };
        let w: Vec<f64> = logits.iter().map(|&l| ((l as f64) / 0.8).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        let draws = 200_000;
        for _ in 0..draws {
            counts[sample_one(&logits, s, rng.random::<f64>()) as usize] += 1;
        }
        for i in 0..4 {
            let freq = counts[i] as f64 / draws as f64;
            assert!(
                (freq - w[i] / z).abs() < 0.005,
                "token {i}: {freq} vs {}",
                w[i] / z
            );
        }
    }
}
