//! Measures the peak RSS of autograd-engine training steps on a random-weight model, in a
//! process of its own (a child: the peak of a process is only its own with nothing else
//! running in it), for checking `east::train::memory::estimate` against measurement.
//! Shared by `tests/train_memory.rs` and `benches/train.rs` (included with `#[path]`).

#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use east::model::{Llama, LlamaConfig};
use east::train::engine::autograd::AutogradEngine;
use east::train::memory::{estimate, MemoryEstimate, MemoryShape};
use east::train::{Engine, LoraSpec, Packed};

/// One measurement: a model shape, full or LoRA, checkpointing, and the micro-batches.
#[derive(Debug, Clone)]
pub struct Probe {
    pub cfg: LlamaConfig,
    pub lora: bool,
    pub checkpointing: bool,
    pub rows: usize,
    pub tokens: usize,
    pub accumulation: usize,
}

/// The environment variable that makes a process run one probe.
pub const ENV: &str = "EAST_MEMORY_PROBE";

pub fn lora_spec() -> LoraSpec {
    LoraSpec {
        rank: 16,
        alpha: 16.0,
        dropout: 0.0,
        targets: east::train::engine::PROJECTIONS.map(String::from).to_vec(),
    }
}

impl Probe {
    /// `hidden,intermediate,layers,heads,kv_heads,vocab,rows,tokens,accumulation,lora,ckpt,tied`.
    pub fn encode(&self) -> String {
        let c = &self.cfg;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size,
            self.rows,
            self.tokens,
            self.accumulation,
            self.lora as u8,
            self.checkpointing as u8,
            c.tie_word_embeddings as u8
        )
    }

    pub fn decode(s: &str) -> Probe {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.parse().expect("probe spec"))
            .collect();
        let spec = east::model::testing::TinySpec {
            num_hidden_layers: v[2],
            hidden_size: v[0],
            intermediate_size: v[1],
            num_attention_heads: v[3],
            num_key_value_heads: v[4],
            max_position_embeddings: v[7].max(64),
            tie_word_embeddings: v[11] == 1,
            ..Default::default()
        };
        Probe {
            cfg: east::model::testing::tiny_config(&spec, v[5]),
            rows: v[6],
            tokens: v[7],
            accumulation: v[8],
            lora: v[9] == 1,
            checkpointing: v[10] == 1,
        }
    }

    /// The estimate for this probe (f32 on the CPU).
    pub fn estimate(&self) -> MemoryEstimate {
        estimate(
            &self.cfg,
            &MemoryShape {
                dtype: DType::F32,
                cuda: false,
                lora: self.lora.then(lora_spec),
                rows: self.rows,
                row_tokens: self.tokens,
                // the completions of `run_here`'s rows: all but the first quarter
                targets: self.rows * (self.tokens - self.tokens / 4),
                accumulation: self.accumulation,
                checkpointing: self.checkpointing,
                reference_rows: 0,
            },
        )
    }
}

/// A `/proc/self/status` field in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs the probe in this process: builds the engine from random weights and takes two
/// optimiser steps of `accumulation` micro-batches. Returns the peak RSS above the RSS before
/// the weights were made, in bytes.
pub fn run_here(p: &Probe) -> u64 {
    // glibc raises its mmap threshold after every free of a large block, after which freed
    // tensors stay in the heap and the RSS no longer follows the live tensors; a fixed
    // threshold returns every tensor-sized block to the system when it is freed. 64 KiB, not
    // 1 MiB: the small shape's hidden states are 768 KiB, and at 1 MiB the heap kept ~40 MiB
    // of freed ones resident from the first backward on (a quarter of its measured peak)
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
    let baseline = status_bytes("VmRSS:");
    let weights = east::model::testing::random_weights(&p.cfg, 7).unwrap();
    let map: HashMap<_, _> = weights.into_iter().collect();
    let model = Llama::load(
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
        &p.cfg,
    )
    .unwrap();
    let mut e = AutogradEngine::new(&model, p.lora.then(lora_spec), 3).unwrap();
    drop(model);
    e.checkpointing = p.checkpointing;
    let mut batch = Packed::new();
    let mut x = 12345u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) % p.cfg.vocab_size as u64) as u32
    };
    let prompt = p.tokens / 4;
    for _ in 0..p.rows {
        let a: Vec<u32> = (0..prompt).map(|_| next()).collect();
        let b: Vec<u32> = (0..p.tokens - prompt).map(|_| next()).collect();
        batch.push(&a, &b);
    }
    let coefs = vec![-1.0 / (p.rows * p.tokens) as f64; p.rows];
    let opt = east::train::optim::AdamW::default();
    for step in 0..2u64 {
        for micro in 0..p.accumulation as u64 {
            e.forward(&batch, Some(&coefs), step * 16 + micro).unwrap();
            e.backward(None).unwrap();
        }
        let norm = e.grad_sq_norm().unwrap().sqrt();
        e.step(&opt, 1e-5, east::train::optim::clip_scale(norm, 1.0))
            .unwrap();
    }
    status_bytes("VmHWM:").saturating_sub(baseline)
}

/// Runs the probe in a child process: `exe args…` with [`ENV`] set, which must print the line
/// `probe-peak-bytes N` (what [`child_main`] does). Returns N.
pub fn run_child(exe: &std::path::Path, args: &[&str], p: &Probe) -> u64 {
    let out = std::process::Command::new(exe)
        .args(args)
        .env(ENV, p.encode())
        .output()
        .expect("run the probe");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("probe-peak-bytes ").nth(1))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "probe {} printed no peak: {text}\n{}",
                p.encode(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// In a process started by [`run_child`]: runs the probe and prints its peak. Returns false
/// when this process is not a probe.
pub fn child_main() -> bool {
    let Ok(spec) = std::env::var(ENV) else {
        return false;
    };
    let peak = run_here(&Probe::decode(&spec));
    println!("probe-peak-bytes {peak} ");
    true
}
