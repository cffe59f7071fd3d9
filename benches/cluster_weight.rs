//! Throughput and memory of `cluster` + `weight` on a GSM8K-sized round: 7,473 questions × 128
//! completions (~1 GB of JSONL) of synthetic but realistically shaped completions.
//!
//! `cargo bench --bench cluster_weight` (env: EAST_BENCH_QUESTIONS, EAST_BENCH_N, EAST_BENCH_DIR).
//! Prints completions/s of each stage and the peak resident memory of the process.

use std::io::Write;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use east::cluster::{cluster_file, ClusterConfig};
use east::schema::Loss;
use east::weight::{weight_files, WeightConfig, WeightOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A completion of about 900 bytes: worked steps with numbers, then a final boxed answer (or,
/// for a few, no answer at all), like a sampled GSM8K solution.
fn completion(rng: &mut ChaCha8Rng, answer: i64) -> String {
    let mut s = String::with_capacity(1024);
    let steps = rng.random_range(4..9);
    for k in 0..steps {
        let a: i64 = rng.random_range(1..500);
        let b: i64 = rng.random_range(1..50);
        s.push_str(&format!(
            "Step {}: We know that the store sells {a} items and each costs ${b}, so the total is {a} \\times {b} = {}. ",
            k + 1,
            a * b
        ));
        s.push_str(
            "Then we subtract what was already used and carry the remainder to the next step.\n",
        );
    }
    match rng.random_range(0..100) {
        0..=4 => s.push_str("I am not sure how to finish this."),
        5..=9 => s.push_str(&format!("The answer is {answer}.")),
        _ => s.push_str(&format!(
            "Therefore, the final answer is $\\boxed{{{answer}}}$."
        )),
    }
    s
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let questions = env_usize("EAST_BENCH_QUESTIONS", 7473);
    let n = env_usize("EAST_BENCH_N", 128);
    let dir = match std::env::var("EAST_BENCH_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => std::env::temp_dir().join("east-bench"),
    };
    std::fs::create_dir_all(&dir)?;
    let samples = dir.join("samples.jsonl");
    let expected = format!("{questions}x{n}");
    let marker = dir.join("samples.size");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(expected.as_str()) {
        let t = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&samples)?);
        for q in 0..questions {
            let truth: i64 = rng.random_range(1..1000);
            // Per-question accuracy spread over [0, 1], wrong answers from a few candidates.
            let accuracy: f64 = rng.random();
            let wrong: Vec<i64> = (0..rng.random_range(1..20))
                .map(|_| rng.random_range(1..1000))
                .collect();
            let completions: Vec<String> = (0..n)
                .map(|_| {
                    let ans = if rng.random_bool(accuracy) {
                        truth
                    } else {
                        wrong[rng.random_range(0..wrong.len())]
                    };
                    completion(&mut rng, ans)
                })
                .collect();
            let line = serde_json::json!({"id": format!("gsm8k/train/{q}"), "question": "How many items are left?",
                "answer": truth.to_string(), "completions": completions});
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        std::fs::write(&marker, &expected)?;
        eprintln!(
            "generated {} in {:.1}s",
            samples.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let bytes = std::fs::metadata(&samples)?.len();
    let completions = (questions * n) as f64;
    println!(
        "input: {questions} questions × {n} completions, {:.0} MiB, {} rayon threads",
        bytes as f64 / 1048576.0,
        rayon::current_num_threads()
    );

    let clusters = dir.join("clusters.jsonl");
    let t = Instant::now();
    let opts = ClusterConfig::default();
    cluster_file(&samples, &clusters, &opts, None)?;
    let c = t.elapsed().as_secs_f64();
    println!(
        "cluster: {c:.2}s, {:.0} completions/s, {:.0} MiB/s",
        completions / c,
        bytes as f64 / 1048576.0 / c
    );

    let train = dir.join("train.jsonl");
    let t = Instant::now();
    let wopts = WeightOptions {
        loss: Loss::Dpo,
        weight: WeightConfig {
            a: 1.5,
            ..WeightConfig::default()
        },
    };
    let summary = weight_files(&clusters, &samples, &train, &wopts)?;
    let w = t.elapsed().as_secs_f64();
    println!(
        "weight:  {w:.2}s, {:.0} completions/s ({} examples)",
        completions / w,
        summary.examples
    );
    println!(
        "cluster + weight: {:.2}s; peak RSS {:.0} MiB",
        c + w,
        peak_rss_mib()
    );
    Ok(())
}
