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
//! EAST_BENCH_MODE=autograd-ckpt cargo bench --bench train          # autograd, activation checkpointing on
//! EAST_BENCH_MODE=checkpointing cargo bench --bench train  # autograd then autograd-ckpt, 4 × 1,024
//! EAST_BENCH_MODE=estimate cargo bench --bench train       # memory estimate against measured peaks
//! ```
//! Prints tokens/s (timed steps after one warm-up) and the process's peak RSS (VmHWM).
//!
//! `checkpointing` runs the two autograd modes back to back, each in a child process of its
//! own (a process's peak RSS is its own), on micro-batches of 4 × 1,024 tokens unless
//! `EAST_BENCH_LEN`/`EAST_BENCH_BATCH` say otherwise, and prints per mode seconds per step,
//! tokens/s, the training peak RSS above the process's baseline, the activation part of that
//! peak (see [`StepMemory`]) and the ratios on/off. `estimate` compares
//! `east::train::memory::estimate` with the measured peak RSS above baseline for
//! SmolLM2-135M's shape and two other shapes (random weights), full and LoRA, checkpointing
//! off and on, each in a child process (`tests/support/memory_probe.rs`).

use std::time::Instant;

use candle_core::{DType, Device};
use east::train::engine::autograd::AutogradEngine;
use east::train::engine::cpu::CpuEngine;
use east::train::optim::AdamW;
use east::train::{Engine, LoraSpec, Packed};

#[path = "../tests/support/memory_probe.rs"]
mod memory_probe;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_gb() -> f64 {
    status_bytes("VmHWM:") as f64 / (1u64 << 30) as f64
}

/// A `/proc/self/status` field (VmRSS, VmHWM) in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM via /proc/self/clear_refs");
}

const MIB: f64 = 1048576.0;

/// The memory of one training step (forward, backward; the optimiser step comes after), from
/// the RSS with glibc's mmap threshold fixed at 1 MiB, so that every tensor-sized block is
/// returned to the system when freed and the RSS follows the live tensors:
/// - `before`: RSS when the step starts: weights, master weights, AdamW moments (no
///   gradients: the previous step's optimiser took them);
/// - `after`: RSS once the backward has returned: `before` plus the gradients it left; the
///   graph, and every activation in it, is gone;
/// - `peak`: the highest RSS between the two (VmHWM, reset at the step's start).
///
/// The activation part of the peak is `peak − after`: what exists only while the graph does —
/// the activations kept for the backward, the recomputation and backward working sets and the
/// vocabulary head's chunk. `kept` is the RSS when the forward has returned minus `before`,
/// less the head's weight gradient and the hidden-state gradient the forward makes (their
/// sizes are known): the activations the graph keeps for the backward.
#[derive(Debug, Clone, Copy, Default)]
struct StepMemory {
    before: u64,
    after_forward: u64,
    after: u64,
    peak: u64,
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
    if memory_probe::child_main() {
        return Ok(());
    }
    let mode = std::env::var("EAST_BENCH_MODE").unwrap_or_else(|_| "full".into());
    match mode.as_str() {
        "checkpointing" => checkpointing_pair(),
        "estimate" => estimate_bench(),
        _ => train_bench(&mode),
    }
}

/// Runs this bench in a child process with `envs` set, echoing its output; returns the fields
/// of its `result:` line (`key value` pairs).
fn run_child(envs: &[(&str, String)]) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut fields = std::collections::HashMap::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("  {line}");
        if let Some(rest) = line.strip_prefix("result:") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            for kv in w.chunks(2) {
                if let [k, v] = kv {
                    fields.insert(k.to_string(), v.parse().unwrap_or(f64::NAN));
                }
            }
        }
    }
    anyhow::ensure!(child.wait()?.success(), "bench child {envs:?} failed");
    anyhow::ensure!(
        !fields.is_empty(),
        "bench child {envs:?} printed no result line"
    );
    Ok(fields)
}

/// `autograd` then `autograd-ckpt`, each in a process of its own, and the ratios on/off.
fn checkpointing_pair() -> anyhow::Result<()> {
    let len = env("EAST_BENCH_LEN", 1024);
    let rows = env("EAST_BENCH_BATCH", 4);
    let steps = env("EAST_BENCH_STEPS", 2);
    println!(
        "checkpointing off then on, {rows} × {len} tokens, {steps} timed steps each, load {}",
        load_avg()
    );
    let mut results = Vec::new();
    for mode in ["autograd", "autograd-ckpt"] {
        let r = run_child(&[
            ("EAST_BENCH_MODE", mode.into()),
            ("EAST_BENCH_LEN", len.to_string()),
            ("EAST_BENCH_BATCH", rows.to_string()),
            ("EAST_BENCH_STEPS", steps.to_string()),
        ])?;
        results.push((mode, r));
    }
    println!("\n| mode | s/step | tokens/s | peak RSS above baseline | activation part of the peak | activations kept after the forward |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let get =
        |r: &std::collections::HashMap<String, f64>, k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    for (mode, r) in &results {
        println!(
            "| {mode} | {:.2} | {:.1} | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            get(r, "s_per_step"),
            get(r, "tokens_per_s"),
            get(r, "peak_above_baseline") / MIB,
            get(r, "activation_peak") / MIB,
            get(r, "kept") / MIB,
        );
    }
    let (off, on) = (&results[0].1, &results[1].1);
    println!(
        "on/off: time per step {:.3}× ({:+.1}%), peak above baseline {:.3}×, activation part of the peak cut {:.2}×, activations kept cut {:.2}×; load {}",
        get(on, "s_per_step") / get(off, "s_per_step"),
        100.0 * (get(on, "s_per_step") / get(off, "s_per_step") - 1.0),
        get(on, "peak_above_baseline") / get(off, "peak_above_baseline"),
        get(off, "activation_peak") / get(on, "activation_peak"),
        get(off, "kept") / get(on, "kept"),
        load_avg()
    );
    Ok(())
}

/// The shapes of the estimate bench: SmolLM2-135M's (from the bundled GGUF's metadata) and two
/// others — a wider, shallower model on short rows (weights and MLP dominate) and a narrow
/// deep one on long rows (attention probabilities dominate).
fn estimate_shapes() -> anyhow::Result<Vec<(String, memory_probe::Probe)>> {
    use east::model::testing::{tiny_config, TinySpec};
    let path = std::env::var("EAST_BENCH_MODEL")
        .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let smol = east::train::memory::model_config(&path)?;
    let wide = TinySpec {
        num_hidden_layers: 4,
        hidden_size: 1024,
        intermediate_size: 2816,
        num_attention_heads: 16,
        num_key_value_heads: 4,
        max_position_embeddings: 256,
        ..Default::default()
    };
    let long = TinySpec {
        num_hidden_layers: 12,
        hidden_size: 384,
        intermediate_size: 1024,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        tie_word_embeddings: true,
        max_position_embeddings: 1024,
        ..Default::default()
    };
    let probe = |cfg, rows, tokens, accumulation| memory_probe::Probe {
        cfg,
        lora: false,
        checkpointing: false,
        rows,
        tokens,
        accumulation,
    };
    Ok(vec![
        (
            "SmolLM2-135M shape, 2 × 256, 1 micro-batch per step".into(),
            probe(smol, 2, 256, 1),
        ),
        (
            "h 1024, i 2816, 4 layers, 16/4 heads, vocab 8,192, 2 × 256, 2 micro-batches per step"
                .into(),
            probe(tiny_config(&wide, 8192), 2, 256, 2),
        ),
        (
            "h 384, i 1024, 12 layers, 6/2 heads, vocab 16,384, tied, 1 × 1,024, 1 micro-batch per step"
                .into(),
            probe(tiny_config(&long, 16384), 1, 1024, 1),
        ),
    ])
}

/// The estimate against the measured peak RSS above baseline, each probe in a child process.
fn estimate_bench() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    println!("estimate vs measured peak RSS above baseline (f32, CPU, autograd engine, random weights, 2 optimiser steps), load {}", load_avg());
    println!("| shape | run | estimate | measured | difference |");
    println!("| --- | --- | --- | --- | --- |");
    let mut worst: f64 = 0.0;
    for (name, base) in estimate_shapes()? {
        for (lora, checkpointing) in [(false, false), (false, true), (true, false), (true, true)] {
            let p = memory_probe::Probe {
                lora,
                checkpointing,
                ..base.clone()
            };
            let measured = memory_probe::run_child(&exe, &[], &p) as f64;
            let est = p.estimate().total as f64;
            let diff = 100.0 * (est / measured - 1.0);
            worst = worst.max(diff.abs());
            println!(
                "| {name} | {}, checkpointing {} | {:.1} MiB | {:.1} MiB | {diff:+.1}% |",
                if lora { "LoRA r = 16" } else { "full" },
                if checkpointing { "on" } else { "off" },
                est / MIB,
                measured / MIB,
            );
        }
    }
    println!("largest difference {worst:.1}%, load {}", load_avg());
    Ok(())
}

/// One engine on SmolLM2-135M: a warm-up step and `EAST_BENCH_STEPS` timed steps.
fn train_bench(mode: &str) -> anyhow::Result<()> {
    if std::env::var("EAST_BENCH_MALLOPT").is_ok() {
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let measure = mode == "autograd" || mode == "autograd-ckpt";
    if measure {
        // see StepMemory
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
    let baseline = status_bytes("VmRSS:");
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
    match mode {
        "full" => cpu_engine = Some(CpuEngine::<f32>::new(&lm.model, None, 0)?),
        "lora" => cpu_engine = Some(CpuEngine::<f32>::new(&lm.model, Some(lora), 0)?),
        "autograd" | "autograd-ckpt" => {
            let mut e = AutogradEngine::new(&lm.model, None, 0)?;
            e.checkpointing = mode == "autograd-ckpt";
            autograd_engine = Some(e);
        }
        "autograd-lora" | "autograd-lora-plain" => {
            let mut e = AutogradEngine::new(&lm.model, Some(lora), 0)?;
            e.plain_frozen_matmul = mode.ends_with("plain");
            autograd_engine = Some(e);
        }
        other => anyhow::bail!(
            "EAST_BENCH_MODE {other}: full, lora, autograd, autograd-ckpt, autograd-lora, autograd-lora-plain, checkpointing or estimate"
        ),
    };
    let (vocab_size, hidden) = (lm.config.vocab_size as u64, lm.config.hidden_size as u64);
    drop(lm);
    // the training peak, not the loading's
    let load_peak = status_bytes("VmHWM:");
    reset_peak();
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
    let mut train_peak = 0;
    let mut mem = StepMemory::default();
    for step in 0..=steps {
        if step == 1 {
            cpu0 = cpu_seconds();
        }
        let last = step == steps;
        if last {
            train_peak = status_bytes("VmHWM:");
            mem.before = status_bytes("VmRSS:");
            reset_peak();
        }
        let t0 = Instant::now();
        let stats = engine.forward(&batch, Some(&coefs), step as u64)?;
        if last {
            mem.after_forward = status_bytes("VmRSS:");
        }
        engine.backward(None)?;
        if last {
            mem.after = status_bytes("VmRSS:");
            mem.peak = status_bytes("VmHWM:");
        }
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
    if measure {
        train_peak = train_peak.max(status_bytes("VmHWM:"));
        // the forward's own gradients: the head's weight (full fine-tuning) and the hidden
        // states' at the targets
        let forward_grads = (vocab_size * hidden + batch.targets.len() as u64 * hidden) * 4;
        let kept = mem.after_forward.saturating_sub(mem.before + forward_grads);
        let activation_peak = mem.peak - mem.after;
        println!(
            "{mode} memory (MiB above the baseline of {:.0}): loading peak {:.0}, training peak {:.0}; last step: start {:.0}, after the forward {:.0}, after the backward {:.0}, peak {:.0}; activation part of the peak {:.0}, activations kept {:.0}",
            baseline as f64 / MIB,
            (load_peak - baseline) as f64 / MIB,
            (train_peak - baseline) as f64 / MIB,
            (mem.before - baseline) as f64 / MIB,
            (mem.after_forward - baseline) as f64 / MIB,
            (mem.after - baseline) as f64 / MIB,
            (mem.peak - baseline) as f64 / MIB,
            activation_peak as f64 / MIB,
            kept as f64 / MIB,
        );
        println!(
            "result: s_per_step {} tokens_per_s {tps} peak_above_baseline {} activation_peak {activation_peak} kept {kept}",
            times.iter().sum::<f64>() / times.len() as f64,
            train_peak - baseline,
        );
    }
    Ok(())
}
