//! `east sample`, `east merge` and `east eval` on a tiny random model the tests write
//! themselves: determinism, crash/resume, sharding, and the batched KV-cached decoder checked
//! against a plain full-sequence forward.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use east::data::Question;
use east::decode::{generate_group, DecodeSettings, Request, SamplerPlacement, Sampling};
use east::model::testing::write_tiny_model;

fn tiny_model(dir: &Path) -> PathBuf {
    tiny_model_seeded(dir, 7)
}

fn tiny_model_seeded(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join("tiny");
    write_tiny_model(&path, seed).unwrap();
    path
}

/// One request per question (ids q0, q1, …) with the EAST chat prompt and `samples` samples.
fn chat_requests(
    lm: &east::model::LoadedModel,
    questions: &[&str],
    samples: usize,
) -> Vec<Request> {
    questions
        .iter()
        .enumerate()
        .map(|(i, q)| Request {
            prompt_ids: lm.east_prompt_ids(q).unwrap(),
            id: format!("q{i}"),
            first_sample: 0,
            samples,
        })
        .collect()
}

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

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sample_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "sample",
        "--model",
        model,
        "--dataset",
        "gsm8k",
        "--limit",
        "12",
        "--n",
        "3",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "24",
        "--batch-rows",
        "6",
        "--seed",
        "5",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn sampling_is_deterministic_and_follows_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (a, b, c) = (
        dir.path().join("a.jsonl"),
        dir.path().join("b.jsonl"),
        dir.path().join("c.jsonl"),
    );
    let m = model.to_str().unwrap();
    let (ok, log) = east(&sample_args(m, a.to_str().unwrap(), &[]));
    assert!(ok, "{log}");
    assert!(east(&sample_args(m, b.to_str().unwrap(), &[])).0);
    assert!(east(&sample_args(m, c.to_str().unwrap(), &["--seed", "6"])).0);
    let (la, lb, lc) = (lines(&a), lines(&b), lines(&c));
    assert_eq!(la.len(), 12);
    assert_eq!(la, lb, "same seed, same samples");
    assert_ne!(la, lc, "another seed, other samples");
    for (i, r) in la.iter().enumerate() {
        assert_eq!(r["id"], format!("gsm8k/train/{i}"));
        assert_eq!(r["index"], i);
        let completions = r["completions"].as_array().unwrap();
        assert_eq!(completions.len(), 3);
        let tokens = r["tokens"].as_array().unwrap();
        let finish = r["finish"].as_array().unwrap();
        for (t, f) in tokens.iter().zip(finish) {
            let t = t.as_u64().unwrap();
            assert!(t <= 24);
            assert_eq!(
                f == "length",
                t == 24,
                "length finish iff the budget is used up: {r}"
            );
        }
    }
    // Three samples of one question are distinct streams.
    assert!(la
        .iter()
        .any(|r| r["completions"][0] != r["completions"][1]));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a.meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["complete"], true);
}

#[test]
fn a_killed_run_resumes_to_the_same_file_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let full = dir.path().join("full.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "sample",
            "--model",
            m,
            "--dataset",
            "gsm8k",
            "--limit",
            "40",
            "--n",
            "4",
            "--max-new-tokens",
            "48",
            "--batch-rows",
            "8",
            "--seed",
            "1",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    assert!(Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args(&full))
        .status()
        .unwrap()
        .success());

    let killed = dir.path().join("killed.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(&killed)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 3 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    let partial = lines(&killed).len();
    assert!(
        partial < 40,
        "the run was killed before finishing ({partial} lines)"
    );
    // A write cut mid-line by the kill.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&killed)
        .unwrap()
        .write_all(b"{\"id\":\"gsm8k/train/9")
        .unwrap();

    let (ok, log) = east(&args(&killed).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read(&killed).unwrap(),
        std::fs::read(&full).unwrap(),
        "resumed file equals the uninterrupted one"
    );
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("s.jsonl");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    assert!(east(&sample_args(m, o, &["--limit", "2"])).0);
    let (ok, log) = east(&sample_args(
        m,
        o,
        &["--limit", "2", "--temperature", "0.5"],
    ));
    assert!(!ok && log.contains("other settings"), "{log}");
}

#[test]
fn shards_merge_into_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let whole = dir.path().join("whole.jsonl");
    assert!(east(&sample_args(m, whole.to_str().unwrap(), &[])).0);
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("shard{i}.jsonl")))
        .collect();
    for (i, s) in shards.iter().enumerate() {
        let spec = format!("{i}/3");
        let (ok, log) = east(&sample_args(m, s.to_str().unwrap(), &["--shard", &spec]));
        assert!(ok, "{log}");
    }
    let sizes: Vec<usize> = shards.iter().map(|s| lines(s).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 12);
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
    let merged = dir.path().join("merged.jsonl");
    let mut args = vec!["merge", "--out", merged.to_str().unwrap()];
    args.extend(shards.iter().map(|s| s.to_str().unwrap()));
    let (ok, log) = east(&args);
    assert!(ok, "{log}");
    assert_eq!(lines(&merged), lines(&whole));
    // A missing shard is an error, not a silently shorter file.
    let merged2 = dir.path().join("merged2.jsonl");
    let (ok, log) = east(&[
        "merge",
        "--out",
        merged2.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[2].to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("missing"), "{log}");
    assert!(!merged2.exists());
}

/// Greedy decoding by the batched, left-padded, KV-cached decoder equals re-running the whole
/// sequence through the cache-free forward at every step.
#[test]
fn batched_greedy_decoding_matches_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let lm = east::model::load(model.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let questions = [
        "What is 2+2?",
        "A much longer question about apples and oranges, with more tokens in it?",
        "x",
    ];
    let requests = chat_requests(&lm, &questions, 1);
    let settings = DecodeSettings {
        sampling: Sampling::GREEDY,
        max_new_tokens: 12,
        seed: 0,
        stop: vec![],
        sampler: SamplerPlacement::Auto,
        kv_dtype: None,
        cpu_shards: None,
    };
    let (gens, _) = generate_group(&lm, &requests, &settings, |_| {}).unwrap();
    for (r, g) in requests.iter().zip(&gens) {
        let mut ids = r.prompt_ids.clone();
        let mut expected = Vec::new();
        for _ in 0..12 {
            let input = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let hidden = lm.model.forward_hidden(&input, None).unwrap();
            let last = hidden.narrow(1, ids.len() - 1, 1).unwrap();
            let logits: Vec<f32> = lm
                .model
                .logits(&last)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let next = east::decode::logits::argmax(&logits);
            if lm.eos_ids.contains(&next) {
                break;
            }
            expected.push(next);
            ids.push(next);
        }
        assert_eq!(g[0].token_ids, expected, "request {}", r.id);
    }
}

/// The device sampler (reducing logits before they reach the host) is what a GPU runs; on the
/// CPU it can be forced, and must give the host sampler's samples, greedy and sampled alike.
#[test]
fn the_device_sampler_decodes_like_the_host_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let lm = east::model::load(model.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let requests = chat_requests(
        &lm,
        &[
            "What is 2+2?",
            "Tom has 3 apples and buys 4 more. How many?",
        ],
        6,
    );
    for sampling in [
        Sampling {
            temperature: 0.9,
            top_p: 1.0,
        },
        Sampling::GREEDY,
    ] {
        let run = |sampler| {
            let settings = DecodeSettings {
                sampling,
                max_new_tokens: 24,
                seed: 5,
                stop: vec![],
                sampler,
                kv_dtype: None,
                cpu_shards: None,
            };
            generate_group(&lm, &requests, &settings, |_| {}).unwrap().0
        };
        let host = run(SamplerPlacement::Host);
        let device = run(SamplerPlacement::Device);
        assert_eq!(host, device, "{sampling:?}");
        if !sampling.is_greedy() {
            let distinct: std::collections::HashSet<&Vec<u32>> =
                host[1].iter().map(|g| &g.token_ids).collect();
            assert!(
                distinct.len() > 1,
                "temperature 0.9 gave six identical samples"
            );
        }
    }
}

#[test]
fn eval_grades_greedy_predictions_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 2's greedy text for these questions contains digits, so predictions exist.
    let model = tiny_model_seeded(dir.path(), 2);
    // A custom dataset whose reference answers make some predictions right: the tiny model
    // writes arbitrary text, so a second evaluation takes its references from the first one's
    // extracted answers (except for q3, which keeps a reference nothing matches).
    let data = dir.path().join("q.jsonl");
    let qs: Vec<Question> = ["one", "two", "three", "four"]
        .iter()
        .enumerate()
        .map(|(i, q)| Question {
            id: format!("q{i}"),
            question: format!("Question {q}?"),
            answer: "12345".into(),
            level: Some(format!("Level {}", i % 2 + 1)),
            subject: None,
        })
        .collect();
    let write = |qs: &[Question]| {
        let text: String = qs.iter().map(|q| format!("{}\n", serde_json::json!({"id": q.id, "question": q.question, "answer": q.answer, "level": q.level}))).collect();
        std::fs::write(&data, text).unwrap();
    };
    write(&qs);
    let m = model.to_str().unwrap();
    let first = dir.path().join("first");
    let base = [
        "eval",
        "--model",
        m,
        "--dataset",
        data.to_str().unwrap(),
        "--max-new-tokens",
        "16",
        "--batch-size",
        "3",
        "--set",
        "data.fields.id=\"id\"",
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--out", first.to_str().unwrap()]);
    let (ok, log) = east(&args);
    assert!(ok, "{log}");
    let preds = lines(&first.join("predictions.jsonl"));
    assert_eq!(preds.len(), 4);

    // References: the extracted prediction where there is one (so it must grade correct),
    // except for q3, which keeps "12345".
    let pred_of: std::collections::HashMap<String, Option<String>> = preds
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["pred"].as_str().map(String::from),
            )
        })
        .collect();
    let mut expected_correct = 0;
    let qs2: Vec<Question> = qs
        .iter()
        .map(|q| {
            let mut q = q.clone();
            if let (true, Some(Some(pred))) = (q.id != "q3", pred_of.get(&q.id)) {
                q.answer = pred.clone();
                expected_correct += 1;
            }
            q
        })
        .collect();
    assert!(
        expected_correct >= 1,
        "the tiny model's greedy text should contain a number: {preds:?}"
    );
    write(&qs2);
    let second = dir.path().join("second");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--out", second.to_str().unwrap()]);
    assert!(east(&args).0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["n"], 4);
    assert_eq!(report["correct"], expected_correct);
    assert_eq!(
        report["accuracy"].as_f64().unwrap(),
        expected_correct as f64 / 4.0
    );
    let levels = report["by_level"].as_object().unwrap();
    assert_eq!(
        levels["Level 1"]["n"].as_u64().unwrap() + levels["Level 2"]["n"].as_u64().unwrap(),
        4
    );

    // Delete the report and one prediction: a rerun redoes only what is missing and agrees.
    let preds_path = second.join("predictions.jsonl");
    let text = std::fs::read_to_string(&preds_path).unwrap();
    // (the last one: its batch is the only one redone, so the rerun alone generates few tokens)
    let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&preds_path, kept).unwrap();
    std::fs::remove_file(second.join("eval.json")).unwrap();
    assert!(east(&args).0);
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("eval.json")).unwrap()).unwrap();
    assert_eq!(again["correct"], report["correct"]);
    // Tokens and seconds cover every prediction, not only the last attempt's.
    let tokens: u64 = lines(&preds_path)
        .iter()
        .map(|p| p["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(again["generated_tokens"], tokens);
    assert_eq!(again["generated_tokens"], report["generated_tokens"]);
    assert!(again["seconds"].as_f64().unwrap() >= report["seconds"].as_f64().unwrap());
    let mut a = lines(&preds_path);
    let mut b: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    a.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    b.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert_eq!(a, b);
}

/// `eval.grade` (`--grade`) decides how predictions are graded, is written into eval.json as
/// `grading`, and is part of what an evaluation folder resumes with: references 100 times the
/// tiny model's numeric predictions are right under `qwen` (the toolkit's percent rule) and
/// wrong under `exact`, and a folder graded one way refuses the other.
#[test]
fn eval_grades_with_the_grading_asked_for_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_seeded(dir.path(), 2);
    let data = dir.path().join("q.jsonl");
    let write = |answers: &[String]| {
        let text: String = answers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}\n", serde_json::json!({"id": format!("q{i}"), "question": format!("Question {i}?"), "answer": a})))
            .collect();
        std::fs::write(&data, text).unwrap();
    };
    write(&vec!["12345".to_string(); 4]);
    let run = |out: &Path, grade: &str| {
        let args = [
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--dataset",
            data.to_str().unwrap(),
            "--max-new-tokens",
            "16",
            "--set",
            "data.fields.id=\"id\"",
            "--grade",
            grade,
            "--out",
            out.to_str().unwrap(),
        ];
        east(&args)
    };
    let probe = dir.path().join("probe");
    assert!(run(&probe, "exact").0);
    // References 100 × each nonzero number the model predicted; the others stay unmatched.
    let answers: Vec<String> = lines(&probe.join("predictions.jsonl"))
        .iter()
        .map(
            |p| match p["pred"].as_str().and_then(|x| x.parse::<i64>().ok()) {
                Some(v) if v != 0 && v.abs() < 1_000_000 => (v * 100).to_string(),
                _ => "12345".to_string(),
            },
        )
        .collect();
    let percent = answers.iter().filter(|a| *a != "12345").count();
    assert!(
        percent >= 1,
        "the tiny model's greedy text should hold a number"
    );
    write(&answers);
    let report = |out: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap()
    };
    let (qwen, exact) = (dir.path().join("qwen"), dir.path().join("exact"));
    assert!(run(&qwen, "qwen").0);
    assert!(run(&exact, "exact").0);
    assert_eq!(report(&qwen)["grading"], "qwen");
    assert_eq!(report(&qwen)["correct"], percent);
    assert_eq!(report(&exact)["grading"], "exact");
    assert_eq!(report(&exact)["correct"], 0);
    let (ok, log) = run(&qwen, "exact");
    assert!(
        !ok && log.contains("predictions made with other settings"),
        "{log}"
    );
    // A grading east does not know is an error naming the key and the choices.
    let bad = dir.path().join("bad");
    let (ok, log) = east(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--set",
        "eval.grade={ approximate = 2.0 }",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && log.contains("eval.grade") && log.contains("approximate"),
        "{log}"
    );
}

/// `east merge` needs every shard 0..N−1 exactly once: the last shard left out (which the check
/// for holes in the question indexes cannot see) or a shard given twice is an error, and nothing
/// is written.
#[test]
fn merge_requires_every_shard_of_the_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("shard{i}.jsonl")))
        .collect();
    for (i, s) in shards.iter().enumerate() {
        let spec = format!("{i}/3");
        let (ok, log) = east(&sample_args(m, s.to_str().unwrap(), &["--shard", &spec]));
        assert!(ok, "{log}");
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("shard{i}.meta.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["shard"], serde_json::json!({"index": i, "count": 3}));
        assert_eq!(
            (meta["total"].as_u64(), meta["complete"].as_bool()),
            (Some(12), Some(true))
        );
    }
    let out = dir.path().join("merged.jsonl");
    let merge = |inputs: &[&PathBuf]| {
        let mut args = vec!["merge", "--out", out.to_str().unwrap()];
        args.extend(inputs.iter().map(|s| s.to_str().unwrap()));
        east(&args)
    };
    let (ok, log) = merge(&[&shards[0], &shards[1]]);
    assert!(!ok && log.contains("shard 2/3 missing"), "{log}");
    assert!(!out.exists());
    let (ok, log) = merge(&[&shards[0], &shards[1], &shards[1]]);
    assert!(!ok && log.contains("both shard 1/3"), "{log}");
    assert!(!out.exists());
    let (ok, log) = merge(&[&shards[2], &shards[0], &shards[1]]);
    assert!(ok, "{log}");
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("merged.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["questions"], 12);
    assert_eq!(meta["shard"], Value::Null);
}

/// Shards take whole decoding units, so with few units a shard can hold no question; the empty
/// file `east sample` wrote for it is a valid shard.
#[test]
fn an_empty_shard_written_by_east_sample_merges() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    // 2 questions × n = 3 in batches of 6 rows: one unit, so shard 1/2 gets nothing.
    let few = ["--limit", "2"];
    let whole = dir.path().join("whole.jsonl");
    assert!(east(&sample_args(m, whole.to_str().unwrap(), &few)).0);
    let shards: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("shard{i}.jsonl")))
        .collect();
    for (i, s) in shards.iter().enumerate() {
        let spec = format!("{i}/2");
        let mut extra = few.to_vec();
        extra.extend(["--shard", &spec]);
        let (ok, log) = east(&sample_args(m, s.to_str().unwrap(), &extra));
        assert!(ok, "{log}");
    }
    assert_eq!(std::fs::read_to_string(&shards[1]).unwrap(), "");
    let merged = dir.path().join("merged.jsonl");
    let (ok, log) = east(&[
        "merge",
        "--out",
        merged.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    assert_eq!(lines(&merged), lines(&whole));
}

/// A token budget past the model's context (the tiny model has 1,024 positions) is cut to what
/// fits, with a message, instead of sizing the KV cache for it.
#[test]
fn max_new_tokens_is_clamped_to_the_models_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("s.jsonl");
    let (ok, log) = east(&[
        "sample",
        "--model",
        m,
        "--dataset",
        "gsm8k",
        "--limit",
        "1",
        "--n",
        "1",
        "--max-new-tokens",
        "99999999999",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("sample.max_new_tokens = 99999999999 is more than fits the model's context (1024 tokens"),
        "{log}"
    );
    let r = &lines(&out)[0];
    assert!(r["tokens"][0].as_u64().unwrap() < 1024, "{r}");
    let eval_dir = dir.path().join("eval");
    let (ok, log) = east(&[
        "eval",
        "--model",
        m,
        "--limit",
        "1",
        "--max-new-tokens",
        "99999999999",
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("eval.max_new_tokens = 99999999999 is more than fits"),
        "{log}"
    );
}

/// A second `east sample` (or `east eval`) on an output another east process holds fails at once,
/// naming that process.
#[test]
fn a_second_writer_of_a_samples_file_or_eval_folder_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("s.jsonl");
    let pid = format!("pid {}", std::process::id());
    let held = east::io::FileLock::output_file(&out).unwrap();
    let (ok, log) = east(&sample_args(m, out.to_str().unwrap(), &["--limit", "1"]));
    assert!(
        !ok && log.contains("in use by another east process") && log.contains(&pid),
        "{log}"
    );
    assert!(!out.exists());
    drop(held);
    let (ok, log) = east(&sample_args(m, out.to_str().unwrap(), &["--limit", "1"]));
    assert!(ok, "{log}");

    let eval_dir = dir.path().join("eval");
    let _held = east::io::FileLock::output_dir(&eval_dir).unwrap();
    let (ok, log) = east(&[
        "eval",
        "--model",
        m,
        "--limit",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    assert!(!ok && log.contains(&pid), "{log}");
    assert!(!eval_dir.join("predictions.jsonl").exists());
}

/// Outputs that cannot be created (a folder that is a file: root ignores permissions) are errors
/// that name the path, with the OS error said once.
#[test]
fn unwritable_outputs_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let file = dir.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let once = |log: &str| {
        log.matches("Not a directory").count() == 1 || log.matches("File exists").count() == 1
    };

    let out = file.join("s.jsonl");
    let (ok, log) = east(&sample_args(m, out.to_str().unwrap(), &["--limit", "1"]));
    assert!(
        !ok && log.contains(file.to_str().unwrap()) && once(&log),
        "{log}"
    );

    // a complete samples file to merge, then merge into the file-folder
    let good = dir.path().join("good.jsonl");
    assert!(east(&sample_args(m, good.to_str().unwrap(), &["--limit", "1"])).0);
    let (ok, log) = east(&[
        "merge",
        "--out",
        out.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(
        !ok && log.contains(file.to_str().unwrap()) && once(&log),
        "{log}"
    );
}
