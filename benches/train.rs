//! Training step speed and memory on SmolLM2-135M (the bundled GGUF, dequantised to f32) on the
//! CPU: SFT on micro-batches of `EAST_BENCH_BATCH` rows × `EAST_BENCH_LEN` tokens (the first
//! quarter of each row is prompt), AdamW, gradient clipping — what
//! scripts/reference/torch_train_bench.py measures for PyTorch.
//!
//! ```sh
//! cargo bench --bench train                      # full fine-tuning, 4 × 256, 4 timed steps
//! EAST_BENCH_MODE=lora cargo bench --bench train # LoRA r=16 on every projection
//! EAST_BENCH_MODE=autograd-lora cargo bench --bench train          # candle-autograd engine, LoRA
//! EAST_BENCH_MODE=autograd-lora-plain cargo bench --bench train    # … with plain matmuls on the frozen weights
//! ```
//! Prints tokens/s (timed steps after one warm-up) and the process's peak RSS (VmHWM).

use std::time::Instant;

use candle_core::{DType, Device};
use east::train::engine::autograd::AutogradEngine;
use east::train::engine::cpu::CpuEngine;
use east::train::optim::AdamW;
use east::train::{Engine, LoraSpec, Packed};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_gb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    if std::env::var("EAST_BENCH_MALLOPT").is_ok() {
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let mode = std::env::var("EAST_BENCH_MODE").unwrap_or_else(|_| "full".into());
    let rows = env("EAST_BENCH_BATCH", 4);
    let len = env("EAST_BENCH_LEN", 256);
    let steps = env("EAST_BENCH_STEPS", 4);
    let path = std::env::var("EAST_BENCH_MODEL")
        .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let lm = east::model::load(&path, &Device::Cpu, DType::F32)?;
    let vocab = lm.config.vocab_size as u64;
    // pseudo-random tokens (speed does not depend on them)
    let mut batch = Packed::new();
    let mut x = 12345u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) % vocab) as u32
    };
    let prompt_len = len / 4;
    for _ in 0..rows {
        let p: Vec<u32> = (0..prompt_len).map(|_| next()).collect();
        let r: Vec<u32> = (0..len - prompt_len).map(|_| next()).collect();
        batch.push(&p, &r);
    }
    let tokens = batch.tokens.len();
    let lora = LoraSpec {
        rank: 16,
        alpha: 16.0,
        dropout: 0.0,
        targets: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut cpu_engine = None;
    let mut autograd_engine = None;
    match mode.as_str() {
        "full" => cpu_engine = Some(CpuEngine::<f32>::new(&lm.model, None, 0)?),
        "lora" => cpu_engine = Some(CpuEngine::<f32>::new(&lm.model, Some(lora), 0)?),
        "autograd" => autograd_engine = Some(AutogradEngine::new(&lm.model, None, 0)?),
        "autograd-lora" | "autograd-lora-plain" => {
            let mut e = AutogradEngine::new(&lm.model, Some(lora), 0)?;
            e.plain_frozen_matmul = mode.ends_with("plain");
            autograd_engine = Some(e);
        }
        other => anyhow::bail!(
            "EAST_BENCH_MODE {other}: full, lora, autograd, autograd-lora or autograd-lora-plain"
        ),
    };
    drop(lm);
    if let Some(e) = autograd_engine.as_mut() {
        // on the CPU the phase waits cost nothing: time them
        e.profile = east::train::engine::profile::PhaseProfile::enabled();
    }
    let engine: &mut dyn Engine = match (&mut cpu_engine, &mut autograd_engine) {
        (Some(e), _) => e,
        (_, Some(e)) => e,
        _ => unreachable!(),
    };
    let coefs: Vec<f64> = (0..rows)
        .map(|r| -1.0 / (batch.targets.iter().filter(|t| t.row == r).count() as f64 * rows as f64))
        .collect();
    let opt = AdamW::default();
    println!(
        "train bench: {mode}, {rows} × {len} tokens, {} trainable tensors, load {}",
        engine.trainable().len(),
        load_avg()
    );
    let mut times = Vec::new();
    let mut cpu0 = 0.0;
    for step in 0..=steps {
        if step == 1 {
            cpu0 = cpu_seconds();
        }
        let t0 = Instant::now();
        let stats = engine.forward(&batch, Some(&coefs), step as u64)?;
        engine.backward(None)?;
        let norm = engine.grad_sq_norm()?.sqrt();
        engine.step(&opt, 1e-5, east::train::optim::clip_scale(norm, 1.0))?;
        let dt = t0.elapsed().as_secs_f64();
        let loss: f64 = stats.iter().zip(&coefs).map(|(s, c)| c * s.logp).sum();
        println!(
            "step {step}: loss {loss:.4} grad_norm {norm:.3} {:.1} tokens/s ({dt:.2}s)",
            tokens as f64 / dt
        );
        if step > 0 {
            times.push(dt);
        }
    }
    let phase_times = engine.phase_times();
    if !phase_times.is_empty() {
        let n = (times.len() + 1) as f64;
        let phases: Vec<String> = phase_times
            .iter()
            .map(|(k, (s, _))| format!("{k} {:.2}s", s / n))
            .collect();
        println!("per step: {}", phases.join(", "));
    }
    if let Some(e) = &cpu_engine {
        let t = &e.timings;
        let n = (times.len() + 1) as f64;
        println!(
        "per step: forward {:.2}s (attention {:.2}s), vocab head {:.2}s, backward {:.2}s (attention {:.2}s), optimizer {:.2}s",
        t.forward / n,
        t.attention_forward / n,
        t.head / n,
        t.backward / n,
        t.attention_backward / n,
        t.optimizer / n
    );
    }
    let tps = tokens as f64 * times.len() as f64 / times.iter().sum::<f64>();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{mode}: {tps:.1} tokens/s, {:.1} tokens per CPU-second ({:.1} CPU-s/step), peak RSS {:.2} GB, load {}",
        tokens as f64 * times.len() as f64 / cpu,
        cpu / times.len() as f64,
        peak_rss_gb(),
        load_avg()
    );
    Ok(())
}
