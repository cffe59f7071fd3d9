//! From a question's uncertainty to its training weight: the metrics of Section 4.3 and the
//! mapping functions of Section 3.2, all normalised so the kept questions' weights average 1.

use serde::{Deserialize, Serialize};

/// Per-question uncertainty fed to the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Entropy of the answer clusters (EAST).
    Entropy,
    /// 1 − fraction of correct completions.
    Accuracy,
    /// R: the share of the most frequent boxed wrong answer (the authors' rejected answer).
    Rejection,
    /// Every question weighs 1 (vanilla self-training).
    Uniform,
}

impl Metric {
    /// Whether a question with metric 0 carries no signal and is dropped (entropy: all answers
    /// agree; rejection: no wrong answer), as the reference code does.
    pub fn drops_zero(self) -> bool {
        matches!(self, Metric::Entropy | Metric::Rejection)
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Entropy => "entropy",
            Metric::Accuracy => "accuracy",
            Metric::Rejection => "rejection",
            Metric::Uniform => "uniform",
        }
    }
}

/// The mapping function f.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mapping {
    /// f(h) = h^a · N / Σ h^a (EAST's final mapping).
    Power,
    /// f(h) = h / mean(h).
    Mean,
    /// f(h) = A·h + B with A = R / (max − min), B = 1 − A·mean.
    Linear,
}

/// A mapping that cannot produce valid weights for these metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MappingError {
    #[error("no questions to weight")]
    Empty,
    #[error("metric value {value} is not a finite number ≥ 0")]
    BadValue { value: f64 },
    #[error("a = {a} < 0 is undefined for a metric value of 0 (0^a is infinite); drop such questions or use a ≥ 0")]
    NegativeExponentAtZero { a: f64 },
    #[error("all metric values are 0: the {mapping} mapping cannot normalise them to mean 1")]
    AllZero { mapping: &'static str },
    #[error("the linear mapping needs at least two distinct metric values (all are {value})")]
    Constant { value: f64 },
    #[error("linear range R = {range} would make weights negative; R must be ≤ (max − min)/(mean − min) = {limit}")]
    RangeTooLarge { range: f64, limit: f64 },
}

/// Maps metric values to weights that are ≥ 0 and average exactly 1.
pub fn map_weights(
    values: &[f64],
    mapping: Mapping,
    a: f64,
    range: f64,
) -> Result<Vec<f64>, MappingError> {
    if values.is_empty() {
        return Err(MappingError::Empty);
    }
    if let Some(&value) = values.iter().find(|v| !v.is_finite() || **v < 0.0) {
        return Err(MappingError::BadValue { value });
    }
    let n = values.len() as f64;
    let weights = match mapping {
        Mapping::Power => power(values, a)?,
        Mapping::Mean => {
            let mean = values.iter().sum::<f64>() / n;
            if mean == 0.0 {
                return Err(MappingError::AllZero { mapping: "mean" });
            }
            values.iter().map(|v| v / mean).collect()
        }
        Mapping::Linear => {
            let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if max == min {
                return Err(MappingError::Constant { value: min });
            }
            let mean = values.iter().sum::<f64>() / n;
            let limit = (max - min) / (mean - min);
            // A relative slack so that R exactly at the limit (weight 0 for the minimum) passes.
            if range > limit * (1.0 + 1e-12) {
                return Err(MappingError::RangeTooLarge { range, limit });
            }
            let slope = range / (max - min);
            let intercept = 1.0 - slope * mean;
            values
                .iter()
                .map(|v| (slope * v + intercept).max(0.0))
                .collect()
        }
    };
    Ok(renormalise(weights))
}

/// h^a normalised in log space: exp(a·ln h − logsumexp(a·ln h) + ln N), so large |a| neither
/// overflows nor underflows before normalisation.
fn power(values: &[f64], a: f64) -> Result<Vec<f64>, MappingError> {
    if a == 0.0 {
        return Ok(vec![1.0; values.len()]);
    }
    let has_zero = values.contains(&0.0);
    if a < 0.0 && has_zero {
        return Err(MappingError::NegativeExponentAtZero { a });
    }
    // With a > 0 a zero value has weight exactly 0 (log = -inf, exp(-inf) = 0).
    let logs: Vec<f64> = values
        .iter()
        .map(|&v| {
            if v == 0.0 {
                f64::NEG_INFINITY
            } else {
                a * v.ln()
            }
        })
        .collect();
    let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return Err(MappingError::AllZero { mapping: "power" });
    }
    let sum: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    let log_norm = max + sum.ln() - (values.len() as f64).ln();
    Ok(logs.iter().map(|l| (l - log_norm).exp()).collect())
}

/// Rescales so the mean is 1 up to the last bit we can get: the weights scale the learning
/// signal, so a drift of the mean would silently change the effective learning rate.
fn renormalise(mut weights: Vec<f64>) -> Vec<f64> {
    let n = weights.len() as f64;
    let sum: f64 = weights.iter().sum();
    if sum > 0.0 {
        let scale = n / sum;
        weights.iter_mut().for_each(|w| *w *= scale);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn power_matches_the_formula() {
        // h = (1, 2, 3), a = 2: h^a = (1, 4, 9), N/Σ = 3/14
        let w = map_weights(&[1.0, 2.0, 3.0], Mapping::Power, 2.0, 1.0).unwrap();
        assert!(close(&w, &[3.0 / 14.0, 12.0 / 14.0, 27.0 / 14.0]), "{w:?}");
        // a = -1: h^a = (1, 1/2, 1/3), Σ = 11/6
        let w = map_weights(&[1.0, 2.0, 3.0], Mapping::Power, -1.0, 1.0).unwrap();
        assert!(close(&w, &[18.0 / 11.0, 9.0 / 11.0, 6.0 / 11.0]), "{w:?}");
        // a = 0 is vanilla training.
        assert_eq!(
            map_weights(&[0.3, 2.0, 7.0], Mapping::Power, 0.0, 1.0).unwrap(),
            vec![1.0; 3]
        );
    }

    #[test]
    fn power_handles_zero_and_extreme_exponents() {
        let w = map_weights(&[0.0, 1.0], Mapping::Power, 1.0, 1.0).unwrap();
        assert!(close(&w, &[0.0, 2.0]));
        assert_eq!(
            map_weights(&[0.0, 1.0], Mapping::Power, -0.5, 1.0),
            Err(MappingError::NegativeExponentAtZero { a: -0.5 })
        );
        assert_eq!(
            map_weights(&[0.0, 0.0], Mapping::Power, 2.0, 1.0),
            Err(MappingError::AllZero { mapping: "power" })
        );
        // (1e-3)^-300 overflows f64 without the log-space normalisation.
        let w = map_weights(&[1e-3, 1.0], Mapping::Power, -300.0, 1.0).unwrap();
        assert!(w.iter().all(|x| x.is_finite()));
        assert!(close(&w, &[2.0, 0.0]), "{w:?}");
    }

    #[test]
    fn mean_division_matches_the_formula() {
        let w = map_weights(&[1.0, 2.0, 3.0], Mapping::Mean, 7.0, 1.0).unwrap();
        assert!(close(&w, &[0.5, 1.0, 1.5]));
        assert!(map_weights(&[0.0, 0.0], Mapping::Mean, 1.0, 1.0).is_err());
    }

    #[test]
    fn linear_matches_the_formula_and_guards_non_negativity() {
        // h = (1, 2, 6): mean 3, A = R/5, B = 1 − 3A; limit = 5 / (3 − 1) = 2.5
        // R = 1: A = 0.2, B = 0.4 → (0.6, 0.8, 1.6)
        let w = map_weights(&[1.0, 2.0, 6.0], Mapping::Linear, 0.0, 1.0).unwrap();
        assert!(close(&w, &[0.6, 0.8, 1.6]), "{w:?}");
        let w = map_weights(&[1.0, 2.0, 6.0], Mapping::Linear, 0.0, 2.5).unwrap();
        assert!(close(&w, &[0.0, 0.5, 2.5]), "{w:?}");
        match map_weights(&[1.0, 2.0, 6.0], Mapping::Linear, 0.0, 2.6) {
            Err(MappingError::RangeTooLarge { limit, .. }) => assert!((limit - 2.5).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            map_weights(&[2.0, 2.0], Mapping::Linear, 0.0, 1.0),
            Err(MappingError::Constant { value: 2.0 })
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(matches!(
            map_weights(&[1.0, f64::NAN], Mapping::Power, 1.0, 1.0),
            Err(MappingError::BadValue { .. })
        ));
        assert!(matches!(
            map_weights(&[-1.0], Mapping::Mean, 1.0, 1.0),
            Err(MappingError::BadValue { .. })
        ));
        assert_eq!(
            map_weights(&[], Mapping::Power, 1.0, 1.0),
            Err(MappingError::Empty)
        );
    }
}
