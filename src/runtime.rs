//! Choosing where models run: device and dtype from the config, and loading the configured model.

use candle_core::{DType, Device};

use crate::config::ModelConfig;
use crate::model::{self, LoadedModel};

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => anyhow::bail!("device `{s}`: expected cpu, cuda or cuda:N"),
        },
    }
}

fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("device cuda:{ordinal}: this east was built without CUDA (build with `--features cuda`, see scripts/build-cuda.sh)");
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// `auto` is f32 on the CPU (candle's CPU bf16 matmul converts on every call) and bf16 on CUDA.
pub fn dtype(spec: &str, device: &Device) -> anyhow::Result<DType> {
    Ok(match spec {
        "auto" => model::default_dtype(device),
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("dtype `{other}`: expected auto, f32, bf16 or f16"),
    })
}

/// Loads `[model]`: weights, tokenizer and chat format, with LoRA adapters merged in.
///
/// `path` may itself be a PEFT adapter folder (adapter_config.json, no config.json): its base
/// model is `base_model_name_or_path` from adapter_config.json. `[model] adapter` (`--adapter`)
/// names an adapter folder applied on top (after the one `path` names, if any).
pub fn load_model(cfg: &ModelConfig) -> anyhow::Result<LoadedModel> {
    let device = device(&cfg.device)?;
    let dtype = dtype(&cfg.dtype, &device)?;
    let mut adapters = Vec::new();
    let mut base = cfg.path.clone();
    let path = std::path::Path::new(&cfg.path);
    if path.is_dir() && model::lora::is_adapter_dir(path) {
        let a = model::lora::read_adapter(path)?;
        base = a.base_model.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: adapter_config.json names no base_model_name_or_path; pass the base model with --model and the adapter with --adapter",
                path.display()
            )
        })?;
        adapters.push(a);
    }
    if let Some(dir) = &cfg.adapter {
        let dir = std::path::Path::new(dir);
        if !dir.is_dir() {
            anyhow::bail!("adapter {}: not a folder (expected a PEFT adapter folder with adapter_config.json)", dir.display());
        }
        adapters.push(model::lora::read_adapter(dir)?);
    }
    let mut lm = model::load(&base, &device, dtype)?;
    for a in &adapters {
        model::lora::merge_adapter(&mut lm.model, a)?;
    }
    lm.spec = cfg.path.clone();
    Ok(lm)
}
