//! What `east train` writes: Hugging Face model folders (config.json, model.safetensors with HF
//! tensor names, tokenizer files) that east and transformers load, PEFT adapter folders, and
//! resume checkpoints (trainable weights, AdamW moments, step) written atomically: into a
//! temporary folder that is renamed into place, so a kill at any moment leaves the previous
//! checkpoint or the new one, never a torn one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::engine::EngineState;
use crate::model::{Llama, LlamaConfig, LoadedModel, ModelSource, ModelText, Tokenizer};

/// Everything about the source model a checkpoint needs besides its weights.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    /// tokenizer.json of GGUF sources.
    pub tokenizer_json: Option<Value>,
    /// Folder of folder/hub sources (tokenizer files are copied from it).
    pub dir: Option<PathBuf>,
    pub chat_template: Option<String>,
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    pub pad_id: u32,
}

impl ModelMeta {
    /// Splits a loaded model into its weights (for the engine), what a checkpoint needs of it,
    /// and the base model's name for adapter_config.json (an absolute path for local models).
    pub fn split(lm: LoadedModel) -> (Llama, ModelMeta, String) {
        let base_spec = match &lm.source {
            ModelSource::Gguf(p) | ModelSource::Folder(p) => p
                .canonicalize()
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            ModelSource::Hub { .. } => lm.spec.clone(),
        };
        let LoadedModel { model, text } = lm;
        let ModelText {
            tokenizer,
            config,
            chat_template,
            eos_ids,
            bos_id,
            pad_id,
            dir,
            tokenizer_json,
            ..
        } = text;
        let meta = ModelMeta {
            config,
            tokenizer,
            tokenizer_json,
            dir,
            chat_template,
            eos_ids,
            bos_id,
            pad_id,
        };
        (model, meta, base_spec)
    }
}

/// The `torch_dtype` string of a dtype.
pub fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{}: {e}", path.display())
}

/// Writes tokenizer.json, tokenizer_config.json and generation_config.json into `dir`: copied
/// from the source folder when it has them, else built (GGUF sources).
pub fn write_tokenizer_files(dir: &Path, meta: &ModelMeta) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let have = |name: &str| -> anyhow::Result<bool> {
        if let Some(src) = meta
            .dir
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
        {
            let dst = dir.join(name);
            if src.canonicalize().ok() != dst.canonicalize().ok() {
                std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
            }
            return Ok(true);
        }
        Ok(false)
    };
    let write_json = |name: &str, v: &Value| -> anyhow::Result<()> {
        let path = dir.join(name);
        Ok(crate::io::write_json_atomic(&path, v)?)
    };
    if !have("tokenizer.json")? {
        let tj = meta
            .tokenizer_json
            .as_ref()
            .context("the source model has no tokenizer.json to copy")?;
        write_json("tokenizer.json", tj)?;
    }
    let tok = |id: u32| meta.tokenizer.id_to_token(id);
    if !have("tokenizer_config.json")? {
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": meta.config.max_position_embeddings,
        });
        if let Some(t) = &meta.chat_template {
            tc["chat_template"] = json!(t);
        }
        if let Some(b) = meta.bos_id.and_then(tok) {
            tc["bos_token"] = json!(b);
        }
        if let Some(e) = meta.eos_ids.first().copied().and_then(tok) {
            tc["eos_token"] = json!(e);
        }
        if let Some(p) = tok(meta.pad_id) {
            tc["pad_token"] = json!(p);
        }
        write_json("tokenizer_config.json", &tc)?;
    }
    for extra in ["special_tokens_map.json", "chat_template.jinja"] {
        have(extra)?;
    }
    if !have("generation_config.json")? {
        let mut g = json!({"eos_token_id": meta.eos_ids});
        if let Some(b) = meta.bos_id {
            g["bos_token_id"] = json!(b);
        }
        write_json("generation_config.json", &g)?;
    }
    Ok(())
}

/// Writes a full model folder from HF-named weights, stored as `dtype`.
pub fn write_model_dir(
    dir: &Path,
    meta: &ModelMeta,
    weights: Vec<(String, Tensor)>,
    dtype: DType,
) -> anyhow::Result<()> {
    let map: HashMap<String, Tensor> = weights.into_iter().collect();
    let model = Llama::load(
        VarBuilder::from_tensors(map, dtype, &Device::Cpu),
        &meta.config,
    )?;
    crate::model::load::save_checkpoint(&model, dir, Some(torch_dtype(dtype)))?;
    write_tokenizer_files(dir, meta)
}

/// What a resume checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Fingerprint of model, data and settings: a rerun resumes only when it matches.
    pub fingerprint: String,
    /// Optimiser steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// Lines of train_log.jsonl written up to `step`.
    pub log_lines: usize,
}

const RESUME: &str = "resume";

pub fn resume_dir(out: &Path) -> PathBuf {
    out.join(RESUME)
}

fn save_tensors(path: &Path, list: &[(String, Tensor)]) -> anyhow::Result<()> {
    let map: HashMap<String, Tensor> = list
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&map, path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    crate::model::load::set_umask_mode(path).map_err(io_err(path))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn load_tensors(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `out/resume/` atomically (a temporary folder renamed over the previous checkpoint).
pub fn save_resume(out: &Path, state: &ResumeState, engine: &EngineState) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let tmp = out.join(format!(".{RESUME}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    save_tensors(&tmp.join("params.safetensors"), &engine.params)?;
    save_tensors(&tmp.join("exp_avg.safetensors"), &engine.exp_avg)?;
    save_tensors(&tmp.join("exp_avg_sq.safetensors"), &engine.exp_avg_sq)?;
    let mut meta = serde_json::to_value(state)?;
    meta["optimizer_step"] = json!(engine.step);
    crate::io::write_json_atomic(&tmp.join("state.json"), &meta)?;
    sync_dir(&tmp);
    let dst = resume_dir(out);
    let old = out.join(format!(".{RESUME}.old-{}", std::process::id()));
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(out);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

/// Reads `out/resume/` if there is one (after a kill between the two renames of
/// [`save_resume`], the previous checkpoint is taken back from its temporary name).
pub fn load_resume(out: &Path) -> anyhow::Result<Option<(ResumeState, EngineState)>> {
    let dst = resume_dir(out);
    if !dst.exists() {
        if let Ok(entries) = std::fs::read_dir(out) {
            let prefix = format!(".{RESUME}.old-");
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix)
                    && e.path().join("state.json").is_file()
                {
                    std::fs::rename(e.path(), &dst).map_err(io_err(&dst))?;
                    break;
                }
            }
        }
    }
    let state_path = dst.join("state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", state_path.display()))?;
    let state: ResumeState = serde_json::from_value(v.clone())
        .with_context(|| format!("{}: not a resume state", state_path.display()))?;
    let step = v
        .get("optimizer_step")
        .and_then(Value::as_u64)
        .unwrap_or(state.step as u64);
    let engine = EngineState {
        step,
        params: load_tensors(&dst.join("params.safetensors"))?,
        exp_avg: load_tensors(&dst.join("exp_avg.safetensors"))?,
        exp_avg_sq: load_tensors(&dst.join("exp_avg_sq.safetensors"))?,
    };
    Ok(Some((state, engine)))
}

/// Removes the resume checkpoint (after the final checkpoint is written).
pub fn remove_resume(out: &Path) -> anyhow::Result<()> {
    let dst = resume_dir(out);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    Ok(())
}
