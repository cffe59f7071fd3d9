//! `east report` over run directories made by hand (so every number in the report is known in
//! advance): the accuracy table, accuracy against a, per-round curves, the entropy scatter and
//! the weight histogram.

use std::path::Path;
use std::process::Command;

use serde_json::json;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn eval_json(correct: usize, n: usize) -> String {
    json!({
        "dataset": "gsm8k", "split": "test", "model": "m", "n": n, "correct": correct,
        "accuracy": correct as f64 / n as f64, "by_level": {}, "by_type": {}, "no_answer": 0, "truncated": 0,
        "settings": {"model": "m", "dataset": "gsm8k", "split": "test", "limit": null, "max_new_tokens": 16, "batch_size": 4},
        "seconds": 1.0, "generated_tokens": 10
    })
    .to_string()
}

/// A finished run: config with `weight` settings, base and round-1 accuracies out of 200.
fn make_run(dir: &Path, weight: &str, rounds: &[(usize, usize)]) {
    write(
        &dir.join("config.toml"),
        &format!("[weight]\n{weight}\n[run]\nrounds = {}\n", rounds.len() - 1),
    );
    for (t, &(correct, _)) in rounds.iter().enumerate() {
        write(
            &dir.join(format!("round{t}/eval/gsm8k/eval.json")),
            &eval_json(correct, 200),
        );
    }
}

#[test]
fn report_tables_and_plots_hold_the_runs_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    make_run(
        &runs.join("vanilla"),
        "metric = \"uniform\"",
        &[(92, 0), (100, 0)],
    );
    make_run(&runs.join("a1"), "a = 1.0", &[(92, 0), (103, 0)]);
    make_run(
        &runs.join("a1.5"),
        "a = 1.5",
        &[(92, 0), (104, 0), (109, 0)],
    );
    // Round 1 of a1.5: three questions with known entropy/accuracy, two training rows per
    // question with weights 0.5, 1.0, 1.5 (one value per question).
    let clusters: String = [(0.0, 1.0, 0.0), (1.0, 0.5, 0.5), (1.585, 0.25, 0.5)]
        .iter()
        .enumerate()
        .map(|(i, (h, acc, dw))| {
            format!(
                "{}\n",
                json!({"id": format!("q{i}"), "answer": "1", "preds": ["1", "2", "3", "1"], "correct": [true, false, false, true],
                    "clusters": [{"answer": "1", "count": 2, "correct": true}, {"answer": "2", "count": 1, "correct": false}, {"answer": "3", "count": 1, "correct": false}],
                    "cluster_of": [0, 1, 2, 0], "entropy": h, "accuracy": acc, "dominant_wrong": dw})
            )
        })
        .collect();
    write(&runs.join("a1.5/round1/clusters.jsonl"), &clusters);
    let rows: String = [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}\n", json!({"id": format!("q{}", i / 2), "prompt": [], "completion": [], "weight": w, "entropy": 1.0, "accuracy": 0.5, "dominant_wrong": 0.5})))
        .collect();
    write(&runs.join("a1.5/round1/train.jsonl"), &rows);

    let out = dir.path().join("report");
    let args: Vec<String> = ["vanilla", "a1", "a1.5"]
        .iter()
        .map(|r| runs.join(r).to_str().unwrap().to_string())
        .collect();
    let status = Command::new(env!("CARGO_BIN_EXE_east"))
        .arg("report")
        .args(&args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in [
        "| vanilla | base model | 0 | 46.0 |",
        "| vanilla | sft · vanilla | 1 | 50.0 |",
        "| a1 | sft · entropy · power a=1 | 1 | 51.5 |",
        "| a1.5 | sft · entropy · power a=1.5 | 1 | 52.0 |",
        "| a1.5 | sft · entropy · power a=1.5 | 2 | 54.5 |",
    ] {
        assert!(md.contains(row), "missing `{row}` in\n{md}");
    }

    // Accuracy against a: vanilla at a = 0, then 1 and 1.5, in order of a.
    let by_a = std::fs::read_to_string(out.join("accuracy_vs_a.svg")).unwrap();
    assert_eq!(by_a.matches("<circle").count(), 3);
    let polyline = by_a
        .split("<polyline points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let points: Vec<(f64, f64)> = polyline
        .split(' ')
        .map(|p| p.split_once(',').unwrap())
        .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
        .collect();
    assert!(
        points.windows(2).all(|w| w[0].0 < w[1].0),
        "x increases with a: {points:?}"
    );
    // Screen y grows downwards: 50.0 < 51.5 < 52.0 % means decreasing y.
    assert!(
        points.windows(2).all(|w| w[0].1 > w[1].1),
        "higher accuracy is drawn higher: {points:?}"
    );
    // Equal steps in a are equal steps in x: a = 0 → 1 is twice a = 1 → 1.5.
    let (d1, d2) = (points[1].0 - points[0].0, points[2].0 - points[1].0);
    assert!((d1 / d2 - 2.0).abs() < 0.02, "{d1} vs {d2}");

    // Per round: one line per run, a1.5 with three rounds.
    let per_round = std::fs::read_to_string(out.join("accuracy_per_round.svg")).unwrap();
    assert_eq!(per_round.matches("<polyline").count(), 3);
    assert_eq!(per_round.matches("<circle").count(), 2 + 2 + 3);

    // One scatter point per question, coloured from blue (0) to red (1) by dominant_wrong.
    let entropy = std::fs::read_to_string(out.join("entropy_a1.5.svg")).unwrap();
    assert_eq!(entropy.matches("fill-opacity=\"0.75\"").count(), 3);
    assert!(
        entropy.contains("fill=\"rgb(40,60,220)\"") && entropy.contains("fill=\"rgb(140,60,130)\""),
        "{entropy}"
    );

    // Histogram of one weight per question: three questions in total over the bars.
    let weights = std::fs::read_to_string(out.join("weights_a1.5.svg")).unwrap();
    assert!(weights.contains(">3 questions<"), "{weights}");
    assert!(md.contains("![weights](weights_a1.5.svg)"));
}

#[test]
fn report_refuses_a_folder_that_is_not_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(["report", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an east run directory"));
}

#[test]
fn an_unwritable_report_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs/a1");
    make_run(&run, "a = 1.0", &[(92, 0), (100, 0)]);
    // A folder under a regular file cannot be created, even by root.
    let file = dir.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let target = file.join("report");
    let out = Command::new(env!("CARGO_BIN_EXE_east"))
        .args([
            "report",
            run.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(target.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// Figure 5's table: entropy·SFT over a ∈ {0.5, 1, 1.5} at 50, 55, 60% is 55.0 from 3 runs;
/// the a = 2 run is outside --a-values, vanilla has no a, and each other cell has its one run.
#[test]
fn average_over_a_makes_the_metric_by_loss_table() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cases = [
        ("e_sft_0.5", "a = 0.5", "sft", 100),
        ("e_sft_1", "a = 1.0", "sft", 110),
        ("e_sft_1.5", "a = 1.5", "sft", 120),
        ("e_sft_2", "a = 2.0", "sft", 200),
        ("acc_sft_1", "a = 1.0\nmetric = \"accuracy\"", "sft", 90),
        ("e_dpo_1", "a = 1.0", "dpo", 130),
        ("vanilla", "metric = \"uniform\"", "sft", 199),
    ];
    let mut args = vec!["report".to_string()];
    for (name, weight, loss, correct) in cases {
        make_run(&runs.join(name), weight, &[(92, 0), (correct, 0)]);
        let config = runs.join(name).join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        write(&config, &format!("{text}[train]\nloss = \"{loss}\"\n"));
        args.push(runs.join(name).to_str().unwrap().to_string());
    }
    let out = dir.path().join("report");
    let report = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_east"))
            .args(&args)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let status = report(&["--average-over", "a", "--a-values", "0.5,1,1.5"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in [
        "| metric | dpo | sft |",
        "| accuracy | – | 45.0 (1 runs, a ∈ {1}) |",
        "| entropy | 65.0 (1 runs, a ∈ {1}) | 55.0 (3 runs, a ∈ {0.5, 1, 1.5}) |",
    ] {
        assert!(md.contains(row), "missing `{row}` in:\n{md}");
    }
    // --a-values without --average-over would be ignored: refused
    let status = report(&["--a-values", "1"]);
    assert!(!status.status.success());
    // no run with an a in the list: an error, not an empty table
    let status = report(&["--average-over", "a", "--a-values", "7"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("--average-over a"));
}
