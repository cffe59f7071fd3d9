//! `east report`: a Markdown report over one or more run directories, and its numbers as
//! `summary.json` — accuracy with Wilson intervals (Table 1), paired comparisons of each round
//! with round 0 and of two runs (`--compare`), pass@k and maj@k of each sampled round, accuracy
//! against the exponent a (Figure 3), accuracy per round (Figure 4), each training question at
//! (entropy, 1 − accuracy) coloured by the dominant-wrong share (Figure 5), and the
//! distribution of training weights.

pub mod average;
pub mod compare;
pub mod evals;
pub mod figures;
pub mod markdown;
pub mod rounds;
pub mod sampled;
pub mod svg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use compare::{Outcome, Side};
use evals::{Accuracy, Evaluation};
use rounds::{RoundFile, RoundFiles};
use sampled::SampledRound;

use crate::config::Config;
use crate::io::{file_safe, InputError};
use crate::pipeline::{RoundSummary, RunLayout};
use crate::schema::ClusterRecord;
use crate::stats;
use crate::train::loss::Weighting;
use crate::weight::{Mapping, Metric};

/// One run directory as the report sees it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub dir: PathBuf,
    /// The folder's name, or more of its path where two runs share a name.
    pub name: String,
    pub config: Config,
    /// (round, dataset) → the finished evaluation.
    pub evals: BTreeMap<(usize, String), Evaluation>,
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
        let mut evals = BTreeMap::new();
        for t in 0..=config.run.rounds {
            for dataset in &config.eval.datasets {
                if let Some(e) = Evaluation::read(&layout.eval_dir(t, dataset))? {
                    evals.insert((t, dataset.clone()), e);
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
            evals,
            rounds,
        })
    }

    /// The method of round ≥ 1 in the paper's terms: loss · weighting.
    pub fn setting(&self) -> String {
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

    /// The sampled dataset as the pass@k table names it.
    fn sampled_dataset(&self) -> String {
        let d = &self.config.data;
        match d.limit {
            Some(limit) => format!("{} {} (first {limit})", d.dataset, d.split),
            None => format!("{} {}", d.dataset, d.split),
        }
    }
}

/// What `east report` adds beyond the per-run tables and figures.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Figure 5's table: accuracy per metric × loss, the mean over runs that differ in `a`.
    pub average_over_a: bool,
    /// Only runs with one of these `a` in that table (empty: every `a` found).
    pub a_values: Vec<f64>,
    /// Pairs of run directories (A, B) to compare question by question, B against A.
    pub compare: Vec<(PathBuf, PathBuf)>,
}

/// `summary.json`: every number of `report.md`. Accuracies, differences and intervals are
/// fractions (0.5, not 50).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub runs: Vec<RunSummary>,
    /// `--compare A B`: B against A, per dataset and round both evaluated.
    pub comparisons: Vec<compare::Comparison>,
    /// `--average-over a`: Figure 5's table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_over_a: Option<Vec<AverageCell>>,
    /// How every bootstrap interval was drawn.
    pub bootstrap: Bootstrap,
}

impl Summary {
    /// Gathers the numbers computed for `views` (each per-run list in the order of `views`).
    fn new(
        views: &[RunView],
        within: &[Vec<Outcome>],
        across: &[Outcome],
        sampled: Vec<Vec<SampledRound>>,
        average: Option<&average::Table>,
    ) -> Summary {
        let runs = views
            .iter()
            .zip(within)
            .zip(sampled)
            .map(|((v, within), sampled)| RunSummary {
                name: v.name.clone(),
                dir: v.dir.clone(),
                accuracy: accuracies(v),
                vs_round_0: compared(within),
                sampled,
            })
            .collect();
        let cells = |t: &average::Table| {
            t.iter()
                .map(|((dataset, row, loss), cell)| AverageCell {
                    dataset: dataset.clone(),
                    row: row.clone(),
                    loss: loss.clone(),
                    cell: cell.clone(),
                })
                .collect()
        };
        Summary {
            runs,
            comparisons: compared(across),
            average_over_a: average.map(cells),
            bootstrap: Bootstrap {
                resamples: stats::BOOTSTRAP_RESAMPLES,
                seed: stats::BOOTSTRAP_SEED,
                generator: "ChaCha8",
            },
        }
    }
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    pub accuracy: Vec<RoundAccuracy>,
    /// Each round ≥ 1 against round 0, per dataset.
    pub vs_round_0: Vec<compare::Comparison>,
    /// pass@k and maj@k of each sampled round.
    pub sampled: Vec<SampledRound>,
}

/// A round's greedy accuracy on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct RoundAccuracy {
    pub round: usize,
    pub dataset: String,
    pub grading: String,
    #[serde(flatten)]
    pub accuracy: Accuracy,
}

/// One cell of Figure 5's table.
#[derive(Debug, Clone, Serialize)]
pub struct AverageCell {
    pub dataset: String,
    pub row: String,
    pub loss: String,
    #[serde(flatten)]
    pub cell: average::Cell,
}

/// How the bootstrap intervals were drawn (see [`stats::bootstrap_mean`]).
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub resamples: usize,
    pub seed: u64,
    pub generator: &'static str,
}

/// A figure ready to write: its file, and its section of `report.md`.
pub struct Figure {
    pub file: String,
    pub heading: String,
    pub caption: String,
    pub svg: String,
}

/// Writes `report.md`, `summary.json` and the SVG figures into `out`; returns the report path.
/// Every number is computed (and every input checked) before the first file is written.
pub fn write_report(
    runs: &[PathBuf],
    out: &Path,
    options: &ReportOptions,
) -> anyhow::Result<PathBuf> {
    let views = open_views(runs, &options.compare)?;
    let average = match options.average_over_a {
        true => Some(average_table(&views, &options.a_values)?),
        false => None,
    };
    let within: Vec<Vec<Outcome>> = views
        .iter()
        .map(against_round_0)
        .collect::<anyhow::Result<_>>()?;
    let across = compare_runs(&views, &options.compare)?;
    let rounds = RoundFiles::read(&views)?;
    let (sampled, sampled_notes): (Vec<_>, Vec<_>) =
        sampled_by_run(&views, &rounds).into_iter().unzip();
    let figures = all_figures(&views, &rounds);
    let summary = Summary::new(&views, &within, &across, sampled, average.as_ref());
    let md = markdown::Document {
        views: &views,
        summary: &summary,
        within: &within,
        across: &across,
        average: average.as_ref(),
        sampled_notes: &sampled_notes,
        figures: &figures,
    }
    .render();
    std::fs::create_dir_all(out).map_err(|e| InputError::io(out, e))?;
    for f in &figures {
        crate::io::write_atomic(&out.join(&f.file), f.svg.as_bytes())?;
    }
    crate::io::write_json_atomic(&out.join("summary.json"), &summary)?;
    let path = out.join("report.md");
    crate::io::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

/// The runs named on the command line, then those only `--compare` names, each once; runs
/// that share a folder name are told apart by more of their path.
fn open_views(runs: &[PathBuf], pairs: &[(PathBuf, PathBuf)]) -> anyhow::Result<Vec<RunView>> {
    let mut seen = BTreeSet::new();
    let mut views = Vec::new();
    let named = runs.iter().chain(pairs.iter().flat_map(|(a, b)| [a, b]));
    for dir in named {
        if seen.insert(identity(dir)) {
            views.push(RunView::open(dir)?);
        }
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for v in &views {
        *count.entry(v.name.clone()).or_default() += 1;
    }
    for v in &mut views {
        if count[&v.name] > 1 {
            let parent = v.dir.parent().and_then(|p| p.file_name());
            if let Some(parent) = parent {
                v.name = format!("{}/{}", parent.to_string_lossy(), v.name);
            }
        }
    }
    Ok(views)
}

/// A run directory's identity: its canonical path when it exists.
fn identity(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn average_table(views: &[RunView], a_values: &[f64]) -> anyhow::Result<average::Table> {
    let only = (!a_values.is_empty()).then_some(a_values);
    let table = average::average_over_a(views, only)?;
    if table.is_empty() {
        anyhow::bail!(
            "--average-over a: none of the {} run(s) has a round-1 evaluation with the power \
             mapping, a non-uniform metric and data weighting{}",
            views.len(),
            if only.is_some() {
                " and one of the --a-values"
            } else {
                ""
            }
        );
    }
    Ok(table)
}

fn accuracies(v: &RunView) -> Vec<RoundAccuracy> {
    v.evals
        .iter()
        .map(|((round, dataset), e)| RoundAccuracy {
            round: *round,
            dataset: dataset.clone(),
            grading: e.grading.clone(),
            accuracy: e.accuracy(),
        })
        .collect()
}

fn side(v: &RunView, round: usize, e: &Evaluation) -> Side {
    Side {
        run: v.name.clone(),
        round,
        grading: e.grading.clone(),
    }
}

/// Each evaluated round ≥ 1 of `v` against its round 0 on the same dataset.
fn against_round_0(v: &RunView) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for ((round, dataset), e) in v.evals.iter().filter(|((t, _), _)| *t > 0) {
        if let Some(base) = v.evals.get(&(0, dataset.clone())) {
            let a = (side(v, 0, base), base);
            out.push(compare::compare(dataset, a, (side(v, *round, e), e))?);
        }
    }
    Ok(out)
}

/// `--compare A B`: B against A on every dataset and round both evaluated; round 0 only when
/// the two start from different models. No round in common is an error.
fn compare_runs(views: &[RunView], pairs: &[(PathBuf, PathBuf)]) -> anyhow::Result<Vec<Outcome>> {
    let find = |dir: &PathBuf| {
        let id = identity(dir);
        views
            .iter()
            .find(|v| identity(&v.dir) == id)
            .expect("opened")
    };
    let mut out = Vec::new();
    for (a, b) in pairs {
        let (va, vb) = (find(a), find(b));
        let same_base = va.config.model == vb.config.model;
        let common: Vec<&(usize, String)> = va
            .evals
            .keys()
            .filter(|k| vb.evals.contains_key(*k) && !(k.0 == 0 && same_base))
            .collect();
        if common.is_empty() {
            anyhow::bail!(
                "--compare {} {}: the two runs have no evaluated round and dataset in common{}",
                a.display(),
                b.display(),
                if same_base {
                    " (round 0 is the same base model in both)"
                } else {
                    ""
                }
            );
        }
        for key in common {
            let (ea, eb) = (&va.evals[key], &vb.evals[key]);
            let (sa, sb) = (side(va, key.0, ea), side(vb, key.0, eb));
            out.push(compare::compare(&key.1, (sa, ea), (sb, eb))?);
        }
    }
    Ok(out)
}

/// The comparisons that could be made.
fn compared(outcomes: &[Outcome]) -> Vec<compare::Comparison> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Compared(c) => Some((**c).clone()),
            Outcome::NoPredictions(_) => None,
        })
        .collect()
}

/// Per run: pass@k and maj@k of its sampled rounds, and a note per round whose clusters a run
/// listed earlier already has (a sweep over `a` shares its samples and clusters).
fn sampled_by_run(views: &[RunView], rounds: &RoundFiles) -> Vec<(Vec<SampledRound>, Vec<String>)> {
    let mut out: Vec<(Vec<SampledRound>, Vec<String>)> = vec![Default::default(); views.len()];
    let mut first: HashMap<usize, &RoundFile> = HashMap::new();
    for f in &rounds.rounds {
        let v = &views[f.run];
        if let Some(earlier) = first.get(&f.clusters).filter(|e| e.run != f.run) {
            out[f.run].1.push(format!(
                "Round {} of {} has the same clusters as round {} of {}: see there.",
                f.round, v.name, earlier.round, views[earlier.run].name
            ));
            continue;
        }
        first.entry(f.clusters).or_insert(f);
        let records = rounds.records(f);
        let round = sampled::sampled_round(records, f.round, &v.sampled_dataset());
        out[f.run].0.extend(round);
    }
    out
}

/// Every figure, in the order of the report.
fn all_figures(views: &[RunView], rounds: &RoundFiles) -> Vec<Figure> {
    let datasets = datasets(views);
    let mut out = Vec::new();
    if let Some(plot) = figures::accuracy_vs_a(views, &datasets) {
        out.push(Figure {
            file: "accuracy_vs_a.svg".into(),
            heading: "Accuracy against a".into(),
            caption: "Round-1 accuracy; bars are 95% Wilson intervals.".into(),
            svg: plot.to_svg(),
        });
    }
    if let Some(plot) = figures::accuracy_per_round(views, &datasets) {
        out.push(Figure {
            file: "accuracy_per_round.svg".into(),
            heading: "Accuracy per round".into(),
            caption: "Bars are 95% Wilson intervals; lines are nudged sideways so that their bars stay apart.".into(),
            svg: plot.to_svg(),
        });
    }
    let mut drawn = BTreeSet::new();
    for f in &rounds.rounds {
        let v = &views[f.run];
        let ids: Option<BTreeSet<String>> = f.trained.as_ref().map(|t| t.keys().cloned().collect());
        // Runs with the same clusters and the same training questions (a sweep over a) share it.
        let key = (f.clusters, ids.clone());
        if drawn.insert(key) {
            out.push(scatter(v, f, rounds.records(f), ids.as_ref()));
        }
        if let (1, Some(trained)) = (f.round, &f.trained) {
            let weights: Vec<f64> = trained.values().copied().collect();
            let title = format!("Question weights ({})", v.setting());
            if let Some(plot) = figures::histogram(&weights, &title) {
                out.push(Figure {
                    file: format!("weights_{}.svg", file_safe(&v.name)),
                    heading: format!("Weight distribution: {}", v.name),
                    caption: String::new(),
                    svg: plot.to_svg(),
                });
            }
        }
    }
    out
}

/// Figure 5 for one sampled round.
fn scatter(
    v: &RunView,
    f: &RoundFile,
    records: &[ClusterRecord],
    ids: Option<&BTreeSet<String>>,
) -> Figure {
    let suffix = if f.round == 1 {
        String::new()
    } else {
        format!("_round{}", f.round)
    };
    let title = format!("Training questions ({}, round {})", v.name, f.round);
    let which = match ids {
        Some(_) => "discs are the questions of the round's train.jsonl, rings the sampled questions it left out",
        None => "every sampled question (the round has no train.jsonl yet)",
    };
    Figure {
        file: format!("entropy_{}{suffix}.svg", file_safe(&v.name)),
        heading: format!("Entropy against 1 − accuracy: {}, round {}", v.name, f.round),
        caption: format!("As the paper's Figure 5: one point per question at (H(x), 1 − A(x)), coloured by R(x), the share of its samples in the largest wrong cluster (red: confidently wrong); {which}."),
        svg: figures::entropy_scatter(&title, records, ids).to_svg(),
    }
}

/// Every evaluated dataset of the runs, sorted.
fn datasets(views: &[RunView]) -> Vec<String> {
    let d: BTreeSet<String> = views
        .iter()
        .flat_map(|v| v.config.eval.datasets.clone())
        .collect();
    d.into_iter().collect()
}
