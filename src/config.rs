//! The run configuration: one TOML file with a section per stage. Every stage flag of the CLI is
//! also a key here (`east weight --a 1.5` ≡ `[weight] a = 1.5`), and `--set section.key=value`
//! overrides a key from the command line. Unknown keys, wrong types and out-of-range values are
//! errors that name the key and where it came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::FieldMap;
use crate::weight::{ClusterBy, Loss, Mapping, Metric, PairStrategy};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid { origin: String, key: String, message: String },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
}

/// The whole run. Sections mirror the stages of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub sample: SampleConfig,
    pub cluster: ClusterConfig,
    pub weight: WeightConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub run: RunConfig,
}

/// `[model]`: which weights to start from and where to run them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hugging Face repo id, local folder (config.json + safetensors + tokenizer.json) or `.gguf` file.
    pub path: String,
    /// Optional PEFT LoRA adapter folder applied on top of `path`.
    pub adapter: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `auto` (f32 on CPU, bf16 on CUDA), `f32`, `bf16` or `f16`.
    pub dtype: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            adapter: None,
            device: "cpu".into(),
            dtype: "auto".into(),
        }
    }
}

/// `[data]`: the training questions that are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `gsm8k`, `math`, `math500` or a path to a JSONL file.
    pub dataset: String,
    pub split: String,
    /// Use only the first `limit` questions.
    pub limit: Option<usize>,
    /// Field names of a custom JSONL file.
    pub fields: FieldMap,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { dataset: "gsm8k".into(), split: "train".into(), limit: None, fields: FieldMap::default() }
    }
}

/// `[sample]`: n completions per question from the current policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    pub n: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Most sequences decoded together (several questions share a batch when n is small).
    pub batch_rows: usize,
    /// Extra stop strings besides the model's EOS tokens.
    pub stop: Vec<String>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { n: 128, temperature: 0.7, top_p: 1.0, max_new_tokens: 2048, seed: 42, batch_rows: 128, stop: Vec::new() }
    }
}

/// `[cluster]`: how completions are graded and grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub by: ClusterBy,
    /// Qwen2.5-Math toolkit's rule that `pred` equals `ref×100` or `ref/100` (off, as in EAST).
    pub percent_rule: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { by: ClusterBy::Equivalence, percent_rule: false }
    }
}

/// `[weight]`: from uncertainty to per-question weights and training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightConfig {
    pub metric: Metric,
    pub mapping: Mapping,
    /// Exponent of the power mapping.
    pub a: f64,
    /// Output range R of the linear mapping.
    pub range: f64,
    pub pairs: PairStrategy,
    pub seed: u64,
    /// Chosen completions must contain `\boxed` (the authors' filter; turn off for models that
    /// state answers another way).
    pub require_boxed: bool,
}

impl Default for WeightConfig {
    fn default() -> Self {
        Self {
            metric: Metric::Entropy,
            mapping: Mapping::Power,
            a: 1.0,
            range: 1.0,
            pairs: PairStrategy::Authors,
            seed: 42,
            require_boxed: true,
        }
    }
}

/// `[train]`: the weighted loss and its optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub loss: Loss,
    pub epochs: usize,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub lr: f64,
    /// DPO/KTO temperature; unset means the paper's 1B value for the loss (DPO 0.01, KTO 0.05).
    pub beta: Option<f64>,
    /// KTO weights of desirable and undesirable examples.
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    pub warmup_ratio: f64,
    /// `linear` or `cosine` decay after warmup.
    pub schedule: String,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Stop after this many optimiser steps (for smoke tests).
    pub max_steps: Option<usize>,
    /// Truncate prompt + response to this many tokens.
    pub max_length: usize,
    /// `data` (weights of train.jsonl), `none` (all 1), `lwp` (perplexity) or `lww` (WPO).
    pub weighting: String,
    pub lora: bool,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    /// With LoRA, also write a merged full checkpoint (`out/merged/`).
    pub merge: bool,
    pub seed: u64,
    /// `auto` (the CPU engine for f32/f64 on the CPU, else candle autograd), `cpu` or `autograd`.
    pub engine: String,
    /// Write a resume checkpoint every this many optimiser steps (0: never).
    pub save_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: Loss::Sft,
            epochs: 3,
            batch_size: 16,
            micro_batch_size: 2,
            lr: 2e-6,
            beta: None,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            warmup_ratio: 0.1,
            schedule: "linear".into(),
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            max_steps: None,
            max_length: 2048,
            weighting: "data".into(),
            lora: false,
            lora_rank: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            merge: false,
            seed: 42,
            engine: "auto".into(),
            save_steps: 50,
        }
    }
}

/// `[eval]`: greedy accuracy on benchmark splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub datasets: Vec<String>,
    pub split: String,
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    /// Questions decoded together.
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { datasets: vec!["gsm8k".into()], split: "test".into(), limit: None, max_new_tokens: 2048, batch_size: 32 }
    }
}

/// `[run]`: the iterative pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub name: String,
    /// Parent folder of run directories.
    pub dir: String,
    pub rounds: usize,
    /// Evaluate the starting model as round 0.
    pub eval_base: bool,
    /// Round 1's samples made elsewhere (`east merge` of shards, a vLLM job) instead of sampling.
    pub samples: Option<String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { name: "east".into(), dir: "runs".into(), rounds: 1, eval_base: true, samples: None }
    }
}

const SECTIONS: &[&str] = &["model", "data", "sample", "cluster", "weight", "train", "eval", "run"];

impl Config {
    /// Reads a config file, applies `--set` overrides and validates the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::from_toml_str(&text, &origin, overrides)
    }

    /// Parses TOML text (errors are attributed to `origin`), applies overrides, validates.
    pub fn from_toml_str(text: &str, origin: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        // Parse the file alone first so its errors carry the file's line and column.
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        config.validate(origin)?;
        if overrides.is_empty() {
            return Ok(config);
        }
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        for arg in overrides {
            apply_override(&mut table, arg)?;
        }
        let origin = format!("{origin} with --set {}", overrides.join(" --set "));
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { origin: origin.clone(), message: e.to_string() })?;
        config.validate(&origin)?;
        Ok(config)
    }

    /// Range checks that types alone cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Invalid { origin: origin.to_string(), key: key.to_string(), message })
        };
        let finite = |key: &str, v: f64| if v.is_finite() { Ok(()) } else { bad(key, format!("must be finite, got {v}")) };

        if self.model.path.trim().is_empty() {
            return bad("model.path", "must not be empty".into());
        }
        if !matches!(self.model.dtype.as_str(), "auto" | "f32" | "bf16" | "f16") {
            return bad("model.dtype", format!("must be auto, f32, bf16 or f16, got `{}`", self.model.dtype));
        }
        let dev = self.model.device.as_str();
        let cuda_index_ok = dev.strip_prefix("cuda:").map(|i| i.parse::<usize>().is_ok()).unwrap_or(false);
        if !(dev == "cpu" || dev == "cuda" || cuda_index_ok) {
            return bad("model.device", format!("must be cpu, cuda or cuda:N, got `{dev}`"));
        }
        if self.data.limit == Some(0) {
            return bad("data.limit", "must be at least 1 when set".into());
        }
        if !matches!(self.data.split.as_str(), "train" | "test") && !self.data.dataset.ends_with(".jsonl") {
            return bad("data.split", format!("must be train or test, got `{}`", self.data.split));
        }
        if self.sample.n == 0 {
            return bad("sample.n", "must be at least 1".into());
        }
        finite("sample.temperature", self.sample.temperature)?;
        if self.sample.temperature < 0.0 {
            return bad("sample.temperature", format!("must be ≥ 0, got {}", self.sample.temperature));
        }
        finite("sample.top_p", self.sample.top_p)?;
        if !(self.sample.top_p > 0.0 && self.sample.top_p <= 1.0) {
            return bad("sample.top_p", format!("must be in (0, 1], got {}", self.sample.top_p));
        }
        if self.sample.max_new_tokens == 0 {
            return bad("sample.max_new_tokens", "must be at least 1".into());
        }
        if self.sample.batch_rows == 0 {
            return bad("sample.batch_rows", "must be at least 1".into());
        }
        finite("weight.a", self.weight.a)?;
        finite("weight.range", self.weight.range)?;
        if self.weight.range <= 0.0 {
            return bad("weight.range", format!("must be > 0, got {}", self.weight.range));
        }
        let t = &self.train;
        if t.epochs == 0 {
            return bad("train.epochs", "must be at least 1".into());
        }
        if t.batch_size == 0 || t.micro_batch_size == 0 {
            return bad("train.batch_size", "batch sizes must be at least 1".into());
        }
        if !t.batch_size.is_multiple_of(t.micro_batch_size) {
            return bad(
                "train.micro_batch_size",
                format!("must divide train.batch_size ({}), got {}", t.batch_size, t.micro_batch_size),
            );
        }
        finite("train.lr", t.lr)?;
        if t.lr <= 0.0 {
            return bad("train.lr", format!("must be > 0, got {}", t.lr));
        }
        if let Some(beta) = t.beta {
            finite("train.beta", beta)?;
            if beta <= 0.0 {
                return bad("train.beta", format!("must be > 0, got {beta}"));
            }
        }
        for (key, v) in [("train.desirable_weight", t.desirable_weight), ("train.undesirable_weight", t.undesirable_weight)] {
            finite(key, v)?;
            if v < 0.0 {
                return bad(key, format!("must be ≥ 0, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            return bad("train.warmup_ratio", format!("must be in [0, 1), got {}", t.warmup_ratio));
        }
        if !matches!(t.schedule.as_str(), "linear" | "cosine" | "constant") {
            return bad("train.schedule", format!("must be linear, cosine or constant, got `{}`", t.schedule));
        }
        finite("train.weight_decay", t.weight_decay)?;
        if t.weight_decay < 0.0 {
            return bad("train.weight_decay", format!("must be ≥ 0, got {}", t.weight_decay));
        }
        finite("train.max_grad_norm", t.max_grad_norm)?;
        if t.max_grad_norm <= 0.0 {
            return bad("train.max_grad_norm", format!("must be > 0, got {}", t.max_grad_norm));
        }
        if t.max_steps == Some(0) {
            return bad("train.max_steps", "must be at least 1 when set".into());
        }
        if t.max_length < 2 {
            return bad("train.max_length", "must be at least 2".into());
        }
        if !matches!(t.weighting.as_str(), "data" | "none" | "lwp" | "lww") {
            return bad("train.weighting", format!("must be data, none, lwp or lww, got `{}`", t.weighting));
        }
        if t.lora_rank == 0 {
            return bad("train.lora_rank", "must be at least 1".into());
        }
        finite("train.lora_alpha", t.lora_alpha)?;
        if t.lora_alpha <= 0.0 {
            return bad("train.lora_alpha", format!("must be > 0, got {}", t.lora_alpha));
        }
        if !(0.0..1.0).contains(&t.lora_dropout) {
            return bad("train.lora_dropout", format!("must be in [0, 1), got {}", t.lora_dropout));
        }
        const TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        if t.lora_targets.is_empty() {
            return bad("train.lora_targets", "must name at least one module".into());
        }
        if let Some(bad_target) = t.lora_targets.iter().find(|m| !TARGETS.contains(&m.as_str())) {
            return bad("train.lora_targets", format!("unknown module `{bad_target}` (known: {})", TARGETS.join(", ")));
        }
        if !matches!(t.engine.as_str(), "auto" | "cpu" | "autograd") {
            return bad("train.engine", format!("must be auto, cpu or autograd, got `{}`", t.engine));
        }
        if t.merge && !t.lora {
            return bad("train.merge", "only applies with train.lora = true (full fine-tuning writes a full checkpoint anyway)".into());
        }
        if self.eval.datasets.is_empty() {
            return bad("eval.datasets", "must name at least one dataset".into());
        }
        if self.eval.limit == Some(0) {
            return bad("eval.limit", "must be at least 1 when set".into());
        }
        if self.eval.max_new_tokens == 0 {
            return bad("eval.max_new_tokens", "must be at least 1".into());
        }
        if self.eval.batch_size == 0 {
            return bad("eval.batch_size", "must be at least 1".into());
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) {
            return bad("run.name", format!("must be a non-empty folder name, got `{}`", self.run.name));
        }
        if self.run.rounds == 0 {
            return bad("run.rounds", "must be at least 1".into());
        }
        Ok(())
    }

    /// The DPO/KTO β in force: the configured one or the paper's 1B default for the loss.
    pub fn beta(&self) -> f64 {
        self.train.beta.unwrap_or(match self.train.loss {
            Loss::Kto => 0.05,
            _ => 0.01,
        })
    }

    /// The configuration as TOML (what `east run` stores in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Applies one `section.key=value` override. The value is read as a TOML value (`8`, `0.5`,
/// `true`, `"text"`, `[1, 2]`); anything that is not valid TOML is taken as a plain string.
fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override { arg: arg.to_string(), message };
    let (key, raw) = arg.split_once('=').ok_or_else(|| err("expected section.key=value".into()))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("`{key}` is not of the form section.key")));
    }
    if !SECTIONS.contains(&parts[0]) {
        return Err(err(format!("unknown section `{}` (sections: {})", parts[0], SECTIONS.join(", "))));
    }
    let value = parse_value(raw.trim());
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry.as_table_mut().ok_or_else(|| err(format!("`{part}` is not a section")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_paper() {
        let c = Config::default();
        assert_eq!(c.sample.n, 128);
        assert_eq!(c.weight.a, 1.0);
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.train.warmup_ratio, 0.1);
        assert_eq!(c.train.max_grad_norm, 1.0);
        assert_eq!(c.train.weight_decay, 0.0);
        assert_eq!(c.eval.max_new_tokens, 2048);
        assert_eq!((c.train.lora_rank, c.train.lora_alpha), (16, 16.0));
        c.validate("defaults").unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\nn = 8\ntemprature = 0.5\n", "my.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("my.toml") && e.contains("temprature") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\nn = \"many\"\n", "my.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("my.toml") && e.contains("line 2") && e.contains("n"), "{e}");
    }

    #[test]
    fn out_of_range_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\ntop_p = 1.5\n", "my.toml", &[]).unwrap_err().to_string();
        assert_eq!(e, "my.toml: key `sample.top_p`: must be in (0, 1], got 1.5");
        let e = Config::from_toml_str("[train]\nbatch_size = 16\nmicro_batch_size = 3\n", "c.toml", &[]).unwrap_err();
        assert!(e.to_string().contains("train.micro_batch_size"), "{e}");
    }

    #[test]
    fn overrides_apply_with_toml_types() {
        let c = Config::from_toml_str(
            "[weight]\na = 1.0\n",
            "c.toml",
            &["weight.a=1.5".into(), "sample.n=8".into(), "model.path=models/x.gguf".into(), "weight.metric=\"accuracy\"".into()],
        )
        .unwrap();
        assert_eq!(c.weight.a, 1.5);
        assert_eq!(c.sample.n, 8);
        assert_eq!(c.model.path, "models/x.gguf");
        assert_eq!(c.weight.metric, Metric::Accuracy);
    }

    #[test]
    fn bad_overrides_are_errors() {
        let e = Config::from_toml_str("", "c.toml", &["sample.n=-1".into()]).unwrap_err().to_string();
        assert!(e.contains("--set sample.n=-1"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["nosection.n=1".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown section"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["sample.bogus=1".into()]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["sample.n".into()]).unwrap_err().to_string();
        assert!(e.contains("section.key=value"), "{e}");
    }

    #[test]
    fn train_keys_are_validated() {
        let e = Config::from_toml_str("[train]\nengine = \"gpu\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("train.engine"), "{e}");
        let e = Config::from_toml_str("[train]\nmerge = true\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("train.merge"), "{e}");
        let c = Config::from_toml_str("[train]\nlora = true\nmerge = true\nsave_steps = 0\n", "c.toml", &[]).unwrap();
        assert_eq!((c.train.save_steps, c.train.engine.as_str()), (0, "auto"));
        let e = Config::from_toml_str("[train]\nweighting = \"ppl\"\n", "c.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("train.weighting"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = Config::default();
        c.weight.a = -1.25;
        c.train.loss = Loss::Kto;
        let back = Config::from_toml_str(&c.to_toml(), "x", &[]).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.beta(), 0.05);
    }
}
