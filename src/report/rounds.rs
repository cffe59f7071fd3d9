//! The files of every sampled round the report reads: `clusters.jsonl` (checked, and parsed
//! once per distinct content, so a sweep whose runs share samples holds them once) and the ids
//! and weights of `train.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::RunView;
use crate::io::{read_jsonl, InputError};
use crate::pipeline::RunLayout;
use crate::schema::ClusterRecord;

/// One sampled round of one run.
pub struct RoundFile {
    /// Index of the run in the report's run list.
    pub run: usize,
    pub round: usize,
    /// Index of its clusters in [`RoundFiles::clusters`]: equal indices, equal files.
    pub clusters: usize,
    /// Question id → weight, from `train.jsonl` (absent until the weight stage has run).
    pub trained: Option<BTreeMap<String, f64>>,
}

/// Every sampled round of every run, and each distinct `clusters.jsonl` among them.
pub struct RoundFiles {
    pub rounds: Vec<RoundFile>,
    pub clusters: Vec<Vec<ClusterRecord>>,
}

/// The part of a `train.jsonl` row the report reads.
#[derive(Deserialize)]
struct TrainHead {
    id: String,
    weight: f64,
}

impl RoundFiles {
    /// Reads every round of `views` that has a `clusters.jsonl`.
    pub fn read(views: &[RunView]) -> anyhow::Result<RoundFiles> {
        let mut files = RoundFiles {
            rounds: Vec::new(),
            clusters: Vec::new(),
        };
        let mut by_hash: HashMap<String, usize> = HashMap::new();
        for (run, v) in views.iter().enumerate() {
            let layout = RunLayout::at(&v.dir);
            for round in 1..=v.config.run.rounds {
                let path = layout.clusters(round);
                let bytes = match std::fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(InputError::io(&path, e).into()),
                };
                let hash = format!("{:x}", Sha256::digest(&bytes));
                let clusters = match by_hash.get(&hash) {
                    Some(&i) => i,
                    None => {
                        files.clusters.push(read_clusters(&path)?);
                        by_hash.insert(hash, files.clusters.len() - 1);
                        files.clusters.len() - 1
                    }
                };
                files.rounds.push(RoundFile {
                    run,
                    round,
                    clusters,
                    trained: read_trained(&layout.train_data(round))?,
                });
            }
        }
        Ok(files)
    }

    /// The clustered questions of `round`.
    pub fn records(&self, round: &RoundFile) -> &[ClusterRecord] {
        &self.clusters[round.clusters]
    }
}

/// Every record of `path`, each checked for consistency.
fn read_clusters(path: &Path) -> anyhow::Result<Vec<ClusterRecord>> {
    let mut records = Vec::new();
    for (line, r) in read_jsonl::<ClusterRecord>(path)? {
        r.validate(path, line)?;
        records.push(r);
    }
    Ok(records)
}

/// Question id → weight; `None` without the file. SFT writes a row per correct completion, all
/// with the question's weight.
fn read_trained(path: &Path) -> anyhow::Result<Option<BTreeMap<String, f64>>> {
    if !path.exists() {
        return Ok(None);
    }
    let rows = read_jsonl::<TrainHead>(path)?;
    Ok(Some(
        rows.into_iter().map(|(_, r)| (r.id, r.weight)).collect(),
    ))
}
