//! Figure 5's table: accuracy per weighting metric × loss, averaged over runs that differ only
//! in the exponent `a` (the paper reports the mean over a ∈ {0.5, 1, 1.5}). Runs of one loss
//! that differ in any other setting that can change a result (model, lr, pairs, …) are not
//! pooled: each combination of those settings is its own row, named by them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use super::evals::{paired, Evaluation};
use super::RunView;
use crate::stats::{bootstrap_mean, wilson, Interval, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
use crate::train::loss::Weighting;
use crate::weight::{Mapping, Metric};

/// Config keys that do not split the table: `weight.a` (averaged over), the row and column
/// themselves (metric, LoRA, loss), and what only names a run or decides where and how fast it
/// runs (folders, batch sizes, devices, servers), which cannot change what a model learns. Any
/// other key that differs between runs of a loss splits its rows: a key missing here shows up
/// as an extra row, never as runs pooled that should not be.
const NOT_A_SETTING: &[&str] = &[
    "weight.a",
    "weight.metric",
    "train.lora",
    "train.loss",
    "run.name",
    "run.dir",
    "run.rounds",
    "run.eval_base",
    "eval.datasets",
    "eval.batch_size",
    "sample.batch_rows",
    "train.micro_batch_size",
    "train.save_steps",
    "train.gradient_checkpointing",
    "train.memory_limit",
    "train.merge",
    "train.engine",
    "model.device",
    "server.url",
    "server.concurrency",
    "server.timeout_s",
    "server.retries",
    "server.api_key_env",
    "server.startup_timeout_s",
];

/// One cell: the mean round-1 accuracy of `runs` runs, the `a` values they used, and a 95%
/// interval over questions (Wilson's for one run; for several, a bootstrap of each question's
/// share of runs that got it right, when every run has its predictions).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Mean accuracy, as a fraction.
    pub mean: f64,
    pub runs: usize,
    pub a: Vec<f64>,
    pub questions: usize,
    pub ci95: Option<Interval>,
}

/// (dataset, row = metric [· LoRA] [· differing settings], column = loss).
pub type Key = (String, String, String);

/// Key → cell.
pub type Table = BTreeMap<Key, Cell>;

/// Averages round-1 accuracy over the runs that use the power mapping with a non-uniform metric
/// and data weighting (the runs `a` matters for), keeping only `a` in `only` when it is given.
pub fn average_over_a(views: &[RunView], only: Option<&[f64]>) -> anyhow::Result<Table> {
    let runs: Vec<&RunView> = views
        .iter()
        .filter(|v| {
            let (w, t) = (&v.config.weight, &v.config.train);
            w.mapping == Mapping::Power
                && w.metric != Metric::Uniform
                && t.weighting == Weighting::Data
                && only.is_none_or(|vals| vals.iter().any(|x| (x - w.a).abs() < 1e-9))
        })
        .collect();
    let labels = row_settings(&runs);
    let mut groups: BTreeMap<Key, Vec<(f64, &Evaluation)>> = BTreeMap::new();
    for (v, settings) in runs.iter().zip(&labels) {
        let t = &v.config.train;
        let metric = serde_json::to_value(v.config.weight.metric).unwrap_or_default();
        let row = format!(
            "{}{}{settings}",
            metric.as_str().unwrap_or("?"),
            if t.lora { " · LoRA" } else { "" }
        );
        for ((round, dataset), e) in &v.evals {
            if *round == 1 {
                let key = (dataset.clone(), row.clone(), t.loss.name().to_string());
                groups.entry(key).or_default().push((v.config.weight.a, e));
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, members)| Ok::<_, anyhow::Error>((key, cell(&members)?)))
        .collect()
}

/// Per run, " · key=value" for every setting in which it differs from another run of its loss.
fn row_settings(runs: &[&RunView]) -> Vec<String> {
    let flat: Vec<BTreeMap<String, Value>> = runs
        .iter()
        .map(|v| {
            let mut out = BTreeMap::new();
            flatten(
                "",
                &serde_json::to_value(&v.config).unwrap_or_default(),
                &mut out,
            );
            out
        })
        .collect();
    let differing = |loss: &str| -> BTreeSet<String> {
        let same_loss: Vec<&BTreeMap<String, Value>> = runs
            .iter()
            .zip(&flat)
            .filter(|(v, _)| v.config.train.loss.name() == loss)
            .map(|(_, f)| f)
            .collect();
        let keys: BTreeSet<&String> = same_loss.iter().flat_map(|f| f.keys()).collect();
        keys.into_iter()
            .filter(|k| !NOT_A_SETTING.contains(&k.as_str()))
            .filter(|k| same_loss.windows(2).any(|w| w[0].get(*k) != w[1].get(*k)))
            .cloned()
            .collect()
    };
    runs.iter()
        .zip(&flat)
        .map(|(v, f)| {
            differing(v.config.train.loss.name())
                .iter()
                .map(|k| format!(" · {k}={}", show(f.get(k).unwrap_or(&Value::Null))))
                .collect()
        })
        .collect()
}

/// `value`'s leaves under dotted keys (`train.lr`, `data.fields.id`).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// A setting's value as a row label shows it: strings bare, small and large numbers as
/// `1e-5` (the way configs write learning rates), the rest as JSON.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) {
                format!("{x:e}")
            } else {
                x.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// The cell of runs `(a, evaluation)` that share a row and a column.
fn cell(members: &[(f64, &Evaluation)]) -> anyhow::Result<Cell> {
    let runs = members.len();
    let mean = members
        .iter()
        .map(|(_, e)| e.accuracy().accuracy)
        .sum::<f64>()
        / runs as f64;
    let a: BTreeSet<u64> = members.iter().map(|(a, _)| a.to_bits()).collect();
    let first = members[0].1;
    let ci95 = if runs == 1 {
        Some(wilson(first.correct, first.n))
    } else {
        per_question_share(members)?
            .map(|shares| bootstrap_mean(&shares, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED))
    };
    Ok(Cell {
        mean,
        runs,
        a: a.into_iter().map(f64::from_bits).collect(),
        questions: first.n,
        ci95,
    })
}

/// Each question's share of the runs that answered it correctly, over the questions every run
/// evaluated (the same set, else an error naming the files); `None` if a run has no
/// predictions.
fn per_question_share(members: &[(f64, &Evaluation)]) -> anyhow::Result<Option<Vec<f64>>> {
    let mut outcomes = Vec::new();
    for (_, e) in members {
        match e.outcomes()? {
            Some(o) => outcomes.push(o),
            None => return Ok(None),
        }
    }
    let mut right = vec![0usize; outcomes[0].by_id.len()];
    for (i, other) in outcomes.iter().enumerate() {
        // Pairs come in the order of the (shared) sorted ids.
        for (q, (first, this)) in paired(&outcomes[0], other)?.into_iter().enumerate() {
            right[q] += usize::from(if i == 0 { first } else { this });
        }
    }
    let runs = members.len() as f64;
    Ok(Some(right.iter().map(|&r| r as f64 / runs).collect()))
}

/// The table as Markdown, one block per dataset: rows are metrics (and the settings that tell
/// runs apart), columns losses, each cell "mean [95% interval] (runs, a values, questions)".
pub fn render(table: &Table) -> String {
    let mut md = String::from("## Accuracy by metric and loss, mean over a (round 1)\n\n");
    md.push_str("Each cell is the mean accuracy (%) of its runs. The 95% interval is over questions: Wilson's for one run; for several, a bootstrap of each question's share of runs that got it right. Runs that differ in a setting other than `a` are separate rows, named by it.\n\n");
    let datasets: BTreeSet<&String> = table.keys().map(|(d, _, _)| d).collect();
    for d in datasets {
        let rows: BTreeSet<&String> = table.keys().filter(|k| &k.0 == d).map(|k| &k.1).collect();
        let losses: BTreeSet<&String> = table.keys().filter(|k| &k.0 == d).map(|k| &k.2).collect();
        let _ = writeln!(md, "### {d}\n");
        let header: Vec<&str> = losses.iter().map(|l| l.as_str()).collect();
        let _ = writeln!(md, "| metric | {} |", header.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(losses.len()));
        for row in rows {
            let cells: Vec<String> = losses
                .iter()
                .map(|l| {
                    let key = (d.clone(), row.clone(), (*l).clone());
                    table.get(&key).map_or("–".into(), render_cell)
                })
                .collect();
            let _ = writeln!(md, "| {row} | {} |", cells.join(" | "));
        }
        let _ = writeln!(md);
    }
    md
}

fn render_cell(c: &Cell) -> String {
    let interval = c
        .ci95
        .map_or(" [no interval: predictions.jsonl missing]".into(), |i| {
            format!(" [{:.1}, {:.1}]", 100.0 * i.low, 100.0 * i.high)
        });
    let runs = if c.runs == 1 { "run" } else { "runs" };
    format!(
        "{:.1}{interval} ({} {runs}, a ∈ {{{}}}, {} questions)",
        100.0 * c.mean,
        c.runs,
        list(&c.a),
        c.questions
    )
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
