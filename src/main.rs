//! The `east` command line: one subcommand per stage of an EAST round. Each flag is also a key
//! of the TOML config (`--config`), and `--set section.key=value` overrides any key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use east::config::Config;
use east::data::{self, DatasetSpec};
use east::grade::GradeOptions;
use east::weight::{self, ClusterBy, Loss, Mapping, Metric, PairStrategy};

#[derive(Parser)]
#[command(name = "east", version, about = "Entropy-based adaptive weighting for self-training (EAST) on Candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grade every completion and cluster each question's completions by final answer.
    Cluster(ClusterArgs),
    /// Turn cluster entropies into question weights and write the weighted training set.
    Weight(WeightArgs),
}

/// Options every stage shares: a config file and overrides of its keys.
#[derive(Args)]
struct ConfigArgs {
    /// TOML config; stage flags given on the command line take precedence over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set weight.a=1.5` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref(), &self.set)?)
    }
}

#[derive(Args)]
struct ClusterArgs {
    /// samples.jsonl written by `east sample` (or any sampler following its schema).
    #[arg(long, value_name = "FILE")]
    samples: PathBuf,
    /// Where to write clusters.jsonl.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// `equivalence` merges answers that grade as equal; `string` is the authors' exact match.
    #[arg(long, value_enum)]
    by: Option<ClusterBy>,
    /// Take reference answers from this dataset (by question id) instead of the samples file.
    #[arg(long, value_name = "gsm8k|math|math500|FILE")]
    dataset: Option<String>,
    /// Split of --dataset.
    #[arg(long, default_value = "train")]
    split: String,
    /// Also accept a prediction equal to the reference ×100 or /100 (Qwen toolkit rule).
    #[arg(long)]
    percent_rule: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct WeightArgs {
    /// clusters.jsonl written by `east cluster`.
    #[arg(long, value_name = "FILE")]
    clusters: PathBuf,
    /// The samples.jsonl the clusters were made from (completion texts).
    #[arg(long, value_name = "FILE")]
    samples: PathBuf,
    /// Where to write train.jsonl (a `.summary.json` is written beside it).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Training objective: decides the rows (sft: completion; dpo: chosen/rejected; kto: labelled).
    #[arg(long, value_enum)]
    loss: Option<Loss>,
    /// Per-question uncertainty.
    #[arg(long, value_enum)]
    metric: Option<Metric>,
    /// Mapping from uncertainty to weight.
    #[arg(long, value_enum)]
    mapping: Option<Mapping>,
    /// Exponent of the power mapping (a > 1 sharpens, a < 0 prefers confident questions).
    #[arg(long, allow_hyphen_values = true)]
    a: Option<f64>,
    /// Output range R of the linear mapping.
    #[arg(long)]
    range: Option<f64>,
    /// How chosen/rejected completions are picked.
    #[arg(long, value_enum)]
    pairs: Option<PairStrategy>,
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cluster(args) => cluster(args),
        Command::Weight(args) => weight(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(by) = args.by {
        config.cluster.by = by;
    }
    config.cluster.percent_rule |= args.percent_rule;
    let references = match &args.dataset {
        Some(spec) => {
            let questions = data::load(&DatasetSpec::parse(spec), &args.split, &config.data.fields)?;
            Some(questions.into_iter().map(|q| (q.id, q.answer)).collect())
        }
        None => None,
    };
    let options = weight::ClusterOptions {
        by: config.cluster.by,
        grade: GradeOptions { percent_rule: config.cluster.percent_rule, ..GradeOptions::default() },
        references,
    };
    let started = std::time::Instant::now();
    let s = weight::cluster_file(&args.samples, &args.out, &options)
        .with_context(|| format!("east cluster failed; {} was not written", args.out.display()))?;
    println!(
        "{}: {} questions, {} completions ({:.1}% correct, {:.1}% without an answer); {} questions all wrong, {} all correct; {:.1}s",
        s.out.display(),
        s.questions,
        s.completions,
        100.0 * s.correct as f64 / s.completions.max(1) as f64,
        100.0 * s.no_answer as f64 / s.completions.max(1) as f64,
        s.questions_all_wrong,
        s.questions_all_correct,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn weight(args: WeightArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    let w = &mut config.weight;
    if let Some(v) = args.metric {
        w.metric = v;
    }
    if let Some(v) = args.mapping {
        w.mapping = v;
    }
    if let Some(v) = args.a {
        w.a = v;
    }
    if let Some(v) = args.range {
        w.range = v;
    }
    if let Some(v) = args.pairs {
        w.pairs = v;
    }
    if let Some(v) = args.seed {
        w.seed = v;
    }
    if let Some(v) = args.loss {
        config.train.loss = v;
    }
    config.validate("command line")?;
    let options = weight::WeightOptions {
        loss: config.train.loss,
        metric: config.weight.metric,
        mapping: config.weight.mapping,
        a: config.weight.a,
        range: config.weight.range,
        pairs: config.weight.pairs,
        seed: config.weight.seed,
    };
    let s = weight::weight_files(&args.clusters, &args.samples, &args.out, &options)
        .with_context(|| format!("east weight failed; {} was not written", args.out.display()))?;
    let dropped: Vec<String> = s.dropped.iter().map(|(r, n)| format!("{n} {}", serde_json::to_string(r).unwrap_or_default().trim_matches('"'))).collect();
    println!(
        "{}: {} examples from {} of {} questions (dropped: {}); weights min {:.3} max {:.3}",
        s.out.display(),
        s.examples,
        s.kept,
        s.questions,
        if dropped.is_empty() { "none".to_string() } else { dropped.join(", ") },
        s.weight_stats.map_or(0.0, |w| w.min),
        s.weight_stats.map_or(0.0, |w| w.max),
    );
    Ok(())
}
