//! The configuration of a decoder east runs: its shapes, RoPE and special tokens, and its
//! [`Arch`], the one description of what differs between the families (Llama, Mistral,
//! Qwen2, Qwen3) that every forward, the LoRA targets, the memory estimate and the GGUF export
//! read. Parsed from a Hugging Face `config.json` (transformers 4.x layout with
//! `rope_theta`/`rope_scaling`, or the 5.x layout with `rope_parameters`) or from GGUF metadata
//! (`general.architecture` = `llama`, `qwen2`, `qwen3`), validated, and written back as the
//! family's own `config.json` for checkpoints.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ModelError, Result};

/// The seven projections of a decoder layer, in the order every engine indexes them (q, k,
/// v, o under `self_attn`, gate, up, down under `mlp`): the same module names in every family,
/// which are also the LoRA targets ([`super::lora::LORA_TARGETS`]).
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// A decoder family: how config.json (`model_type`, `architectures`) and GGUF
/// (`general.architecture`) name it. What the families differ in is in [`Arch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Llama 2/3/3.1/3.2, SmolLM2, DeepSeek-R1-Distill-Llama.
    Llama,
    /// Mistral 7B, Mistral-Nemo: Llama's layout with an explicit `head_dim` and an optional
    /// sliding window.
    Mistral,
    /// Qwen2, Qwen2.5, Qwen2.5-Math, DeepSeek-R1-Distill-Qwen: biases on q, k and v.
    Qwen2,
    /// Qwen3: an RMS norm over each head of q and k before RoPE.
    Qwen3,
}

impl Family {
    /// Every family east runs.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// config.json's `architectures` entry (the transformers class).
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// GGUF's `general.architecture` and metadata prefix: llama.cpp converts Mistral models
    /// as `llama`.
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Family::Llama | Family::Mistral => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    fn from_model_type(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == s)
    }

    fn from_hf_class(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.hf_class() == s)
    }

    /// The family of a GGUF `general.architecture` (`llama` reads as Llama: Mistral's GGUF is
    /// Llama's).
    fn from_gguf_arch(s: &str) -> Option<Family> {
        match s {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }
}

/// Sliding-window attention: a token attends to the `size` latest positions (itself
/// included), in the layers from `first_layer` on (Qwen's `max_window_layers`; Mistral: all).
///
/// east does not implement it: a sequence of at most `size` tokens attends to every earlier
/// token either way, and a longer one is an error ([`LlamaConfig::check_sequence_len`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub size: usize,
    pub first_layer: usize,
}

/// What differs between the decoder families beside the shapes: read once from config.json
/// or GGUF, and consumed by every forward (the KV-cached decoder, the training graph, the CPU
/// training engine), by checkpoints, the memory estimate and the GGUF export.
///
/// Every family is a pre-norm decoder with RMS norms, grouped-query attention with RoPE in
/// transformers' `rotate_half` layout (θ, scaling and `head_dim` are in [`LlamaConfig`]),
/// and a SwiGLU MLP (`hidden_act = "silu"`; another activation is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub family: Family,
    /// q_proj, k_proj and v_proj add a bias (Qwen2 always; Llama's and Qwen3's
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj adds a bias (Llama's and Qwen3's `attention_bias`; never Qwen2).
    pub o_bias: bool,
    /// An RMS norm with a `(head_dim,)` weight over each head of q and of k, before RoPE
    /// (`self_attn.q_norm` / `k_norm`; Qwen3).
    pub qk_norm: bool,
    /// The sliding attention window, when some layer has one.
    pub sliding_window: Option<SlidingWindow>,
}

impl Arch {
    /// The family's layout with its usual settings (no attention bias besides Qwen2's, no
    /// sliding window).
    pub fn of(family: Family) -> Arch {
        Arch {
            family,
            qkv_bias: family == Family::Qwen2,
            o_bias: false,
            qk_norm: family == Family::Qwen3,
            sliding_window: None,
        }
    }

    /// Whether projection `which` (an index into [`PROJECTIONS`]) adds a bias.
    pub fn has_bias(&self, which: usize) -> bool {
        match which {
            0..=2 => self.qkv_bias,
            3 => self.o_bias,
            _ => false,
        }
    }

    /// llama.cpp's converter permutes the rows of q_proj and k_proj of `llama` GGUFs (its
    /// interleaved RoPE) and of no other family east reads.
    pub fn gguf_permutes_qk(&self) -> bool {
        self.family.gguf_arch() == "llama"
    }
}

impl Default for Arch {
    fn default() -> Self {
        Arch::of(Family::Llama)
    }
}

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

/// The resolved configuration of a decoder (HF names): its [`Arch`], shapes, RoPE and special
/// tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// What the family changes in the layers (biases, q/k norms, sliding window).
    pub arch: Arch,
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
    /// Mistral: absent means transformers' default, 4096; null means none.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

/// A key that is present (`Some`, its value possibly null) or absent (`None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
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

/// The family named by config.json's `model_type`, else by its `architectures` (old configs).
fn hf_family(raw: &HfConfig, origin: &str) -> Result<Family> {
    let wrong = |found: String| ModelError::WrongArchitecture {
        found,
        origin: origin.to_string(),
    };
    match raw.model_type.as_deref() {
        Some(t) => Family::from_model_type(t).ok_or_else(|| wrong(t.to_string())),
        None => {
            let archs = raw.architectures.clone().unwrap_or_default();
            archs
                .iter()
                .find_map(|a| Family::from_hf_class(a))
                .ok_or_else(|| {
                    wrong(if archs.is_empty() {
                        "<no model_type>".into()
                    } else {
                        archs.join(",")
                    })
                })
        }
    }
}

/// The sliding window of a config.json: Mistral's `sliding_window` (absent: transformers'
/// default 4096), Qwen's when `use_sliding_window` and a layer from `max_window_layers` on
/// (or one named in `layer_types`) uses it.
fn hf_sliding_window(raw: &HfConfig, family: Family, layers: usize) -> Option<SlidingWindow> {
    let size = match family {
        Family::Llama => None,
        Family::Mistral => raw.sliding_window.unwrap_or(Some(4096)),
        Family::Qwen2 | Family::Qwen3 if raw.use_sliding_window == Some(true) => {
            raw.sliding_window.unwrap_or(Some(4096))
        }
        Family::Qwen2 | Family::Qwen3 => None,
    }?;
    let first_layer = match (&raw.layer_types, family) {
        (Some(types), _) => types.iter().position(|t| t == "sliding_attention")?,
        (None, Family::Mistral) => 0,
        (None, _) => raw.max_window_layers.unwrap_or(28),
    };
    (first_layer < layers).then_some(SlidingWindow { size, first_layer })
}

/// The [`Arch`] of a config.json: the family's layout, its `attention_bias`, its sliding window.
fn hf_arch(raw: &HfConfig, family: Family, layers: usize, origin: &str) -> Result<Arch> {
    if let Some(act) = raw.hidden_act.as_deref() {
        if act != "silu" {
            return Err(invalid(
                origin,
                format!("hidden_act `{act}` is not supported (silu only)"),
            ));
        }
    }
    if raw.mlp_bias == Some(true) {
        return Err(invalid(origin, "mlp_bias = true is not supported"));
    }
    let mut arch = Arch::of(family);
    if raw.attention_bias == Some(true) {
        match family {
            // transformers' Llama and Qwen3 put the bias on all four projections
            Family::Llama | Family::Qwen3 => (arch.qkv_bias, arch.o_bias) = (true, true),
            Family::Mistral | Family::Qwen2 => {
                return Err(invalid(
                    origin,
                    format!(
                        "attention_bias = true is not a setting of `{}` models",
                        family.model_type()
                    ),
                ))
            }
        }
    }
    arch.sliding_window = hf_sliding_window(raw, family, layers);
    Ok(arch)
}

/// RoPE θ and scaling: transformers 5 nests them in `rope_parameters`, 4.x has
/// `rope_theta` and `rope_scaling`.
fn hf_rope(raw: &HfConfig, origin: &str) -> Result<(f64, Option<RopeScaling>)> {
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
    Ok((rope_theta.unwrap_or(10_000.0), rope_scaling))
}

/// An unsigned integer of GGUF metadata, whatever its integer type.
fn gguf_uint(metadata: &HashMap<String, gguf_file::Value>, key: &str) -> Option<usize> {
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
}

/// A float of GGUF metadata.
fn gguf_float(metadata: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    metadata.get(key).and_then(|v| match v {
        gguf_file::Value::F32(x) => Some(*x as f64),
        gguf_file::Value::F64(x) => Some(*x),
        _ => None,
    })
}

/// The [`Arch`] of a GGUF file: the family from `general.architecture`, the biases and q/k
/// norms from the tensors of layer 0 (llama.cpp's names), the window from
/// `{arch}.attention.sliding_window`.
fn gguf_arch(
    metadata: &HashMap<String, gguf_file::Value>,
    tensor_infos: &HashMap<String, gguf_file::TensorInfo>,
    origin: &str,
) -> Result<Arch> {
    let name = metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "<none>".to_string());
    let family = Family::from_gguf_arch(&name).ok_or_else(|| ModelError::WrongArchitecture {
        found: name.clone(),
        origin: origin.to_string(),
    })?;
    let has = |t: &str| tensor_infos.contains_key(&format!("blk.0.{t}"));
    let mut arch = Arch::of(family);
    arch.qkv_bias = has("attn_q.bias");
    arch.o_bias = has("attn_output.bias");
    arch.qk_norm = has("attn_q_norm.weight");
    arch.sliding_window = gguf_uint(metadata, &format!("{name}.attention.sliding_window"))
        .filter(|&w| w > 0)
        .map(|size| SlidingWindow {
            size,
            first_layer: 0,
        });
    Ok(arch)
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
        let family = hf_family(&raw, origin)?;
        let need = |v: Option<usize>, key: &str| -> Result<usize> {
            v.ok_or_else(|| invalid(origin, format!("missing `{key}`")))
        };
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_hidden_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let arch = hf_arch(&raw, family, num_hidden_layers, origin)?;
        let (rope_theta, rope_scaling) = hf_rope(&raw, origin)?;
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => {
                hidden_size / num_attention_heads
            }
            None => return Err(invalid(
                origin,
                format!(
                    "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} (and no head_dim is given)"
                ),
            )),
        };
        let cfg = LlamaConfig {
            arch,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
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

    /// Build the config from GGUF metadata (`general.architecture` = `llama`, `qwen2` or
    /// `qwen3`; the keys are prefixed with it). `tensor_infos` supplies what the metadata may
    /// omit (vocab size, tied embeddings, biases, q/k norms).
    pub fn from_gguf(
        metadata: &HashMap<String, gguf_file::Value>,
        tensor_infos: &HashMap<String, gguf_file::TensorInfo>,
        origin: &str,
    ) -> Result<Self> {
        let arch = gguf_arch(metadata, tensor_infos, origin)?;
        let prefix = arch.family.gguf_arch();
        let key = |k: &str| format!("{prefix}.{k}");
        let get_u = |k: &str| gguf_uint(metadata, &key(k));
        let get_f = |k: &str| gguf_float(metadata, &key(k));
        let need = |k: &str| -> Result<usize> {
            get_u(k).ok_or_else(|| invalid(origin, format!("missing metadata `{}`", key(k))))
        };
        let hidden_size = need("embedding_length")?;
        let num_attention_heads = need("attention.head_count")?;
        let head_dim = get_u("attention.key_length")
            .or_else(|| get_u("rope.dimension_count"))
            .unwrap_or_else(|| hidden_size / num_attention_heads.max(1));
        let token_id = |k: &str| gguf_uint(metadata, k).map(|v| v as u32);
        let mut eos_token_ids: Vec<u32> = Vec::new();
        for k in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = token_id(k).filter(|id| !eos_token_ids.contains(id)) {
                eos_token_ids.push(id);
            }
        }
        let cfg = LlamaConfig {
            arch,
            vocab_size: gguf_vocab_size(metadata, tensor_infos, &key("vocab_size"), origin)?,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads,
            num_key_value_heads: get_u("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: gguf_rope_scaling(metadata, prefix, origin)?,
            max_position_embeddings: get_u("context_length").unwrap_or(2048),
            tie_word_embeddings: !tensor_infos.contains_key("output.weight"),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            pad_token_id: token_id("tokenizer.ggml.padding_token_id"),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

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
        if let Some(w) = self.arch.sliding_window.filter(|w| w.size == 0) {
            return err(format!("sliding_window {} must be positive", w.size));
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

    /// `(in, out)` of the seven projections of a layer, in [`PROJECTIONS`] order.
    pub fn projection_dims(&self) -> [(usize, usize); 7] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    }

    /// `(name, shape)` of every tensor of decoder layer `layer` (HF names), in checkpoint
    /// order: the input norm, q/k/v/o (weight, then bias when [`Arch::has_bias`]), the q/k
    /// norms ([`Arch::qk_norm`]), the post-attention norm, gate/up/down.
    pub fn layer_tensors(&self, layer: usize) -> Vec<(String, Vec<usize>)> {
        let p = format!("model.layers.{layer}");
        let h = self.hidden_size;
        let dims = self.projection_dims();
        let mut v = vec![(format!("{p}.input_layernorm.weight"), vec![h])];
        for (w, &(din, dout)) in dims.iter().enumerate() {
            if w == 4 {
                if self.arch.qk_norm {
                    for n in ["q_norm", "k_norm"] {
                        v.push((format!("{p}.self_attn.{n}.weight"), vec![self.head_dim]));
                    }
                }
                v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            }
            let group = if w < 4 { "self_attn" } else { "mlp" };
            let module = format!("{p}.{group}.{}", PROJECTIONS[w]);
            v.push((format!("{module}.weight"), vec![dout, din]));
            if self.arch.has_bias(w) {
                v.push((format!("{module}.bias"), vec![dout]));
            }
        }
        v
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let per_layer: usize = self
            .layer_tensors(0)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let emb = self.vocab_size * self.hidden_size;
        emb + self.num_hidden_layers * per_layer
            + self.hidden_size
            + if self.tie_word_embeddings { 0 } else { emb }
    }

    /// Refuses a sequence of `tokens` tokens longer than the sliding window, which east does
    /// not implement (up to the window, attending to every earlier token is the same).
    pub fn check_sequence_len(&self, tokens: usize) -> Result<()> {
        match self.arch.sliding_window {
            Some(w) if tokens > w.size => Err(ModelError::SlidingWindow {
                tokens,
                window: w.size,
            }),
            _ => Ok(()),
        }
    }

    /// A Hugging Face `config.json` for this model, in its family's layout (transformers 4.x
    /// keys, which 5.x reads too). `torch_dtype` is written when given (e.g. "float32").
    pub fn to_hf_json(&self, torch_dtype: Option<&str>) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let family = self.arch.family;
        let mut v = json!({
            "architectures": [family.hf_class()],
            "model_type": family.model_type(),
            "attention_dropout": 0.0,
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
            "rope_scaling": rope_scaling_json(&self.rope_scaling),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "use_cache": true,
        });
        let window = self.arch.sliding_window;
        match family {
            Family::Llama => {
                v["attention_bias"] = json!(self.arch.qkv_bias);
                v["mlp_bias"] = json!(false);
            }
            Family::Mistral => v["sliding_window"] = json!(window.map(|w| w.size)),
            Family::Qwen2 | Family::Qwen3 => {
                v["use_sliding_window"] = json!(window.is_some());
                v["sliding_window"] = json!(window.map(|w| w.size));
                v["max_window_layers"] =
                    json!(window.map_or(self.num_hidden_layers, |w| w.first_layer));
                if family == Family::Qwen3 {
                    v["attention_bias"] = json!(self.arch.qkv_bias);
                }
            }
        }
        if let Some(dt) = torch_dtype {
            v["torch_dtype"] = json!(dt);
        }
        v
    }
}

/// config.json's `rope_scaling` object (null without scaling).
fn rope_scaling_json(scaling: &Option<RopeScaling>) -> Value {
    match scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
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
    }
}

/// The vocabulary size of a GGUF: `{arch}.vocab_size`, else the tokenizer's token count, else
/// the embedding's rows.
fn gguf_vocab_size(
    metadata: &HashMap<String, gguf_file::Value>,
    tensor_infos: &HashMap<String, gguf_file::TensorInfo>,
    key: &str,
    origin: &str,
) -> Result<usize> {
    if let Some(v) = gguf_uint(metadata, key) {
        return Ok(v);
    }
    match metadata.get("tokenizer.ggml.tokens") {
        Some(gguf_file::Value::Array(a)) => Ok(a.len()),
        _ => tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| invalid(origin, "cannot determine the vocabulary size")),
    }
}

/// The RoPE scaling of a GGUF (`{prefix}.rope.scaling.type` and `.factor`): linear or none;
/// other types are refused (llama3 scaling comes as a `rope_freqs` tensor, read with the
/// weights).
fn gguf_rope_scaling(
    metadata: &HashMap<String, gguf_file::Value>,
    prefix: &str,
    origin: &str,
) -> Result<Option<RopeScaling>> {
    let kind = metadata
        .get(&format!("{prefix}.rope.scaling.type"))
        .and_then(|v| v.to_string().ok());
    match kind.map(String::as_str) {
        Some("linear") => Ok(Some(RopeScaling::Linear {
            factor: gguf_float(metadata, &format!("{prefix}.rope.scaling.factor")).unwrap_or(1.0),
        })),
        Some("none") | None => Ok(None),
        Some(other) => Err(invalid(
            origin,
            format!("unsupported rope scaling type `{other}`"),
        )),
    }
}
