//! Where a run keeps its files: `<run.dir>/<run.name>/round<t>/…`, and the samples cache shared
//! by the runs under one `run.dir`. `east report` reads run directories through the same layout.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::data::DatasetSpec;
use crate::io::file_safe;

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunLayout {
    /// `<run.dir>/<run.name>`.
    pub root: PathBuf,
    /// Samples cache shared by the runs under the same `run.dir`.
    pub samples_cache: PathBuf,
}

impl RunLayout {
    pub fn new(config: &Config) -> Self {
        let parent = PathBuf::from(&config.run.dir);
        RunLayout {
            root: parent.join(&config.run.name),
            samples_cache: parent.join(crate::config::SAMPLES_CACHE),
        }
    }

    /// The layout of an existing run directory.
    pub fn at(root: &Path) -> Self {
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_default();
        RunLayout {
            root: root.to_path_buf(),
            samples_cache: parent.join(crate::config::SAMPLES_CACHE),
        }
    }

    pub fn round(&self, t: usize) -> PathBuf {
        self.root.join(format!("round{t}"))
    }

    /// `eval.json` and `predictions.jsonl` of round `t` on `dataset`.
    pub fn eval_dir(&self, t: usize, dataset: &str) -> PathBuf {
        self.round(t).join("eval").join(dataset_dir_name(dataset))
    }

    pub fn samples(&self, t: usize) -> PathBuf {
        self.round(t).join("samples.jsonl")
    }

    pub fn clusters(&self, t: usize) -> PathBuf {
        self.round(t).join("clusters.jsonl")
    }

    pub fn train_data(&self, t: usize) -> PathBuf {
        self.round(t).join("train.jsonl")
    }

    pub fn checkpoint(&self, t: usize) -> PathBuf {
        self.round(t).join("checkpoint")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
}

/// A dataset name usable as a folder name: `gsm8k`, or the file stem of a JSONL path.
pub fn dataset_dir_name(dataset: &str) -> String {
    let name = match DatasetSpec::parse(dataset) {
        DatasetSpec::File(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| dataset.to_string()),
        _ => dataset.to_string(),
    };
    file_safe(&name)
}
