//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` as PEFT writes them
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, `A` of shape
//! `(r, in)`, `B` of shape `(out, r)`), read, merged into a loaded model
//! (`W ← W + (α/r)·B·A`, or `α/√r` with rsLoRA), and written.
//!
//! Supported: LoRA on the decoder projections (q/k/v/o/gate/up/down; the same module names in
//! every family east runs, a projection's own bias staying frozen) without trained biases,
//! DoRA, per-module rank/alpha patterns or extra trained modules; anything else is refused
//! with the reason rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::error::{read_json, ModelError, Result};
use super::llama::Llama;

/// The projections east applies LoRA to: every projection of a decoder layer, named alike in
/// every family.
pub const LORA_TARGETS: [&str; 7] = super::config::PROJECTIONS;

/// A LoRA adapter read from disk.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub rank: usize,
    pub alpha: f64,
    /// `alpha / rank` (`alpha / sqrt(rank)` with rsLoRA).
    pub scale: f64,
    pub targets: Vec<String>,
    /// `base_model_name_or_path` from the config, when set.
    pub base_model: Option<String>,
    /// Module path (`model.layers.0.self_attn.q_proj`) → (A, B), f32 on the CPU.
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
}

/// True when `dir` holds a PEFT adapter and no full model.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file() && !dir.join("config.json").is_file()
}

fn invalid(dir: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        msg: msg.into(),
        origin: dir.join("adapter_config.json").display().to_string(),
    }
}

/// Reads a PEFT LoRA adapter folder.
pub fn read_adapter(dir: &Path) -> Result<PeftAdapter> {
    let cfg_path = dir.join("adapter_config.json");
    if !cfg_path.is_file() {
        return Err(ModelError::MissingFile {
            path: cfg_path,
            hint: " (a PEFT adapter folder needs adapter_config.json)".into(),
        });
    }
    let settings = adapter_settings(dir, &read_json(&cfg_path)?)?;
    let st_path = dir.join("adapter_model.safetensors");
    if !st_path.is_file() {
        let hint = if dir.join("adapter_model.bin").is_file() {
            " (adapter_model.bin is a pickle; save the adapter with safe_serialization=True)"
        } else {
            ""
        };
        return Err(ModelError::MissingFile {
            path: st_path,
            hint: hint.into(),
        });
    }
    let halves = read_halves(&st_path)?;
    let weights = pair_halves(halves, settings.rank, &st_path.display().to_string())?;
    if weights.is_empty() {
        return Err(invalid(dir, "the adapter holds no LoRA weights"));
    }
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        rank: settings.rank,
        alpha: settings.alpha,
        scale: settings.scale,
        targets: settings.targets,
        base_model: settings.base_model,
        weights,
    })
}

/// What adapter_config.json says, checked against what east supports.
struct AdapterSettings {
    rank: usize,
    alpha: f64,
    scale: f64,
    targets: Vec<String>,
    base_model: Option<String>,
}

/// Reads and checks adapter_config.json (`cfg`) of the adapter in `dir`.
fn adapter_settings(dir: &Path, cfg: &Value) -> Result<AdapterSettings> {
    let peft_type = cfg
        .get("peft_type")
        .and_then(Value::as_str)
        .unwrap_or("LORA");
    if !peft_type.eq_ignore_ascii_case("lora") {
        return Err(invalid(
            dir,
            format!("peft_type `{peft_type}` is not supported (LORA only)"),
        ));
    }
    let rank = cfg
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid(dir, "`r` is missing"))? as usize;
    if rank == 0 {
        return Err(invalid(dir, "`r` must be at least 1"));
    }
    let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    refuse_unsupported(dir, cfg, &flag)?;
    let scale = if flag("use_rslora") {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    let targets: Vec<String> = match cfg.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let base_model = cfg
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(AdapterSettings {
        rank,
        alpha,
        scale,
        targets,
        base_model,
    })
}

/// Refuses the adapter settings east does not implement (DoRA, fan-in-fan-out, trained
/// biases, per-module ranks, fully trained extra modules), naming them.
fn refuse_unsupported(dir: &Path, cfg: &Value, flag: &dyn Fn(&str) -> bool) -> Result<()> {
    if flag("use_dora") {
        return Err(invalid(dir, "DoRA adapters (use_dora) are not supported"));
    }
    if flag("fan_in_fan_out") {
        return Err(invalid(
            dir,
            "fan_in_fan_out adapters are not supported (the projections are nn.Linear)",
        ));
    }
    if let Some(b) = cfg.get("bias").and_then(Value::as_str) {
        if b != "none" {
            return Err(invalid(
                dir,
                format!("bias `{b}` is not supported (none only)"),
            ));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if cfg
            .get(k)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(invalid(
                dir,
                format!("`{k}` (per-module rank or alpha) is not supported"),
            ));
        }
    }
    if cfg
        .get("modules_to_save")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(invalid(
            dir,
            "`modules_to_save` (fully trained extra modules) is not supported",
        ));
    }
    Ok(())
}

/// A module's LoRA matrices as read: (A, B), either possibly missing.
type Halves = BTreeMap<String, (Option<Tensor>, Option<Tensor>)>;

/// The LoRA matrices of adapter_model.safetensors by module path (PEFT's names, with or
/// without the `.default` adapter name), in f32; a tensor of anything else is an error.
fn read_halves(st_path: &Path) -> Result<Halves> {
    let tensors = candle_core::safetensors::load(st_path, &Device::Cpu)?;
    let origin = st_path.display().to_string();
    let mut halves = Halves::new();
    for (name, t) in tensors {
        let rest = name.strip_prefix("base_model.model.").unwrap_or(&name);
        let half = |ab: &str| {
            rest.strip_suffix(&format!(".lora_{ab}.weight"))
                .or_else(|| rest.strip_suffix(&format!(".lora_{ab}.default.weight")))
        };
        let (module, is_a) = match (half("A"), half("B")) {
            (Some(m), _) => (m, true),
            (None, Some(m)) => (m, false),
            (None, None) => return Err(ModelError::UnexpectedTensor {
                name,
                why: "not a LoRA A/B matrix of a decoder projection (only q/k/v/o/gate/up/down LoRA is supported)".into(),
                origin,
            }),
        };
        let ok = module.starts_with("model.layers.")
            && LORA_TARGETS
                .iter()
                .any(|p| module.ends_with(&format!(".{p}")));
        if !ok {
            return Err(ModelError::UnexpectedTensor {
                name,
                why: "LoRA on a module other than a decoder projection".into(),
                origin,
            });
        }
        let t = t.to_dtype(DType::F32)?;
        let e = halves.entry(module.to_string()).or_default();
        if is_a {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    Ok(halves)
}

/// Every module's (A, B), both present and of rank `rank`.
fn pair_halves(
    halves: Halves,
    rank: usize,
    origin: &str,
) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let mut weights = BTreeMap::new();
    for (module, (a, b)) in halves {
        match (a, b) {
            (Some(a), Some(b)) => {
                let (ra, _) = a.dims2()?;
                let (_, rb) = b.dims2()?;
                if ra != rank || rb != rank {
                    return Err(ModelError::ShapeMismatch {
                        name: format!("{module}.lora_A/B"),
                        expected: vec![rank],
                        found: vec![ra, rb],
                        origin: origin.to_string(),
                    });
                }
                weights.insert(module, (a, b));
            }
            (a, _) => {
                return Err(ModelError::MissingTensor {
                    name: format!(
                        "base_model.model.{module}.lora_{}.weight",
                        if a.is_none() { "A" } else { "B" }
                    ),
                    origin: origin.to_string(),
                })
            }
        }
    }
    Ok(weights)
}

/// The merged weight `W + scale·B·A` (computed in f32, returned in `w`'s dtype and device).
pub fn merged_weight(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let dev = w.device();
    let delta = (b
        .to_device(dev)?
        .to_dtype(DType::F32)?
        .matmul(&a.to_device(dev)?.to_dtype(DType::F32)?)?
        * scale)?;
    (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())
}

/// Merges LoRA matrices under their PEFT names (`base_model.model.{module}.lora_A.weight`, `…lora_B…`)
/// into base weights under their HF names (`{module}.weight`): `W ← W + scale·B·A`. Returns how
/// many weights were merged.
pub fn merge_named(
    base: &mut [(String, Tensor)],
    lora: &[(String, Tensor)],
    scale: f64,
) -> candle_core::Result<usize> {
    let find = |name: String| lora.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
    let mut merged = 0;
    for (name, w) in base.iter_mut() {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let a = find(format!("base_model.model.{module}.lora_A.weight"));
        let b = find(format!("base_model.model.{module}.lora_B.weight"));
        if let (Some(a), Some(b)) = (a, b) {
            *w = merged_weight(w, a, b, scale)?;
            merged += 1;
        }
    }
    Ok(merged)
}

/// Merges `adapter` into `model`'s projection weights; returns how many were merged.
pub fn merge_adapter(model: &mut Llama, adapter: &PeftAdapter) -> Result<usize> {
    let mut left: BTreeMap<&str, &(Tensor, Tensor)> = adapter
        .weights
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let origin = adapter.dir.display().to_string();
    let mut merged = 0;
    for (name, layer) in model.linear_layers_mut() {
        let Some((a, b)) = left.remove(name.as_str()) else {
            continue;
        };
        let (out_dim, in_dim) = layer.weight().dims2()?;
        if a.dims() != [adapter.rank, in_dim] || b.dims() != [out_dim, adapter.rank] {
            return Err(ModelError::ShapeMismatch {
                name: format!("{name}.lora_A/B"),
                expected: vec![adapter.rank, in_dim, out_dim],
                found: [a.dims(), b.dims()].concat(),
                origin,
            });
        }
        let w = merged_weight(layer.weight(), a, b, adapter.scale)?;
        layer.set_weight(w)?;
        merged += 1;
    }
    if let Some((name, _)) = left.into_iter().next() {
        return Err(ModelError::UnexpectedTensor {
            name: name.to_string(),
            why: "the model has no such projection".into(),
            origin,
        });
    }
    Ok(merged)
}

/// Writes a PEFT adapter: `adapter_model.safetensors` (the given tensors, PEFT names, f32) and
/// `adapter_config.json`.
pub fn write_adapter(
    dir: &Path,
    tensors: &[(String, Tensor)],
    rank: usize,
    alpha: f64,
    dropout: f64,
    targets: &[String],
    base_model: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        error: source,
    })?;
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let tmp = dir.join("adapter_model.safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, dir.join("adapter_model.safetensors")).map_err(|source| {
        ModelError::Io {
            path: dir.join("adapter_model.safetensors"),
            error: source,
        }
    })?;
    let alpha_json = if alpha.fract() == 0.0 {
        json!(alpha as i64)
    } else {
        json!(alpha)
    };
    let cfg = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha_json,
        "lora_dropout": dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    let text = serde_json::to_string_pretty(&cfg).expect("json");
    super::load::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}
