//! Llama configuration: parsed from a Hugging Face `config.json` (transformers 4.x layout with
//! `rope_theta`/`rope_scaling`, or the 5.x layout with `rope_parameters`) or from GGUF metadata
//! (`llama.*` keys), validated, and written back as a `config.json` for checkpoints.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ModelError, Result};

/// How RoPE frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "linear"`: every frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// `rope_type: "llama3"` (Llama 3.1 / 3.2): low frequencies divided by `factor`, high ones
    /// kept, a smooth blend between `low_freq_factor` and `high_freq_factor`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The resolved configuration of a Llama-architecture model (HF names).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` when config.json has none.
    pub num_key_value_heads: usize,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of config.json (int or list); empty when absent.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(i64),
    Many(Vec<i64>),
}

impl OneOrMany {
    fn ids(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(i) => vec![*i as u32],
            OneOrMany::Many(v) => v.iter().map(|&i| i as u32).collect(),
        }
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<OneOrMany>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<OneOrMany>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    pretraining_tp: Option<usize>,
}

/// Strictly positive and finite (false for NaN, which every comparison rejects).
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

fn invalid(origin: &str, msg: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        msg: msg.into(),
        origin: origin.to_string(),
    }
}

fn parse_rope_scaling(v: &Value, origin: &str) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(origin, format!("rope scaling must be an object, got {v}")))?;
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        obj.get(key).and_then(Value::as_f64).ok_or_else(|| {
            invalid(
                origin,
                format!("rope scaling `{kind}` needs a numeric `{key}`"),
            )
        })
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(invalid(
            origin,
            format!("unsupported rope scaling type `{other}` (supported: default, linear, llama3)"),
        )),
    }
}

impl LlamaConfig {
    /// Parse a Hugging Face `config.json`. `origin` names the file in error messages.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid(origin, format!("not valid JSON: {e}")))?;
        Self::from_hf_value(&value, origin)
    }

    /// Parse an already-decoded `config.json`.
    pub fn from_hf_value(value: &Value, origin: &str) -> Result<Self> {
        let raw: HfConfig =
            serde_json::from_value(value.clone()).map_err(|e| invalid(origin, e.to_string()))?;
        match raw.model_type.as_deref() {
            Some("llama") => {}
            Some(other) => {
                return Err(ModelError::WrongArchitecture {
                    found: other.to_string(),
                    origin: origin.to_string(),
                })
            }
            None => {
                // Old configs may lack model_type; fall back on `architectures`.
                let archs = raw.architectures.clone().unwrap_or_default();
                if !archs.iter().any(|a| a == "LlamaForCausalLM") {
                    return Err(ModelError::WrongArchitecture {
                        found: if archs.is_empty() {
                            "<no model_type>".into()
                        } else {
                            archs.join(",")
                        },
                        origin: origin.to_string(),
                    });
                }
            }
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(invalid(
                    origin,
                    format!("hidden_act `{act}` is not supported (silu only)"),
                ));
            }
        }
        if raw.attention_bias == Some(true) || raw.mlp_bias == Some(true) {
            return Err(invalid(
                origin,
                "attention_bias / mlp_bias = true is not supported",
            ));
        }
        if raw.pretraining_tp.unwrap_or(1) != 1 {
            // pretraining_tp only changes the order of float ops in transformers; harmless.
        }
        let need = |v: Option<usize>, key: &str| -> Result<usize> {
            v.ok_or_else(|| invalid(origin, format!("missing `{key}`")))
        };
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;

        // rope: transformers 5 nests rope_theta and the scaling in `rope_parameters`.
        let mut rope_theta = raw.rope_theta;
        let mut rope_scaling = None;
        if let Some(rp) = raw.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            if let Some(t) = rp.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = Some(t);
            }
            rope_scaling = parse_rope_scaling(rp, origin)?;
        }
        if let Some(rs) = raw.rope_scaling.as_ref() {
            if rope_scaling.is_none() {
                rope_scaling = parse_rope_scaling(rs, origin)?;
            }
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    return Err(invalid(
                        origin,
                        format!(
                            "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} (and no head_dim is given)"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let cfg = LlamaConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id.and_then(|b| b.ids().first().copied()),
            eos_token_ids: raw.eos_token_id.map(|e| e.ids()).unwrap_or_default(),
            pad_token_id: raw.pad_token_id.and_then(|p| p.ids().first().copied()),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Build the config from GGUF metadata (`general.architecture` must be `llama`).
    /// `tensor_infos` supplies what the metadata may omit (vocab size, tied embeddings).
    pub fn from_gguf(
        metadata: &HashMap<String, gguf_file::Value>,
        tensor_infos: &HashMap<String, gguf_file::TensorInfo>,
        origin: &str,
    ) -> Result<Self> {
        let arch = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "<none>".to_string());
        if arch != "llama" {
            return Err(ModelError::WrongArchitecture {
                found: arch,
                origin: origin.to_string(),
            });
        }
        let get_u = |key: &str| -> Option<usize> {
            metadata.get(key).and_then(|v| match v {
                gguf_file::Value::U8(x) => Some(*x as usize),
                gguf_file::Value::U16(x) => Some(*x as usize),
                gguf_file::Value::U32(x) => Some(*x as usize),
                gguf_file::Value::U64(x) => Some(*x as usize),
                gguf_file::Value::I8(x) => Some(*x as usize),
                gguf_file::Value::I16(x) => Some(*x as usize),
                gguf_file::Value::I32(x) => Some(*x as usize),
                gguf_file::Value::I64(x) => Some(*x as usize),
                _ => None,
            })
        };
        let get_f = |key: &str| -> Option<f64> {
            metadata.get(key).and_then(|v| match v {
                gguf_file::Value::F32(x) => Some(*x as f64),
                gguf_file::Value::F64(x) => Some(*x),
                _ => None,
            })
        };
        let need = |key: &str| -> Result<usize> {
            get_u(key).ok_or_else(|| invalid(origin, format!("missing metadata `{key}`")))
        };
        let hidden_size = need("llama.embedding_length")?;
        let num_attention_heads = need("llama.attention.head_count")?;
        let num_key_value_heads =
            get_u("llama.attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = get_u("llama.attention.key_length")
            .or_else(|| get_u("llama.rope.dimension_count"))
            .unwrap_or_else(|| hidden_size / num_attention_heads.max(1));
        let vocab_size = match get_u("llama.vocab_size") {
            Some(v) => v,
            None => match metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(a)) => a.len(),
                _ => tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
                    .ok_or_else(|| invalid(origin, "cannot determine the vocabulary size"))?,
            },
        };
        let rope_scaling = match metadata
            .get("llama.rope.scaling.type")
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
        {
            Some("linear") => Some(RopeScaling::Linear {
                factor: get_f("llama.rope.scaling.factor").unwrap_or(1.0),
            }),
            Some("none") | None => None,
            Some(other) => {
                return Err(invalid(
                    origin,
                    format!("unsupported rope scaling type `{other}`"),
                ))
            }
        };
        let token_id = |key: &str| get_u(key).map(|v| v as u32);
        let mut eos_token_ids: Vec<u32> = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = token_id(key) {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: need("llama.feed_forward_length")?,
            num_hidden_layers: need("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: get_f("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: get_u("llama.context_length").unwrap_or(2048),
            tie_word_embeddings: !tensor_infos.contains_key("output.weight"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            pad_token_id: token_id("tokenizer.ggml.padding_token_id"),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Check the values against each other; `origin` names the source in the error.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(invalid(origin, m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return err(format!("`{name}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !positive(self.rms_norm_eps) {
            return err(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        if !positive(self.rope_theta) {
            return err(format!("rope_theta {} must be positive", self.rope_theta));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) if !positive(*factor) => {
                return err(format!("rope scaling factor {factor} must be positive"))
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) if !positive(*factor)
                || !positive(*low_freq_factor)
                || !positive(high_freq_factor - low_freq_factor)
                || *original_max_position_embeddings == 0 =>
            {
                return err(format!(
                    "llama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0 (got {factor}, {low_freq_factor}, {high_freq_factor}, {original_max_position_embeddings})"
                ));
            }
            _ => {}
        }
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id as usize >= self.vocab_size {
                return err(format!(
                    "special token id {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// RoPE inverse frequencies (length `head_dim / 2`), with the configured scaling applied,
    /// computed in f64 (transformers computes them in f32; the difference is < 1e-7 relative).
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                // transformers' _compute_llama3_parameters.
                let old = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        let emb = self.vocab_size * h;
        emb + self.num_hidden_layers * per_layer
            + h
            + if self.tie_word_embeddings { 0 } else { emb }
    }

    /// A Hugging Face `config.json` for this model (transformers 4.x layout, which 5.x reads too).
    /// `torch_dtype` is written when given (e.g. "float32", "bfloat16").
    pub fn to_hf_json(&self, torch_dtype: Option<&str>) -> Value {
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": true,
        });
        if let Some(dt) = torch_dtype {
            v["torch_dtype"] = json!(dt);
        }
        v
    }
}
