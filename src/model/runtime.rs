//! The `[model]` section and what it resolves to: which weights (with which adapters), on which
//! device, in which dtype, and loading them.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::chat::{ChatSettings, PinnedDate, PromptStyle};
use super::{LoadedModel, ModelText};

/// `[model]`: which weights to start from and where to run them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hugging Face repo id, local folder (config.json + safetensors + tokenizer.json) or `.gguf` file.
    pub path: String,
    /// Optional PEFT LoRA adapter folder applied on top of `path`.
    pub adapter: Option<String>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// How sampling and evaluation write a question's prompt: `chat` (the model's own chat
    /// template) or `authors` (the EAST authors' Llama 3 prompt text).
    pub prompt_style: PromptStyle,
    /// The date a chat template's `strftime_now` reports (Llama 3.2's "Today Date"), pinned so
    /// prompts are reproducible: `YYYY-MM-DD`.
    pub date: PinnedDate,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            adapter: None,
            device: DeviceChoice::Cpu,
            dtype: DTypeChoice::Auto,
            prompt_style: PromptStyle::Chat,
            date: ChatSettings::default().date,
        }
    }
}

impl ModelConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.path.trim().is_empty() {
            return Err(("path", "must not be empty".into()));
        }
        Ok(())
    }

    /// A readable name of the model: `path`, or `path + adapter`. What sample and eval
    /// settings name the model by (so that another adapter is another model).
    pub fn label(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{} + {a}", self.path),
            None => self.path.clone(),
        }
    }

    /// The prompt settings this section gives.
    pub fn chat_settings(&self) -> ChatSettings {
        ChatSettings {
            style: self.prompt_style,
            date: self.date,
        }
    }
}

/// Where a model runs: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => Ok(DeviceChoice::Cuda(i)),
                None => Err(format!("must be cpu, cuda or cuda:N, got `{other}`")),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; CUDA needs a build with the `cuda` feature.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    anyhow::bail!(
                        "device cuda:{ordinal}: this east was built without CUDA (build with `--features cuda`, see scripts/build-cuda.sh)"
                    );
                }
                Ok(Device::new_cuda(ordinal)?)
            }
        }
    }
}

/// The weights' dtype: `auto` is f32 on the CPU (candle's CPU bf16 matmul converts on every
/// call) and bf16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl DTypeChoice {
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeChoice::Auto => super::default_dtype(device),
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::Bf16 => DType::BF16,
            DTypeChoice::F16 => DType::F16,
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`, opened.
pub fn device(spec: &str) -> anyhow::Result<Device> {
    spec.parse::<DeviceChoice>()
        .map_err(|e| anyhow::anyhow!("device: {e}"))?
        .open()
}

/// `auto`, `f32`, `bf16` or `f16` on `device`.
pub fn dtype(spec: &str, device: &Device) -> anyhow::Result<DType> {
    let choice = <DTypeChoice as clap::ValueEnum>::from_str(spec, false)
        .map_err(|_| anyhow::anyhow!("dtype `{spec}`: expected auto, f32, bf16 or f16"))?;
    Ok(choice.resolve(device))
}

/// Loads `[model]`: weights, tokenizer and chat template, with LoRA adapters merged in.
///
/// `path` may itself be a PEFT adapter folder (adapter_config.json, no config.json): its base
/// model is `base_model_name_or_path` from adapter_config.json. `[model] adapter` (`--adapter`)
/// names an adapter folder applied on top (after the one `path` names, if any).
pub fn load_model(cfg: &ModelConfig) -> anyhow::Result<LoadedModel> {
    let device = cfg.device.open()?;
    let dtype = cfg.dtype.resolve(&device);
    let (base, adapters) = base_and_adapters(cfg)?;
    let mut lm = super::load::load_with(&base, &device, dtype, cfg.chat_settings())?;
    for a in &adapters {
        super::lora::merge_adapter(&mut lm.model, a)?;
    }
    lm.spec = cfg.path.clone();
    Ok(lm)
}

/// Loads `[model]`'s tokenizer, config and chat template only, not its weights: what sampling
/// and evaluating through a server need. Adapters (small) are read and checked as for
/// [`load_model`] but not merged: they change no prompt. Its prompts are byte-identical to
/// those of [`load_model`]'s model.
pub fn load_model_text(cfg: &ModelConfig) -> anyhow::Result<ModelText> {
    let (base, _) = base_and_adapters(cfg)?;
    let mut text = super::load::load_text(&base, cfg.chat_settings())?;
    text.spec = cfg.path.clone();
    Ok(text)
}

/// The base model spec of `[model]` and the adapters to merge into it, in order (`path` may be
/// an adapter folder naming its base; `adapter` is applied on top).
fn base_and_adapters(cfg: &ModelConfig) -> anyhow::Result<(String, Vec<super::lora::PeftAdapter>)> {
    let mut adapters = Vec::new();
    let mut base = cfg.path.clone();
    let path = std::path::Path::new(&cfg.path);
    if path.is_dir() && super::lora::is_adapter_dir(path) {
        let a = super::lora::read_adapter(path)?;
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
        adapters.push(super::lora::read_adapter(dir)?);
    }
    Ok((base, adapters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        for s in ["cpu", "cuda", "cuda:3"] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap().to_string(), s);
        }
        assert_eq!(
            "cuda:0".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }
}
