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

/// Loads `[model]`: weights, tokenizer and chat format.
pub fn load_model(cfg: &ModelConfig) -> anyhow::Result<LoadedModel> {
    let device = device(&cfg.device)?;
    let dtype = dtype(&cfg.dtype, &device)?;
    let lm = model::load(&cfg.path, &device, dtype)?;
    Ok(lm)
}
