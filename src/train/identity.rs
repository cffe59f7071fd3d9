//! What identifies a training run, so that a rerun resumes or skips only the same run: the
//! starting model (where it came from, its files' names, sizes and times), the data's bytes and
//! the settings that decide the weights.

use std::path::{Path, PathBuf};

use candle_core::DType;
use sha2::{Digest, Sha256};

use super::config::TrainConfig;
use crate::model::{LoadedModel, ModelConfig, ModelSource};
use crate::schema::Loss;

/// (size, modification time) of the files that make up a model, for fingerprints.
fn files_fingerprint(h: &mut Sha256, path: &Path) {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.ends_with(".json") || name.ends_with(".safetensors") || name.ends_with(".gguf")) {
            continue;
        }
        let meta = std::fs::metadata(&f).ok();
        let mtime = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(name.as_bytes());
        h.update(meta.map(|m| m.len()).unwrap_or(0).to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
}

/// Identifies the starting model: where it came from and its files' sizes and times.
pub fn model_fingerprint(lm: &LoadedModel, adapter: Option<&str>, dtype: DType) -> String {
    let mut h = Sha256::new();
    h.update(lm.spec.as_bytes());
    match &lm.source {
        ModelSource::Gguf(p) | ModelSource::Folder(p) => {
            h.update(
                p.canonicalize()
                    .unwrap_or_else(|_| p.clone())
                    .to_string_lossy()
                    .as_bytes(),
            );
            files_fingerprint(&mut h, p);
        }
        ModelSource::Hub { repo, revision } => {
            h.update(repo.as_bytes());
            h.update(revision.clone().unwrap_or_default().as_bytes());
            if let Some(d) = &lm.dir {
                files_fingerprint(&mut h, d);
            }
        }
    }
    if let Some(a) = adapter {
        h.update(b"adapter");
        files_fingerprint(&mut h, Path::new(a));
    }
    h.update(format!("{dtype:?}").as_bytes());
    format!("{:x}", h.finalize())
}

/// The run's fingerprint: a rerun with the same one resumes or is skipped; another one refuses
/// to touch the output folder.
pub fn run_fingerprint(
    model_fp: &str,
    data_sha256: &str,
    t: &TrainConfig,
    model: &ModelConfig,
) -> String {
    let mut h = Sha256::new();
    h.update(b"east-train-v1");
    h.update(model_fp.as_bytes());
    h.update(data_sha256.as_bytes());
    h.update(t.identity().to_string().as_bytes());
    h.update(t.beta().to_le_bytes());
    h.update(model.device.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

/// The key of the reference log-probabilities cache: they depend on the starting model, the
/// data, the rows the loss scores, the truncation and the engine's arithmetic.
pub fn reference_key(
    model_fp: &str,
    data_sha256: &str,
    loss: Loss,
    max_length: usize,
    engine: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"east-ref-v1");
    h.update(model_fp.as_bytes());
    h.update(data_sha256.as_bytes());
    h.update(loss.name().as_bytes());
    h.update(max_length.to_le_bytes());
    h.update(engine.as_bytes());
    format!("{:x}", h.finalize())
}
