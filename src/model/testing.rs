//! A tiny, seeded, random model of any family east runs written as a real Hugging Face folder, so tests (of this and
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

use super::config::{Arch, LlamaConfig, RopeScaling};
use super::error::{ModelError, Result};
use super::llama::Llama;
use super::load::write_atomic;
use super::tokenizer::byte_level_bpe_json;

/// Shape of the tiny model. The default: a Llama of 2 layers, hidden 64, 4 heads, 2 kv heads,
/// intermediate 128, untied embeddings, vocabulary from [`tiny_tokenizer_json`] (~300).
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// The family and its settings (biases, q/k norms, sliding window).
    pub arch: Arch,
    /// None: `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
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
            arch: Arch::default(),
            head_dim: None,
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

/// `tokenizer_config.json` (ChatML template, special tokens) and `generation_config.json` of
/// the test models, whose tokenizers put the ChatML tokens at ids 0, 1, 2.
fn write_chatml_sidecars(dir: &Path, max_position_embeddings: usize) -> Result<()> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("json");
    let tc = json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": null,
        "add_bos_token": false,
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": max_position_embeddings,
        "tokenizer_class": "GPT2Tokenizer",
    });
    write_atomic(&dir.join("tokenizer_config.json"), pretty(&tc).as_bytes())?;
    let gen = json!({"bos_token_id": 1, "eos_token_id": [2, 0]});
    write_atomic(&dir.join("generation_config.json"), pretty(&gen).as_bytes())
}

/// The config of a tiny model for `vocab_size` tokens.
pub fn tiny_config(spec: &TinySpec, vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        arch: spec.arch,
        vocab_size,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        num_hidden_layers: spec.num_hidden_layers,
        num_attention_heads: spec.num_attention_heads,
        num_key_value_heads: spec.num_key_value_heads,
        head_dim: spec
            .head_dim
            .unwrap_or(spec.hidden_size / spec.num_attention_heads),
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
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect()
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
        error: source,
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
    write_chatml_sidecars(dir, spec.max_position_embeddings)?;
    let weights = random_weights(&cfg, seed)?;
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    Ok(cfg)
}

/// The configuration of a published Llama shape with the tiny tokenizer's special-token ids
/// (bos 1, eos 2) and no weights: `"1b"` = Llama-3.2-1B, `"8b"` = Llama-3.1-8B (config.json
/// values: layers, widths, heads, vocabulary, RoPE with llama3 scaling, tied or untied head).
/// For speed and memory checks with [`write_random_model`].
pub fn published_shape(name: &str) -> Option<LlamaConfig> {
    let llama3 = |factor: f64| RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let (hidden, inter, layers, tie, factor) = match name {
        "1b" => (2048, 8192, 16, true, 32.0),
        "8b" => (4096, 14336, 32, false, 8.0),
        _ => return None,
    };
    Some(LlamaConfig {
        arch: Arch::default(),
        vocab_size: 128_256,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: hidden / 32,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(llama3(factor)),
        max_position_embeddings: 131_072,
        tie_word_embeddings: tie,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: None,
    })
}

/// A byte-level BPE tokenizer.json of exactly `vocab_size` tokens: the ChatML special tokens
/// (ids 0–2), the 256 byte tokens and filler tokens (letter strings) up to the size, no merges,
/// so text encodes one token per byte and every id decodes. For random-weight models of real
/// vocabulary sizes ([`write_random_model`]).
pub fn synthetic_tokenizer_json(vocab_size: usize) -> Value {
    let bytes = bytes_to_unicode();
    let mut tokens: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    let letters: Vec<char> = ('a'..='z').collect();
    let mut len = 2;
    'fill: while tokens.len() < vocab_size {
        let count = letters.len().pow(len as u32);
        for mut k in 0..count {
            if tokens.len() >= vocab_size {
                break 'fill;
            }
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                s.push(letters[k % letters.len()]);
                k /= letters.len();
            }
            tokens.push(s);
        }
        len += 1;
    }
    tokens.truncate(vocab_size.max(TINY_SPECIAL_TOKENS.len() + 256));
    let types: Vec<i64> = (0..tokens.len())
        .map(|i| if i < TINY_SPECIAL_TOKENS.len() { 3 } else { 1 })
        .collect();
    byte_level_bpe_json(&tokens, &[], &types, "smollm", "synthetic tokenizer")
        .expect("the synthetic tokenizer is well-formed")
}

/// Seeded value `i` of tensor number `tensor` of a [`write_random_model`] model: uniform with
/// standard deviation 0.02 (transformers' `initializer_range`), norm weights 1 ± 0.1. Each block
/// of 2^20 values has its own ChaCha8 stream, so tensors are generated in parallel and the
/// values do not depend on the number of threads.
fn random_block(seed: u64, tensor: usize, block: usize, is_norm: bool, out: &mut [half::bf16]) {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(tensor as u64).to_le_bytes());
    key[16..24].copy_from_slice(&(block as u64).to_le_bytes());
    key[24..].copy_from_slice(b"eastrand");
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
    let a = 0.02f32 * 3f32.sqrt();
    for x in out.iter_mut() {
        let v = if is_norm {
            1.0 + rng.random_range(-0.1f32..0.1)
        } else {
            rng.random_range(-a..a)
        };
        *x = half::bf16::from_f32(v);
    }
}

/// Writes a Hugging Face folder for `cfg` with seeded random bf16 weights (streamed, one tensor
/// at a time, generated in parallel: an 8B model takes about its write time) and the
/// [`synthetic_tokenizer_json`] of `cfg.vocab_size` tokens with the ChatML template. `cfg`'s
/// bos/eos ids should be the tokenizer's (1 and 2, as [`published_shape`] sets them).
pub fn write_random_model(dir: &Path, cfg: &LlamaConfig, seed: u64) -> Result<()> {
    use rayon::prelude::*;
    use std::io::Write;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io {
            path: path.clone(),
            error: source,
        }
    };
    cfg.validate("random model")?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("json");
    write_atomic(
        &dir.join("config.json"),
        pretty(&cfg.to_hf_json(Some("bfloat16"))).as_bytes(),
    )?;
    write_atomic(
        &dir.join("tokenizer.json"),
        serde_json::to_string(&synthetic_tokenizer_json(cfg.vocab_size))
            .expect("json")
            .as_bytes(),
    )?;
    write_chatml_sidecars(dir, cfg.max_position_embeddings)?;

    // safetensors: u64 header length, JSON header (name → dtype, shape, byte offsets), data.
    let tensors = Llama::expected_tensors(cfg);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("json");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let path = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 24, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io_err(&tmp))?;
    w.write_all(&header).map_err(io_err(&tmp))?;
    const BLOCK: usize = 1 << 20;
    for (ti, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut vals = vec![half::bf16::ZERO; n];
        let is_norm = name.ends_with("norm.weight");
        vals.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(bi, chunk)| random_block(seed, ti, bi, is_norm, chunk));
        // SAFETY: bf16 is a plain u16; safetensors is little-endian, as this target is.
        const _: () = assert!(cfg!(target_endian = "little"));
        let bytes = unsafe { std::slice::from_raw_parts(vals.as_ptr() as *const u8, 2 * n) };
        w.write_all(bytes).map_err(io_err(&tmp))?;
    }
    w.flush().map_err(io_err(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(())
}
