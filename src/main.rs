//! The `east` command line: one subcommand per stage of an EAST round. Each stage flag is also a
//! key of the TOML config (`--config`), and `--set section.key=value` overrides any key; a flag
//! given on the command line wins over both. `--help` shows each flag's config default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use east::cluster::ClusterBy;
use east::config::Config;
use east::data::{self, DatasetSpec};
use east::grade::{Grading, Preset};
use east::io::FileLock;
use east::model::{DTypeChoice, DeviceChoice};
use east::schema::Loss;
use east::serve::Backend;
use east::train::loss::Weighting;
use east::train::optim::Schedule;
use east::train::EngineChoice;
use east::weight::{Mapping, Metric, PairStrategy, QuestionSet};

/// `override_from!(args => config.section; a, b, c)`: every flag given on the command line (`Some`)
/// replaces the config key of the same name.
macro_rules! override_from {
    ($args:expr => $target:expr; $($field:ident),+ $(,)?) => {
        $( if let Some(v) = $args.$field.clone() { $target.$field = v.into(); } )+
    };
}

#[derive(Parser)]
#[command(
    name = "east",
    version,
    about = "Entropy-based adaptive weighting for self-training (EAST) on Candle"
)]
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run T rounds of sample → cluster → weight → train → eval in runs/<name>/ (rerun to
    /// continue after a crash; only stages whose inputs changed are redone).
    Run(RunArgs),
    /// Write a Markdown report (accuracy with 95% intervals, paired tests, pass@k and maj@k) with
    /// SVG plots and summary.json over one or more run directories.
    Report(ReportArgs),
    /// Sample n completions per question from a model (appends; resumes after a crash).
    Sample(SampleArgs),
    /// Join the shard files of `east sample --shard i/N` into one samples file.
    Merge(MergeArgs),
    /// Grade every completion and cluster each question's completions by final answer.
    Cluster(ClusterArgs),
    /// Turn cluster entropies into question weights and write the weighted training set.
    Weight(WeightArgs),
    /// Train on train.jsonl with the weighted SFT, DPO or KTO loss (full fine-tuning or LoRA).
    Train(TrainArgs),
    /// Greedy accuracy of a model on GSM8K, MATH, MATH-500 or a JSONL file.
    Eval(EvalArgs),
    /// Print the resolved configuration (defaults, file, --set), or one key of it.
    Config(ConfigCmdArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Dashboards of the whole run: tensorboard (one TensorBoard run in RUN_DIR/tensorboard/: every round's training scalars, accuracy per round, sampling throughput, entropy and weight histograms) or none.
    #[arg(long, value_name = "none|tensorboard")]
    report_to: Option<east::tensorboard::ReportTo>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct ReportArgs {
    /// Run directories written by `east run` (e.g. runs/demo).
    #[arg(required_unless_present = "compare", value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Folder for report.md, summary.json and the SVG plots (default: RUN_DIR/report of the
    /// first run named).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Compare run B with run A question by question (difference, paired bootstrap interval,
    /// exact McNemar test) on every dataset and round both evaluated; repeat for more pairs.
    #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"], action = clap::ArgAction::Append)]
    compare: Vec<PathBuf>,
    /// Add Figure 5's table: accuracy per metric × loss, the mean over runs that differ in this
    /// setting (`a`); runs that differ in another setting are separate rows.
    #[arg(long, value_enum, value_name = "KEY")]
    average_over: Option<AverageKey>,
    /// With --average-over a: only runs whose a is one of these (the paper: 0.5,1,1.5; default:
    /// every a found).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "average_over",
        value_name = "A,..."
    )]
    a_values: Vec<f64>,
}

/// Settings `east report --average-over` can average over.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AverageKey {
    /// The exponent of the power mapping (`weight.a`).
    A,
}

#[derive(Args)]
struct ConfigCmdArgs {
    /// Print only this key (e.g. `run.name`), as a plain value.
    #[arg(long, value_name = "SECTION.KEY")]
    get: Option<String>,
    /// List the configs bundled into east (usable by name: `--config gsm8k_1b`).
    #[arg(long, conflicts_with_all = ["get", "config", "set"])]
    list: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Options every stage shares: a config file and overrides of its keys.
#[derive(Args)]
struct ConfigArgs {
    /// TOML config, or the name of a bundled one (`gsm8k_1b`; `east config --list`); stage flags
    /// given on the command line take precedence over it.
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

    /// The config before the stage's flags are applied, unvalidated, and the origin its errors
    /// name once the flags are in: the stage validates the whole once, so a flag can mend what
    /// the file alone gets wrong (one side of a cross-key rule).
    fn load_for_flags(&self) -> anyhow::Result<(Config, String)> {
        let (config, origin) = Config::load_unchecked(self.config.as_deref(), &self.set)?;
        Ok((config, format!("{origin} and the command line")))
    }
}

/// Which model to load; overrides `[model]`.
#[derive(Args)]
struct ModelArgs {
    /// Hugging Face repo id, local folder (config.json + safetensors + tokenizer.json) or .gguf file.
    #[arg(long = "model", value_name = "MODEL")]
    path: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Weight dtype (auto: f32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum)]
    dtype: Option<DTypeChoice>,
    /// PEFT LoRA adapter folder merged into the model (a --model folder holding only an adapter
    /// loads its base from adapter_config.json).
    #[arg(long, value_name = "DIR")]
    adapter: Option<String>,
}

impl ModelArgs {
    fn apply(&self, config: &mut Config) {
        override_from!(self => config.model; path, device, dtype);
        if self.adapter.is_some() {
            config.model.adapter = self.adapter.clone();
        }
    }
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// gsm8k, math, math500 or a JSONL file.
    #[arg(long, value_name = "DATASET")]
    dataset: Option<String>,
    /// train or test.
    #[arg(long)]
    split: Option<String>,
    /// Completions per question.
    #[arg(long)]
    n: Option<usize>,
    /// Softmax temperature (0: greedy).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling threshold (1: off).
    #[arg(long)]
    top_p: Option<f64>,
    /// Most tokens generated per completion.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Only the first K questions (default: all).
    #[arg(long, value_name = "K")]
    limit: Option<usize>,
    /// Sample only shard i of N (0-based), e.g. `--shard 0/4`; join with `east merge`.
    #[arg(long, value_name = "i/N")]
    shard: Option<east::sample::Shard>,
    /// Seeds every (question, sample) stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Most sequences decoded at once.
    #[arg(long)]
    batch_rows: Option<usize>,
    /// Extra stop string besides the model's EOS tokens (repeatable; default: none).
    #[arg(long = "stop")]
    stop: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// samples.jsonl to write (appended; an interrupted run resumes).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Which engine generates, and where its server is; overrides `[server]`.
#[derive(Args)]
struct ServerArgs {
    /// native: east's own decoder; openai: an OpenAI-compatible server (vLLM, SGLang, llama.cpp).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Base URL of the server, e.g. http://127.0.0.1:8000/v1 (repeatable: requests are spread
    /// over all; needs --backend openai).
    #[arg(long = "url", value_name = "URL")]
    url: Vec<String>,
    /// Served model name (default: the one model the server's /v1/models lists).
    #[arg(long, value_name = "NAME")]
    server_model: Option<String>,
}

impl ServerArgs {
    /// Applies the flags to `backend` and `[server]`; a server flag without the openai backend
    /// would be ignored, so it is an error.
    fn apply(&self, backend: &mut Backend, config: &mut Config) -> anyhow::Result<()> {
        if let Some(b) = self.backend {
            *backend = b;
        }
        if !self.url.is_empty() {
            config.server.url = self.url.clone();
        }
        if self.server_model.is_some() {
            config.server.model = self.server_model.clone();
        }
        if *backend == Backend::Native && (!self.url.is_empty() || self.server_model.is_some()) {
            anyhow::bail!("--url and --server-model only apply to --backend openai");
        }
        Ok(())
    }

    /// Connects to the running server of `[server]` (the stage commands do not launch one),
    /// asking `n` completions per question.
    fn connect(config: &Config, n: usize) -> anyhow::Result<east::serve::Served> {
        if config.server.url.is_empty() && config.server.launch.is_some() {
            anyhow::bail!("server.launch is used by `east run` only; give this command the running server's URL (--url or server.url)");
        }
        east::serve::Served::connect(&config.server, &config.server.url, n)
    }
}

/// The engine of `backend` for `[model]`: east's decoder, or the running server of `[server]`
/// (connected into `slot`, which must outlive the engine).
fn open_engine<'a>(
    config: &Config,
    backend: Backend,
    n: usize,
    slot: &'a mut Option<east::serve::Served>,
) -> anyhow::Result<Box<dyn east::generate::Generator + 'a>> {
    east::generate::open(&config.model, backend, || {
        Ok(&*slot.insert(ServerArgs::connect(config, n)?))
    })
}

#[derive(Args)]
struct MergeArgs {
    /// The joined samples file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Shard files written by `east sample --shard i/N`.
    #[arg(required = true, value_name = "SHARD")]
    inputs: Vec<PathBuf>,
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
    /// Split of --dataset [default: train].
    #[arg(long, requires = "dataset")]
    split: Option<String>,
    /// Also accept a prediction equal to the reference ×100 or /100 (Qwen toolkit rule).
    #[arg(long)]
    percent_rule: bool,
    /// Accept a rounded decimal within this relative tolerance of an exact answer (the Qwen
    /// toolkit's is 1e-4; default: decimals compare exactly).
    #[arg(long, value_name = "TOL")]
    approximate: Option<f64>,
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
    /// Which questions train: `authors` (those with a boxed correct completion and a boxed wrong
    /// answer, for every loss and metric) or `answered` (every one the metric can weigh).
    #[arg(long, value_enum)]
    questions: Option<QuestionSet>,
    /// How chosen/rejected completions are picked.
    #[arg(long, value_enum)]
    pairs: Option<PairStrategy>,
    /// Whether chosen completions, and the wrong ones that decide the authors' rejected answer,
    /// must contain `\boxed` (the authors' filter).
    #[arg(long, value_name = "BOOL")]
    require_boxed: Option<bool>,
    /// Keep questions whose completions are all correct (uniform and accuracy metrics, SFT;
    /// needs --questions answered).
    #[arg(long)]
    keep_all_correct: bool,
    /// Seeds the per-question picks.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// train.jsonl written by `east weight` (TRL conversational rows + weight) or TRL standard rows.
    #[arg(long, value_name = "FILE", required_unless_present = "estimate_memory")]
    data: Option<PathBuf>,
    /// Output folder: the checkpoint (HF folder, or PEFT adapter with --lora), train_log.jsonl,
    /// and resume checkpoints while training (rerun the same command to resume).
    #[arg(long, value_name = "DIR", required_unless_present = "estimate_memory")]
    out: Option<PathBuf>,
    /// Training objective (must match the rows of --data).
    #[arg(long, value_enum)]
    loss: Option<Loss>,
    /// Passes over the training set.
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per optimiser step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Examples per forward pass (gradients accumulate up to --batch-size).
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// DPO/KTO temperature (TRL's default; set the paper's value for the model).
    #[arg(long)]
    beta: Option<f64>,
    /// KTO weight of desirable examples.
    #[arg(long)]
    desirable_weight: Option<f64>,
    /// KTO weight of undesirable examples.
    #[arg(long)]
    undesirable_weight: Option<f64>,
    /// Share of the steps spent warming the learning rate up from 0.
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Learning-rate decay after warmup.
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Decoupled AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Gradients are scaled down to this global norm.
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Stop after this many optimiser steps (overrides --epochs, as in Hugging Face; default: none).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Truncate prompt + completion to this many tokens.
    #[arg(long)]
    max_length: Option<usize>,
    /// Where example weights come from.
    #[arg(long, value_enum)]
    weighting: Option<Weighting>,
    /// Train LoRA adapters instead of every weight (the --lora-* flags and --merge need it).
    #[arg(long)]
    lora: bool,
    /// LoRA rank r.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA scale numerator α (the update is scaled by α/r).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the LoRA input.
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// With --lora, also write the merged model to OUT/merged.
    #[arg(long)]
    merge: bool,
    /// Seeds the epoch shuffles, LoRA initialisation and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Training engine.
    #[arg(long, value_enum)]
    engine: Option<EngineChoice>,
    /// Resume checkpoint every N steps (0: never).
    #[arg(long)]
    save_steps: Option<usize>,
    /// Activation checkpointing (autograd engine): false, true, or auto (on when the memory estimate exceeds --memory-limit or the GPU's free memory).
    #[arg(long, value_name = "false|true|auto")]
    gradient_checkpointing: Option<east::train::config::Checkpointing>,
    /// Memory budget in GiB for --gradient-checkpointing auto (default: the GPU's free memory; none on the CPU).
    #[arg(long, value_name = "GIB")]
    memory_limit: Option<f64>,
    /// Dashboards besides train_log.jsonl: tensorboard (event files in OUT/tensorboard/, which W&B can read too) or none.
    #[arg(long, value_name = "none|tensorboard")]
    report_to: Option<east::tensorboard::ReportTo>,
    /// Print the estimated peak memory by part for this config and model (reads only the model's config) and exit without training.
    #[arg(long, conflicts_with_all = ["data", "out"])]
    estimate_memory: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// gsm8k, math, math500 or a JSONL file.
    #[arg(long, value_name = "DATASET")]
    dataset: Option<String>,
    /// train or test.
    #[arg(long)]
    split: Option<String>,
    /// Only the first K questions (default: all).
    #[arg(long, value_name = "K")]
    limit: Option<usize>,
    /// Most tokens generated per answer.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Questions decoded together.
    #[arg(long)]
    batch_size: Option<usize>,
    /// How predictions are graded: `exact`, or `qwen` (the Qwen2.5-Math toolkit's numeric rules,
    /// as the paper's evaluation); a table of rules with `--set eval.grade={...}`.
    #[arg(long, value_enum)]
    grade: Option<Preset>,
    #[command(flatten)]
    server: ServerArgs,
    /// Folder for eval.json and predictions.jsonl.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let matches = with_config_defaults(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Report(args) => report(args),
        Command::Sample(args) => sample(args),
        Command::Merge(args) => merge(args),
        Command::Cluster(args) => cluster(args),
        Command::Weight(args) => weight(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Config(args) => show_config(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config key (`section.key`) a stage flag overrides, if it overrides one.
fn config_key(subcommand: &str, arg: &str) -> Option<String> {
    let section = match (subcommand, arg) {
        // inputs and outputs of one invocation, not settings
        (_, "out" | "config" | "set" | "help" | "samples" | "clusters" | "shard") => return None,
        ("train", "data" | "estimate_memory") | ("cluster", "dataset" | "split") => return None,
        ("sample" | "train" | "eval", "path" | "device" | "dtype" | "adapter") => "model",
        ("sample" | "eval", "url") => return Some("server.url".into()),
        ("sample" | "eval", "server_model") => return Some("server.model".into()),
        ("sample", "dataset" | "split" | "limit") => "data",
        ("eval", "dataset") => return Some("eval.datasets".into()),
        ("weight", "loss") => "train",
        ("run", "report_to") => "run",
        (s @ ("sample" | "cluster" | "weight" | "train" | "eval"), _) => s,
        _ => return None,
    };
    Some(format!("{section}.{arg}"))
}

/// The built-in default of a config key as `--help` shows it, if the key has one.
fn default_text(defaults: &toml::Value, key: &str) -> Option<String> {
    let value = key.split('.').try_fold(defaults, |v, part| v.get(part))?;
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Array(items) if items.is_empty() => None,
        toml::Value::Array(items) => Some(
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        toml::Value::Table(_) => None,
        other => Some(other.to_string()),
    }
}

/// Appends `[default: …]` — the value the flag's config key has when neither the config file
/// nor the flag sets it — to the help of every stage flag, so defaults are defined once
/// (in the config sections) and shown everywhere.
fn with_config_defaults(cli: clap::Command) -> clap::Command {
    let defaults = toml::Value::try_from(Config::default()).expect("the default config serialises");
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    names.into_iter().fold(cli, |cli, name| {
        cli.mut_subcommand(&name, |mut sub| {
            let shown: HashMap<String, String> = sub
                .get_arguments()
                .filter_map(|a| {
                    let id = a.get_id().as_str().to_string();
                    let key = config_key(&name, &id)?;
                    Some((id, default_text(&defaults, &key)?))
                })
                .collect();
            for (id, value) in shown {
                sub = sub.mut_arg(&id, |a| {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    a.help(format!("{help} [default: {value}]"))
                });
            }
            sub
        })
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (mut config, origin) = args.config.load_for_flags()?;
    override_from!(args => config.run; report_to);
    config.validate(&origin)?;
    let layout = east::pipeline::RunLayout::new(&config);
    let summaries = east::pipeline::run(&config)?;
    println!(
        "{}: {} round(s) done",
        layout.root.display(),
        config.run.rounds
    );
    for s in &summaries {
        let acc: Vec<String> = s
            .accuracy
            .iter()
            .map(|(d, a)| format!("{d} {:.1}%", 100.0 * a))
            .collect();
        let ran: Vec<String> = s
            .stages
            .iter()
            .map(|st| format!("{} {}", st.stage, st.outcome.as_str()))
            .collect();
        println!(
            "  round {}: {} ({})",
            s.round,
            acc.join(", "),
            ran.join(", ")
        );
    }
    println!("report: east report {}", layout.root.display());
    Ok(())
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let first = args.runs.first().or(args.compare.first());
    let out = match (&args.out, first) {
        (Some(out), _) => out.clone(),
        (None, Some(run)) => run.join("report"),
        (None, None) => anyhow::bail!("name a run directory or --compare RUN_A RUN_B"),
    };
    let options = east::report::ReportOptions {
        average_over_a: matches!(args.average_over, Some(AverageKey::A)),
        a_values: args.a_values.clone(),
        // clap gives each --compare exactly two values, in order.
        compare: args
            .compare
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
    };
    let path = east::report::write_report(&args.runs, &out, &options)?;
    println!("{}", path.display());
    Ok(())
}

fn sample(args: SampleArgs) -> anyhow::Result<()> {
    let (mut config, origin) = args.config.load_for_flags()?;
    args.model.apply(&mut config);
    override_from!(args => config.data; dataset, split);
    override_from!(args => config.sample; n, temperature, top_p, max_new_tokens, seed, batch_rows);
    if args.limit.is_some() {
        config.data.limit = args.limit;
    }
    if !args.stop.is_empty() {
        config.sample.stop = args.stop.clone();
    }
    let mut backend = config.sample.backend;
    args.server.apply(&mut backend, &mut config)?;
    config.sample.backend = backend;
    if backend == Backend::Openai && args.batch_rows.is_some() {
        anyhow::bail!("--batch-rows sizes east's own decoder; with --backend openai the server batches (server.concurrency sets the requests in flight)");
    }
    config.validate(&origin)?;
    let _lock = FileLock::output_file(&args.out)?;
    let questions = config.data.questions()?;
    let mut served = None;
    let engine = open_engine(&config, backend, config.sample.n, &mut served)?;
    let settings =
        east::sample::SampleSettings::new(config.model.label(), &config.data, &config.sample);
    let r = east::sample::sample_questions(
        engine.as_ref(),
        &questions,
        &settings,
        args.shard,
        &args.out,
    )?;
    println!(
        "{}: {} questions ({} already there), {} tokens in {:.1}s ({:.0} tokens/s)",
        r.out.display(),
        r.questions,
        r.resumed,
        r.generated_tokens,
        r.seconds,
        r.tokens_per_s
    );
    Ok(())
}

fn merge(args: MergeArgs) -> anyhow::Result<()> {
    let _lock = FileLock::output_file(&args.out)?;
    let n = east::sample::merge_shards(&args.inputs, &args.out)?;
    println!(
        "{}: {n} questions from {} shards",
        args.out.display(),
        args.inputs.len()
    );
    Ok(())
}

fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let (mut config, origin) = args.config.load_for_flags()?;
    if let Some(by) = args.by {
        config.cluster.by = by;
    }
    config.cluster.percent_rule |= args.percent_rule;
    if args.approximate.is_some() {
        config.cluster.approximate = args.approximate;
    }
    config.validate(&origin)?;
    let references: Option<HashMap<String, String>> = match &args.dataset {
        Some(spec) => {
            let split = args.split.as_deref().unwrap_or("train");
            let questions = data::load(&DatasetSpec::parse(spec), split, &config.data.fields)?;
            Some(questions.into_iter().map(|q| (q.id, q.answer)).collect())
        }
        None => None,
    };
    let _lock = FileLock::output_file(&args.out)?;
    let started = std::time::Instant::now();
    let s = east::cluster::cluster_file(
        &args.samples,
        &args.out,
        &config.cluster,
        references.as_ref(),
    )
    .with_context(|| {
        format!(
            "east cluster failed; {} was not written",
            args.out.display()
        )
    })?;
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
    let (mut config, origin) = args.config.load_for_flags()?;
    override_from!(args => config.weight; metric, mapping, a, range, questions, pairs, seed, require_boxed);
    config.weight.keep_all_correct |= args.keep_all_correct;
    if let Some(v) = args.loss {
        config.train.loss = v;
    }
    config.validate(&origin)?;
    let options = config.weight_options();
    let _lock = FileLock::output_file(&args.out)?;
    let s = east::weight::weight_files(&args.clusters, &args.samples, &args.out, &options)
        .with_context(|| format!("east weight failed; {} was not written", args.out.display()))?;
    println!(
        "{}: {} examples from {} of {} questions (dropped: {}); weights min {:.3} max {:.3}",
        s.out.display(),
        s.examples,
        s.kept,
        s.questions,
        s.dropped_text(),
        s.weight_stats.map_or(0.0, |w| w.min),
        s.weight_stats.map_or(0.0, |w| w.max),
    );
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let (mut config, origin) = args.config.load_for_flags()?;
    args.model.apply(&mut config);
    override_from!(args => config.train; loss, epochs, batch_size, micro_batch_size, lr, beta, desirable_weight, undesirable_weight,
        warmup_ratio, schedule, weight_decay, max_grad_norm, max_length, weighting, lora_rank, lora_alpha, lora_dropout,
        lora_targets, seed, engine, save_steps, gradient_checkpointing, report_to);
    let t = &mut config.train;
    if args.memory_limit.is_some() {
        t.memory_limit = args.memory_limit;
    }
    if args.max_steps.is_some() {
        t.max_steps = args.max_steps;
    }
    t.lora |= args.lora;
    t.merge |= args.merge;
    if !t.lora {
        let lora_only = [
            ("--lora-rank", args.lora_rank.is_some()),
            ("--lora-alpha", args.lora_alpha.is_some()),
            ("--lora-dropout", args.lora_dropout.is_some()),
            ("--lora-targets", args.lora_targets.is_some()),
            ("--merge", args.merge),
        ];
        if let Some((flag, _)) = lora_only.iter().find(|(_, given)| *given) {
            anyhow::bail!("{flag} only applies to LoRA training: add --lora (or set train.lora = true in the config)");
        }
    }
    config.validate(&origin)?;
    if args.estimate_memory {
        return estimate_memory(&config);
    }
    let (data, out) = (args.data.expect("clap"), args.out.expect("clap"));
    let job = east::train::TrainJob::new(config.model.clone(), config.train.clone(), data, out);
    let r = in_output_dir(&job.out, || east::train::train(&job))
        .with_context(|| format!("east train failed (output folder {})", job.out.display()))?;
    if r.already_done {
        println!(
            "{}: already trained with these settings ({} steps); nothing to do",
            r.out.display(),
            r.steps
        );
        return Ok(());
    }
    println!(
        "{}: {} steps on {} examples{} ({} engine), final loss {}, {:.0} tokens/s, {:.1}s{}",
        r.out.display(),
        r.steps,
        r.examples,
        if r.resumed_from > 0 {
            format!(", resumed at step {}", r.resumed_from)
        } else {
            String::new()
        },
        r.engine,
        r.final_loss.map_or("-".to_string(), |l| format!("{l:.4}")),
        r.tokens_per_s,
        r.seconds,
        if r.truncated > 0 {
            format!("; {} examples truncated to train.max_length", r.truncated)
        } else {
            String::new()
        },
    );
    Ok(())
}

/// `east train --estimate-memory`: the peak-memory table for rows of `train.max_length`
/// tokens (clamped to the model's context), with checkpointing as configured ("auto" decided
/// against the memory available).
fn estimate_memory(config: &Config) -> anyhow::Result<()> {
    use east::train::memory;
    let cfg = memory::model_config(&config.model.path)?;
    // the device is not opened: the estimate for a GPU needs no GPU (nor a CUDA build)
    let cuda = match config.model.device {
        east::model::DeviceChoice::Cuda(ordinal) => Some(ordinal),
        east::model::DeviceChoice::Cpu => None,
    };
    let dtype = match (config.model.dtype, cuda) {
        (east::model::DTypeChoice::Auto, Some(_)) => candle_core::DType::BF16,
        (d, _) => d.resolve(&candle_core::Device::Cpu),
    };
    let autograd = !(cuda.is_none()
        && matches!(dtype, candle_core::DType::F32 | candle_core::DType::F64)
        && config.train.engine != east::train::EngineChoice::Autograd);
    let tokens = config.train.max_length.min(cfg.max_position_embeddings);
    let (on, est) = memory::decide(&cfg, &config.train, cuda, dtype, (tokens, 0), autograd)?;
    println!(
        "{}: {} parameters, {dtype:?} on {}, {} sequences × {tokens} tokens per micro-batch, {} micro-batches per step, gradient checkpointing {} ({})",
        config.model.path,
        cfg.num_parameters(),
        if cuda.is_some() { "CUDA" } else { "the CPU" },
        est.rows,
        config.train.batch_size / config.train.micro_batch_size,
        if on { "on" } else { "off" },
        config.train.gradient_checkpointing,
    );
    print!("{}", est.table());
    Ok(())
}

/// Runs `work` holding the lock of the output folder `dir` (a second writer fails at once,
/// naming the first); when `work` fails, a folder it created and left empty is removed.
fn in_output_dir<T>(
    dir: &std::path::Path,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let existed = dir.exists();
    let lock = FileLock::output_dir(dir)?;
    let result = work();
    drop(lock);
    if result.is_err() && !existed {
        // remove_dir removes only an empty folder
        let _ = std::fs::remove_dir(dir);
    }
    result
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let (mut config, origin) = args.config.load_for_flags()?;
    args.model.apply(&mut config);
    override_from!(args => config.eval; split, max_new_tokens, batch_size);
    if let Some(v) = &args.dataset {
        config.eval.datasets = vec![v.clone()];
    }
    if args.limit.is_some() {
        config.eval.limit = args.limit;
    }
    if let Some(p) = args.grade {
        config.eval.grade = Grading::Preset(p);
    }
    let mut backend = config.eval.backend;
    args.server.apply(&mut backend, &mut config)?;
    config.eval.backend = backend;
    if backend == Backend::Openai && args.batch_size.is_some() {
        anyhow::bail!("--batch-size sizes east's own decoder; with --backend openai the server batches (server.concurrency sets the requests in flight)");
    }
    config.validate(&origin)?;
    if config.eval.datasets.len() != 1 {
        anyhow::bail!(
            "east eval evaluates one dataset at a time: pass --dataset (config has {:?})",
            config.eval.datasets
        );
    }
    let dataset = config.eval.datasets[0].clone();
    let r = in_output_dir(&args.out, || {
        let questions = data::load_questions(
            &dataset,
            &config.eval.split,
            config.eval.limit,
            &config.data.fields,
        )?;
        let mut served = None;
        let engine = open_engine(&config, backend, 1, &mut served)?;
        let settings = east::eval::EvalSettings::new(&config.eval, config.model.label(), &dataset);
        east::eval::evaluate(engine.as_ref(), &questions, &settings, &args.out)
    })?;
    println!(
        "{} {}: accuracy {:.2}% ({}/{}, graded {}), {} without an answer, {} truncated; {}",
        r.dataset,
        r.split,
        100.0 * r.accuracy,
        r.correct,
        r.n,
        r.grading.label(),
        r.no_answer,
        r.truncated,
        east::eval::report_path(&args.out).display()
    );
    Ok(())
}

fn show_config(args: ConfigCmdArgs) -> anyhow::Result<()> {
    if args.list {
        for (name, text) in east::config::BUNDLED {
            println!("{name:<10} {}", east::config::bundled_summary(text));
        }
        return Ok(());
    }
    let config = args.config.load()?;
    match &args.get {
        None => print!("{}", config.to_toml()),
        Some(key) => {
            let value = toml::Value::try_from(&config)?;
            let found = key.split('.').try_fold(&value, |v, part| v.get(part));
            match found {
                Some(toml::Value::String(s)) => println!("{s}"),
                Some(other) => println!("{other}"),
                // TOML has no "none": an unset optional key prints nothing
                None if config.is_unset(key) => eprintln!("{key} is not set (none)"),
                None => anyhow::bail!("no config key `{key}`"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every flag of every subcommand says what it does, and every flag that overrides a config
    /// key with a built-in default shows that default, read from `Config::default()`.
    #[test]
    fn every_flag_has_help_and_its_default() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let cli = with_config_defaults(Cli::command());
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.len() > 10,
                    "east {} --{id} has no help text",
                    sub.get_name()
                );
                if let Some(want) =
                    config_key(sub.get_name(), id).and_then(|k| default_text(&defaults, &k))
                {
                    assert!(
                        help.ends_with(&format!("[default: {want}]")),
                        "east {} --{id}: {help}",
                        sub.get_name()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 40, "only {checked} defaults shown");
        // spot checks against the paper's values, independent of the code above
        let train = cli.find_subcommand("train").unwrap();
        let help = |name: &str| {
            train
                .get_arguments()
                .find(|a| a.get_id() == name)
                .unwrap()
                .get_help()
                .unwrap()
                .to_string()
        };
        assert!(
            help("epochs").ends_with("[default: 3]"),
            "{}",
            help("epochs")
        );
        assert!(
            help("lr").ends_with("[default: 0.000002]"),
            "{}",
            help("lr")
        );
        assert!(
            help("schedule").ends_with("[default: linear]"),
            "{}",
            help("schedule")
        );
        // TRL's DPOConfig and KTOConfig default β
        assert!(help("beta").ends_with("[default: 0.1]"), "{}", help("beta"));
        assert!(
            help("lora_targets").contains("q_proj,k_proj"),
            "{}",
            help("lora_targets")
        );
    }

    #[test]
    fn every_config_key_a_flag_names_exists() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(key) = config_key(sub.get_name(), arg.get_id().as_str()) else {
                    continue;
                };
                let (section, field) = key.split_once('.').unwrap();
                let table = defaults.get(section).and_then(|t| t.as_table()).unwrap();
                // optional keys (limit, max_steps, adapter) are absent from the TOML of the
                // defaults; they must still be fields of the section
                let optional = ["limit", "max_steps", "adapter", "model", "memory_limit"];
                assert!(
                    table.contains_key(field) || optional.contains(&field),
                    "east {} --{}: no key {key}",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
