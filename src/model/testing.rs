//! A tiny, seeded, random Llama written as a real Hugging Face folder, so tests (of this and
//! other modules) can load a model offline: `config.json`, `model.safetensors`,
//! `tokenizer.json` (byte-level BPE with ChatML special tokens), `tokenizer_config.json`
//! (ChatML chat template) and `generation_config.json`.
//!
//! Weights are drawn on the host from ChaCha8 seeded with `seed`, so the same seed gives the
//! same weights on every device and platform.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::config::{LlamaConfig, RopeScaling};
use super::error::{ModelError, Result};
use super::llama::Llama;
use super::load::write_atomic;
use super::tokenizer::byte_level_bpe_json;

/// Shape of the tiny model. The default: 2 layers, hidden 64, 4 heads, 2 kv heads,
/// intermediate 128, untied embeddings, vocabulary from [`tiny_tokenizer_json`] (~300).
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            num_hidden_layers: 2,
            hidden_size: 64,
            intermediate_size: 128,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            tie_word_embeddings: false,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 1024,
        }
    }
}

/// Special tokens of the tiny tokenizer (ids 0, 1, 2).
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The ChatML template written into the tiny model's tokenizer_config.json.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// GPT-2's byte → printable character map used by byte-level BPE.
pub fn bytes_to_unicode() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap();
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap();
            n += 1;
        }
    }
    map
}

/// A small byte-level BPE tokenizer.json: the 3 ChatML special tokens, the 256 byte tokens and
/// a few dozen merges of common English / chat / math fragments; SmolLM2's pre-tokenizer
/// (single digits, then the GPT-2 split).
pub fn tiny_tokenizer_json() -> Value {
    let bytes = bytes_to_unicode();
    let mut tokens: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    let merges_src = [
        "Ġ t",
        "h e",
        "i n",
        "Ġ a",
        "e r",
        "o n",
        "Ġt he",
        "r e",
        "a n",
        "Ġ s",
        "Ġ w",
        "a t",
        "e n",
        "Ġ o",
        "Ġ c",
        "i s",
        "o r",
        "e s",
        "Ġ f",
        "Ġ b",
        "i t",
        "Ġ p",
        "Ġ m",
        "Ġ i",
        "u s",
        "us er",
        "a s",
        "as s",
        "ass is",
        "assis t",
        "assist an",
        "assistan t",
        "s y",
        "sy s",
        "sys t",
        "syst e",
        "syste m",
        "Ġ Ġ",
        "Ġ =",
        "Ġ +",
        "\\ f",
        "\\f r",
        "\\fr a",
        "\\fra c",
        "Ġ x",
        "o x",
        "b ox",
        "\\ box",
        "e d",
        "\\box ed",
        "Ġ h",
        "Ġh ow",
        "o w",
    ];
    // Fix-up: every merge's parts must exist before it; "Ġh ow" needs "ow" first.
    let mut merges: Vec<String> = Vec::new();
    let mut have: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut pending: Vec<&str> = merges_src.to_vec();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            if have.contains(a) && have.contains(b) {
                let joined = format!("{a}{b}");
                if have.insert(joined.clone()) {
                    tokens.push(joined);
                }
                merges.push(m.to_string());
                false
            } else {
                true
            }
        });
        assert!(
            pending.len() < before,
            "tiny tokenizer merges are not closed"
        );
    }
    let types: Vec<i64> = (0..tokens.len())
        .map(|i| if i < TINY_SPECIAL_TOKENS.len() { 3 } else { 1 })
        .collect();
    byte_level_bpe_json(&tokens, &merges, &types, "smollm", "tiny tokenizer")
        .expect("the tiny tokenizer is well-formed")
}

/// The config of a tiny model for `vocab_size` tokens.
pub fn tiny_config(spec: &TinySpec, vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        num_hidden_layers: spec.num_hidden_layers,
        num_attention_heads: spec.num_attention_heads,
        num_key_value_heads: spec.num_key_value_heads,
        head_dim: spec.hidden_size / spec.num_attention_heads,
        rms_norm_eps: 1e-5,
        rope_theta: spec.rope_theta,
        rope_scaling: spec.rope_scaling.clone(),
        max_position_embeddings: spec.max_position_embeddings,
        tie_word_embeddings: spec.tie_word_embeddings,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    }
}

/// Seeded random weights (HF names, f32, CPU) for `cfg`.
pub fn random_weights(
    cfg: &LlamaConfig,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in Llama::expected_tensors(cfg) {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n)
                .map(|_| 1.0 + rng.random_range(-0.2f32..0.2))
                .collect()
        } else {
            // Uniform with std 1/sqrt(fan_in) (embeddings: std 1); the lm_head gets a larger
            // scale so the logits are spread like a trained model's.
            let fan_in = if name == "model.embed_tokens.weight" {
                1
            } else {
                shape[1]
            };
            let mut std = 1.0 / (fan_in as f32).sqrt();
            if name == "lm_head.weight" {
                std *= 4.0;
            }
            let a = std * 3f32.sqrt();
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        out.insert(name, Tensor::from_vec(vals, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Write the default tiny model (see [`TinySpec`]) into `dir` (created if needed).
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<LlamaConfig> {
    write_tiny_model_with(dir, seed, &TinySpec::default())
}

/// Write a tiny model of shape `spec` into `dir`; returns its config.
pub fn write_tiny_model_with(dir: &Path, seed: u64, spec: &TinySpec) -> Result<LlamaConfig> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tok = tiny_tokenizer_json();
    let vocab_size = tok["model"]["vocab"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    let cfg = tiny_config(spec, vocab_size);
    cfg.validate("tiny model")?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("json");
    write_atomic(
        &dir.join("config.json"),
        pretty(&cfg.to_hf_json(Some("float32"))).as_bytes(),
    )?;
    write_atomic(&dir.join("tokenizer.json"), pretty(&tok).as_bytes())?;
    let tc = json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": null,
        "add_bos_token": false,
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": spec.max_position_embeddings,
        "tokenizer_class": "GPT2Tokenizer",
    });
    write_atomic(&dir.join("tokenizer_config.json"), pretty(&tc).as_bytes())?;
    let gen = json!({"bos_token_id": 1, "eos_token_id": [2, 0]});
    write_atomic(&dir.join("generation_config.json"), pretty(&gen).as_bytes())?;
    let weights = random_weights(&cfg, seed)?;
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    Ok(cfg)
}
