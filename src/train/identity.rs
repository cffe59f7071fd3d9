//! What identifies a training run, so that a rerun resumes or skips only the same run: the
//! starting model (where it came from, its files' names, sizes and times), the data's bytes and
//! the settings that decide the result ([`TrainConfig::identity`], which `east train` and
//! `east run` both key on).

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::TrainConfig;
use super::engine::EngineChoice;
use super::loss::Weighting;
use super::optim::Schedule;
use crate::model::{LoadedModel, ModelConfig, ModelSource};
use crate::schema::Loss;

/// The `[train]` settings that decide a training run's result: its weights and the files it
/// writes. Keys that change only how the same numbers are computed or saved are left out, and
/// so are keys the run never reads (β under SFT, the KTO weights under SFT and DPO, the LoRA
/// keys without LoRA).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainIdentity {
    loss: Loss,
    epochs: usize,
    batch_size: usize,
    micro_batch_size: usize,
    lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    beta: Option<f64>,
    /// `(desirable_weight, undesirable_weight)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    kto_weights: Option<(f64, f64)>,
    warmup_ratio: f64,
    schedule: Schedule,
    weight_decay: f64,
    max_grad_norm: f64,
    max_steps: Option<usize>,
    max_length: usize,
    weighting: Weighting,
    #[serde(skip_serializing_if = "Option::is_none")]
    lora: Option<LoraIdentity>,
    seed: u64,
    engine: EngineChoice,
}

/// The LoRA settings of a LoRA run.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct LoraIdentity {
    rank: usize,
    alpha: f64,
    dropout: f64,
    targets: Vec<String>,
    /// Whether the merged model is written too.
    merge: bool,
}

impl TrainConfig {
    /// What decides this run's result, for fingerprints. The whole config is destructured
    /// field by field, so a key added to `[train]` does not compile until it is sorted here.
    pub fn identity(&self) -> TrainIdentity {
        let TrainConfig {
            loss,
            epochs,
            batch_size,
            micro_batch_size,
            lr,
            beta,
            desirable_weight,
            undesirable_weight,
            warmup_ratio,
            schedule,
            weight_decay,
            max_grad_norm,
            max_steps,
            max_length,
            weighting,
            lora,
            lora_rank,
            lora_alpha,
            lora_dropout,
            lora_targets,
            merge,
            seed,
            engine,
            // when resume checkpoints are written: not what they hold
            save_steps: _,
            // activation checkpointing recomputes the same numbers, whatever the memory budget
            gradient_checkpointing: _,
            memory_limit: _,
            // where the step metrics are also logged: not what is trained
            report_to: _,
        } = self.clone();
        TrainIdentity {
            loss,
            epochs,
            batch_size,
            micro_batch_size,
            lr,
            beta: loss.needs_rejected().then_some(beta),
            kto_weights: (loss == Loss::Kto).then_some((desirable_weight, undesirable_weight)),
            warmup_ratio,
            schedule,
            weight_decay,
            max_grad_norm,
            max_steps,
            max_length,
            weighting,
            lora: lora.then_some(LoraIdentity {
                rank: lora_rank,
                alpha: lora_alpha,
                dropout: lora_dropout,
                targets: lora_targets,
                merge,
            }),
            seed,
            engine,
        }
    }
}

/// (size, modification time) of the files that make up a model, for fingerprints.
fn files_fingerprint(h: &mut Sha256, path: &Path) {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.ends_with(".json") || name.ends_with(".safetensors") || name.ends_with(".gguf")) {
            continue;
        }
        let meta = std::fs::metadata(&f).ok();
        let mtime = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(name.as_bytes());
        h.update(meta.map(|m| m.len()).unwrap_or(0).to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
}

/// Identifies the starting model: where it came from and its files' sizes and times.
pub fn model_fingerprint(lm: &LoadedModel, adapter: Option<&str>, dtype: DType) -> String {
    let mut h = Sha256::new();
    h.update(lm.spec.as_bytes());
    match &lm.source {
        ModelSource::Gguf(p) | ModelSource::Folder(p) => {
            h.update(
                p.canonicalize()
                    .unwrap_or_else(|_| p.clone())
                    .to_string_lossy()
                    .as_bytes(),
            );
            files_fingerprint(&mut h, p);
        }
        ModelSource::Hub { repo, revision } => {
            h.update(repo.as_bytes());
            h.update(revision.clone().unwrap_or_default().as_bytes());
            if let Some(d) = &lm.dir {
                files_fingerprint(&mut h, d);
            }
        }
    }
    if let Some(a) = adapter {
        h.update(b"adapter");
        files_fingerprint(&mut h, Path::new(a));
    }
    h.update(format!("{dtype:?}").as_bytes());
    format!("{:x}", h.finalize())
}

/// The run's fingerprint: a rerun with the same one resumes or is skipped; another one refuses
/// to touch the output folder.
pub fn run_fingerprint(
    model_fp: &str,
    data_sha256: &str,
    t: &TrainConfig,
    model: &ModelConfig,
) -> String {
    let mut h = Sha256::new();
    h.update(b"east-train-v2");
    h.update(model_fp.as_bytes());
    h.update(data_sha256.as_bytes());
    h.update(serde_json::to_vec(&t.identity()).expect("the identity serialises"));
    h.update(model.device.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

/// The key of the reference log-probabilities cache: they depend on the starting model, the
/// data, the rows the loss scores, the truncation and the engine's arithmetic.
pub fn reference_key(
    model_fp: &str,
    data_sha256: &str,
    loss: Loss,
    max_length: usize,
    engine: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"east-ref-v1");
    h.update(model_fp.as_bytes());
    h.update(data_sha256.as_bytes());
    h.update(loss.name().as_bytes());
    h.update(max_length.to_le_bytes());
    h.update(engine.as_bytes());
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::Checkpointing;

    /// Which runs a `[train]` key changes the result of, written out by hand from what each
    /// key does (not from `identity()`).
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Matters {
        Always,
        /// DPO and KTO (β).
        Preference,
        /// KTO only (the desirable and undesirable weights).
        Kto,
        /// LoRA runs only.
        Lora,
        /// Never: how the same numbers are computed or saved.
        Never,
    }

    type Change = fn(&mut TrainConfig);

    /// One change per `[train]` key, each to another valid value, with whom it matters to.
    fn changes() -> Vec<(&'static str, Matters, Change)> {
        use Matters::*;
        vec![
            ("loss", Always, |c| {
                c.loss = if c.loss == Loss::Sft {
                    Loss::Dpo
                } else {
                    Loss::Sft
                }
            }),
            ("epochs", Always, |c| c.epochs += 1),
            ("batch_size", Always, |c| c.batch_size *= 2),
            ("micro_batch_size", Always, |c| c.micro_batch_size = 1),
            ("lr", Always, |c| c.lr *= 2.0),
            ("beta", Preference, |c| c.beta = 0.05),
            ("desirable_weight", Kto, |c| c.desirable_weight = 1.33),
            ("undesirable_weight", Kto, |c| c.undesirable_weight = 0.5),
            ("warmup_ratio", Always, |c| c.warmup_ratio = 0.03),
            ("schedule", Always, |c| c.schedule = Schedule::Cosine),
            ("weight_decay", Always, |c| c.weight_decay = 0.01),
            ("max_grad_norm", Always, |c| c.max_grad_norm = 0.5),
            ("max_steps", Always, |c| c.max_steps = Some(7)),
            ("max_length", Always, |c| c.max_length = 1024),
            ("weighting", Always, |c| c.weighting = Weighting::Lwp),
            ("lora", Always, |c| c.lora = !c.lora),
            ("lora_rank", Lora, |c| c.lora_rank = 8),
            ("lora_alpha", Lora, |c| c.lora_alpha = 32.0),
            ("lora_dropout", Lora, |c| c.lora_dropout = 0.05),
            ("lora_targets", Lora, |c| {
                c.lora_targets = vec!["q_proj".into()]
            }),
            ("merge", Lora, |c| c.merge = !c.merge),
            ("seed", Always, |c| c.seed += 1),
            ("engine", Always, |c| c.engine = EngineChoice::Autograd),
            ("save_steps", Never, |c| c.save_steps = 7),
            ("gradient_checkpointing", Never, |c| {
                c.gradient_checkpointing = Checkpointing::On
            }),
            ("memory_limit", Never, |c| c.memory_limit = Some(12.0)),
            ("report_to", Never, |c| {
                c.report_to = crate::tensorboard::ReportTo { tensorboard: true }
            }),
        ]
    }

    fn config(loss: Loss, lora: bool) -> TrainConfig {
        TrainConfig {
            loss,
            lora,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn every_train_key_has_a_change_in_this_test() {
        let keys: Vec<String> = match serde_json::to_value(TrainConfig::default()).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("{other}"),
        };
        let mut listed: Vec<String> = changes().iter().map(|(k, _, _)| k.to_string()).collect();
        listed.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(listed, keys);
    }

    #[test]
    fn the_identity_changes_exactly_with_the_keys_that_change_the_result() {
        for (loss, lora) in [
            (Loss::Sft, false),
            (Loss::Dpo, false),
            (Loss::Kto, false),
            (Loss::Sft, true),
            (Loss::Kto, true),
        ] {
            let base = config(loss, lora);
            for (key, matters, change) in changes() {
                let mut changed = base.clone();
                change(&mut changed);
                assert_ne!(changed, base, "{key}: the change changes nothing");
                let want = match matters {
                    Matters::Always => true,
                    Matters::Preference => loss != Loss::Sft,
                    Matters::Kto => loss == Loss::Kto,
                    Matters::Lora => lora,
                    Matters::Never => false,
                };
                let got = changed.identity() != base.identity();
                assert_eq!(got, want, "{key} under {loss:?}, lora {lora}");
                let fingerprint =
                    |t: &TrainConfig| run_fingerprint("m", "d", t, &ModelConfig::default());
                assert_eq!(
                    fingerprint(&changed) != fingerprint(&base),
                    want,
                    "{key} under {loss:?}, lora {lora}: the run fingerprint"
                );
            }
        }
    }

    #[test]
    fn an_unset_beta_is_trls_default() {
        // TRL's DPOConfig.beta and KTOConfig.beta
        for loss in [Loss::Dpo, Loss::Kto] {
            assert_eq!(config(loss, false).loss_config().beta, 0.1);
        }
    }

    #[test]
    fn the_run_fingerprint_covers_the_model_the_data_and_the_device() {
        let t = TrainConfig::default();
        let cpu = ModelConfig::default();
        let base = run_fingerprint("m", "d", &t, &cpu);
        assert_ne!(run_fingerprint("m2", "d", &t, &cpu), base);
        assert_ne!(run_fingerprint("m", "d2", &t, &cpu), base);
        let cuda = ModelConfig {
            device: crate::model::DeviceChoice::Cuda(0),
            ..cpu.clone()
        };
        assert_ne!(run_fingerprint("m", "d", &t, &cuda), base);
        assert_eq!(run_fingerprint("m", "d", &t, &cpu), base);
    }
}
