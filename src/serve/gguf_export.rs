//! A round's trained model as a GGUF file for llama.cpp's server (`server.checkpoint_format =
//! "gguf"`): the base GGUF's metadata (architecture, RoPE, tokenizer, chat template) is copied,
//! and the model's weights (as east loads them: a full checkpoint, a merged model, or base +
//! adapter merged) are written as f32 under llama.cpp's names (biases and Qwen3's q/k norms
//! included), with the Q/K row permutation that llama.cpp's converter applies to `llama` models
//! (the inverse of what east's GGUF reader undoes; Qwen's rows are written as they are).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::model::gguf::{permute_qk, permuted_heads};
use crate::model::{load_model, LlamaConfig, ModelConfig};

pub use crate::model::gguf::hf_to_gguf_name;

/// Writes `tensors` (HF names, f32) with `base`'s metadata to `out` (atomically).
pub fn write_gguf(
    base: &Path,
    config: &LlamaConfig,
    tensors: &[(String, Tensor)],
    out: &Path,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(base).map_err(|e| crate::io::InputError::io(base, e))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| anyhow::anyhow!("{}: not a GGUF file: {e}", base.display()))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != config.arch.family.gguf_arch() {
        anyhow::bail!(
            "{}: its architecture `{arch}` is not the model's (`{}`): export onto a GGUF of the same family",
            base.display(),
            config.arch.family.gguf_arch()
        );
    }
    let mut metadata: Vec<(String, gguf_file::Value)> = content
        .metadata
        .clone()
        .into_iter()
        // candle writes 32-byte alignment; the weights are f32 now
        .filter(|(k, _)| k != "general.alignment" && k != "general.file_type")
        .filter(|(k, _)| !k.starts_with("general.quantization"))
        .collect();
    metadata.push(("general.file_type".into(), gguf_file::Value::U32(0)));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut qtensors: Vec<(String, QTensor)> = Vec::with_capacity(tensors.len());
    // llama.cpp reads rope_freqs.weight for llama3 RoPE scaling: keep the base's
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let q = content.tensor(&mut f, "rope_freqs.weight", &Device::Cpu)?;
        qtensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&q.dequantize(&Device::Cpu)?, GgmlDType::F32)?,
        ));
    }
    for (name, t) in tensors {
        let g = hf_to_gguf_name(name)
            .ok_or_else(|| anyhow::anyhow!("tensor {name} has no GGUF name"))?;
        let mut t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if let Some(heads) = permuted_heads(name, config) {
            t = permute_qk(&t, heads)?;
        }
        qtensors.push((g, QTensor::quantize(&t.contiguous()?, GgmlDType::F32)?));
    }
    let tmp = crate::io::tmp_name(out);
    let write = || -> anyhow::Result<()> {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&tmp).map_err(|e| crate::io::InputError::io(&tmp, e))?,
        );
        let md: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &md, &ts)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
        use std::io::Write;
        w.flush().map_err(|e| crate::io::InputError::io(&tmp, e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| crate::io::InputError::io(out, e))?;
    Ok(())
}

/// Exports `model` (loaded on the CPU in f32, adapters merged) to `out` with `base`'s metadata,
/// unless `out` was already exported for `key` (recorded in `<out>.key`).
pub fn export_cached(
    model: &ModelConfig,
    base: &Path,
    out: &Path,
    key: &str,
) -> anyhow::Result<()> {
    let key_file = out.with_extension("gguf.key");
    if out.is_file() && std::fs::read_to_string(&key_file).ok().as_deref() == Some(key) {
        return Ok(());
    }
    let cpu = ModelConfig {
        device: crate::model::DeviceChoice::Cpu,
        dtype: crate::model::DTypeChoice::F32,
        ..model.clone()
    };
    let lm = load_model(&cpu)?;
    write_gguf(base, &lm.config, &lm.model.named_tensors(), out)?;
    crate::io::write_atomic(&key_file, key.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_the_reader() {
        for n in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.11.post_attention_layernorm.weight",
            "model.layers.2.self_attn.k_proj.bias",
            "model.layers.1.self_attn.q_norm.weight",
            "model.layers.1.self_attn.k_norm.weight",
            "model.layers.0.self_attn.o_proj.bias",
        ] {
            let g = hf_to_gguf_name(n).unwrap();
            assert_eq!(crate::model::gguf::gguf_to_hf_name(&g).as_deref(), Some(n));
        }
        assert_eq!(
            hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
    }
}
