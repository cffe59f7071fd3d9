//! `east cluster` and `east weight` end to end through the binary, their error handling on bad
//! input, and properties of the weight mapping over random inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use serde_json::{json, Value};

use east::weight::{map_weights, Mapping};

fn east(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .expect("east runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Four questions: q1 has 2 of 4 correct (written two ways) with two distinct wrong answers, q2 all correct,
/// q3 all wrong, q4 one correct and three of the same wrong answer.
fn sample_lines() -> Vec<Value> {
    vec![
        json!({"id": "q1", "question": "1/2?", "answer": "0.5",
               "completions": ["so \\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{4}"],
               "finish": ["stop", "stop", "stop", "length"], "tokens": [5, 6, 7, 8]}),
        json!({"id": "q2", "question": "2+2?", "answer": "4",
               "completions": ["\\boxed{4}", "\\boxed{4}", "\\boxed{4}", "\\boxed{4}"]}),
        json!({"id": "q3", "question": "3+3?", "answer": "6",
               "completions": ["\\boxed{5}", "\\boxed{7}", "\\boxed{5}", "I do not know"]}),
        json!({"id": "q4", "question": "4+4?", "answer": "8",
               "completions": ["\\boxed{8}", "\\boxed{9}", "\\boxed{9}", "\\boxed{9}"]}),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    samples: PathBuf,
    clusters: PathBuf,
    train: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    write_lines(&samples, &sample_lines());
    let clusters = dir.path().join("clusters.jsonl");
    let train = dir.path().join("train.jsonl");
    Fixture {
        samples,
        clusters,
        train,
        _dir: dir,
    }
}

/// `east cluster` of the fixture's samples into its clusters file, which must succeed.
fn cluster(f: &Fixture) {
    let (ok, _, err) = east(&[
        "cluster",
        "--samples",
        p(&f.samples),
        "--out",
        p(&f.clusters),
    ]);
    assert!(ok, "{err}");
}

#[test]
fn cluster_then_weight_sft_matches_hand_computed_entropy_weights() {
    let f = fixture();
    cluster(&f);
    let clusters = read_lines(&f.clusters);
    assert_eq!(clusters.len(), 4);
    // q1: {0.5, \frac{1}{2}} | {3} | {4}: p = (1/2, 1/4, 1/4) → 1.5 bits
    assert!((clusters[0]["entropy"].as_f64().unwrap() - 1.5).abs() < 1e-12);
    assert_eq!(clusters[0]["accuracy"], json!(0.5));
    assert_eq!(clusters[0]["correct"], json!([true, true, false, false]));
    assert_eq!(clusters[1]["entropy"], json!(0.0));
    // q4: p = (1/4, 3/4): −(1/4·log2 1/4 + 3/4·log2 3/4)
    let h4 = -(0.25f64 * 0.25f64.log2() + 0.75 * 0.75f64.log2());
    assert!((clusters[3]["entropy"].as_f64().unwrap() - h4).abs() < 1e-12);
    assert_eq!(clusters[3]["dominant_wrong"], json!(0.75));

    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--loss",
        "sft",
        "--a",
        "1",
        "--out",
        p(&f.train),
    ]);
    assert!(ok, "{err}");
    let rows = read_lines(&f.train);
    // q2 (all correct) and q3 (all wrong) are dropped; q1 and q4 weigh h / mean(h).
    assert_eq!(
        rows.iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["q1", "q4"]
    );
    let mean = (1.5 + h4) / 2.0;
    assert!((rows[0]["weight"].as_f64().unwrap() - 1.5 / mean).abs() < 1e-12);
    assert!((rows[1]["weight"].as_f64().unwrap() - h4 / mean).abs() < 1e-12);
    assert_eq!(rows[0]["prompt"][0]["role"], "system");
    assert_eq!(
        rows[0]["prompt"][0]["content"],
        "Please reason step by step, and put your final answer within \\boxed{}."
    );
    assert_eq!(
        rows[0]["prompt"][1],
        json!({"role": "user", "content": "1/2?"})
    );
    let chosen = rows[0]["completion"][0]["content"].as_str().unwrap();
    assert!(
        chosen == "so \\boxed{0.5}" || chosen == "\\boxed{\\frac{1}{2}}",
        "{chosen}"
    );
    assert_eq!(rows[1]["completion"][0]["content"], "\\boxed{8}");

    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(f.train.with_file_name("train.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["kept"], 2);
    assert_eq!(
        summary["dropped"],
        json!({"all_correct": 1, "all_wrong": 1})
    );
    assert!((summary["weight_stats"]["mean"].as_f64().unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn dpo_and_kto_rows_follow_trl_conventions() {
    let f = fixture();
    cluster(&f);
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--loss",
        "dpo",
        "--out",
        p(&f.train),
    ]);
    assert!(ok, "{err}");
    let rows = read_lines(&f.train);
    assert_eq!(rows.len(), 2);
    // q4: the only wrong cluster is "9"; q1's wrong clusters tie at one completion each, so the
    // first seen ("3") is rejected.
    assert_eq!(rows[0]["rejected"][0]["content"], "\\boxed{3}");
    assert_eq!(
        rows[1]["chosen"][0],
        json!({"role": "assistant", "content": "\\boxed{8}"})
    );
    assert_eq!(rows[1]["rejected"][0]["content"], "\\boxed{9}");

    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--loss",
        "kto",
        "--metric",
        "uniform",
        "--out",
        p(&f.train),
    ]);
    assert!(ok, "{err}");
    let rows = read_lines(&f.train);
    // Uniform keeps q2 only for SFT: KTO needs an undesirable completion, q2 has none.
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter()
            .map(|r| r["label"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        vec![true, false, true, false]
    );
    assert!(rows.iter().all(|r| r["weight"] == json!(1.0)));
}

#[test]
fn string_clustering_separates_equal_values() {
    let f = fixture();
    assert!(
        east(&[
            "cluster",
            "--samples",
            p(&f.samples),
            "--out",
            p(&f.clusters),
            "--by",
            "string"
        ])
        .0
    );
    let clusters = read_lines(&f.clusters);
    // "0.5" and "\frac{1}{2}" are distinct strings: p = (1/4, 1/4, 1/4, 1/4) → 2 bits.
    assert!((clusters[0]["entropy"].as_f64().unwrap() - 2.0).abs() < 1e-12);
    assert_eq!(clusters[0]["accuracy"], json!(0.5));
}

#[test]
fn invalid_mapping_is_a_clear_error_and_writes_nothing() {
    let f = fixture();
    assert!(
        east(&[
            "cluster",
            "--samples",
            p(&f.samples),
            "--out",
            p(&f.clusters),
            "--by",
            "string"
        ])
        .0
    );
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--metric",
        "accuracy",
        "--a",
        "-1",
        "--set",
        "weight.keep_all_correct=true", // the all-correct q2 has accuracy metric 0
        "--set",
        "weight.questions=\"answered\"",
        "--out",
        p(&f.train),
    ]);
    assert!(!ok);
    assert!(
        err.contains("a = -1") && err.contains("metric value of 0") || err.contains("undefined"),
        "{err}"
    );
    assert!(!f.train.exists());
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--mapping",
        "linear",
        "--range",
        "100",
        "--out",
        p(&f.train),
    ]);
    assert!(!ok && err.contains("R must be"), "{err}");
    assert!(!f.train.exists());
}

fn cluster_error(lines: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("bad.jsonl");
    std::fs::write(&samples, lines).unwrap();
    let out = dir.path().join("clusters.jsonl");
    let (ok, _, err) = east(&["cluster", "--samples", p(&samples), "--out", p(&out)]);
    assert!(!ok, "bad input must fail");
    assert!(!out.exists(), "no output under the final name");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary output removed: {leftovers:?}"
    );
    err
}

#[test]
fn bad_samples_are_clear_errors_naming_file_line_and_field() {
    let good = r#"{"id":"a","question":"q","answer":"1","completions":["\\boxed{1}"]}"#;
    let err = cluster_error(&format!("{good}\n{{\"id\":\"b\",\"question\":\n"));
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("malformed JSON"),
        "{err}"
    );
    let err = cluster_error(&format!(
        "{good}\n{{\"id\":\"b\",\"question\":\"q\",\"completions\":[\"x\"]}}\n"
    ));
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("`answer`"),
        "{err}"
    );
    let err = cluster_error(&format!(
        "{good}\n{{\"id\":\"b\",\"question\":\"q\",\"answer\":\"1\",\"completions\":[]}}\n"
    ));
    assert!(
        err.contains("bad.jsonl:2:")
            && err.contains("`completions`")
            && err.contains("no completions"),
        "{err}"
    );
    let err = cluster_error(&format!("{good}\n{good}\n"));
    assert!(
        err.contains("bad.jsonl:2:") && err.contains("duplicate id `a`"),
        "{err}"
    );
    let err = cluster_error("");
    assert!(err.contains("bad.jsonl") && err.contains("empty"), "{err}");
    let err = cluster_error("{\"id\":\"a\",\"question\":\"q\",\"answer\":\"1\",\"completions\":[\"x\"],\"finish\":[\"stop\",\"stop\"]}\n");
    assert!(
        err.contains("bad.jsonl:1:") && err.contains("`finish`"),
        "{err}"
    );
    let err =
        cluster_error("{\"id\":\"a\",\"question\":\"q\",\"answer\":1,\"completions\":[\"x\"]}\n");
    assert!(
        err.contains("bad.jsonl:1:") && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn weight_rejects_mismatched_inputs() {
    let f = fixture();
    cluster(&f);
    // Samples lacking a question that clusters.jsonl has.
    let partial = f.samples.with_file_name("partial.jsonl");
    write_lines(&partial, &sample_lines()[..1]);
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&partial),
        "--out",
        p(&f.train),
    ]);
    assert!(
        !ok && err.contains("q4") && err.contains("missing"),
        "{err}"
    );
    assert!(!f.train.exists());
    // A duplicated cluster line.
    let text = std::fs::read_to_string(&f.clusters).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&f.clusters, format!("{text}{first}\n")).unwrap();
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--out",
        p(&f.train),
    ]);
    assert!(
        !ok && err.contains("clusters.jsonl:5:") && err.contains("duplicate id `q1`"),
        "{err}"
    );
}

fn weight_cmd(clusters: &Path, samples: &Path, out: &Path) -> (bool, String, String) {
    east(&[
        "weight",
        "--clusters",
        p(clusters),
        "--samples",
        p(samples),
        "--out",
        p(out),
    ])
}

/// A samples file resampled after clustering (same ids, same number of completions) would turn
/// wrong completions into "correct" training rows: weight refuses it, naming both files, with
/// the fingerprints `east cluster` writes and, for clusters files without them, by comparing the
/// completions' answers.
#[test]
fn weight_refuses_samples_the_clusters_were_not_made_from() {
    let f = fixture();
    cluster(&f);
    let clusters = read_lines(&f.clusters);
    assert!(clusters
        .iter()
        .all(|c| c["samples_sha256"].as_str().is_some_and(|h| h.len() == 64)));
    let mut other = sample_lines();
    other[3]["completions"][0] = json!("WRONG \\boxed{12345}");
    let resampled = f.samples.with_file_name("resampled.jsonl");
    write_lines(&resampled, &other);
    let (ok, _, err) = weight_cmd(&f.clusters, &resampled, &f.train);
    assert!(!ok, "{err}");
    assert!(
        err.contains("resampled.jsonl:4:")
            && err.contains("q4")
            && err.contains("clusters.jsonl")
            && err.contains("different sampling runs"),
        "{err}"
    );
    assert!(!f.train.exists());

    // A clusters file of an older east, without fingerprints: the completions are compared.
    let old: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().unwrap().remove("samples_sha256");
            c
        })
        .collect();
    let old_clusters = f.clusters.with_file_name("old_clusters.jsonl");
    write_lines(&old_clusters, &old);
    let (ok, _, err) = weight_cmd(&old_clusters, &resampled, &f.train);
    assert!(
        !ok && err.contains("q4") && err.contains("different sampling runs"),
        "{err}"
    );
    let (ok, _, err) = weight_cmd(&old_clusters, &f.samples, &f.train);
    assert!(ok, "{err}");
    let (ok, _, err) = weight_cmd(&f.clusters, &f.samples, &f.train);
    assert!(ok, "{err}");
}

/// Cluster statistics outside their range are input errors naming the line and field.
#[test]
fn cluster_statistics_outside_their_range_are_refused() {
    let f = fixture();
    cluster(&f);
    for (field, value) in [("accuracy", 7.0), ("dominant_wrong", 1.5), ("entropy", 2.5)] {
        let mut lines = read_lines(&f.clusters);
        lines[1][field] = json!(value);
        let bad = f.clusters.with_file_name("bad.jsonl");
        write_lines(&bad, &lines);
        let (ok, _, err) = weight_cmd(&bad, &f.samples, &f.train);
        assert!(
            !ok && err.contains("bad.jsonl:2:") && err.contains(&format!("`{field}`")),
            "{err}"
        );
    }
}

/// A JSONL file that starts with a UTF-8 byte-order mark (as some editors save it) reads.
#[test]
fn a_byte_order_mark_is_not_malformed_json() {
    let f = fixture();
    let text = std::fs::read_to_string(&f.samples).unwrap();
    std::fs::write(&f.samples, format!("\u{feff}{text}")).unwrap();
    cluster(&f);
    let (ok, _, err) = weight_cmd(&f.clusters, &f.samples, &f.train);
    assert!(ok, "{err}");
}

/// A second `east cluster` or `east weight` on an output another east process holds fails at
/// once, naming that process.
#[test]
fn a_second_writer_of_clusters_or_train_data_fails_at_once() {
    let f = fixture();
    let pid = format!("pid {}", std::process::id());
    let held = east::io::FileLock::output_file(&f.clusters).unwrap();
    let (ok, _, err) = east(&[
        "cluster",
        "--samples",
        p(&f.samples),
        "--out",
        p(&f.clusters),
    ]);
    assert!(
        !ok && err.contains("in use by another east process") && err.contains(&pid),
        "{err}"
    );
    assert!(!f.clusters.exists());
    drop(held);
    cluster(&f);
    let _held = east::io::FileLock::output_file(&f.train).unwrap();
    let (ok, _, err) = weight_cmd(&f.clusters, &f.samples, &f.train);
    assert!(!ok && err.contains(&pid), "{err}");
    assert!(!f.train.exists());
}

#[test]
fn config_file_and_set_drive_the_stage_flags() {
    let f = fixture();
    let config = f.samples.with_file_name("c.toml");
    std::fs::write(&config, "[cluster]\nby = \"string\"\n").unwrap();
    assert!(
        east(&[
            "cluster",
            "--samples",
            p(&f.samples),
            "--out",
            p(&f.clusters),
            "--config",
            p(&config)
        ])
        .0
    );
    assert!((read_lines(&f.clusters)[0]["entropy"].as_f64().unwrap() - 2.0).abs() < 1e-12);
    assert!(
        east(&[
            "cluster",
            "--samples",
            p(&f.samples),
            "--out",
            p(&f.clusters),
            "--config",
            p(&config),
            "--set",
            "cluster.by=\"equivalence\""
        ])
        .0
    );
    assert!((read_lines(&f.clusters)[0]["entropy"].as_f64().unwrap() - 1.5).abs() < 1e-12);
    std::fs::write(&config, "[cluster]\nbye = \"string\"\n").unwrap();
    let (ok, _, err) = east(&[
        "cluster",
        "--samples",
        p(&f.samples),
        "--out",
        p(&f.clusters),
        "--config",
        p(&config),
    ]);
    assert!(
        !ok && err.contains("c.toml") && err.contains("bye"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Weights are non-negative and average 1 over the kept questions, for every mapping.
    #[test]
    fn weights_are_non_negative_and_average_one(
        values in prop::collection::vec(0.01f64..7.0, 1..200),
        a in -3.0f64..3.0,
        range_frac in 0.01f64..1.0,
    ) {
        for mapping in [Mapping::Power, Mapping::Mean, Mapping::Linear] {
            let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            if mapping == Mapping::Linear && max - min < 1e-9 {
                continue;
            }
            let range = if mapping == Mapping::Linear { range_frac * (max - min) / (mean - min) } else { 1.0 };
            let w = map_weights(&values, mapping, a, range).unwrap();
            prop_assert_eq!(w.len(), values.len());
            prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "{:?}", w);
            let avg = w.iter().sum::<f64>() / w.len() as f64;
            prop_assert!((avg - 1.0).abs() < 1e-12, "mean {}", avg);
            // Monotone in the metric: increasing for a > 0 (and mean/linear), decreasing for a < 0.
            let sign = if mapping == Mapping::Power { a.signum() } else { 1.0 };
            for i in 0..values.len() {
                for j in 0..values.len() {
                    if values[i] < values[j] {
                        prop_assert!(sign * (w[j] - w[i]) >= -1e-9);
                    }
                }
            }
        }
    }
}

/// `(id, weight)` of each row of the train.jsonl that `east weight` writes for `sets`.
fn weigh(f: &Fixture, loss: &str, sets: &[&str]) -> Vec<(String, f64)> {
    let out = f.train.with_file_name(format!(
        "train_{loss}_{}.jsonl",
        sets.join("_").replace(['"', '.', '='], "")
    ));
    let mut args = vec![
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--loss",
        loss,
        "--out",
        p(&out),
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, _, err) = east(&args);
    assert!(ok, "{sets:?}: {err}");
    read_lines(&out)
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Table 1 compares methods trained on one round's data: vanilla (uniform), the accuracy and
/// rejection metrics, LW(P)/LW(W) (the uniform training set, weighted by the policy during
/// training) and EAST (entropy) must train on the same questions and differ only in weights,
/// as in the authors' code, which drops all-wrong and all-correct questions for every method.
/// Weights by hand from the fixture: q1 (2/4 correct, answers {½ ×2, 3, 4}): h = 1.5 bits,
/// 1 − acc = 0.5, dominant wrong 1/4; q4 (1/4 correct, wrong 9 ×3): h = h4, 1 − acc = 0.75,
/// dominant wrong 3/4. `power` with a = 1: value / mean.
#[test]
fn every_metric_trains_on_the_same_questions() {
    let f = fixture();
    cluster(&f);
    let h4 = -(0.25f64 * 0.25f64.log2() + 0.75 * 0.75f64.log2());
    let by_ratio = |a: f64, b: f64| vec![a / ((a + b) / 2.0), b / ((a + b) / 2.0)];
    let cases: [(&str, Vec<f64>); 4] = [
        ("weight.metric=\"entropy\"", by_ratio(1.5, h4)),
        ("weight.metric=\"accuracy\"", by_ratio(0.5, 0.75)),
        ("weight.metric=\"rejection\"", by_ratio(0.25, 0.75)),
        ("weight.metric=\"uniform\"", vec![1.0, 1.0]),
    ];
    for loss in ["sft", "dpo", "kto"] {
        for (set, want) in &cases {
            let mut rows = weigh(&f, loss, &[set]);
            // KTO writes a desirable and an undesirable row per question, of the same weight.
            rows.dedup();
            let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            assert_eq!(ids, ["q1", "q4"], "{loss} {set}");
            for ((_, got), want) in rows.iter().zip(want) {
                assert!((got - want).abs() < 1e-12, "{loss} {set}: {got} vs {want}");
            }
        }
    }
    // keep_all_correct: vanilla and accuracy keep q2 (accuracy weighs it 0); EAST still cannot
    // weigh it (entropy 0) and DPO has no wrong completion to pair it with.
    let keep = "weight.keep_all_correct=true";
    let answered = "weight.questions=\"answered\"";
    let ids = |rows: Vec<(String, f64)>| rows.into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(
        ids(weigh(
            &f,
            "sft",
            &["weight.metric=\"uniform\"", keep, answered]
        )),
        ["q1", "q2", "q4"]
    );
    let acc = weigh(&f, "sft", &["weight.metric=\"accuracy\"", keep, answered]);
    assert_eq!((acc[1].0.as_str(), acc[1].1), ("q2", 0.0));
    assert_eq!(
        ids(weigh(
            &f,
            "sft",
            &["weight.metric=\"entropy\"", keep, answered]
        )),
        ["q1", "q4"]
    );
    assert_eq!(
        ids(weigh(
            &f,
            "dpo",
            &["weight.metric=\"uniform\"", keep, answered]
        )),
        ["q1", "q4"]
    );
}

/// Every case the authors' `construct_pair_fn` (data_generation/util.py) distinguishes, one
/// question each: qa all correct, qb all wrong, qc correct only without a box, qd wrong only
/// without a box, qe the no-answer cluster as the largest wrong one (3 of 5), qf two boxed wrong
/// answers tied at one box each (9 seen first; 8 has a second, unboxed completion), qg the
/// boxed count deciding (3 has three completions but one box, 2 has two boxes).
fn question_set_lines() -> Vec<Value> {
    let q = |id: &str, answer: &str, completions: &[&str]| json!({"id": id, "question": format!("{id}?"), "answer": answer, "completions": completions});
    vec![
        q("qa", "2", &["\\boxed{2}", "\\boxed{2}", "\\boxed{2}"]),
        q("qb", "3", &["\\boxed{4}", "\\boxed{5}", "no idea"]),
        q("qc", "4", &["The answer is 4.", "\\boxed{5}", "\\boxed{5}"]),
        q(
            "qd",
            "5",
            &["\\boxed{5}", "The answer is 6.", "The answer is 7."],
        ),
        q(
            "qe",
            "6",
            &[
                "\\boxed{6}",
                "I am not sure.",
                "Let me think again.",
                "I give up.",
                "\\boxed{8}",
            ],
        ),
        q(
            "qf",
            "7",
            &[
                "\\boxed{7}",
                "\\boxed{9}",
                "\\boxed{8}",
                "The answer is 8.",
                "\\boxed{7}",
            ],
        ),
        q(
            "qg",
            "8",
            &[
                "\\boxed{8}",
                "The answer is 3.",
                "The answer is 3.",
                "\\boxed{3}",
                "\\boxed{2}",
                "\\boxed{2}",
            ],
        ),
    ]
}

/// The question-set fixture clustered; returns the fixture.
fn question_set_fixture() -> Fixture {
    let f = fixture();
    write_lines(&f.samples, &question_set_lines());
    cluster(&f);
    f
}

/// The rows `east weight` writes for `args` (after the files and `--out`), and its summary.
fn weigh_rows(f: &Fixture, name: &str, args: &[&str]) -> (Vec<Value>, Value) {
    let out = f.train.with_file_name(format!("{name}.jsonl"));
    let mut all = vec![
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--out",
        p(&out),
    ];
    all.extend(args);
    let (ok, _, err) = east(&all);
    assert!(ok, "{args:?}: {err}");
    let summary = std::fs::read_to_string(out.with_file_name(format!("{name}.summary.json")));
    (
        read_lines(&out),
        serde_json::from_str(&summary.unwrap()).unwrap(),
    )
}

fn ids(rows: &[Value]) -> Vec<&str> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.dedup(); // KTO writes two rows per question
    ids
}

fn text<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field][0]["content"].as_str().unwrap()
}

/// `weight.questions = "authors"` (the default) keeps exactly the questions the authors' code
/// makes a pair for, for every loss and every metric; SFT, DPO and KTO share the pair (SFT's
/// completion is DPO's chosen one); the rejected completion is of the most frequent *boxed* wrong
/// answer, and R (the rejection metric, the rows' `dominant_wrong`) is that answer's count / n.
#[test]
fn the_authors_question_set_is_the_same_for_every_loss_and_metric() {
    let f = question_set_fixture();
    let metrics = ["entropy", "accuracy", "rejection", "uniform"];
    let mut sets = Vec::new();
    for loss in ["sft", "dpo", "kto"] {
        for metric in metrics {
            let name = format!("{loss}_{metric}");
            let (rows, summary) = weigh_rows(&f, &name, &["--loss", loss, "--metric", metric]);
            assert_eq!(ids(&rows), ["qe", "qf", "qg"], "{name}");
            assert_eq!(
                summary["dropped"],
                json!({"all_correct": 1, "all_wrong": 1, "no_boxed_correct": 1, "no_boxed_wrong": 1}),
                "{name}"
            );
            sets.push((loss, metric, rows));
        }
    }
    let rows_of = |loss: &str, metric: &str| {
        &sets
            .iter()
            .find(|(l, m, _)| *l == loss && *m == metric)
            .unwrap()
            .2
    };
    let (sft, dpo, kto) = (
        rows_of("sft", "entropy"),
        rows_of("dpo", "entropy"),
        rows_of("kto", "entropy"),
    );
    // qe rejects its one boxed wrong answer, not the three unanswered completions; qf the tie's
    // first boxed answer (9), not 8 (two completions, one boxed); qg the answer with two boxes.
    let rejected: Vec<&str> = dpo.iter().map(|r| text(r, "rejected")).collect();
    assert_eq!(rejected, ["\\boxed{8}", "\\boxed{9}", "\\boxed{2}"]);
    for (i, row) in dpo.iter().enumerate() {
        assert_eq!(text(row, "chosen"), text(&sft[i], "completion"));
        assert_eq!(text(row, "chosen"), text(&kto[2 * i], "completion"));
        assert_eq!(text(row, "rejected"), text(&kto[2 * i + 1], "completion"));
    }
    let r = [1.0 / 5.0, 1.0 / 5.0, 2.0 / 6.0];
    let mean = r.iter().sum::<f64>() / 3.0;
    for (i, row) in rows_of("sft", "rejection").iter().enumerate() {
        assert!((row["dominant_wrong"].as_f64().unwrap() - r[i]).abs() < 1e-12);
        assert!((row["weight"].as_f64().unwrap() - r[i] / mean).abs() < 1e-12);
    }
}

/// `weight.questions = "answered"` is the looser rule: SFT keeps qd (its wrong answers have no
/// box); DPO keeps it only with `pairs = "random"`, which may reject an unboxed completion; the
/// rejection metric cannot weigh it (R = 0).
#[test]
fn the_answered_question_set_keeps_questions_without_a_boxed_wrong_answer() {
    let f = question_set_fixture();
    let answered = ["--questions", "answered"];
    let run = |name: &str, extra: &[&str]| {
        let args: Vec<&str> = answered.iter().chain(extra).copied().collect();
        weigh_rows(&f, name, &args)
    };
    let (sft, _) = run("sft", &["--loss", "sft"]);
    assert_eq!(ids(&sft), ["qd", "qe", "qf", "qg"]);
    let (dpo, summary) = run("dpo", &["--loss", "dpo"]);
    assert_eq!(ids(&dpo), ["qe", "qf", "qg"]);
    assert_eq!(summary["dropped"]["no_boxed_wrong"], 1);
    let (random, _) = run("random", &["--loss", "dpo", "--pairs", "random"]);
    assert_eq!(ids(&random), ["qd", "qe", "qf", "qg"]);
    let qd = text(&random[0], "rejected");
    assert!(qd == "The answer is 6." || qd == "The answer is 7.", "{qd}");
    let (rejection, summary) = run("rejection", &["--loss", "sft", "--metric", "rejection"]);
    assert_eq!(ids(&rejection), ["qe", "qf", "qg"]);
    assert_eq!(summary["dropped"]["zero_metric"], 1);
}

/// `--keep-all-correct` keeps qa for the metrics that can weigh it, and only with the question
/// set that allows it: with the authors' set it would be ignored, so it is an error.
#[test]
fn keep_all_correct_is_a_flag_that_needs_the_answered_set() {
    let f = question_set_fixture();
    let out = f.train.with_file_name("refused.jsonl");
    let (ok, _, err) = east(&[
        "weight",
        "--clusters",
        p(&f.clusters),
        "--samples",
        p(&f.samples),
        "--keep-all-correct",
        "--out",
        p(&out),
    ]);
    assert!(
        !ok && err.contains("weight.keep_all_correct") && err.contains("answered"),
        "{err}"
    );
    assert!(!out.exists());
    let (rows, _) = weigh_rows(
        &f,
        "kept",
        &[
            "--keep-all-correct",
            "--questions",
            "answered",
            "--metric",
            "uniform",
        ],
    );
    assert_eq!(ids(&rows), ["qa", "qd", "qe", "qf", "qg"]);
}

/// A round in which no question can train is an error naming the clusters file and the reasons,
/// as `east run` treats it; nothing is written.
#[test]
fn nothing_to_train_is_an_error_naming_the_clusters_file_and_why() {
    let f = fixture();
    write_lines(&f.samples, &question_set_lines()[..3]);
    cluster(&f);
    let (ok, _, err) = weight_cmd(&f.clusters, &f.samples, &f.train);
    assert!(!ok, "{err}");
    assert!(
        err.contains("clusters.jsonl")
            && err.contains("none of its 3 questions can train")
            && err.contains("1 all_wrong, 1 all_correct, 1 no_boxed_correct")
            && err.contains("weight.require_boxed"),
        "{err}"
    );
    assert!(!f.train.exists());
    assert!(!f.train.with_file_name("train.summary.json").exists());
}
