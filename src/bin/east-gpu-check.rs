//! `east-gpu-check`: the east side of `scripts/gpu-check.sh`, the checks and measurements for a
//! CUDA machine: CPU/GPU agreement on a small seeded model, sampling and training throughput on
//! random-weight models of the Llama-3.2-1B and Llama-3.1-8B shapes. Each subcommand prints one
//! JSON line (the script collects them) and notes on stderr. It runs on the CPU too
//! (`--device cpu`), which is how the CPU references are made and how the script is tested on a
//! machine without a GPU. Nothing here needs the network.
//!
//! ```text
//! east-gpu-check make-model --shape tiny|1b|8b --seed 7 --out DIR
//! east-gpu-check logits --model DIR --device cpu|cuda --dtype f32|bf16 --out FILE [--reference FILE]
//! east-gpu-check sample-bench --model DIR --device cuda [--n 128 --tokens 256 --prompt-len 128]
//! east-gpu-check train-bench --model DIR --device cuda --work DIR [--steps 10 --batch 16
//!                            --micro-batch 4 --len 512] [--lora --lora-rank 16 --lora-alpha 16]
//!                            [--out FILE] [--reference FILE] [--profile]
//! east-gpu-check op-bench --device cuda [--rows 8 --len 512]   # fwd/bwd ms of the training ops
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use east::decode::{generate_group, DecodeSettings, Request, SamplerPlacement, Sampling};
use east::model::config::{Arch, Family, SlidingWindow};
use east::model::testing::{published_shape, write_random_model, write_tiny_model_with, TinySpec};
use east::model::{DTypeChoice, KvCache, LoadedModel, ModelConfig, RopeScaling};
use east::train::{train, EngineChoice, TrainConfig, TrainJob};

#[derive(Parser)]
#[command(
    name = "east-gpu-check",
    about = "CPU/GPU agreement and GPU throughput checks for east (see scripts/gpu-check.sh)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a seeded random-weight model folder: `tiny` (f32, 3 layers, hidden 256, GQA,
    /// llama3 RoPE: the agreement model) and its Qwen2, Qwen3 and Mistral variants
    /// (`tiny-qwen2`, `tiny-qwen3`, `tiny-mistral`), `1b` or `8b` (Llama-3.2-1B / Llama-3.1-8B
    /// shapes, bf16),
    /// `mini` (the 1B's vocabulary on 2 layers of hidden 256, bf16: for CPU dry runs).
    MakeModel {
        #[arg(long)]
        shape: String,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Logits of a chat prompt (prefill and the training forward) and greedy continuations of two
    /// prompts decoded as one left-padded batch; with --reference, compare against a saved run.
    Logits {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 24)]
        greedy_tokens: usize,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Sampling throughput: one prompt of random tokens, n samples, every sample `tokens` long
    /// (EOS disabled), after a short warm-up.
    SampleBench {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 128)]
        batch_rows: usize,
        /// Where logits become tokens: `device` (reduced on the GPU), `host` (whole rows copied
        /// to the CPU) or `auto` (what `east sample` does).
        #[arg(long, default_value = "auto")]
        sampler: String,
    },
    /// Training throughput: `east train` (SFT, data weights) for `steps` optimiser steps of
    /// Forward and backward times of the ops a training step of the 1B shape is made of, each
    /// alone on `rows` × `len` tokens of random bf16 data: to see which one is slow.
    OpBench {
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "bf16")]
        dtype: String,
        #[arg(long, default_value_t = 8)]
        rows: usize,
        #[arg(long, default_value_t = 512)]
        len: usize,
    },
    /// `batch` rows of `len` tokens (a quarter prompt), on generated text.
    TrainBench {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Scratch folder (data and checkpoint; removed afterwards).
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        micro_batch: usize,
        #[arg(long, default_value_t = 512)]
        len: usize,
        #[arg(long, default_value_t = 1e-5)]
        lr: f64,
        #[arg(long)]
        lora: bool,
        #[arg(long, default_value_t = 16)]
        lora_rank: usize,
        #[arg(long, default_value_t = 16.0)]
        lora_alpha: f64,
        #[arg(long, value_enum, default_value = "auto")]
        engine: EngineChoice,
        /// Also time the engine's phases (each waits for the GPU: the run gets slower), as
        /// "phases" in the output.
        #[arg(long)]
        profile: bool,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        reference: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let line = match cli.cmd {
        Cmd::MakeModel { shape, seed, out } => make_model(&shape, seed, &out)?,
        Cmd::Logits {
            model,
            device,
            dtype,
            greedy_tokens,
            out,
            reference,
        } => logits(
            &model,
            &device,
            &dtype,
            greedy_tokens,
            out.as_deref(),
            reference.as_deref(),
        )?,
        Cmd::SampleBench {
            model,
            device,
            dtype,
            n,
            tokens,
            prompt_len,
            temperature,
            batch_rows,
            sampler,
        } => {
            let sampler = match sampler.as_str() {
                "auto" => SamplerPlacement::Auto,
                "host" => SamplerPlacement::Host,
                "device" => SamplerPlacement::Device,
                other => bail!("--sampler {other}: expected auto, host or device"),
            };
            sample_bench(
                &model,
                &device,
                &dtype,
                n,
                tokens,
                prompt_len,
                temperature,
                batch_rows,
                sampler,
            )?
        }
        Cmd::OpBench {
            device,
            dtype,
            rows,
            len,
        } => op_bench(&device, &dtype, rows, len)?,
        Cmd::TrainBench {
            model,
            device,
            dtype,
            work,
            steps,
            batch,
            micro_batch,
            len,
            lr,
            lora,
            lora_rank,
            lora_alpha,
            engine,
            profile,
            out,
            reference,
        } => {
            let spec = TrainSpec {
                steps,
                batch,
                micro_batch,
                len,
                lr,
                lora,
                lora_rank,
                lora_alpha,
                engine,
                profile,
            };
            train_bench(
                &model,
                &device,
                &dtype,
                &work,
                &spec,
                out.as_deref(),
                reference.as_deref(),
            )?
        }
    };
    println!("{line}");
    if line.get("agree") == Some(&Value::Bool(false)) {
        std::process::exit(2);
    }
    Ok(())
}

/// The agreement model of `shape` (`tiny`, `tiny-qwen2`, `tiny-qwen3`, `tiny-mistral`), or
/// None. `tiny`: a Llama, small but with the 1B's head size, GQA and llama3 RoPE scaling; the
/// others the same trunk with their family's layout: Qwen2's q/k/v biases and tied embeddings,
/// Qwen3's q/k norms and a head_dim (128) wider than hidden / heads, Mistral's explicit
/// head_dim and a sliding window longer than the rows; Qwen's RoPE θ 10⁶ without scaling.
fn tiny_spec(shape: &str) -> Option<TinySpec> {
    let llama = tiny_llama_spec();
    let qwen = |family| TinySpec {
        arch: Arch::of(family),
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        ..llama.clone()
    };
    Some(match shape {
        "tiny" => llama,
        "tiny-qwen2" => TinySpec {
            tie_word_embeddings: true,
            ..qwen(Family::Qwen2)
        },
        "tiny-qwen3" => TinySpec {
            head_dim: Some(128),
            ..qwen(Family::Qwen3)
        },
        "tiny-mistral" => TinySpec {
            arch: Arch {
                sliding_window: Some(SlidingWindow {
                    size: 4096,
                    first_layer: 0,
                }),
                ..Arch::of(Family::Mistral)
            },
            head_dim: Some(128),
            rope_theta: 1_000_000.0,
            rope_scaling: None,
            ..llama
        },
        _ => return None,
    })
}

/// The Llama agreement model.
fn tiny_llama_spec() -> TinySpec {
    TinySpec {
        arch: Arch::default(),
        head_dim: None,
        num_hidden_layers: 3,
        hidden_size: 256,
        intermediate_size: 512,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        tie_word_embeddings: false,
        rope_theta: 500_000.0,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        }),
        max_position_embeddings: 2048,
    }
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

fn make_model(shape: &str, seed: u64, out: &Path) -> anyhow::Result<Value> {
    let t = Instant::now();
    let cfg = match shape {
        s if tiny_spec(s).is_some() => {
            write_tiny_model_with(out, seed, &tiny_spec(s).expect("tested"))?
        }
        "mini" => {
            // the 1B's vocabulary, tokenizer and RoPE on a small trunk: the 1b/8b code path at
            // CPU size (gpu-check.sh --dry-run-cpu)
            let mut cfg = published_shape("1b").expect("1b");
            cfg.num_hidden_layers = 2;
            cfg.hidden_size = 256;
            cfg.intermediate_size = 512;
            cfg.num_attention_heads = 4;
            cfg.num_key_value_heads = 2;
            cfg.head_dim = 64;
            write_random_model(out, &cfg, seed)?;
            cfg
        }
        s => {
            let cfg = published_shape(s)
                .with_context(|| {
                    format!("--shape {s}: expected tiny, tiny-qwen2, tiny-qwen3, tiny-mistral, mini, 1b or 8b")
                })?;
            write_random_model(out, &cfg, seed)?;
            cfg
        }
    };
    let bytes = std::fs::metadata(out.join("model.safetensors"))?.len();
    Ok(json!({
        "check": "make-model", "shape": shape, "seed": seed, "params": cfg.num_parameters(),
        "bytes": bytes, "seconds": t.elapsed().as_secs_f64(),
    }))
}

fn load(model: &Path, device: &str, dtype: &str) -> anyhow::Result<(LoadedModel, f64)> {
    let t = Instant::now();
    let dev = east::model::runtime::device(device)?;
    let dt = east::model::runtime::dtype(dtype, &dev)?;
    let lm = east::model::load(&model.to_string_lossy(), &dev, dt)?;
    Ok((lm, t.elapsed().as_secs_f64()))
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

fn max_abs_delta(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
}

fn floats(v: &Value, key: &str) -> anyhow::Result<Vec<f32>> {
    v.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("reference has no `{key}`"))?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).context("not a number"))
        .collect()
}

fn logits(
    model: &Path,
    device: &str,
    dtype: &str,
    greedy_tokens: usize,
    out: Option<&Path>,
    reference: Option<&Path>,
) -> anyhow::Result<Value> {
    let (mut lm, load_s) = load(model, device, dtype)?;
    lm.eos_ids.clear();
    let dev = lm.model.device().clone();
    let prompts = [
        "What is 2 + 3? Put the answer in \\boxed{}.",
        "A train travels 60 km in 1.5 hours. How fast is it?",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| lm.east_prompt_ids(p))
        .collect::<Result<_, _>>()?;
    let p0 = &ids[0];

    // Prefill (KV-cached inference path): last column's logits.
    let mut cache = KvCache::new(&lm.config, 1, p0.len() + 1, vec![0], lm.model.dtype(), &dev)?;
    let input = Tensor::new(p0.as_slice(), &dev)?.unsqueeze(0)?;
    let prefill: Vec<f32> = lm
        .model
        .forward_step(&input, &mut cache)?
        .flatten_all()?
        .to_vec1()?;
    // Training path: every position's logits.
    let hidden = lm.model.forward_hidden(&input, None)?;
    let all: Vec<f32> = lm
        .model
        .logits(&hidden)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    // Greedy continuations of both prompts in one left-padded batch, two rows each.
    let requests: Vec<Request> = ids
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt_ids: p.clone(),
            id: format!("p{i}"),
            first_sample: 0,
            samples: 2,
        })
        .collect();
    let settings = DecodeSettings {
        sampling: Sampling::GREEDY,
        max_new_tokens: greedy_tokens,
        seed: 0,
        stop: vec![],
        sampler: SamplerPlacement::Auto,
        kv_dtype: None,
        cpu_shards: None,
    };
    let (gens, _) = generate_group(&lm, &requests, &settings, |_| {})?;
    let greedy: Vec<Vec<u32>> = gens
        .iter()
        .flat_map(|g| g.iter().map(|x| x.token_ids.clone()))
        .collect();

    let sha = file_sha256(&model.join("model.safetensors"))?;
    let mut line = json!({
        "check": "logits", "device": device, "dtype": dtype_name(lm.model.dtype()), "load_s": load_s,
        "model_sha256": sha, "prompt_tokens": p0.len(), "vocab": lm.config.vocab_size,
    });
    if let Some(out) = out {
        let full = json!({
            "device": device, "dtype": dtype_name(lm.model.dtype()), "model_sha256": sha, "prompt_ids": ids,
            "prefill_logits": prefill, "all_logits": all, "greedy": greedy,
        });
        std::fs::write(out, serde_json::to_string(&full)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(rpath) = reference {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(rpath)
                .with_context(|| format!("reading {}", rpath.display()))?,
        )?;
        if r.get("model_sha256").and_then(Value::as_str) != Some(sha.as_str()) {
            bail!("{}: made from another model file (sha256 differs): the seeded weights are not reproduced", rpath.display());
        }
        let rp = floats(&r, "prefill_logits")?;
        let ra = floats(&r, "all_logits")?;
        if rp.len() != prefill.len() || ra.len() != all.len() {
            bail!("{}: logits of another shape", rpath.display());
        }
        let rg: Vec<Vec<u32>> = serde_json::from_value(r["greedy"].clone())?;
        let d_prefill = max_abs_delta(&prefill, &rp);
        let d_all = max_abs_delta(&all, &ra);
        let scale = max_abs(&ra).max(1.0);
        let same_rows = greedy.iter().zip(&rg).filter(|(a, b)| a == b).count();
        let common: Vec<usize> = greedy
            .iter()
            .zip(&rg)
            .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
            .collect();
        // f32 must agree to float rounding and decode the same tokens; bf16 (8-bit mantissa)
        // is reported, with a loose bound that only catches a broken kernel.
        let f32_run = lm.model.dtype() == DType::F32;
        let tol = if f32_run { 1e-3 } else { 0.25 };
        let agree =
            d_prefill <= tol * scale && d_all <= tol * scale && (!f32_run || same_rows == rg.len());
        line["reference"] = json!(r.get("device"));
        line["reference_dtype"] = json!(r.get("dtype"));
        line["max_abs_logit"] = json!(scale);
        line["max_abs_delta_prefill"] = json!(d_prefill);
        line["max_abs_delta_all_positions"] = json!(d_all);
        line["greedy_rows_equal"] = json!(format!("{same_rows}/{}", rg.len()));
        line["greedy_common_prefix"] = json!(common);
        line["agree"] = json!(agree);
    }
    Ok(line)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

#[allow(clippy::too_many_arguments)]
fn sample_bench(
    model: &Path,
    device: &str,
    dtype: &str,
    n: usize,
    tokens: usize,
    prompt_len: usize,
    temperature: f64,
    batch_rows: usize,
    sampler: SamplerPlacement,
) -> anyhow::Result<Value> {
    let (mut lm, load_s) = load(model, device, dtype)?;
    lm.eos_ids.clear(); // every sample runs to `tokens`
    let vocab = lm.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    // random ids above the special and byte tokens (any token would do)
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.random_range(259.min(vocab - 1)..vocab))
        .collect();
    let settings = DecodeSettings {
        sampling: Sampling {
            temperature,
            top_p: 1.0,
        },
        max_new_tokens: tokens,
        seed: 42,
        stop: vec![],
        sampler,
        kv_dtype: None,
        cpu_shards: None,
    };
    let run = |samples: usize,
               settings: &DecodeSettings|
     -> anyhow::Result<(f64, usize, usize, Vec<f64>)> {
        let mut gens_total = 0;
        let mut steps = 0;
        let mut step_times = Vec::new();
        let t = Instant::now();
        let mut first = 0;
        while first < samples {
            let take = batch_rows.min(samples - first);
            let req = Request {
                prompt_ids: prompt.clone(),
                id: "bench".into(),
                first_sample: first,
                samples: take,
            };
            let mut last = Instant::now();
            let (gens, stats) = generate_group(&lm, &[req], settings, |_| {
                step_times.push(last.elapsed().as_secs_f64());
                last = Instant::now();
            })?;
            gens_total += stats.generated;
            steps += stats.steps;
            if let Some(g) = gens[0]
                .iter()
                .find(|g| g.token_ids.len() != settings.max_new_tokens)
            {
                bail!(
                    "a sample has {} tokens, not {}",
                    g.token_ids.len(),
                    settings.max_new_tokens
                );
            }
            first += take;
        }
        Ok((t.elapsed().as_secs_f64(), gens_total, steps, step_times))
    };
    // Warm-up: loads the kernels (the driver compiles candle's PTX on first use) and cuBLAS.
    let warm = DecodeSettings {
        max_new_tokens: 4,
        ..settings.clone()
    };
    let (warm_s, _, _, _) = run(n.min(8), &warm)?;
    let (secs, generated, steps, step_times) = run(n, &settings)?;
    let decode_times = &step_times[1.min(step_times.len())..];
    Ok(json!({
        "check": "sample", "device": device, "dtype": dtype_name(lm.model.dtype()),
        "layers": lm.config.num_hidden_layers, "hidden": lm.config.hidden_size, "params": lm.config.num_parameters(),
        "n": n, "new_tokens": tokens, "prompt_tokens": prompt_len, "temperature": temperature, "eos": "disabled",
        "sampler_on_device": sampler.reduces_on(lm.model.device()),
        "generated_tokens": generated, "seconds": secs, "tokens_per_s": generated as f64 / secs,
        "steps": steps, "first_step_incl_prefill_s": step_times.first().copied().unwrap_or(f64::NAN),
        "median_decode_step_ms": 1000.0 * median(decode_times), "load_s": load_s, "warmup_s": warm_s,
    }))
}

/// See `Cmd::OpBench`. Shapes of Llama-3.2-1B: hidden 2048, 32 heads of 64 (8 KV heads),
/// MLP 8192, vocabulary 128256.
fn op_bench(device: &str, dtype: &str, rows: usize, len: usize) -> anyhow::Result<Value> {
    use candle_core::{Module, Var, D};
    let dev = east::model::runtime::device(device)?;
    let dt = east::model::runtime::dtype(dtype, &dev)?;
    let (h, heads, kv, hd, mlp, vocab) =
        (2048usize, 32usize, 8usize, 64usize, 8192usize, 128256usize);
    let n = rows * len;
    let var = |shape: &[usize]| -> anyhow::Result<Var> {
        Ok(Var::from_tensor(
            &(Tensor::randn(0f32, 0.02, shape, &dev)?.to_dtype(dt)?),
        )?)
    };
    // (name, forward ms, backward ms): median of 3 after one warm-up, waiting for the device
    let mut out = serde_json::Map::new();
    let mut time =
        |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<()> {
            let (mut fw, mut bw) = (vec![], vec![]);
            for rep in 0..4 {
                dev.synchronize()?;
                let t0 = Instant::now();
                let y = f()?;
                dev.synchronize()?;
                let t1 = Instant::now();
                // rows first: candle sums a whole tensor in one thread block, which would be timed too
                let grads = y
                    .to_dtype(DType::F32)?
                    .sum(D::Minus1)?
                    .sum_all()?
                    .backward()?;
                dev.synchronize()?;
                let t2 = Instant::now();
                drop(grads);
                if rep > 0 {
                    fw.push((t1 - t0).as_secs_f64() * 1e3);
                    bw.push((t2 - t1).as_secs_f64() * 1e3);
                }
            }
            out.insert(
                name.into(),
                json!({"fwd_ms": median(&fw), "bwd_ms": median(&bw)}),
            );
            Ok(())
        };
    let x = var(&[rows, len, h])?;
    let w_mlp = var(&[mlp, h])?;
    let w_q = var(&[heads * hd, h])?;
    let norm_w = var(&[h])?;
    time("linear 2048->8192 (gate/up)", &|| {
        east::model::LinearLayer::new(w_mlp.as_tensor().clone()).forward(x.as_tensor())
    })?;
    time("linear 2048->2048 (q/o)", &|| {
        east::model::LinearLayer::new(w_q.as_tensor().clone()).forward(x.as_tensor())
    })?;
    time("rms_norm", &|| {
        east::model::train_ops::rms_norm(x.as_tensor(), norm_w.as_tensor(), 1e-5)
    })?;
    let a = var(&[rows, len, mlp])?;
    let b = var(&[rows, len, mlp])?;
    time("swiglu(gate, up)", &|| {
        east::model::train_ops::swiglu(a.as_tensor(), b.as_tensor())
    })?;
    let q = var(&[rows, heads, len, hd])?;
    let pos = Tensor::arange(0u32, len as u32, &dev)?.to_dtype(DType::F32)?;
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();
    let ang = pos
        .unsqueeze(1)?
        .broadcast_mul(&Tensor::new(inv.as_slice(), &dev)?.unsqueeze(0)?)?;
    let (cos, sin) = (ang.cos()?.to_dtype(dt)?, ang.sin()?.to_dtype(dt)?); // (T, D/2)
    let tables = east::model::train_ops::RopeTables::new(&cos, &sin, 1.0 / (hd as f64).sqrt())?;
    time("rope (q, scaled)", &|| {
        east::model::train_ops::rope(q.as_tensor(), &tables)
    })?;
    let k = var(&[rows, kv, len, hd])?;
    let mask = Tensor::zeros((rows, 1, len, len), dt, &dev)?;
    time("attention probs (q·kᵀ GQA, mask, softmax)", &|| {
        east::model::train_ops::attention_probs(q.as_tensor(), k.as_tensor(), Some(&mask))
    })?;
    let s = var(&[rows, heads, len, len])?;
    time("softmax (+mask)", &|| {
        east::model::train_ops::softmax_masked(s.as_tensor(), Some(&mask))
    })?;
    time("transpose+contiguous (b,t,h,d)->(b,h,t,d)", &|| {
        x.as_tensor()
            .reshape((rows, len, heads, hd))?
            .transpose(1, 2)?
            .contiguous()
    })?;
    let emb = var(&[vocab, h])?;
    let ids = Tensor::from_vec(
        (0..n as u32)
            .map(|i| (i * 7919) % vocab as u32)
            .collect::<Vec<u32>>(),
        n,
        &dev,
    )?;
    time("embedding index_select", &|| {
        emb.as_tensor().index_select(&ids, 0)
    })?;
    let master = Var::from_tensor(&Tensor::randn(0f32, 0.02, (vocab, h), &dev)?)?;
    time("cast f32->bf16 of the embedding", &|| {
        master.as_tensor().to_dtype(dt)
    })?;
    let hc = Tensor::randn(0f32, 1.0, (n.min(1024), h), &dev)?;
    let wh = master.as_tensor().detach();
    time("head chunk f32 (1024 rows)", &|| hc.matmul(&wh.t()?))?;
    let (hcb, whb) = (hc.to_dtype(dt)?, wh.to_dtype(dt)?);
    time("head chunk in the model dtype (1024 rows)", &|| {
        hcb.matmul(&whb.t()?)
    })?;
    Ok(
        json!({"check": "op-bench", "device": device, "dtype": format!("{dt:?}").to_lowercase(), "rows": rows, "len": len, "ops": out}),
    )
}

struct TrainSpec {
    steps: usize,
    batch: usize,
    micro_batch: usize,
    len: usize,
    lr: f64,
    lora: bool,
    lora_rank: usize,
    lora_alpha: f64,
    engine: EngineChoice,
    profile: bool,
}

/// Lowercase words, `chars` bytes long: with the synthetic and tiny tokenizers (no merges in
/// the synthetic one) most bytes are one token each.
fn random_text(rng: &mut impl Rng, chars: usize) -> String {
    let mut s = String::with_capacity(chars);
    while s.len() < chars {
        if !s.is_empty() && rng.random_range(0..6) == 0 {
            s.push(' ');
        } else {
            s.push((b'a' + rng.random_range(0..26u8)) as char);
        }
    }
    s
}

fn train_bench(
    model: &Path,
    device: &str,
    dtype: &str,
    work: &Path,
    spec: &TrainSpec,
    out: Option<&Path>,
    reference: Option<&Path>,
) -> anyhow::Result<Value> {
    std::fs::create_dir_all(work)?;
    let data = work.join("train.jsonl");
    let ckpt = work.join("checkpoint");
    let _ = std::fs::remove_dir_all(&ckpt);
    // Rows of `len` tokens with the synthetic tokenizer (one token per byte; the end-of-turn
    // token is appended to each completion): a quarter prompt, the rest completion.
    let prompt_chars = spec.len / 4;
    let completion_chars = spec.len - prompt_chars - 1;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut text = String::new();
    for i in 0..spec.batch * spec.steps {
        let row = json!({"id": format!("r{i}"), "prompt": random_text(&mut rng, prompt_chars),
                         "completion": random_text(&mut rng, completion_chars), "weight": 1.0});
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(&data, text)?;
    let model = ModelConfig {
        path: model.to_string_lossy().into_owned(),
        adapter: None,
        device: device
            .parse()
            .map_err(|e| anyhow::anyhow!("--device: {e}"))?,
        dtype: <DTypeChoice as clap::ValueEnum>::from_str(dtype, false)
            .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
        ..ModelConfig::default()
    };
    let train_config = TrainConfig {
        batch_size: spec.batch,
        micro_batch_size: spec.micro_batch,
        lr: spec.lr,
        max_steps: Some(spec.steps),
        max_length: spec.len,
        lora: spec.lora,
        lora_rank: spec.lora_rank,
        lora_alpha: spec.lora_alpha,
        engine: spec.engine,
        save_steps: 0,
        ..TrainConfig::default()
    };
    let job = TrainJob {
        progress: false,
        profile: spec.profile,
        ..TrainJob::new(model, train_config, data.clone(), ckpt.clone())
    };
    let t = Instant::now();
    let report = train(&job)?;
    let total_s = t.elapsed().as_secs_f64();
    let log =
        std::fs::read_to_string(ckpt.join("train_log.jsonl")).context("reading train_log.jsonl")?;
    let steps: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let get = |k: &str| -> Vec<f64> {
        steps
            .iter()
            .map(|s| s[k].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let (losses, norms, toks, tps) = (
        get("loss"),
        get("grad_norm"),
        get("tokens"),
        get("tokens_per_s"),
    );
    let step_s: Vec<f64> = toks.iter().zip(&tps).map(|(t, r)| t / r).collect();
    // steady state: every step after the first (which loads kernels and grows the allocator)
    let (later_tok, later_s) = if step_s.len() > 1 {
        (
            toks[1..].iter().sum::<f64>(),
            step_s[1..].iter().sum::<f64>(),
        )
    } else {
        (toks.iter().sum(), step_s.iter().sum())
    };
    let mut line = json!({
        "check": if spec.lora { "train-lora" } else { "train-full" }, "device": device, "engine": report.engine,
        "steps": steps.len(), "batch": spec.batch, "micro_batch": spec.micro_batch, "len": spec.len,
        "lora_rank": spec.lora.then_some(spec.lora_rank), "tokens_per_step": toks.first(),
        "tokens_per_s": later_tok / later_s, "first_step_s": step_s.first(), "median_step_s": median(&step_s[1.min(step_s.len())..]),
        "losses": losses, "grad_norms": norms, "seconds_total": total_s,
    });
    if !report.phases.is_empty() {
        line["phases"] = json!(report
            .phases
            .iter()
            .map(|(k, (s, n))| (k.clone(), json!({"s": s, "calls": n})))
            .collect::<serde_json::Map<_, _>>());
    }
    if let Some(o) = out {
        std::fs::write(o, line.to_string())?;
    }
    if let Some(rpath) = reference {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(rpath)
                .with_context(|| format!("reading {}", rpath.display()))?,
        )?;
        let rl: Vec<f64> = serde_json::from_value(r["losses"].clone())?;
        let rn: Vec<f64> = serde_json::from_value(r["grad_norms"].clone())?;
        let rel = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-6))
                .fold(0.0, f64::max)
        };
        let (dl, dn) = (rel(&losses, &rl), rel(&norms, &rn));
        line["reference"] = r["device"].clone();
        line["reference_engine"] = r["engine"].clone();
        line["max_rel_delta_loss"] = json!(dl);
        line["max_rel_delta_grad_norm"] = json!(dn);
        line["agree"] = json!(rl.len() == losses.len() && dl <= 1e-3 && dn <= 1e-3);
    }
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(line)
}
