//! GGUF (llama.cpp) checkpoints: every tensor is dequantized to f32 (then cast to the requested
//! dtype), renamed to its Hugging Face name, and the Q/K row permutation that llama.cpp's
//! `convert_hf_to_gguf.py` applies for its interleaved RoPE is undone, so the HF
//! (`rotate_half`) RoPE of [`super::llama::Llama`] is correct.

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

/// The HF name of a llama.cpp tensor name, or None if it is not part of a Llama model.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let simple = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match rest {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undo llama.cpp's permutation of the rows of `q_proj` / `k_proj` (`n_head` = query heads for
/// Q, kv heads for K). convert_hf_to_gguf maps HF rows `(head, half, i)` to
/// `(head, i, half)`; this maps them back (the inverse of its `permute`).
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("unpermute_qk: {rows} rows are not 2 × {n_head} heads")
    }
    let half = rows / n_head / 2;
    w.reshape((n_head, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The inverse of [`unpermute_qk`] (llama.cpp's permutation), for tests and exporting.
pub fn permute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("permute_qk: {rows} rows are not 2 × {n_head} heads")
    }
    let half = rows / n_head / 2;
    w.reshape((n_head, 2, half, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
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

/// Read a llama GGUF: config, HF-named dequantized tensors (on `device`, in `dtype`),
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
                why: "not a tensor of the Llama architecture".into(),
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
        if hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight") {
            let heads = if hf.ends_with("q_proj.weight") {
                config.num_attention_heads
            } else {
                config.num_key_value_heads
            };
            // A wrong shape is reported later, by name, against the config.
            if t.rank() == 2 && t.dims()[0] % (2 * heads) == 0 {
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
