//! The weighted losses of EAST (SFT, DPO, KTO) from per-row response statistics, with their
//! gradient coefficients `c_r = ∂L/∂(Σ_t log π(y_t))` for every packed row.
//!
//! Every loss is weighted per example (SFT, KTO) or per pair (DPO) and averaged over the
//! examples of the optimiser step (`batch_examples`; micro-batches add their parts), so the sum
//! over the micro-batches of one step is `(1/B) Σ_i w_i ℓ_i`.
//!
//! Weights: `data` (train.jsonl's `weight`), `none` (1), `lwp` (LW(P): per-example perplexity
//! divided by its mean over the optimiser batch, the paper's Eq. 9 with B = `batch_size`), `lww`
//! (LW(W), WPO: `exp(mean_t log[π(y_t)/Σ_v π(v)²])`). DPO's local weights multiply the chosen
//! and rejected ones; LW weights are constants of the gradient (detached).
//!
//! LW(P)'s batch mean is known only after the step's last micro-batch. Since the weights are
//! constants, each micro-batch weighs its examples by their raw perplexity and
//! [`LossConfig::batch_scale`] then divides the step's loss, weight sum and accumulated gradient
//! by the batch mean: the result is the same for any micro-batch size.

use serde::{Deserialize, Serialize};

use super::engine::RowStats;
use crate::schema::Loss;

/// Where example weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// The `weight` of each train.jsonl row (EAST's entropy weights).
    Data,
    /// Every example weighs 1.
    None,
    /// LW(P): per-example perplexity over its mean over the optimiser batch.
    Lwp,
    /// LW(W), WPO: `exp(mean_t log[π(y_t)/Σ_v π(v)²])`.
    Lww,
}

/// Loss hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub loss: Loss,
    pub beta: f64,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    pub weighting: Weighting,
}

/// What one micro-batch contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossOut {
    /// Contribution to the step's loss (already divided by the step's example count).
    pub loss: f64,
    /// Gradient coefficient of each packed row.
    pub coefs: Vec<f64>,
    /// Effective weight of each example.
    pub weights: Vec<f64>,
    /// Sums over the micro-batch's examples, for logging.
    pub metrics: Metrics,
}

/// Sums for the log (divide by the counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub examples: usize,
    pub weight_sum: f64,
    /// DPO pairs, KTO desirable examples: `β (log π − log π_ref)`.
    pub chosen_reward_sum: f64,
    pub chosen_count: usize,
    /// DPO pairs, KTO undesirable examples.
    pub rejected_reward_sum: f64,
    pub rejected_count: usize,
    /// DPO: pairs whose chosen reward beats the rejected one.
    pub correct_pairs: usize,
    /// KTO: Σ of the micro-batches' KL estimates, and how many.
    pub kl_sum: f64,
    pub kl_count: usize,
}

impl Metrics {
    pub fn add(&mut self, o: &Metrics) {
        self.examples += o.examples;
        self.weight_sum += o.weight_sum;
        self.chosen_reward_sum += o.chosen_reward_sum;
        self.chosen_count += o.chosen_count;
        self.rejected_reward_sum += o.rejected_reward_sum;
        self.rejected_count += o.rejected_count;
        self.correct_pairs += o.correct_pairs;
        self.kl_sum += o.kl_sum;
        self.kl_count += o.kl_count;
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(x))` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn ppl(s: &RowStats) -> f64 {
    (-s.logp / s.tokens.max(1) as f64).exp()
}

fn wpo(s: &RowStats) -> f64 {
    (s.wpo / s.tokens.max(1) as f64).exp()
}

/// A micro-batch's policy statistics, with what its objective needs beside them.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// One row per example.
    Sft(&'a [RowStats]),
    Dpo(DpoRows<'a>),
    Kto(KtoRows<'a>),
}

/// DPO's pairs: example `i` is (`chosen[i]`, `rejected[i]`), with reference log-probabilities.
#[derive(Debug, Clone, Copy)]
pub struct DpoRows<'a> {
    pub chosen: &'a [RowStats],
    pub rejected: &'a [RowStats],
    pub ref_chosen: &'a [f64],
    pub ref_rejected: &'a [f64],
}

/// KTO's examples, labelled desirable or not, and the mismatched rows of the KL estimate.
#[derive(Debug, Clone, Copy)]
pub struct KtoRows<'a> {
    pub policy: &'a [RowStats],
    pub reference: &'a [f64],
    pub desirable: &'a [bool],
    /// Policy and reference log-probabilities of the mismatched (prompt, completion) rows.
    pub kl_policy: &'a [f64],
    pub kl_reference: &'a [f64],
}

impl<'a> Rows<'a> {
    /// DPO rows from the engine's packing order (every chosen row, then every rejected row)
    /// and the reference log-probabilities in the same order.
    pub fn dpo(stats: &'a [RowStats], refs: &'a [f64]) -> Self {
        let m = stats.len() / 2;
        Rows::Dpo(DpoRows {
            chosen: &stats[..m],
            rejected: &stats[m..],
            ref_chosen: &refs[..m],
            ref_rejected: &refs[m..],
        })
    }

    fn loss(&self) -> Loss {
        match self {
            Rows::Sft(_) => Loss::Sft,
            Rows::Dpo(_) => Loss::Dpo,
            Rows::Kto(_) => Loss::Kto,
        }
    }

    fn examples(&self) -> usize {
        match self {
            Rows::Sft(s) => s.len(),
            Rows::Dpo(d) => d.chosen.len(),
            Rows::Kto(k) => k.policy.len(),
        }
    }

    /// Whether every per-example slice has one entry per example.
    fn consistent(&self) -> bool {
        match self {
            Rows::Sft(_) => true,
            Rows::Dpo(d) => {
                let m = d.chosen.len();
                d.rejected.len() == m && d.ref_chosen.len() == m && d.ref_rejected.len() == m
            }
            Rows::Kto(k) => {
                let m = k.policy.len();
                k.reference.len() == m
                    && k.desirable.len() == m
                    && k.kl_policy.len() == k.kl_reference.len()
            }
        }
    }
}

/// Weighted SFT: `(1/B) Σ_i w_i · (−log π(y_i)/n_i)`, the mean token NLL of each example.
pub fn sft(policy: &[RowStats], weights: &[f64], batch_examples: usize) -> LossOut {
    let b = batch_examples.max(1) as f64;
    let mut out = LossOut {
        coefs: vec![0.0; policy.len()],
        ..LossOut::default()
    };
    for (i, (s, &w)) in policy.iter().zip(weights).enumerate() {
        let n = s.tokens.max(1) as f64;
        out.loss += w * (-s.logp / n) / b;
        out.coefs[i] = -w / (n * b);
    }
    out
}

/// Weighted sigmoid DPO: `(1/B) Σ_i w_i · −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])`.
/// Coefficients in packing order: chosen rows, then rejected rows.
pub fn dpo(rows: &DpoRows, weights: &[f64], beta: f64, batch_examples: usize) -> LossOut {
    let b = batch_examples.max(1) as f64;
    let m = rows.chosen.len();
    let mut out = LossOut {
        coefs: vec![0.0; 2 * m],
        ..LossOut::default()
    };
    for (i, &w) in weights.iter().enumerate().take(m) {
        let rw = rows.chosen[i].logp - rows.ref_chosen[i];
        let rl = rows.rejected[i].logp - rows.ref_rejected[i];
        let x = beta * (rw - rl);
        out.loss += w * softplus(-x) / b;
        let g = w * beta * sigmoid(-x) / b;
        out.coefs[i] = -g;
        out.coefs[m + i] = g;
        out.metrics.chosen_reward_sum += beta * rw;
        out.metrics.rejected_reward_sum += beta * rl;
        out.metrics.correct_pairs += usize::from(rw > rl);
    }
    out.metrics.chosen_count = m;
    out.metrics.rejected_count = m;
    out
}

/// Weighted KTO (TRL's KTOTrainer): desirable `λ_D (1 − σ(β(r − z)))`, undesirable
/// `λ_U (1 − σ(β(z − r)))`, `r = log π − log π_ref`, `z` the mismatched rows' mean
/// `log π − log π_ref` clamped at 0 (a constant of the gradient).
pub fn kto(
    rows: &KtoRows,
    weights: &[f64],
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
    batch_examples: usize,
) -> LossOut {
    let b = batch_examples.max(1) as f64;
    let m = rows.policy.len();
    let (kp, kr) = (rows.kl_policy, rows.kl_reference);
    let z = if kp.is_empty() {
        0.0
    } else {
        (kp.iter().zip(kr).map(|(p, r)| p - r).sum::<f64>() / kp.len() as f64).max(0.0)
    };
    let mut out = LossOut {
        coefs: vec![0.0; m],
        ..LossOut::default()
    };
    out.metrics.kl_sum = z;
    out.metrics.kl_count = 1;
    for (i, &w) in weights.iter().enumerate().take(m) {
        let r = rows.policy[i].logp - rows.reference[i];
        if rows.desirable[i] {
            let s = sigmoid(beta * (r - z));
            out.loss += w * desirable_weight * (1.0 - s) / b;
            out.coefs[i] = -w * desirable_weight * beta * s * (1.0 - s) / b;
            out.metrics.chosen_reward_sum += beta * r;
            out.metrics.chosen_count += 1;
        } else {
            let s = sigmoid(beta * (z - r));
            out.loss += w * undesirable_weight * (1.0 - s) / b;
            out.coefs[i] = w * undesirable_weight * beta * s * (1.0 - s) / b;
            out.metrics.rejected_reward_sum += beta * r;
            out.metrics.rejected_count += 1;
        }
    }
    out
}

/// Each example's weight: from the data, 1, or the policy's local uncertainty (LW(P), LW(W);
/// DPO multiplies the chosen and rejected ones). LW(P)'s are the raw perplexities: the step
/// divides them by their batch mean ([`LossConfig::batch_scale`]).
pub fn example_weights(weighting: Weighting, rows: &Rows, data_weights: &[f64]) -> Vec<f64> {
    let local = |f: fn(&RowStats) -> f64| -> Vec<f64> {
        match rows {
            Rows::Sft(s) => s.iter().map(f).collect(),
            Rows::Dpo(d) => d
                .chosen
                .iter()
                .zip(d.rejected)
                .map(|(c, r)| f(c) * f(r))
                .collect(),
            Rows::Kto(k) => k.policy.iter().map(f).collect(),
        }
    };
    match weighting {
        Weighting::Data => data_weights.to_vec(),
        Weighting::None => vec![1.0; rows.examples()],
        Weighting::Lwp => local(ppl),
        Weighting::Lww => local(wpo),
    }
}

impl LossConfig {
    /// What a whole optimiser step's sums (loss, weight sum, accumulated gradient) are
    /// multiplied by once every micro-batch is done: for LW(P), 1 / the mean raw weight over the
    /// batch (`step` holds the sums of every micro-batch's [`Metrics`]), which turns each
    /// example's perplexity into its perplexity over the batch mean (Eq. 9); 1 for the other
    /// weightings, whose weights are final per example.
    pub fn batch_scale(&self, step: &Metrics) -> f64 {
        if self.weighting != Weighting::Lwp {
            return 1.0;
        }
        let mean = step.weight_sum / step.examples.max(1) as f64;
        // A perplexity is ≥ 1, so the mean is too unless it overflowed (then the loss is not
        // finite and the step fails before this).
        if mean.is_finite() && mean > 0.0 {
            1.0 / mean
        } else {
            1.0
        }
    }

    /// The SFT coefficients when they do not depend on the policy (weighting `data`/`none`):
    /// `c_i = −w_i / (n_i · B)`; `tokens[i]` = response tokens of example `i`.
    pub fn known_coefs(
        &self,
        data_weights: &[f64],
        tokens: &[usize],
        batch_examples: usize,
    ) -> Option<Vec<f64>> {
        if self.loss != Loss::Sft || !matches!(self.weighting, Weighting::Data | Weighting::None) {
            return None;
        }
        Some(
            data_weights
                .iter()
                .zip(tokens)
                .map(|(&w, &n)| {
                    let w = if self.weighting == Weighting::None {
                        1.0
                    } else {
                        w
                    };
                    -w / (n.max(1) as f64 * batch_examples as f64)
                })
                .collect(),
        )
    }

    /// Loss and coefficients of a micro-batch whose optimiser step has `batch_examples`
    /// examples: the example weights, then the objective's own function.
    pub fn compute(
        &self,
        rows: &Rows,
        data_weights: &[f64],
        batch_examples: usize,
    ) -> anyhow::Result<LossOut> {
        let m = rows.examples();
        if rows.loss() != self.loss || data_weights.len() != m || !rows.consistent() {
            anyhow::bail!(
                "loss: {} rows for {m} examples of {} with {} weights",
                rows.loss().name(),
                self.loss.name(),
                data_weights.len()
            );
        }
        let weights = example_weights(self.weighting, rows, data_weights);
        let mut out = match rows {
            Rows::Sft(policy) => sft(policy, &weights, batch_examples),
            Rows::Dpo(d) => dpo(d, &weights, self.beta, batch_examples),
            Rows::Kto(k) => kto(
                k,
                &weights,
                self.beta,
                self.desirable_weight,
                self.undesirable_weight,
                batch_examples,
            ),
        };
        out.metrics.examples = m;
        out.metrics.weight_sum = weights.iter().sum();
        out.weights = weights;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(logp: f64, tokens: usize) -> RowStats {
        RowStats {
            logp,
            tokens,
            wpo: 0.0,
        }
    }

    fn cfg(loss: Loss, weighting: Weighting) -> LossConfig {
        LossConfig {
            loss,
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            weighting,
        }
    }

    /// The rows of a micro-batch in the engine's packing order, as the trainer builds them.
    fn rows<'a>(
        c: &LossConfig,
        stats: &'a [RowStats],
        refs: Option<&'a [f64]>,
        labels: Option<&'a [bool]>,
        kl: Option<(&'a [f64], &'a [f64])>,
    ) -> Rows<'a> {
        match c.loss {
            Loss::Sft => Rows::Sft(stats),
            Loss::Dpo => Rows::dpo(stats, refs.unwrap()),
            Loss::Kto => {
                let (kl_policy, kl_reference) = kl.unwrap();
                Rows::Kto(KtoRows {
                    policy: stats,
                    reference: refs.unwrap(),
                    desirable: labels.unwrap(),
                    kl_policy,
                    kl_reference,
                })
            }
        }
    }

    fn compute(
        c: &LossConfig,
        stats: &[RowStats],
        refs: Option<&[f64]>,
        w: &[f64],
        labels: Option<&[bool]>,
        kl: Option<(&[f64], &[f64])>,
        b: usize,
    ) -> LossOut {
        c.compute(&rows(c, stats, refs, labels, kl), w, b).unwrap()
    }

    /// Numerical derivative of the loss w.r.t. each row's logp against the coefficients.
    fn check_coefs(
        c: &LossConfig,
        stats: &[RowStats],
        refs: Option<&[f64]>,
        w: &[f64],
        labels: Option<&[bool]>,
        kl: Option<(&[f64], &[f64])>,
    ) {
        let out = compute(c, stats, refs, w, labels, kl, 4);
        for r in 0..stats.len() {
            let f = |d: f64| {
                let mut s = stats.to_vec();
                s[r].logp += d;
                compute(c, &s, refs, w, labels, kl, 4).loss
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!(
                (fd - out.coefs[r]).abs() < 1e-8,
                "row {r}: coef {} vs fd {fd}",
                out.coefs[r]
            );
        }
    }

    #[test]
    fn dpo_at_initialisation_is_log2_times_mean_weight() {
        let c = cfg(Loss::Dpo, Weighting::Data);
        let stats = [row(-10.0, 5), row(-3.0, 2), row(-12.0, 6), row(-4.0, 3)];
        let refs = [-10.0, -3.0, -12.0, -4.0];
        let out = compute(&c, &stats, Some(&refs), &[0.5, 2.5], None, None, 2);
        assert!(
            (out.loss - std::f64::consts::LN_2 * 1.5).abs() < 1e-12,
            "{}",
            out.loss
        );
        // ∂/∂chosen = −w β σ(0)/B
        assert!((out.coefs[0] + 0.5 * 0.1 * 0.5 / 2.0).abs() < 1e-15);
        assert!((out.coefs[3] - 2.5 * 0.1 * 0.5 / 2.0).abs() < 1e-15);
        check_coefs(
            &c,
            &[row(-9.0, 5), row(-3.5, 2), row(-12.0, 6), row(-2.0, 3)],
            Some(&refs),
            &[0.5, 2.5],
            None,
            None,
        );
    }

    #[test]
    fn kto_at_initialisation_matches_the_hand_formula() {
        // r = 0 and z = 0: ℓ = λ (1 − σ(0)) = λ/2 for every example.
        let c = LossConfig {
            loss: Loss::Kto,
            beta: 0.05,
            desirable_weight: 1.0,
            undesirable_weight: 1.5,
            weighting: Weighting::Data,
        };
        let stats = [row(-5.0, 3), row(-7.0, 4), row(-1.0, 1)];
        let refs = [-5.0, -7.0, -1.0];
        let w = [1.0, 2.0, 0.5];
        let labels = [true, false, true];
        let out = compute(
            &c,
            &stats,
            Some(&refs),
            &w,
            Some(&labels),
            Some((&[-3.0, -4.0], &[-3.0, -4.0])),
            3,
        );
        let want = (1.0 * 1.0 * 0.5 + 2.0 * 1.5 * 0.5 + 0.5 * 1.0 * 0.5) / 3.0;
        assert!((out.loss - want).abs() < 1e-12, "{} vs {want}", out.loss);
        // the KL estimate is clamped at 0 and treated as a constant
        let kl_neg = compute(
            &c,
            &stats,
            Some(&refs),
            &w,
            Some(&labels),
            Some((&[-5.0], &[-3.0])),
            3,
        );
        assert_eq!(kl_neg.loss, out.loss);
        let kl_pos = compute(
            &c,
            &stats,
            Some(&refs),
            &w,
            Some(&labels),
            Some((&[-1.0], &[-3.0])),
            3,
        );
        assert_eq!(kl_pos.metrics.kl_sum, 2.0);
        check_coefs(
            &c,
            &[row(-4.0, 3), row(-7.5, 4), row(-1.0, 1)],
            Some(&refs),
            &w,
            Some(&labels),
            Some((&[-1.0], &[-3.0])),
        );
    }

    /// DPO and KTO away from initialisation (policy ≠ reference, margins large enough to
    /// saturate σ, KL estimate positive and clamped) against TRL's formulas evaluated by
    /// PyTorch with autograd (scripts/reference/trl_losses_reference.py): the loss and the
    /// derivative with respect to every row's log-probability.
    #[test]
    fn dpo_and_kto_away_from_initialisation_match_trl() {
        let fx: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/trl_losses_reference.json"
        ))
        .unwrap();
        let f64s =
            |v: &serde_json::Value| -> Vec<f64> { serde_json::from_value(v.clone()).unwrap() };
        let cases = fx["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for (k, case) in cases.iter().enumerate() {
            let kind = case["loss_type"].as_str().unwrap();
            let c = LossConfig {
                loss: if kind == "dpo" { Loss::Dpo } else { Loss::Kto },
                beta: case["beta"].as_f64().unwrap(),
                desirable_weight: case["desirable_weight"].as_f64().unwrap_or(1.0),
                undesirable_weight: case["undesirable_weight"].as_f64().unwrap_or(1.0),
                weighting: Weighting::Data,
            };
            let stats: Vec<RowStats> = f64s(&case["policy"]).iter().map(|&l| row(l, 3)).collect();
            let refs = f64s(&case["reference"]);
            let w = f64s(&case["weights"]);
            let labels: Option<Vec<bool>> = case
                .get("labels")
                .map(|l| serde_json::from_value(l.clone()).unwrap());
            let (kp, kr) = (
                case.get("kl_policy").map(f64s).unwrap_or_default(),
                case.get("kl_reference").map(f64s).unwrap_or_default(),
            );
            let b = case["batch"].as_u64().unwrap() as usize;
            let out = compute(
                &c,
                &stats,
                Some(&refs),
                &w,
                labels.as_deref(),
                (kind == "kto").then_some((kp.as_slice(), kr.as_slice())),
                b,
            );
            let want = case["loss"].as_f64().unwrap();
            assert!(
                (out.loss - want).abs() < 1e-12,
                "case {k}: loss {} vs TRL {want}",
                out.loss
            );
            for (r, (got, want)) in out.coefs.iter().zip(f64s(&case["grad"])).enumerate() {
                assert!(
                    (got - want).abs() < 1e-12,
                    "case {k} row {r}: {got} vs TRL {want}"
                );
            }
            if kind == "kto" {
                assert!((out.metrics.kl_sum - case["kl"].as_f64().unwrap()).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn sft_is_weighted_mean_nll_per_example() {
        let c = cfg(Loss::Sft, Weighting::Data);
        let stats = [row(-6.0, 3), row(-2.0, 4)];
        let out = compute(&c, &stats, None, &[2.0, 0.0], None, None, 2);
        assert!((out.loss - (2.0 * 2.0 + 0.0 * 0.5) / 2.0).abs() < 1e-12);
        assert_eq!(out.coefs[1], 0.0, "weight 0 gives no gradient");
        assert_eq!(c.known_coefs(&[2.0, 0.0], &[3, 4], 2).unwrap(), out.coefs);
        check_coefs(&c, &stats, None, &[2.0, 0.5], None, None);
    }

    #[test]
    fn local_weights_follow_the_appendix() {
        let stats = [
            RowStats {
                logp: -2.0,
                tokens: 2,
                wpo: 0.4,
            },
            RowStats {
                logp: -6.0,
                tokens: 3,
                wpo: -0.3,
            },
        ];
        let lwp = compute(
            &cfg(Loss::Sft, Weighting::Lwp),
            &stats,
            None,
            &[9.0, 9.0],
            None,
            None,
            2,
        );
        // Raw perplexities per micro-batch; the step divides by their batch mean.
        let (p0, p1) = (1f64.exp(), 2f64.exp());
        assert!((lwp.weights[0] - p0).abs() < 1e-12 && (lwp.weights[1] - p1).abs() < 1e-12);
        let scale = cfg(Loss::Sft, Weighting::Lwp).batch_scale(&lwp.metrics);
        assert!((scale - 1.0 / ((p0 + p1) / 2.0)).abs() < 1e-15);
        assert_eq!(
            cfg(Loss::Sft, Weighting::Lww).batch_scale(&lwp.metrics),
            1.0
        );
        let lww = compute(
            &cfg(Loss::Sft, Weighting::Lww),
            &stats,
            None,
            &[9.0, 9.0],
            None,
            None,
            2,
        );
        assert!(
            (lww.weights[0] - 0.2f64.exp()).abs() < 1e-12
                && (lww.weights[1] - (-0.1f64).exp()).abs() < 1e-12
        );
        // DPO multiplies chosen and rejected local weights
        let dstats = [stats[0], stats[1]];
        let d = compute(
            &cfg(Loss::Dpo, Weighting::Lww),
            &dstats,
            Some(&[-2.0, -6.0]),
            &[1.0],
            None,
            None,
            1,
        );
        assert!((d.weights[0] - 0.2f64.exp() * (-0.1f64).exp()).abs() < 1e-12);
        assert!(cfg(Loss::Sft, Weighting::Lwp)
            .known_coefs(&[1.0], &[1], 1)
            .is_none());
    }

    /// LW(P) over micro-batches of 16, 4 and 1 at batch 16, each step's sums scaled by
    /// `batch_scale`: the weights, the loss and every gradient coefficient equal Eq. 9 computed
    /// by hand over the whole batch, `w_i = PPL_i / mean_16(PPL)`.
    #[test]
    fn lwp_normalises_over_the_batch_whatever_the_micro_batch() {
        let stats: Vec<RowStats> = (0..16)
            .map(|i| row(-(0.5 + 0.37 * i as f64) * (3 + i % 5) as f64, 3 + i % 5))
            .collect();
        let ppl: Vec<f64> = stats
            .iter()
            .map(|s| (-s.logp / s.tokens as f64).exp())
            .collect();
        let mean = ppl.iter().sum::<f64>() / 16.0;
        let want_w: Vec<f64> = ppl.iter().map(|p| p / mean).collect();
        let nll = |i: usize| -stats[i].logp / stats[i].tokens as f64;
        let want_loss: f64 = (0..16).map(|i| want_w[i] * nll(i)).sum::<f64>() / 16.0;
        let c = cfg(Loss::Sft, Weighting::Lwp);
        for micro in [16, 4, 1] {
            let (mut loss, mut weights, mut coefs) = (0.0, Vec::new(), Vec::new());
            let mut step = Metrics::default();
            for chunk in stats.chunks(micro) {
                let out = compute(&c, chunk, None, &vec![7.0; chunk.len()], None, None, 16);
                loss += out.loss;
                weights.extend(out.weights);
                coefs.extend(out.coefs);
                step.add(&out.metrics);
            }
            let scale = c.batch_scale(&step);
            assert!((loss * scale - want_loss).abs() < 1e-12, "micro {micro}");
            assert!(
                (step.weight_sum * scale - 16.0).abs() < 1e-12,
                "micro {micro}"
            );
            for i in 0..16 {
                assert!(
                    (weights[i] * scale - want_w[i]).abs() < 1e-12,
                    "micro {micro} {i}"
                );
                let want_c = -want_w[i] / (stats[i].tokens as f64 * 16.0);
                assert!(
                    (coefs[i] * scale - want_c).abs() < 1e-15,
                    "micro {micro} {i}"
                );
            }
        }
    }
}
