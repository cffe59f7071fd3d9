//! `east report`: a Markdown report over one or more run directories — the accuracy table
//! (Table 1), accuracy against the exponent a (Figure 3), accuracy per round (Figure 4), entropy
//! against 1 − accuracy per question shaded by the dominant-wrong share (Figure 5), and the
//! distribution of training weights.

pub mod average;
pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use svg::{Mark, Plot, Series};

use crate::config::Config;
use crate::eval::{report_path, EvalReport};
use crate::io::{file_safe, read_jsonl, InputError};
use crate::pipeline::{RoundSummary, RunLayout};
use crate::schema::ClusterRecord;
use crate::train::loss::Weighting;
use crate::weight::{Mapping, Metric};

/// One run directory as the report sees it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub dir: PathBuf,
    pub name: String,
    pub config: Config,
    /// (round, dataset) → accuracy.
    pub accuracy: BTreeMap<(usize, String), f64>,
    /// `summary.json`: stage outcomes and timings of the last invocation.
    pub rounds: Vec<RoundSummary>,
}

impl RunView {
    /// Reads a run directory written by `east run` (possibly still running or interrupted:
    /// rounds without an `eval.json` are left out).
    pub fn open(dir: &Path) -> anyhow::Result<RunView> {
        let config_path = dir.join("config.toml");
        if !config_path.exists() {
            anyhow::bail!(
                "{} is not an east run directory (no config.toml)",
                dir.display()
            );
        }
        let config = Config::load(Some(&config_path), &[])?;
        let layout = RunLayout::at(dir);
        let mut accuracy = BTreeMap::new();
        for t in 0..=config.run.rounds {
            for dataset in &config.eval.datasets {
                let path = report_path(&layout.eval_dir(t, dataset));
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let r: EvalReport = serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    accuracy.insert((t, dataset.clone()), r.accuracy);
                }
            }
        }
        let summary_path = layout.summary();
        let rounds = match std::fs::read_to_string(&summary_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", summary_path.display()))?,
            Err(_) => Vec::new(),
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(RunView {
            dir: dir.to_path_buf(),
            name,
            config,
            accuracy,
            rounds,
        })
    }

    /// The method of round ≥ 1 in the paper's terms: loss · weighting.
    fn setting(&self) -> String {
        let w = &self.config.weight;
        let t = &self.config.train;
        let name = |v: serde_json::Value| v.as_str().unwrap_or("?").to_string();
        let weighting = match (w.metric, t.weighting) {
            (Metric::Uniform, Weighting::Lwp) => "LW(P)".to_string(),
            (Metric::Uniform, Weighting::Lww) => "LW(W)".to_string(),
            (Metric::Uniform, _) => "vanilla".to_string(),
            (metric, _) => {
                let mapping = name(serde_json::to_value(w.mapping).unwrap_or_default());
                let detail = match w.mapping {
                    Mapping::Power => format!(" a={}", w.a),
                    Mapping::Linear => format!(" R={}", w.range),
                    _ => String::new(),
                };
                format!(
                    "{} · {mapping}{detail}",
                    name(serde_json::to_value(metric).unwrap_or_default())
                )
            }
        };
        format!(
            "{} · {weighting}{}",
            t.loss.name(),
            if t.lora { " · LoRA" } else { "" }
        )
    }
}

/// What `east report` adds beyond the per-run tables and figures.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Figure 5's table: accuracy per metric × loss, the mean over runs that differ in `a`.
    pub average_over_a: bool,
    /// Only runs with one of these `a` in that table (empty: every `a` found).
    pub a_values: Vec<f64>,
}

/// Writes `report.md` and its SVG figures into `out`; returns the report path.
pub fn write_report(
    runs: &[PathBuf],
    out: &Path,
    options: &ReportOptions,
) -> anyhow::Result<PathBuf> {
    let views: Vec<RunView> = runs
        .iter()
        .map(|d| RunView::open(d))
        .collect::<anyhow::Result<_>>()?;
    let averaged =
        if options.average_over_a {
            let only = (!options.a_values.is_empty()).then_some(options.a_values.as_slice());
            let table = average::average_over_a(&views, only);
            if table.is_empty() {
                anyhow::bail!(
                "--average-over a: none of the {} run(s) has a round-1 evaluation with the power \
                 mapping, a non-uniform metric and data weighting{}",
                views.len(),
                if only.is_some() { " and one of the --a-values" } else { "" }
            );
            }
            Some(average::render(&table))
        } else {
            None
        };
    std::fs::create_dir_all(out).map_err(|e| InputError::io(out, e))?;
    let mut md = String::new();
    let _ = writeln!(md, "# EAST report\n");
    let datasets: Vec<String> = {
        let mut d: Vec<String> = views
            .iter()
            .flat_map(|v| v.config.eval.datasets.clone())
            .collect();
        d.sort();
        d.dedup();
        d
    };

    // Table 1: accuracy per run, round and dataset.
    let _ = writeln!(md, "## Accuracy (%)\n");
    let _ = writeln!(md, "| run | setting | round | {} |", datasets.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}", "---|".repeat(datasets.len()));
    for v in &views {
        let rounds: std::collections::BTreeSet<usize> =
            v.accuracy.keys().map(|(t, _)| *t).collect();
        for t in rounds {
            let cells: Vec<String> = datasets
                .iter()
                .map(|d| {
                    v.accuracy
                        .get(&(t, d.clone()))
                        .map_or("–".into(), |a| format!("{:.1}", 100.0 * a))
                })
                .collect();
            let setting = if t == 0 {
                "base model".to_string()
            } else {
                v.setting()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                v.name,
                setting,
                t,
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(md);

    if let Some(table) = averaged {
        md.push_str(&table);
    }

    // Figure 3: accuracy against a, over runs that differ in a (power mapping, round 1).
    let mut by_a: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for v in &views {
        let on_axis = matches!(v.config.weight.metric, Metric::Entropy | Metric::Uniform);
        if v.config.weight.mapping != Mapping::Power
            || !on_axis
            || v.config.train.weighting != Weighting::Data
        {
            continue;
        }
        // Vanilla (uniform weights) is the a = 0 point of the power mapping.
        let a = if v.config.weight.metric == Metric::Uniform {
            0.0
        } else {
            v.config.weight.a
        };
        for d in &datasets {
            if let Some(acc) = v.accuracy.get(&(1, d.clone())) {
                by_a.entry(format!("{} {}", v.config.train.loss.name(), d))
                    .or_default()
                    .push((a, 100.0 * acc));
            }
        }
    }
    if by_a.values().any(|p| p.len() >= 2) {
        let series = by_a
            .into_iter()
            .map(|(name, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name,
                    points,
                    mark: Mark::Line,
                    shade: None,
                }
            })
            .collect();
        let plot = Plot {
            title: "Accuracy against the exponent a (round 1)".into(),
            x_label: "a".into(),
            y_label: "accuracy (%)".into(),
            series,
            shade_label: None,
        };
        crate::io::write_atomic(&out.join("accuracy_vs_a.svg"), plot.to_svg().as_bytes())?;
        let _ = writeln!(
            md,
            "## Accuracy against a\n\n![accuracy against a](accuracy_vs_a.svg)\n"
        );
    }

    // Figure 4: accuracy per round.
    let mut per_round = Vec::new();
    for v in &views {
        for d in &datasets {
            let points: Vec<(f64, f64)> = v
                .accuracy
                .iter()
                .filter(|((_, ds), _)| ds == d)
                .map(|((t, _), a)| (*t as f64, 100.0 * a))
                .collect();
            if !points.is_empty() {
                per_round.push(Series {
                    name: format!("{} {}", v.name, d),
                    points,
                    mark: Mark::Line,
                    shade: None,
                });
            }
        }
    }
    if !per_round.is_empty() {
        let plot = Plot {
            title: "Accuracy per round".into(),
            x_label: "round (0 = base model)".into(),
            y_label: "accuracy (%)".into(),
            series: per_round,
            shade_label: None,
        };
        crate::io::write_atomic(
            &out.join("accuracy_per_round.svg"),
            plot.to_svg().as_bytes(),
        )?;
        let _ = writeln!(
            md,
            "## Accuracy per round\n\n![accuracy per round](accuracy_per_round.svg)\n"
        );
    }

    // Figure 5 and the weights, from each run's first round. Runs that share round 1's samples
    // (a sweep over a) share its clusters too: their entropy plot is drawn once.
    let mut plotted_samples = std::collections::HashSet::new();
    for v in &views {
        let layout = RunLayout::at(&v.dir);
        let clusters = layout.clusters(1);
        let samples_identity =
            std::fs::canonicalize(layout.samples(1)).unwrap_or_else(|_| clusters.clone());
        if clusters.exists() && plotted_samples.insert(samples_identity) {
            let records: Vec<(usize, ClusterRecord)> = read_jsonl(&clusters)?;
            let points: Vec<(f64, f64)> = records
                .iter()
                .map(|(_, r)| (1.0 - r.accuracy, r.entropy))
                .collect();
            let shade: Vec<f64> = records.iter().map(|(_, r)| r.dominant_wrong).collect();
            let plot = Plot {
                title: format!("Answer entropy per question ({}, round 1)", v.name),
                x_label: "1 − accuracy of the question's samples".into(),
                y_label: "answer entropy (bits)".into(),
                series: vec![Series {
                    name: format!("{} questions", records.len()),
                    points,
                    mark: Mark::Scatter,
                    shade: Some(shade),
                }],
                shade_label: Some("dominant wrong share".into()),
            };
            let file = format!("entropy_{}.svg", file_safe(&v.name));
            crate::io::write_atomic(&out.join(&file), plot.to_svg().as_bytes())?;
            let _ = writeln!(
                md,
                "## Entropy against 1 − accuracy: {}\n\nOne point per sampled question; colour is the share of samples in the largest wrong cluster (red: confidently wrong).\n\n![entropy]({file})\n",
                v.name
            );
        }
        let train = layout.train_data(1);
        if train.exists() {
            // One weight per question (SFT writes a row per correct completion).
            let rows: Vec<(usize, serde_json::Value)> = read_jsonl(&train)?;
            let mut per_question: BTreeMap<String, f64> = BTreeMap::new();
            for (_, r) in &rows {
                if let (Some(id), Some(w)) = (r["id"].as_str(), r["weight"].as_f64()) {
                    per_question.insert(id.to_string(), w);
                }
            }
            let weights: Vec<f64> = per_question.into_values().collect();
            if let Some(plot) = histogram(&weights, &format!("Question weights ({})", v.setting()))
            {
                let file = format!("weights_{}.svg", file_safe(&v.name));
                crate::io::write_atomic(&out.join(&file), plot.to_svg().as_bytes())?;
                let _ = writeln!(
                    md,
                    "## Weight distribution: {}\n\n![weights]({file})\n",
                    v.name
                );
            }
        }
    }

    // Where the time went.
    if views.iter().any(|v| !v.rounds.is_empty()) {
        let _ = writeln!(md, "## Time per stage\n\nSeconds of the attempt that completed each stage; the outcome is that of the last `east run`.\n");
        let _ = writeln!(md, "| run | round | stage | last outcome | seconds |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for v in &views {
            for r in &v.rounds {
                for st in &r.stages {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {:.1} |",
                        v.name,
                        r.round,
                        st.stage,
                        st.outcome.as_str(),
                        st.seconds
                    );
                }
            }
        }
        let _ = writeln!(md);
    }
    let path = out.join("report.md");
    crate::io::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn histogram(values: &[f64], title: &str) -> Option<Plot> {
    if values.is_empty() {
        return None;
    }
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let bins = 20usize;
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let mut counts = vec![0usize; bins];
    for v in values {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let points = counts
        .iter()
        .enumerate()
        .map(|(b, &c)| (lo + (b as f64 + 0.5) * width, c as f64))
        .collect();
    Some(Plot {
        title: title.to_string(),
        x_label: "weight".into(),
        y_label: "questions".into(),
        series: vec![Series {
            name: format!("{} questions", values.len()),
            points,
            mark: Mark::Bars(width),
            shade: None,
        }],
        shade_label: None,
    })
}
