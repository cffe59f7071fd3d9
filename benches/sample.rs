//! Sampling throughput and memory: SmolLM2-135M-Instruct (GGUF dequantized to f32), one GSM8K
//! question with the chat prompt, n = 128, up to 256 new tokens, temperature 0.7.
//!
//! `cargo bench --bench sample` (env: EAST_BENCH_MODEL, EAST_BENCH_N, EAST_BENCH_TOKENS,
//! EAST_BENCH_QUESTION (index into GSM8K train), EAST_BENCH_NO_EOS=1 to generate every token,
//! EAST_BENCH_PROMPT_IDS=FILE to write the prompt's token ids as JSON for
//! scripts/reference/generate_bench.py, transformers' `generate` on the same prompt and settings),
//! EAST_BENCH_KV_DTYPE=f16 for a half-precision KV cache, EAST_BENCH_SHARDS=N to decode in N
//! shards of rows (default: one per core)).
//! Prints generated tokens/s, the prefill time, per-step times, minor page faults per decode step
//! and peak RSS.

use std::time::Instant;

use candle_core::{DType, Device};

use east::data::{self, DatasetSpec, FieldMap};
use east::decode::{generate_group, DecodeSettings, Request, SamplerPlacement, Sampling};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Minor page faults of this process so far (getrusage).
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes only into the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt
    }
}

fn main() -> anyhow::Result<()> {
    let model_path: String = env(
        "EAST_BENCH_MODEL",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        .to_string(),
    );
    let n: usize = env("EAST_BENCH_N", 128);
    let max_new_tokens: usize = env("EAST_BENCH_TOKENS", 256);
    let question: usize = env("EAST_BENCH_QUESTION", 0);
    let no_eos = std::env::var("EAST_BENCH_NO_EOS").is_ok_and(|v| v == "1");
    let kv_dtype = match std::env::var("EAST_BENCH_KV_DTYPE").as_deref() {
        Err(_) | Ok("") => None,
        Ok("f32") => Some(DType::F32),
        Ok("f16") => Some(DType::F16),
        Ok(other) => anyhow::bail!("EAST_BENCH_KV_DTYPE: f32 or f16, not `{other}`"),
    };

    // EAST_BENCH_SHARDS=1: the whole batch as one shard, every op split across the cores.
    let cpu_shards: Option<usize> = std::env::var("EAST_BENCH_SHARDS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .map_err(|e| anyhow::anyhow!("EAST_BENCH_SHARDS: {e}"))?;
    let t = Instant::now();
    let mut lm = east::model::load(&model_path, &Device::Cpu, DType::F32)?;
    if no_eos {
        lm.eos_ids.clear();
    }
    println!(
        "model {model_path} loaded in {:.1}s; {} threads",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let qs = data::load(&DatasetSpec::Gsm8k, "train", &FieldMap::default())?;
    let q = &qs[question];
    let prompt = lm.east_prompt_ids(&q.question)?;
    if let Ok(path) = std::env::var("EAST_BENCH_PROMPT_IDS") {
        std::fs::write(&path, serde_json::to_string(&prompt)?)?;
    }
    let request = Request {
        prompt_ids: prompt.clone(),
        id: q.id.clone(),
        first_sample: 0,
        samples: n,
    };
    let settings = DecodeSettings {
        sampling: Sampling {
            temperature: 0.7,
            top_p: 1.0,
        },
        max_new_tokens,
        seed: 42,
        stop: vec![],
        sampler: SamplerPlacement::Auto,
        kv_dtype,
        cpu_shards,
    };

    let t = Instant::now();
    let mut step_times = Vec::new();
    let mut step_faults = Vec::new();
    let mut last = Instant::now();
    let mut last_faults = minor_faults();
    let (gens, stats) = generate_group(&lm, &[request], &settings, |_| {
        step_times.push(last.elapsed().as_secs_f64());
        let f = minor_faults();
        step_faults.push(f - last_faults);
        last_faults = f;
        last = Instant::now();
    })?;
    let secs = t.elapsed().as_secs_f64();
    let lengths: Vec<usize> = gens[0].iter().map(|g| g.token_ids.len()).collect();
    let finished = gens[0]
        .iter()
        .filter(|g| g.finish == east::schema::Finish::Stop)
        .count();
    println!(
        "prompt {} tokens, n = {n}, max {max_new_tokens} new tokens{}",
        prompt.len(),
        if no_eos { ", EOS disabled" } else { "" }
    );
    println!(
        "generated {} tokens in {:.1}s: {:.0} tokens/s ({} steps; first step incl. prefill {:.2}s; median step {:.0} ms; {finished}/{n} stopped on EOS; mean length {:.0})",
        stats.generated,
        secs,
        stats.generated as f64 / secs,
        stats.steps,
        step_times.first().copied().unwrap_or(0.0),
        {
            let mut s = step_times.clone();
            s.sort_by(f64::total_cmp);
            1000.0 * s.get(s.len() / 2).copied().unwrap_or(0.0)
        },
        lengths.iter().sum::<usize>() as f64 / n as f64,
    );
    let decode_faults = &step_faults[1.min(step_faults.len())..];
    println!(
        "KV cache {}; minor page faults per decode step: mean {:.0}",
        kv_dtype.map_or("in the model's dtype".to_string(), |d| format!("{d:?}")),
        decode_faults.iter().sum::<i64>() as f64 / decode_faults.len().max(1) as f64
    );
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    Ok(())
}
