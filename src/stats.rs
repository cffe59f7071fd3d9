//! The statistics of the report: Wilson's interval of an accuracy, the paired bootstrap and the
//! exact McNemar test of a difference between two evaluations on the same questions, and pass@k
//! and maj@k from a question's samples. Pure functions of counts and outcomes; checked against
//! statsmodels and scipy (`scripts/reference/report_stats_reference.py`). A leaf: `east report`
//! and `east run`'s summary.json both use it, and it imports nothing of east.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The 0.975 quantile of the standard normal distribution (scipy's `norm.ppf(0.975)`).
pub const Z_975: f64 = 1.959963984540054;

/// Resamples of every bootstrap interval in the report.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Seed of every bootstrap interval: each interval starts a fresh generator from it, so a
/// number does not depend on which other comparisons the same report makes.
pub const BOOTSTRAP_SEED: u64 = 42;

/// A 95% interval `[low, high]`, as fractions (accuracy 0.5 is 0.5, not 50).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether `x` lies inside (ends included).
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// Wilson's 95% score interval of `correct` successes in `n` trials (`n` ≥ 1). Unlike the normal
/// approximation it stays inside [0, 1] and does not collapse to a point at 0 of n or n of n.
pub fn wilson(correct: usize, n: usize) -> Interval {
    assert!(n > 0 && correct <= n, "wilson({correct}, {n})");
    let (k, n) = (correct as f64, n as f64);
    let p = k / n;
    let z2 = Z_975 * Z_975;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z_975 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At 0 of n (n of n) the lower (upper) end is 0 (1) exactly; the formula leaves rounding dust.
    let low = if correct == 0 { 0.0 } else { centre - half };
    let high = if k == n { 1.0 } else { centre + half };
    Interval {
        low: low.max(0.0),
        high: high.min(1.0),
    }
}

/// An accuracy with its number of questions and Wilson's 95% interval, as `summary.json` has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub ci95: Interval,
}

impl Accuracy {
    /// `correct` of `n` (n ≥ 1).
    pub fn of(correct: usize, n: usize) -> Accuracy {
        Accuracy {
            n,
            correct,
            accuracy: correct as f64 / n as f64,
            ci95: wilson(correct, n),
        }
    }

    /// "52.0 [45.1, 58.8] (104/200)": points, the interval in points, the counts.
    pub fn cell(&self) -> String {
        format!(
            "{:.1} [{:.1}, {:.1}] ({}/{})",
            100.0 * self.accuracy,
            100.0 * self.ci95.low,
            100.0 * self.ci95.high,
            self.correct,
            self.n
        )
    }
}

/// Two-sided p-value of the exact McNemar test: with `b` questions only one side answered
/// correctly and `c` only the other, the binomial test of min(b, c) in b + c trials at ½
/// (scipy's `binomtest(min(b, c), b + c, 0.5)`). No discordant pair (b + c = 0) gives 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let m = b + c;
    let k = b.min(c);
    if m == 0 || 2 * k == m {
        return 1.0;
    }
    // log P(X = i) for X ~ Binomial(m, ½), from log P(X = 0) = −m ln 2 by the ratio of
    // successive terms; summed with log-sum-exp so thousands of discordant pairs do not underflow.
    let mut log_pmf = -(m as f64) * std::f64::consts::LN_2;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        terms.push(log_pmf);
        log_pmf += ((m - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_tail = top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
    // The distribution is symmetric: the other tail is as likely as this one.
    (2.0 * log_tail.exp()).min(1.0)
}

/// pass@k of one question from `n` samples of which `c` are correct: Chen et al. (2021)'s
/// unbiased estimator 1 − C(n−c, k)/C(n, k), in their product form 1 − ∏_{i=n−c+1}^{n} (1 − k/i),
/// which never forms the binomial coefficients (C(128, 64) overflows every float mantissa).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(c <= n && (1..=n).contains(&k), "pass_at_k({n}, {c}, {k})");
    if n - c < k {
        return 1.0;
    }
    let kf = k as f64;
    1.0 - (n - c + 1..=n)
        .map(|i| 1.0 - kf / i as f64)
        .product::<f64>()
}

/// maj@k of one question: whether the most frequent answer among its first `k` samples (in the
/// file's order) is correct. `cluster_of[i]` is sample i's answer cluster, `None` for a sample
/// with no answer (it does not vote); `correct[j]` whether cluster j holds the right answer.
/// Ties go to the cluster that appears first. No answer among the k: wrong.
pub fn majority_correct(cluster_of: &[Option<usize>], correct: &[bool], k: usize) -> bool {
    let mut votes: Vec<(usize, usize)> = Vec::new(); // (cluster, count), in order of first vote
    for cluster in cluster_of.iter().take(k).flatten() {
        match votes.iter_mut().find(|(c, _)| c == cluster) {
            Some((_, count)) => *count += 1,
            None => votes.push((*cluster, 1)),
        }
    }
    // `max_by_key` keeps the last of equal maxima; reversed, that is the first to appear.
    votes
        .iter()
        .rev()
        .max_by_key(|(_, count)| *count)
        .is_some_and(|(cluster, _)| correct[*cluster])
}

/// The ks reported for `n` samples per question: 1, 4, 16, … below n, then n.
pub fn ks(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(4))
        .take_while(|&k| k < n)
        .collect();
    if n > 0 {
        ks.push(n);
    }
    ks
}

/// Percentile bootstrap 95% interval of the mean of `values` (one value per question), from
/// `resamples` resamples of the questions with replacement, drawn from ChaCha8 seeded with
/// `seed`. Quantiles interpolate linearly between order statistics (numpy's default).
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Interval {
    assert!(!values.is_empty() && resamples > 1, "bootstrap of nothing");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n).map(|_| values[index_below(&mut rng, n)]).sum();
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Interval {
        low: quantile(&means, 0.025),
        high: quantile(&means, 0.975),
    }
}

/// A uniform index in 0..n from 64 random bits (Lemire's multiply-shift: bias below n/2⁶⁴), so
/// the stream of indices depends only on ChaCha8's output, which its crate keeps stable.
fn index_below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// The q-quantile of sorted values, interpolating between order statistics (numpy's "linear").
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(lo + 1) {
        Some(next) => sorted[lo] + frac * (next - sorted[lo]),
        None => sorted[lo],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_are_powers_of_four_then_n() {
        assert_eq!(ks(16), vec![1, 4, 16]);
        assert_eq!(ks(128), vec![1, 4, 16, 64, 128]);
        assert_eq!(ks(10), vec![1, 4, 10]);
        assert_eq!(ks(1), vec![1]);
        assert_eq!(ks(4), vec![1, 4]);
    }

    #[test]
    fn quantiles_interpolate_as_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0.025, 0.5, 0.975]) = [1.075, 2.5, 3.925]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((quantile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((quantile(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((quantile(&v, 0.975) - 3.925).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.975), 7.0);
    }
}
