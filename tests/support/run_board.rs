//! What `run.report_to = ["tensorboard"]` must leave in a run directory, checked against the
//! run's own files: `<run>/tensorboard/` holds every round's training scalars once, on one axis
//! of optimiser steps (round t's after round t−1's), equal to the rounds' `train_log.jsonl`;
//! the accuracy of every round at step = round, equal to `summary.json`; each round's sampling
//! throughput from the samples' metric log; and the entropy and weight histograms of each
//! round's `clusters.jsonl` and `train.jsonl`. Used by `tests/pipeline.rs` (with `#[path]`) on a
//! run killed in training and resumed.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use east::tensorboard::{read_dir, Histogram, ValueData, What};
use serde_json::Value;

/// (tag, step) → value, failing on a tag logged twice at one step or a torn file.
pub fn board(run: &Path) -> BTreeMap<(String, i64), ValueData> {
    let mut out = BTreeMap::new();
    for file in read_dir(&run.join("tensorboard")).unwrap() {
        assert_eq!(file.stopped, None, "{}", file.path.display());
        for e in file.events {
            let What::Summary(values) = e.what else {
                continue;
            };
            for v in values {
                let key = (v.tag.clone(), e.step);
                assert!(
                    out.insert(key.clone(), v.data).is_none(),
                    "{key:?} is logged twice"
                );
            }
        }
    }
    out
}

/// The JSON lines of a file.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn scalar(board: &BTreeMap<(String, i64), ValueData>, tag: &str, step: i64) -> f32 {
    match board.get(&(tag.to_string(), step)) {
        Some(ValueData::Simple(x)) => *x,
        other => panic!("{tag} at step {step}: {other:?}"),
    }
}

fn histo<'a>(board: &'a BTreeMap<(String, i64), ValueData>, tag: &str, step: i64) -> &'a Histogram {
    match board.get(&(tag.to_string(), step)) {
        Some(ValueData::Histogram(h)) => h,
        other => panic!("{tag} at step {step}: {other:?}"),
    }
}

/// `values`' count, sum, least and greatest, as the histogram must hold them.
fn moments(values: &[f64]) -> (f64, f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (values.len() as f64, values.iter().sum(), min, max)
}

/// Checks the event folder of the run `run` of `rounds` rounds, evaluated on `dataset` (its
/// folder name) from round 0.
pub fn check(run: &Path, rounds: usize, dataset: &str) {
    let board = board(run);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for r in summary.as_array().unwrap() {
        let t = r["round"].as_i64().unwrap();
        let want = r["accuracy"].as_object().unwrap().values().next().unwrap();
        let tag = format!("eval/{dataset}/accuracy");
        assert_eq!(scalar(&board, &tag, t), want.as_f64().unwrap() as f32);
    }
    let mut before = 0;
    let mut train_steps = BTreeSet::new();
    for t in 1..=rounds {
        let round = run.join(format!("round{t}"));
        let log = json_lines(&round.join("checkpoint/train_log.jsonl"));
        for line in &log {
            let step = before + line["step"].as_i64().unwrap();
            assert_eq!(
                scalar(&board, "train/loss", step),
                line["loss"].as_f64().unwrap() as f32
            );
            assert_eq!(
                scalar(&board, "train/lr", step),
                line["lr"].as_f64().unwrap() as f32
            );
            train_steps.insert(step);
        }
        before += log.len() as i64;
        let t = t as i64;
        let samples = std::fs::canonicalize(round.join("samples.jsonl")).unwrap();
        let units: Vec<Value> = json_lines(&samples.with_extension("log.jsonl"))
            .into_iter()
            .filter(|l| l["event"] == "unit")
            .collect();
        let tokens: f64 = units
            .iter()
            .map(|u| u["generated_tokens"].as_f64().unwrap())
            .sum();
        let seconds: f64 = units.iter().map(|u| u["seconds"].as_f64().unwrap()).sum();
        assert_eq!(
            scalar(&board, "sample/tokens_per_s", t),
            (tokens / seconds) as f32
        );
        let entropies: Vec<f64> = json_lines(&round.join("clusters.jsonl"))
            .iter()
            .map(|c| c["entropy"].as_f64().unwrap())
            .collect();
        let h = histo(&board, "cluster/entropy", t);
        assert_eq!((h.num, h.sum, h.min, h.max), moments(&entropies));
        let weights: BTreeMap<String, f64> = json_lines(&round.join("train.jsonl"))
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().into(),
                    l["weight"].as_f64().unwrap(),
                )
            })
            .collect();
        let weights: Vec<f64> = weights.into_values().collect();
        let h = histo(&board, "weight/question_weight", t);
        assert_eq!((h.num, h.sum, h.min, h.max), moments(&weights));
    }
    // nothing but these steps on the training axis
    let logged: BTreeSet<i64> = board
        .keys()
        .filter(|(tag, _)| tag == "train/loss")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(logged, train_steps);
    assert_eq!(logged, (1..=before).collect());
}
