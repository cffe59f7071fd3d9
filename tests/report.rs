//! `east report` over run directories made by hand (so every number in the report is known in
//! advance): accuracies with Wilson intervals, paired comparisons with McNemar's test, pass@k
//! and maj@k, Figure 5's table, and the figures. The statistics themselves are checked against
//! statsmodels and scipy (`scripts/reference/report_stats_reference.py` →
//! `tests/fixtures/report_stats_reference.json`) and hand-computed edge cases.

use std::path::Path;
use std::process::{Command, Output};

use east::stats::{bootstrap_mean, ks, majority_correct, mcnemar_exact, pass_at_k, wilson, Z_975};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300) || (a - b).abs() <= 1e-15
}

// ---------------------------------------------------------------------------------------------
// The statistics against statsmodels / scipy, and by hand.

fn reference() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/report_stats_reference.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn wilson_intervals_match_statsmodels() {
    let r = reference();
    assert_eq!(r["z"].as_f64().unwrap(), Z_975);
    for case in r["wilson"].as_array().unwrap() {
        let (k, n) = (
            case["correct"].as_u64().unwrap(),
            case["n"].as_u64().unwrap(),
        );
        let got = wilson(k as usize, n as usize);
        for (mine, theirs) in [(got.low, &case["low"]), (got.high, &case["high"])] {
            let theirs = theirs.as_f64().unwrap();
            assert!(
                (mine - theirs).abs() < 1e-12,
                "wilson({k}, {n}): {got:?} vs {case}"
            );
        }
    }
}

#[test]
fn wilson_edge_cases_by_hand() {
    // 0 of n: the lower end is exactly 0 and the upper is z²/(n + z²).
    let z2 = Z_975 * Z_975;
    let i = wilson(0, 40);
    assert_eq!(i.low, 0.0);
    assert!((i.high - z2 / (40.0 + z2)).abs() < 1e-15);
    // n of n: the mirror image, with the upper end exactly 1.
    let i = wilson(40, 40);
    assert_eq!(i.high, 1.0);
    assert!((i.low - 40.0 / (40.0 + z2)).abs() < 1e-15);
    // Half of n: symmetric about ½.
    let i = wilson(20, 40);
    assert!((i.low + i.high - 1.0).abs() < 1e-15);
}

#[test]
fn mcnemar_p_values_match_scipy_binomtest() {
    for case in reference()["mcnemar"].as_array().unwrap() {
        let (b, c) = (case["b"].as_u64().unwrap(), case["c"].as_u64().unwrap());
        let (got, want) = (
            mcnemar_exact(b as usize, c as usize),
            case["p"].as_f64().unwrap(),
        );
        assert!(
            close(got, want, 1e-10),
            "mcnemar({b}, {c}) = {got}, scipy {want}"
        );
    }
}

#[test]
fn mcnemar_edge_cases_by_hand() {
    // No discordant pair: no evidence either way.
    assert_eq!(mcnemar_exact(0, 0), 1.0);
    // Equal split: p = 1.
    assert_eq!(mcnemar_exact(7, 7), 1.0);
    // One side only: both tails of Binomial(m, ½) at 0 and m, 2 · 2^-m.
    for m in [1usize, 5, 10, 60] {
        let want = (2.0 * 0.5f64.powi(m as i32)).min(1.0);
        assert!(close(mcnemar_exact(0, m), want, 1e-12), "m = {m}");
        assert_eq!(mcnemar_exact(0, m), mcnemar_exact(m, 0));
    }
    // b = 2, c = 9 by exact integers: 2 · (C(11,0) + C(11,1) + C(11,2)) / 2^11 = 134/2048.
    assert!(close(mcnemar_exact(2, 9), 134.0 / 2048.0, 1e-12));
}

#[test]
fn pass_at_k_matches_the_exact_binomial_ratio() {
    for case in reference()["pass_at_k"].as_array().unwrap() {
        let get = |f: &str| case[f].as_u64().unwrap() as usize;
        let got = pass_at_k(get("n"), get("c"), get("k"));
        let want = case["pass"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{case}: {got}");
    }
}

#[test]
fn pass_at_k_edge_cases_by_hand() {
    // k = n: 1 as soon as one sample is right, else 0.
    assert_eq!(pass_at_k(16, 0, 16), 0.0);
    assert_eq!(pass_at_k(16, 1, 16), 1.0);
    // k = 1: the share of right samples.
    assert!((pass_at_k(16, 3, 1) - 3.0 / 16.0).abs() < 1e-15);
    // n − c < k: every draw of k holds a right one.
    assert_eq!(pass_at_k(10, 9, 4), 1.0);
    // 1 − C(14, 4)/C(16, 4) = 1 − 1001/1820
    assert!((pass_at_k(16, 2, 4) - (1.0 - 1001.0 / 1820.0)).abs() < 1e-15);
}

#[test]
fn maj_at_k_follows_file_order_and_breaks_ties_by_first_appearance() {
    // Clusters: 0 = "5" (wrong), 1 = "7" (right), 2 = "9" (wrong); the third sample has no answer.
    let correct = [false, true, false];
    let votes = [
        Some(2),
        Some(1),
        None,
        Some(1),
        Some(2),
        Some(0),
        Some(0),
        Some(0),
    ];
    let maj = |k| majority_correct(&votes, &correct, k);
    assert!(!maj(1), "k = 1: the first sample's answer, 9");
    assert!(!maj(2), "9 and 7 tie: 9 came first");
    assert!(!maj(3), "no answer does not vote: still the tie of k = 2");
    assert!(maj(4), "7 twice, 9 once");
    assert!(!maj(5), "9 and 7 tie at two: 9 came first");
    assert!(!maj(8), "5 three times");
    // The same tie with the right answer first.
    assert!(majority_correct(
        &[Some(1), Some(2), Some(2), Some(1)],
        &correct,
        4
    ));
    // No answer at all is wrong.
    assert!(!majority_correct(&[None, None], &correct, 2));
    assert_eq!(ks(16), vec![1, 4, 16]);
}

#[test]
fn bootstrap_is_deterministic_for_a_seed() {
    let values: Vec<f64> = (0..300)
        .map(|i| f64::from(i % 7 == 0) - f64::from(i % 5 == 0))
        .collect();
    let a = bootstrap_mean(&values, 2000, 42);
    assert_eq!(a, bootstrap_mean(&values, 2000, 42));
    assert_ne!(a, bootstrap_mean(&values, 2000, 43));
}

#[test]
fn bootstrap_agrees_with_the_normal_interval_on_many_questions() {
    // 300 questions gained, 100 lost, 1600 unchanged: mean 0.1, variance 0.2 − 0.01.
    let values: Vec<f64> = (0..2000)
        .map(|i| match i {
            0..300 => 1.0,
            300..400 => -1.0,
            _ => 0.0,
        })
        .collect();
    let se = (0.19f64 / 2000.0).sqrt();
    let i = bootstrap_mean(&values, 10_000, 42);
    assert!((i.low - (0.1 - Z_975 * se)).abs() < 0.002, "{i:?}");
    assert!((i.high - (0.1 + Z_975 * se)).abs() < 0.002, "{i:?}");
}

#[test]
fn paired_bootstrap_covers_the_true_difference_95_percent_of_the_time() {
    // Per question (A right, B right) with P(1,1) = .4, P(1,0) = .1, P(0,1) = .2, P(0,0) = .3:
    // A is right 50% of the time, B 60%, so the true difference is 0.1.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let trials = 400;
    let covered = (0..trials)
        .filter(|_| {
            let deltas: Vec<f64> = (0..100)
                .map(|_| match rng.random::<f64>() {
                    u if u < 0.4 => 0.0,
                    u if u < 0.5 => -1.0,
                    u if u < 0.7 => 1.0,
                    _ => 0.0,
                })
                .collect();
            bootstrap_mean(&deltas, 1000, 42).contains(0.1)
        })
        .count();
    let coverage = covered as f64 / trials as f64;
    // ±2.5 standard errors of a 95% coverage over 400 trials.
    assert!((0.92..=0.975).contains(&coverage), "coverage {coverage}");
}

// ---------------------------------------------------------------------------------------------
// The report over hand-made runs.

/// An evaluation of questions `q0…` whose outcomes are `right`; `grading` as eval.json has it.
fn make_eval(dir: &Path, right: &[bool], grading: Option<&str>) {
    let correct = right.iter().filter(|&&r| r).count();
    let mut report = json!({
        "dataset": "gsm8k", "split": "test", "model": "m", "n": right.len(), "correct": correct,
        "accuracy": correct as f64 / right.len() as f64, "by_level": {}, "by_type": {}, "no_answer": 0, "truncated": 0,
        "settings": {"model": "m", "dataset": "gsm8k", "split": "test", "limit": null, "max_new_tokens": 16, "batch_size": 4},
        "seconds": 1.0, "generated_tokens": 10
    });
    if let Some(g) = grading {
        report["grading"] = json!(g);
    }
    write(&dir.join("eval.json"), &report.to_string());
    let lines: String = right
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let line = json!({"id": format!("q{i}"), "completion": "", "pred": null, "answer": "1",
                "correct": r, "finish": "stop", "tokens": 1});
            format!("{line}\n")
        })
        .collect();
    write(&dir.join("predictions.jsonl"), &lines);
}

/// Questions `lo..hi` of 200 right.
fn span(lo: usize, hi: usize) -> Vec<bool> {
    (0..200).map(|i| (lo..hi).contains(&i)).collect()
}

/// A finished run: config with `extra` settings, and one gsm8k evaluation per round.
fn make_run(dir: &Path, extra: &str, rounds: &[Vec<bool>]) {
    write(
        &dir.join("config.toml"),
        &format!("{extra}\n[run]\nrounds = {}\n", rounds.len() - 1),
    );
    for (t, right) in rounds.iter().enumerate() {
        make_eval(&dir.join(format!("round{t}/eval/gsm8k")), right, None);
    }
}

fn east(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Clustered questions of 4 samples each: right 2 ("1" twice), 0 (wrong answers only, no answer
/// the largest), 1 (wrong "2" twice first, then right).
fn clusters_jsonl() -> String {
    let q = |id: &str,
             preds: Value,
             correct: Value,
             clusters: Value,
             of: Value,
             h: f64,
             acc: f64,
             dw: f64| {
        json!({"id": id, "answer": "1", "preds": preds, "correct": correct, "clusters": clusters,
            "cluster_of": of, "entropy": h, "accuracy": acc, "dominant_wrong": dw})
        .to_string()
            + "\n"
    };
    [
        q("q0", json!(["1", "2", "3", "1"]), json!([true, false, false, true]),
            json!([{"answer": "1", "count": 2, "correct": true}, {"answer": "2", "count": 1, "correct": false}, {"answer": "3", "count": 1, "correct": false}]),
            json!([0, 1, 2, 0]), 1.5, 0.5, 0.25),
        q("q1", json!(["2", null, null, null]), json!([false, false, false, false]),
            json!([{"answer": "2", "count": 1, "correct": false}, {"answer": null, "count": 3, "correct": false}]),
            json!([0, 1, 1, 1]), 0.8112781244591328, 0.0, 0.75),
        q("q2", json!(["2", "2", "1", "3"]), json!([false, false, true, false]),
            json!([{"answer": "2", "count": 2, "correct": false}, {"answer": "1", "count": 1, "correct": true}, {"answer": "3", "count": 1, "correct": false}]),
            json!([0, 0, 1, 2]), 1.5, 0.25, 0.5),
    ]
    .concat()
}

/// runs/vanilla: 92 → 99 of 200, two questions lost and nine gained (McNemar p = 134/2048).
fn vanilla_run(runs: &Path) {
    make_run(
        &runs.join("vanilla"),
        "[weight]\nmetric = \"uniform\"",
        &[span(0, 92), span(2, 101)],
    );
}

#[test]
fn report_shows_intervals_paired_tests_and_sampled_figures() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    vanilla_run(&runs);
    // east: 92 → 102 → 104, only gains (p = 2 · 2^-10 in round 1).
    make_run(
        &runs.join("east"),
        "[weight]\na = 1.5",
        &[span(0, 92), span(0, 102), span(0, 104)],
    );
    // Round 2 graded by the Qwen preset.
    make_eval(
        &runs.join("east/round2/eval/gsm8k"),
        &span(0, 104),
        Some("qwen"),
    );
    write(&runs.join("east/round1/clusters.jsonl"), &clusters_jsonl());
    let rows: String = [("q0", 0.5), ("q0", 0.5), ("q2", 1.5)]
        .iter()
        .map(|(id, w)| format!("{}\n", json!({"id": id, "prompt": [], "completion": [], "weight": w, "entropy": 1.0, "accuracy": 0.5, "dominant_wrong": 0.5})))
        .collect();
    write(&runs.join("east/round1/train.jsonl"), &rows);

    let out = dir.path().join("report");
    ok(&east(&[
        "report",
        s(&runs.join("vanilla")),
        s(&runs.join("east")),
        "--out",
        s(&out),
    ]));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in [
        "| run | setting | round | grading | gsm8k |",
        // statsmodels: wilson(92, 200) = [0.39233, 0.52918]; wilson(99, 200) = [0.42646, 0.56373]
        "| vanilla | base model | 0 | exact | 46.0 [39.2, 52.9] (92/200) |",
        "| vanilla | sft · vanilla | 1 | exact | 49.5 [42.6, 56.4] (99/200) |",
        "| east | sft · entropy · power a=1.5 | 2 | qwen | 52.0 [45.1, 58.8] (104/200) |",
        "| gsm8k | vanilla round 0 | vanilla round 1 | 200 | 46.0 [39.2, 52.9] | 49.5 [42.6, 56.4] | +3.5 |",
        "| 2 / 9 | 0.065 | not significant at 0.05 |",
        "| 0 / 10 | 0.002 | significant at 0.05 |",
        "vanilla round 1 against vanilla round 0, +3.5 points on 200 questions, is not significant at 0.05",
        "east round 0 was graded `exact` and east round 2 `qwen`",
    ] {
        assert!(md.contains(row), "missing `{row}` in\n{md}");
    }

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let vanilla = &summary["runs"][0];
    assert_eq!(vanilla["accuracy"][0]["n"], 200);
    assert!(
        (vanilla["accuracy"][0]["ci95"]["low"].as_f64().unwrap() - 0.39233051799971463).abs()
            < 1e-12
    );
    let c = &vanilla["vs_round_0"][0];
    assert_eq!(
        (c["a_only"].as_u64(), c["b_only"].as_u64()),
        (Some(2), Some(9))
    );
    assert!(close(
        c["mcnemar_p"].as_f64().unwrap(),
        134.0 / 2048.0,
        1e-12
    ));
    assert!((c["difference"].as_f64().unwrap() - 0.035).abs() < 1e-12);
    assert_eq!(c["significant"], false);
    let (low, high) = (
        c["ci95"]["low"].as_f64().unwrap(),
        c["ci95"]["high"].as_f64().unwrap(),
    );
    assert!(low < 0.035 && 0.035 < high, "{c}");
    // The normal interval of the mean change is 0.035 ± 1.96 · 0.0164, (0.0029, 0.0671): it
    // leaves out 0, and so does the bootstrap, while the exact test does not reject. The
    // report says so.
    assert!(low > 0.0, "{c}");
    assert!(md.contains("- gsm8k: the bootstrap interval of vanilla round 1 against vanilla round 0 leaves out 0 while the exact test is not significant"), "{md}");
    assert_eq!(summary["bootstrap"]["seed"], 42);

    // pass@k: q0 2 of 4 right, q1 none, q2 1 of 4. pass@1 = (1/2 + 0 + 1/4)/3; pass@4 = 2/3.
    // maj@1: q0's first answer is right, q1's and q2's wrong; maj@4: q0 (1 twice), q1 (2 once:
    // no answer does not vote) wrong, q2 (2 twice) wrong.
    let sampled = &summary["runs"][1]["sampled"][0];
    assert_eq!(sampled["questions"], 3);
    let pass: Vec<(u64, f64)> = sampled["pass_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["k"].as_u64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(pass.len(), 2);
    assert_eq!(pass[0].0, 1);
    assert!(
        (pass[0].1 - 0.25).abs() < 1e-15 && (pass[1].1 - 2.0 / 3.0).abs() < 1e-15,
        "{pass:?}"
    );
    let maj: Vec<u64> = sampled["maj_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["correct"].as_u64().unwrap())
        .collect();
    assert_eq!(maj, vec![1, 1]);
    assert!(md.contains("| 1 | gsm8k train | 3 | 4 | 66.7 ["), "{md}");

    // Figures: error bars on every accuracy, whole-number round ticks, Figure 5's axes.
    let per_round = std::fs::read_to_string(out.join("accuracy_per_round.svg")).unwrap();
    assert_eq!(per_round.matches("class=\"error-bar\"").count(), 2 + 3);
    assert!(per_round.contains(">2</text>") && !per_round.contains(">0.5</text>"));
    let scatter = std::fs::read_to_string(out.join("entropy_east.svg")).unwrap();
    assert!(
        scatter.contains(">H(x): answer entropy (bits)<")
            && scatter.contains(">1 − A(x): share of wrong samples<")
    );
    assert!(scatter.contains(">2 trained on<") && scatter.contains(">1 not in train.jsonl<"));
    // q1 is a ring (not trained on), coloured by R = 0.75: rgb(190,60,85).
    assert_eq!(
        scatter.matches("stroke=\"rgb(190,60,85)\"").count(),
        1,
        "{scatter}"
    );
    let weights = std::fs::read_to_string(out.join("weights_east.svg")).unwrap();
    assert!(weights.contains(">2 questions<"));
}

#[test]
fn compare_pairs_two_runs_and_refuses_different_question_sets() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    vanilla_run(&runs);
    make_run(
        &runs.join("east"),
        "[weight]\na = 1.5",
        &[span(0, 92), span(0, 110)],
    );
    let out = dir.path().join("cmp");
    let (a, b) = (runs.join("vanilla"), runs.join("east"));
    ok(&east(&[
        "report",
        "--compare",
        s(&a),
        s(&b),
        "--out",
        s(&out),
    ]));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    // Round 1: east right on 0..110, vanilla on 2..101: only vanilla none, only east 2 + 9.
    assert!(md.contains("## Run against run"), "{md}");
    assert!(md.contains("| gsm8k | vanilla round 1 | east round 1 | 200 | 49.5 [42.6, 56.4] | 55.0 [48.1, 61.7] | +5.5 |"), "{md}");
    assert!(
        md.contains("| 0 / 11 | 9.8e-4 | significant at 0.05 |"),
        "{md}"
    );
    // Round 0 is the same base model on both sides: not compared with itself.
    assert!(!md.contains("| vanilla round 0 | east round 0 |"), "{md}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["comparisons"].as_array().unwrap().len(), 1);
    assert!(close(
        summary["comparisons"][0]["mcnemar_p"].as_f64().unwrap(),
        2.0 / 2048.0,
        1e-12
    ));

    // The other run evaluated 150 questions only: an error naming both predictions files.
    make_eval(&b.join("round0/eval/gsm8k"), &span(0, 92)[..150], None);
    make_eval(&b.join("round1/eval/gsm8k"), &span(0, 110)[..150], None);
    let failed = east(&["report", "--compare", s(&a), s(&b), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(err.contains("evaluate different questions"), "{err}");
    for side in [&a, &b] {
        let file = side.join("round1/eval/gsm8k/predictions.jsonl");
        assert!(err.contains(s(&file)), "{err}");
    }
    // predictions.jsonl that disagrees with its eval.json is refused too.
    make_eval(&b.join("round1/eval/gsm8k"), &span(0, 110), None);
    let one = json!({"id": "q0", "completion": "", "pred": "1", "answer": "1", "correct": true, "finish": "stop", "tokens": 1});
    write(
        &b.join("round1/eval/gsm8k/predictions.jsonl"),
        &format!("{one}\n"),
    );
    let failed = east(&["report", s(&b), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && err.contains("not from the same evaluation"),
        "{err}"
    );
}

#[test]
fn report_refuses_a_folder_that_is_not_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = east(&["report", s(dir.path())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an east run directory"));
}

#[test]
fn an_unwritable_report_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs/a1");
    make_run(&run, "[weight]\na = 1.0", &[span(0, 92), span(0, 100)]);
    // A folder under a regular file cannot be created, even by root.
    let file = dir.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let target = file.join("report");
    let out = east(&["report", s(&run), "--out", s(&target)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(s(&target)), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

/// Figure 5's table: entropy·SFT over a ∈ {0.5, 1, 1.5} at 50, 55, 60% is 55.0 from 3 runs;
/// the a = 2 run is outside --a-values, vanilla has no a, each other cell has its one run, and
/// SFT runs at another learning rate or model are rows of their own, not pooled.
#[test]
fn average_over_a_makes_the_metric_by_loss_table() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cases = [
        ("e_sft_0.5", "[weight]\na = 0.5", "loss = \"sft\"", 100),
        ("e_sft_1", "[weight]\na = 1.0", "loss = \"sft\"", 110),
        ("e_sft_1.5", "[weight]\na = 1.5", "loss = \"sft\"", 120),
        ("e_sft_2", "[weight]\na = 2.0", "loss = \"sft\"", 200),
        (
            "acc_sft_1",
            "[weight]\na = 1.0\nmetric = \"accuracy\"",
            "loss = \"sft\"",
            90,
        ),
        ("e_dpo_1", "[weight]\na = 1.0", "loss = \"dpo\"", 130),
        (
            "vanilla",
            "[weight]\nmetric = \"uniform\"",
            "loss = \"sft\"",
            199,
        ),
        (
            "e_sft_lr",
            "[weight]\na = 1.0",
            "loss = \"sft\"\nlr = 1e-5",
            150,
        ),
        (
            "e_sft_model",
            "[model]\npath = \"other\"\n[weight]\na = 1.5",
            "loss = \"sft\"",
            160,
        ),
    ];
    let mut args = vec!["report".to_string()];
    for (name, sections, train, correct) in cases {
        let extra = format!("{sections}\n[train]\n{train}");
        make_run(&runs.join(name), &extra, &[span(0, 92), span(0, correct)]);
        args.push(s(&runs.join(name)).to_string());
    }
    let out = dir.path().join("report");
    let report = |extra: &[&str]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--out", s(&out)]);
        all.extend(extra);
        east(&all)
    };
    ok(&report(&["--average-over", "a", "--a-values", "0.5,1,1.5"]));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let default_model = "model.path=HuggingFaceTB/SmolLM2-135M-Instruct";
    for row in [
        "| metric | dpo | sft |".to_string(),
        // One run: Wilson's interval of 130/200 and 90/200.
        "| entropy | 65.0 [58.2, 71.3] (1 run, a ∈ {1}, 200 questions) | – |".to_string(),
        format!("| accuracy · {default_model} · train.lr=2e-6 | – | 45.0 [38.3, 51.9] (1 run, a ∈ {{1}}, 200 questions) |"),
        format!("| entropy · {default_model} · train.lr=1e-5 | – | 75.0 [68.6, 80.5] (1 run, a ∈ {{1}}, 200 questions) |"),
        "| entropy · model.path=other · train.lr=2e-6 | – | 80.0 [".to_string(),
    ] {
        assert!(md.contains(&row), "missing `{row}` in:\n{md}");
    }
    // The three runs at the default model and lr: 55.0, with a bootstrap interval over questions
    // of each question's share of runs right (1 for 0..100, 2/3 to 110, 1/3 to 120).
    let pooled = format!("| entropy · {default_model} · train.lr=2e-6 | – | 55.0 [");
    let line = md
        .lines()
        .find(|l| l.starts_with(&pooled))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        line.ends_with("(3 runs, a ∈ {0.5, 1, 1.5}, 200 questions) |"),
        "{line}"
    );
    // --a-values without --average-over would be ignored: refused
    assert!(!report(&["--a-values", "1"]).status.success());
    // no run with an a in the list: an error, not an empty table
    let status = report(&["--average-over", "a", "--a-values", "7"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("--average-over a"));
}

/// Runs of the same folder name are told apart by their parents; a run without predictions.jsonl
/// still reports its accuracies and says why its comparison is missing; an eval.json whose
/// counts cannot be is an error naming the file and the field.
#[test]
fn same_names_missing_predictions_and_impossible_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("x/demo"), dir.path().join("y/demo"));
    make_run(&a, "", &[span(0, 92), span(0, 100)]);
    make_run(&b, "[model]\npath = \"other\"", &[span(0, 50), span(0, 60)]);
    std::fs::remove_file(b.join("round1/eval/gsm8k/predictions.jsonl")).unwrap();
    let out = dir.path().join("report");
    ok(&east(&[
        "report",
        "--compare",
        s(&a),
        s(&b),
        "--out",
        s(&out),
    ]));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for line in [
        "| x/demo | base model | 0 | exact | 46.0 [39.2, 52.9] (92/200) |",
        "| y/demo | base model | 0 | exact | 25.0 [19.5, 31.4] (50/200) |",
        // Different base models: round 0 is compared too.
        "| gsm8k | x/demo round 0 | y/demo round 0 | 200 |",
    ] {
        assert!(md.contains(line), "missing `{line}` in\n{md}");
    }
    let missing = format!(
        "- {} has no predictions.jsonl",
        b.join("round1/eval/gsm8k").display()
    );
    assert!(md.contains(&missing), "{md}");
    assert!(!md.contains("| y/demo round 0 | y/demo round 1 |"), "{md}");

    write(
        &b.join("round1/eval/gsm8k/eval.json"),
        &json!({"n": 10, "correct": 11}).to_string(),
    );
    let failed = east(&["report", s(&b), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    let file = b.join("round1/eval/gsm8k/eval.json");
    assert!(
        err.contains(s(&file)) && err.contains("`n`") && err.contains("correct = 11 of n = 10"),
        "{err}"
    );
}
