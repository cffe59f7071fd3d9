//! `east run` end to end on a tiny random model: two rounds of sample → cluster → weight → train
//! → eval; a run killed (SIGKILL) in several stages and rerun ends byte-identical to an
//! uninterrupted one; changing `weight.a` reruns only weight, train and eval; runs under the same
//! folder share samples; a second `east run` on a busy run directory is refused; `east report`
//! writes its tables and plots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use east::model::testing::write_tiny_model;

#[path = "support/run_board.rs"]
mod run_board;

const QUESTIONS: usize = 10;

fn east(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .expect("east runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("east starts")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn write_questions(path: &Path, answers: &[String]) {
    let text: String = answers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}\n", serde_json::json!({"id": format!("q{i}"), "question": format!("What is {i} plus {}?", i * 7 % 5), "answer": a})))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn config_text(model: &Path, data: &Path, rounds: usize) -> String {
    format!(
        r#"
[model]
path = "{model}"
device = "cpu"
dtype = "f32"

[data]
dataset = "{data}"
fields.id = "id"

[sample]
n = 8
temperature = 1.0
max_new_tokens = 32
seed = 3
batch_rows = 12

[weight]
a = 1.5
# The random model rarely boxes two answers of one question; the looser question set keeps
# enough questions for weights that differ.
questions = "answered"

[train]
loss = "sft"
epochs = 1
batch_size = 2
micro_batch_size = 1
lr = 1e-5
max_length = 256
save_steps = 1

[eval]
datasets = ["{data}"]
limit = 6
max_new_tokens = 24
batch_size = 3

[run]
name = "tiny"
rounds = {rounds}
eval_base = true
"#,
        model = model.display(),
        data = data.display()
    )
}

/// A tiny model and a question file whose reference answers its samples sometimes hit: a first
/// pass clusters the model's samples and takes each question's most common extracted answer as
/// its reference (the random model writes arbitrary text, so no fixed answer key would do).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn fixture(rounds: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = root.join("tiny");
    write_tiny_model(&model, 1).unwrap();
    let data = root.join("questions.jsonl");
    write_questions(&data, &vec!["123456789".to_string(); QUESTIONS]);
    let config = root.join("tiny.toml");
    std::fs::write(&config, config_text(&model, &data, rounds)).unwrap();

    let probe = root.join("probe");
    let (ok, log) = east(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--set",
        &format!("run.dir={:?}", probe.to_str().unwrap()),
        "--set",
        "run.eval_base=false",
    ]);
    assert!(
        !ok && log.contains("no training examples"),
        "no sample can match 123456789: {log}"
    );
    let clusters = lines(&probe.join("tiny/round1/clusters.jsonl"));
    let samples = lines(&probe.join("tiny/round1/samples.jsonl"));
    assert_eq!(clusters.len(), QUESTIONS);
    // EAST trains only on correct completions that box their answer (the authors' filter), so
    // each reference is the answer of a completion containing `\boxed`, where there is one.
    let answers: Vec<String> = clusters
        .iter()
        .zip(&samples)
        .map(|(c, s)| {
            let completions = s["completions"].as_array().unwrap();
            let preds = c["preds"].as_array().unwrap();
            completions
                .iter()
                .zip(preds)
                .find(|(text, pred)| text.as_str().unwrap().contains("\\boxed") && pred.is_string())
                .map_or("123456789".to_string(), |(_, pred)| {
                    pred.as_str().unwrap().to_string()
                })
        })
        .collect();
    let answerable = answers.iter().filter(|a| *a != "123456789").count();
    assert!(
        answerable >= 2,
        "a few questions should have a boxed answer: {answers:?}"
    );
    write_questions(&data, &answers);
    std::fs::remove_dir_all(&probe).unwrap();
    Fixture {
        _dir: dir,
        root,
        config,
    }
}

fn run_args<'a>(config: &'a str, dir: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--set".into(),
        format!("run.dir={dir:?}"),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Everything a finished run produced that must not depend on interruptions: file bytes, and
/// the parts of JSON reports that are not timings or paths.
fn artifacts(run: &Path, rounds: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let put = |out: &mut BTreeMap<String, Vec<u8>>, name: String, path: PathBuf| {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.insert(name, bytes);
    };
    put(
        &mut out,
        "round0/eval/predictions.jsonl".into(),
        run.join("round0/eval/questions/predictions.jsonl"),
    );
    for t in 1..=rounds {
        let r = run.join(format!("round{t}"));
        put(
            &mut out,
            format!("round{t}/samples.jsonl"),
            r.join("samples.jsonl"),
        );
        put(
            &mut out,
            format!("round{t}/clusters.jsonl"),
            r.join("clusters.jsonl"),
        );
        put(
            &mut out,
            format!("round{t}/train.jsonl"),
            r.join("train.jsonl"),
        );
        put(
            &mut out,
            format!("round{t}/model.safetensors"),
            r.join("checkpoint/model.safetensors"),
        );
        put(
            &mut out,
            format!("round{t}/eval/predictions.jsonl"),
            r.join("eval/questions/predictions.jsonl"),
        );
        let log: Vec<Value> = lines(&r.join("checkpoint/train_log.jsonl"));
        let losses: Vec<Value> = log.iter().filter_map(|l| l.get("loss").cloned()).collect();
        out.insert(
            format!("round{t}/losses"),
            serde_json::to_vec(&losses).unwrap(),
        );
    }
    for t in 0..=rounds {
        let report: Value = serde_json::from_slice(
            &std::fs::read(run.join(format!("round{t}/eval/questions/eval.json"))).unwrap(),
        )
        .unwrap();
        let stable = serde_json::json!([
            report["n"],
            report["correct"],
            report["accuracy"],
            report["no_answer"],
            report["truncated"]
        ]);
        out.insert(
            format!("round{t}/eval.json"),
            serde_json::to_vec(&stable).unwrap(),
        );
    }
    out
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn samples_file(runs: &Path) -> Option<PathBuf> {
    std::fs::read_dir(runs.join("_samples"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "jsonl") && !p.to_string_lossy().contains(".partial")
        })
}

/// Starts `east run` and SIGKILLs it as soon as `ready` holds; returns whether the kill
/// interrupted a live process (false: it had already exited).
fn kill_when(args: &[String], ready: impl Fn() -> bool) -> bool {
    let mut child = spawn(&as_strs(args));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready() || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

fn stage_outcomes(run: &Path) -> Vec<(u64, String, String)> {
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    summary
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let round = r["round"].as_u64().unwrap();
            r["stages"].as_array().unwrap().iter().map(move |s| {
                (
                    round,
                    s["stage"].as_str().unwrap().to_string(),
                    s["outcome"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// Every round's `evals` entry in summary.json carries its eval.json's counts and Wilson's 95%
/// interval, here worked out from the textbook formula (z = 1.96).
fn summary_accuracies_have_counts_and_wilson_intervals(run: &Path) {
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let mut checked = 0;
    for r in summary.as_array().unwrap() {
        let round = r["round"].as_u64().unwrap();
        for (dataset, acc) in r["evals"].as_object().unwrap() {
            let dir = east::pipeline::dataset_dir_name(dataset);
            let eval_json = run.join(format!("round{round}/eval/{dir}/eval.json"));
            let eval: Value =
                serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
            let (k, n) = (
                eval["correct"].as_f64().unwrap(),
                eval["n"].as_f64().unwrap(),
            );
            assert_eq!(acc["n"].as_f64(), Some(n), "{acc}");
            assert_eq!(acc["correct"].as_f64(), Some(k), "{acc}");
            assert_eq!(r["accuracy"][dataset].as_f64(), acc["accuracy"].as_f64());
            let (p, z) = (k / n, 1.959963984540054_f64);
            let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
            let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
            let (low, high) = (
                acc["ci95"]["low"].as_f64().unwrap(),
                acc["ci95"]["high"].as_f64().unwrap(),
            );
            assert!((low - (centre - half).max(0.0)).abs() < 1e-12, "{acc}");
            assert!((high - (centre + half).min(1.0)).abs() < 1e-12, "{acc}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "summary.json has an interval for every evaluation"
    );
}

#[test]
fn a_killed_run_continues_to_the_same_result_and_only_changed_stages_rerun() {
    let fx = fixture(2);
    let cfg = fx.config.to_str().unwrap();

    // Uninterrupted reference run.
    let full_dir = fx.root.join("full");
    let (ok, log) = east(&as_strs(&run_args(cfg, full_dir.to_str().unwrap(), &[])));
    assert!(ok, "{log}");
    let full = full_dir.join("tiny");
    let expected = artifacts(&full, 2);
    let train_rows = lines(&full.join("round1/train.jsonl"));
    assert!(!train_rows.is_empty());
    assert!(
        stage_outcomes(&full).iter().all(|(_, _, o)| o == "ran"),
        "{:?}",
        stage_outcomes(&full)
    );
    summary_accuracies_have_counts_and_wilson_intervals(&full);

    // The same run killed in sampling, training and evaluation, then finished; with its
    // TensorBoard folder, which must hold each step once.
    let killed_dir = fx.root.join("killed");
    let killed = killed_dir.join("tiny");
    let args = run_args(
        cfg,
        killed_dir.to_str().unwrap(),
        &["--report-to", "tensorboard"],
    );
    let mut interrupted = 0;
    interrupted += kill_when(&args, || {
        samples_file(&killed_dir).is_some_and(|p| line_count(&p) >= 2)
    }) as usize;
    // Meanwhile nobody else may work in the same run directory.
    {
        let mut child = spawn(&as_strs(&args));
        let start = Instant::now();
        let holder = format!("pid {}", child.id());
        while std::fs::read_to_string(killed.join(".lock")).map_or(true, |t| t.trim() != holder)
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (ok, log) = east(&as_strs(&args));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !ok && log.contains("in use by another east process"),
            "{log}"
        );
    }
    interrupted += kill_when(&args, || {
        line_count(&killed.join("round1/checkpoint/train_log.jsonl")) >= 2
    }) as usize;
    interrupted += kill_when(&args, || {
        line_count(&killed.join("round1/eval/questions/predictions.jsonl")) >= 1
    }) as usize;
    interrupted += kill_when(&args, || {
        line_count(&killed.join("round2/checkpoint/train_log.jsonl")) >= 1
    }) as usize;
    assert!(
        interrupted >= 3,
        "most kills should land mid-run ({interrupted} of 4 did)"
    );
    let (ok, log) = east(&as_strs(&args));
    assert!(ok, "{log}");
    let got = artifacts(&killed, 2);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &expected {
        assert!(
            got[name] == *bytes,
            "{name} differs between the killed-and-resumed run and the uninterrupted one"
        );
    }

    run_board::check(&killed, 2, "questions");

    // Rerunning a finished run does nothing (and logs nothing again).
    let board = run_board::board(&killed);
    let files = east::tensorboard::event_files(&killed.join("tensorboard")).unwrap();
    let (ok, log) = east(&as_strs(&args));
    assert!(ok, "{log}");
    assert_eq!(run_board::board(&killed), board);
    assert_eq!(
        east::tensorboard::event_files(&killed.join("tensorboard")).unwrap(),
        files
    );
    assert!(
        stage_outcomes(&killed)
            .iter()
            .all(|(_, _, o)| o == "skipped"),
        "{:?}",
        stage_outcomes(&killed)
    );

    // A new exponent: round 1's sampling and clustering are reused, weight/train/eval rerun.
    let one_round = run_args(
        cfg,
        full_dir.to_str().unwrap(),
        &["--set", "run.rounds=1", "--set", "weight.a=-1"],
    );
    let (ok, log) = east(&as_strs(&one_round));
    assert!(ok, "{log}");
    let outcomes: Vec<(u64, String, String)> = stage_outcomes(&full);
    let expect =
        |round: u64, stage: &str, outcome: &str| (round, stage.to_string(), outcome.to_string());
    assert_eq!(
        outcomes,
        vec![
            expect(0, "eval questions", "skipped"),
            expect(1, "sample", "skipped"),
            expect(1, "cluster", "skipped"),
            expect(1, "weight", "ran"),
            expect(1, "train", "ran"),
            expect(1, "eval questions", "ran"),
        ]
    );
    let reweighted = lines(&full.join("round1/train.jsonl"));
    assert_eq!(reweighted.len(), train_rows.len(), "the same examples");
    assert_ne!(reweighted, train_rows, "with other weights");

    // Another run in the same folder (an SFT/DPO/KTO comparison, a sweep) samples nothing.
    let other = run_args(
        cfg,
        full_dir.to_str().unwrap(),
        &[
            "--set",
            "run.rounds=1",
            "--set",
            "run.name=\"other\"",
            "--set",
            "run.eval_base=false",
        ],
    );
    let (ok, log) = east(&as_strs(&other));
    assert!(ok, "{log}");
    assert_eq!(
        stage_outcomes(&full_dir.join("other"))[0],
        expect(1, "sample", "skipped")
    );

    // Samples made elsewhere (east merge, vLLM) feed round 1 directly.
    let external = std::fs::canonicalize(killed.join("round1/samples.jsonl")).unwrap();
    let set_samples = format!("run.samples={:?}", external.to_str().unwrap());
    let ext_dir = fx.root.join("external");
    let ext = run_args(
        cfg,
        ext_dir.to_str().unwrap(),
        &[
            "--set",
            "run.rounds=1",
            "--set",
            "run.eval_base=false",
            "--set",
            &set_samples,
        ],
    );
    let (ok, log) = east(&as_strs(&ext));
    assert!(ok, "{log}");
    assert!(
        !ext_dir.join("_samples").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "jsonl")),
        "nothing sampled"
    );
    assert_eq!(
        std::fs::read(ext_dir.join("tiny/round1/train.jsonl")).unwrap(),
        std::fs::read(killed.join("round1/train.jsonl")).unwrap()
    );

    // The report covers both runs.
    let report_dir = fx.root.join("report");
    let (ok, log) = east(&[
        "report",
        full.to_str().unwrap(),
        full_dir.join("other").to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(
        md.contains("| tiny | base model | 0 |")
            && md.contains("| other | sft · entropy · power a=1.5 | 1 |"),
        "{md}"
    );
    for svg in [
        "accuracy_per_round.svg",
        "entropy_tiny.svg",
        "weights_tiny.svg",
        "weights_other.svg",
    ] {
        let text =
            std::fs::read_to_string(report_dir.join(svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(text.starts_with("<svg") && text.contains("</svg>"), "{svg}");
    }
    assert!(
        !report_dir.join("entropy_other.svg").exists(),
        "runs sharing samples share one entropy plot"
    );
}
