//! GGUF (llama.cpp) checkpoints of the `llama`, `qwen2` and `qwen3` architectures: every
//! tensor is dequantized to f32 (then cast to the requested dtype), renamed to its Hugging Face
//! name (one table, [`gguf_to_hf_name`] / [`hf_to_gguf_name`]), and the Q/K row permutation
//! that llama.cpp's `convert_hf_to_gguf.py` applies to `llama` models for its interleaved RoPE
//! is undone (it leaves Qwen's as they are), so the HF (`rotate_half`) RoPE of
//! [`super::llama::Llama`] is correct.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{LlamaConfig, RopeScaling};
use super::error::{ModelError, Result};
use super::tokenizer::{tokenizer_from_gguf, Tokenizer};

/// Everything a GGUF file gives east.
pub struct GgufModel {
    pub config: LlamaConfig,
    /// HF-named tensors (`model.embed_tokens.weight`, …), dequantized, in the requested dtype.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    /// The tokenizer.json equivalent of `tokenizer` (to write next to exported checkpoints).
    pub tokenizer_json: Value,
    /// `tokenizer.chat_template`, if any.
    pub chat_template: Option<String>,
}

/// llama.cpp's and Hugging Face's names of the per-layer tensors of every family east reads
/// and writes (after `blk.{i}.` and `model.layers.{i}.`): one table for both directions.
const LAYER_NAMES: [(&str, &str); 15] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The same for the tensors outside the layers.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Renames `name` from one naming (`from`: layer prefix and table side) to the other.
fn rename(name: &str, gguf_to_hf: bool) -> Option<String> {
    let side = |pair: &(&'static str, &'static str)| {
        if gguf_to_hf {
            (pair.0, pair.1)
        } else {
            (pair.1, pair.0)
        }
    };
    if let Some((_, to)) = GLOBAL_NAMES.iter().map(side).find(|(f, _)| *f == name) {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if gguf_to_hf {
        ("blk.", "model.layers.")
    } else {
        ("model.layers.", "blk.")
    };
    let (layer, rest) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = LAYER_NAMES.iter().map(side).find(|(f, _)| *f == rest)?;
    Some(format!("{to_prefix}{layer}.{to}"))
}

/// The HF name of a llama.cpp tensor name, or None if it is not a tensor of a family east runs.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    rename(name, true)
}

/// The llama.cpp name of an HF tensor name (the inverse of [`gguf_to_hf_name`]).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    rename(name, false)
}

/// The query or key heads (for [`permute_qk`] / [`unpermute_qk`]) of an HF tensor that
/// llama.cpp permutes in `llama` GGUFs (q/k weights and biases), else None.
pub fn permuted_heads(name: &str, cfg: &LlamaConfig) -> Option<usize> {
    if !cfg.arch.gguf_permutes_qk() {
        return None;
    }
    let q = ["self_attn.q_proj.weight", "self_attn.q_proj.bias"];
    let k = ["self_attn.k_proj.weight", "self_attn.k_proj.bias"];
    if q.iter().any(|s| name.ends_with(s)) {
        Some(cfg.num_attention_heads)
    } else if k.iter().any(|s| name.ends_with(s)) {
        Some(cfg.num_key_value_heads)
    } else {
        None
    }
}

/// Undo llama.cpp's permutation of the rows of `q_proj` / `k_proj` (weight `(rows, cols)` or
/// bias `(rows,)`; `n_head` = query heads for Q, kv heads for K). convert_hf_to_gguf maps HF
/// rows `(head, half, i)` to `(head, i, half)`; this maps them back (the inverse of its
/// `permute`).
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    permute_rows(w, n_head, true)
}

/// The inverse of [`unpermute_qk`] (llama.cpp's permutation), for tests and exporting.
pub fn permute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    permute_rows(w, n_head, false)
}

/// Rows `(head, a, b)` → `(head, b, a)` with `(a, b)` = `(half, 2)` (`undo`) or `(2, half)`.
fn permute_rows(w: &Tensor, n_head: usize, undo: bool) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let (rows, cols) = match dims.as_slice() {
        [r] => (*r, 1),
        [r, c] => (*r, *c),
        _ => candle_core::bail!("permute_qk: a weight or a bias, not shape {dims:?}"),
    };
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("permute_qk: {rows} rows are not 2 × {n_head} heads")
    }
    let half = rows / n_head / 2;
    let (a, b) = if undo { (half, 2) } else { (2, half) };
    w.reshape((n_head, a, b, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

fn gguf_err(path: &Path, msg: impl ToString) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Llama 3.1+ GGUFs carry the llama3 RoPE scaling as a `rope_freqs.weight` tensor of
/// per-frequency divisors instead of metadata. Recover the (standard) llama3 parameters from
/// it, and check they reproduce every divisor.
fn llama3_scaling_from_rope_freqs(
    cfg: &LlamaConfig,
    divisors: &[f32],
    path: &Path,
) -> Result<RopeScaling> {
    let factor = divisors.iter().cloned().fold(1f32, f32::max) as f64;
    let mut probe = cfg.clone();
    for orig in [8192usize, 4096, 2048, 16384, 32768] {
        let scaling = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: orig,
        };
        probe.rope_scaling = None;
        let base = probe.rope_inv_freq();
        probe.rope_scaling = Some(scaling.clone());
        let scaled = probe.rope_inv_freq();
        let ok = divisors.len() == base.len()
            && base
                .iter()
                .zip(&scaled)
                .zip(divisors)
                .all(|((b, s), d)| ((b / s) - *d as f64).abs() <= 1e-3 * (*d as f64).max(1.0));
        if ok {
            return Ok(scaling);
        }
    }
    Err(gguf_err(
        path,
        "rope_freqs.weight does not match a llama3 RoPE scaling (low_freq_factor 1, high_freq_factor 4)",
    ))
}

/// Read a GGUF: config, HF-named dequantized tensors (on `device`, in `dtype`),
/// tokenizer and chat template.
pub fn read_gguf(path: &Path, device: &Device, dtype: DType) -> Result<GgufModel> {
    read_gguf_parts(path, device, dtype, true)
}

/// [`read_gguf`] without the weights (`tensors` empty): config, tokenizer and chat template,
/// for rendering prompts and counting tokens. Only the small `rope_freqs` tensor is read, for
/// the same config.
pub fn read_gguf_text(path: &Path) -> Result<GgufModel> {
    read_gguf_parts(path, &Device::Cpu, DType::F32, false)
}

fn read_gguf_parts(path: &Path, device: &Device, dtype: DType, weights: bool) -> Result<GgufModel> {
    let origin = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile {
                path: path.to_path_buf(),
                hint: missing_model_hint(path),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                error: source,
            }
        }
    })?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_err(path, e))?;
    let mut config = LlamaConfig::from_gguf(&content.metadata, &content.tensor_infos, &origin)?;
    let (tokenizer, tokenizer_json) = tokenizer_from_gguf(&content.metadata, &origin)?;
    let chat_template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    for name in names {
        if name == "rope_freqs.weight" {
            let t = content
                .tensor(&mut file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| gguf_err(path, format!("{name}: {e}")))?;
            config.rope_scaling = Some(llama3_scaling_from_rope_freqs(&config, &t, path)?);
            continue;
        }
        if !weights {
            continue;
        }
        let Some(hf) = gguf_to_hf_name(name) else {
            return Err(ModelError::UnexpectedTensor {
                name: name.clone(),
                why: format!(
                    "not a tensor of a `{}` model east knows",
                    config.arch.family.gguf_arch()
                ),
                origin: origin.clone(),
            });
        };
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| gguf_err(path, format!("{name}: {e}")))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| gguf_err(path, format!("{name}: {e}")))?;
        if let Some(heads) = permuted_heads(&hf, &config) {
            // A wrong shape is reported later, by name, against the config.
            if t.rank() <= 2 && t.dims()[0] % (2 * heads) == 0 {
                t = unpermute_qk(&t, heads)?;
            }
        }
        let t = t.to_dtype(dtype)?.to_device(device)?;
        tensors.insert(hf, t);
    }
    Ok(GgufModel {
        config,
        tensors,
        tokenizer,
        tokenizer_json,
        chat_template,
    })
}

/// Hint for a missing model file: the bundled SmolLM2 GGUF comes from scripts/fetch-model.sh.
pub(crate) fn missing_model_hint(path: &Path) -> String {
    if path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("SmolLM2"))
    {
        " (run scripts/fetch-model.sh to download it)".into()
    } else {
        String::new()
    }
}

/// The path of the SmolLM2-135M-Instruct GGUF that `scripts/fetch-model.sh` puts into
/// `<crate>/models/` (for tests, benches and demos).
pub fn bundled_smollm2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}
