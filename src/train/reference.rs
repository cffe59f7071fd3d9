//! The frozen reference of DPO and KTO: the log-probabilities of every example's rows under the
//! starting model, computed once before training and cached beside the data file.

use std::path::PathBuf;

use anyhow::bail;
use serde_json::{json, Value};

use super::data::{self, Example, TrainData};
use super::engine::Engine;
use crate::schema::Loss;

/// Reference log-probabilities of every example's rows (DPO: chosen, rejected; KTO:
/// completion, KL row), from the starting model, cached beside the data file.
pub struct RefLogps {
    pub values: Vec<Vec<f64>>,
    pub cache: Option<PathBuf>,
    pub computed: bool,
}

fn ref_rows(loss: Loss) -> usize {
    match loss {
        Loss::Sft => 0,
        Loss::Dpo => 2,
        Loss::Kto => 2,
    }
}

/// Reads the cache or scores the examples with `engine` (which must hold the starting
/// weights) and writes the cache.
pub fn reference_logps(
    engine: &mut dyn Engine,
    data: &TrainData,
    key: &str,
    progress: bool,
) -> anyhow::Result<RefLogps> {
    let name = data
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "train.jsonl".into());
    let cache = data
        .path
        .with_file_name(format!("{name}.ref-{}.json", &key[..16]));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if v.get("key").and_then(Value::as_str) == Some(key) {
                let values: Option<Vec<Vec<f64>>> = v
                    .get("logps")
                    .and_then(|l| serde_json::from_value(l.clone()).ok());
                if let Some(values) = values.filter(|vals| vals.len() == data.examples.len()) {
                    return Ok(RefLogps {
                        values,
                        cache: Some(cache),
                        computed: false,
                    });
                }
            }
        }
    }
    // Score in groups of similar length (bounded tokens per forward).
    let mut order: Vec<usize> = (0..data.examples.len()).collect();
    order.sort_by_key(|&i| data.examples[i].tokens());
    let budget = 8192usize;
    let mut values = vec![Vec::new(); data.examples.len()];
    let bar = progress.then(|| crate::progress::items_bar(data.examples.len() as u64, "reference"));
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let mut tokens = 0;
        while j < order.len() && (j == i || tokens + data.examples[order[j]].tokens() <= budget) {
            tokens += data.examples[order[j]].tokens();
            j += 1;
        }
        let exs: Vec<&Example> = order[i..j].iter().map(|&k| &data.examples[k]).collect();
        let main = engine.score(&data::pack(&exs))?;
        let m = exs.len();
        for (k, &idx) in order[i..j].iter().enumerate() {
            values[idx] = match data.loss {
                Loss::Dpo => vec![main[k].logp, main[m + k].logp],
                _ => vec![main[k].logp],
            };
        }
        if data.loss == Loss::Kto {
            let kl = engine.score(&data::pack_kl(&exs))?;
            for (k, &idx) in order[i..j].iter().enumerate() {
                values[idx].push(kl[k].logp);
            }
        }
        if let Some(b) = &bar {
            b.inc((j - i) as u64);
        }
        i = j;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (v, e) in values.iter().zip(&data.examples) {
        if v.len() != ref_rows(data.loss) || v.iter().any(|x| !x.is_finite()) {
            bail!(
                "{}:{}: the reference log-probability is not finite",
                data.path.display(),
                e.line
            );
        }
    }
    let doc = json!({"key": key, "data": data.path, "loss": data.loss, "logps": values});
    let written = crate::io::write_json_atomic(&cache, &doc).is_ok();
    Ok(RefLogps {
        values,
        cache: written.then_some(cache),
        computed: true,
    })
}

impl RefLogps {
    /// The reference log-probabilities of the rows of the examples `micro`, in the engine's
    /// packing order (DPO: every chosen row, then every rejected row).
    pub fn rows(&self, micro: &[usize], loss: Loss) -> Vec<f64> {
        match loss {
            Loss::Dpo => micro
                .iter()
                .map(|&i| self.values[i][0])
                .chain(micro.iter().map(|&i| self.values[i][1]))
                .collect(),
            _ => micro.iter().map(|&i| self.values[i][0]).collect(),
        }
    }

    /// KTO: the reference log-probabilities of the examples' mismatched (KL) rows.
    pub fn kl_rows(&self, micro: &[usize]) -> Vec<f64> {
        micro.iter().map(|&i| self.values[i][1]).collect()
    }
}
