//! Figure 5's table: accuracy per weighting metric × loss, averaged over runs that differ only
//! in the exponent `a` (the paper reports the mean over a ∈ {0.5, 1, 1.5}).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::RunView;
use crate::train::loss::Weighting;
use crate::weight::{Mapping, Metric};

/// One cell: the mean round-1 accuracy (%) of `runs` runs, and the `a` values they used.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub mean: f64,
    pub runs: usize,
    pub a: Vec<f64>,
}

/// (dataset, row = metric [· LoRA], column = loss): where a run's accuracy goes.
pub type Key = (String, String, String);

/// Key → cell.
pub type Table = BTreeMap<Key, Cell>;

/// Sum of accuracies, number of runs and the `a` values (as bits) behind one cell.
type Sum = (f64, usize, BTreeSet<u64>);

/// Averages round-1 accuracy over the runs that use the power mapping with a non-uniform metric
/// and data weighting (the runs `a` matters for), keeping only `a` in `only` when it is given.
pub fn average_over_a(views: &[RunView], only: Option<&[f64]>) -> Table {
    let mut sums: BTreeMap<Key, Sum> = BTreeMap::new();
    for v in views {
        let (w, t) = (&v.config.weight, &v.config.train);
        let has_a = w.mapping == Mapping::Power
            && w.metric != Metric::Uniform
            && t.weighting == Weighting::Data;
        if !has_a || only.is_some_and(|vals| !vals.iter().any(|x| (x - w.a).abs() < 1e-9)) {
            continue;
        }
        let metric = serde_json::to_value(w.metric).unwrap_or_default();
        let row = format!(
            "{}{}",
            metric.as_str().unwrap_or("?"),
            if t.lora { " · LoRA" } else { "" }
        );
        for ((round, dataset), acc) in &v.accuracy {
            if *round != 1 {
                continue;
            }
            let key = (dataset.clone(), row.clone(), t.loss.name().to_string());
            let cell = sums.entry(key).or_default();
            cell.0 += 100.0 * acc;
            cell.1 += 1;
            cell.2.insert(w.a.to_bits());
        }
    }
    sums.into_iter()
        .map(|(key, (sum, runs, a))| {
            let a = a.into_iter().map(f64::from_bits).collect();
            let mean = sum / runs as f64;
            (key, Cell { mean, runs, a })
        })
        .collect()
}

/// The table as Markdown, one block per dataset: rows are metrics, columns losses, each cell
/// "mean (runs)".
pub fn render(table: &Table) -> String {
    let mut md = String::from("## Accuracy by metric and loss, mean over a (round 1)\n\n");
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
                .map(
                    |l| match table.get(&(d.clone(), row.clone(), (*l).clone())) {
                        Some(c) => {
                            format!("{:.1} ({} runs, a ∈ {{{}}})", c.mean, c.runs, list(&c.a))
                        }
                        None => "–".into(),
                    },
                )
                .collect();
            let _ = writeln!(md, "| {row} | {} |", cells.join(" | "));
        }
        let _ = writeln!(md);
    }
    md
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
