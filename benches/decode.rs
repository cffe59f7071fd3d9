//! Decode-step breakdown on SmolLM2-135M:
//!
//!     cargo bench --bench decode                       # all parts
//!     cargo bench --bench decode -- step|matmul|lm_head # one part
//!
//! Batch 128, ~200 cached columns: the sampler's working point. Prints ms per decode step
//! and a breakdown of where the time goes (the same ops timed in isolation).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use east::model::{gguf::bundled_smollm2_path, load, KvCache};

/// CPU seconds (user + system) used by this process so far (Linux; 0 elsewhere). On a shared
/// machine wall time inflates with other load; CPU time per step stays comparable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f(); // warm-up
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn decode_step_batch128() {
    let dev = Device::Cpu;
    let path = bundled_smollm2_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    let m = load(path.to_str().unwrap(), &dev, DType::F32).unwrap();
    let cfg = &m.config;
    let batch: usize = std::env::var("EAST_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let ctx = 200;
    let steps: usize = std::env::var("EAST_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let prompt: Vec<u32> = (0..ctx as u32).map(|i| 100 + (i * 37) % 4000).collect();

    let kv_dtype = match std::env::var("EAST_BENCH_KV").as_deref() {
        Ok("f16") => DType::F16,
        _ => DType::F32,
    };
    let mut cache = KvCache::new(cfg, 1, ctx + steps + 2, vec![0], kv_dtype, &dev).unwrap();
    let t = Instant::now();
    m.model
        .forward_step(
            &Tensor::new(prompt.as_slice(), &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            &mut cache,
        )
        .unwrap();
    println!(
        "prefill 1×{ctx}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    cache.repeat_rows(&[batch]).unwrap();

    let ids: Vec<u32> = (0..batch as u32).map(|i| 200 + i).collect();
    let x = Tensor::from_vec(ids, (batch, 1), &dev).unwrap();
    m.model.forward_step(&x, &mut cache).unwrap(); // warm-up
    let t = Instant::now();
    let c0 = cpu_seconds();
    for _ in 0..steps {
        m.model.forward_step(&x, &mut cache).unwrap();
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / steps as f64;
    let cpu_ms = (cpu_seconds() - c0) * 1000.0 / steps as f64;
    println!(
        "decode: batch {batch}, ~{} cached columns ({kv_dtype:?} cache): {ms:.1} ms/step = {:.0} tokens/s ({} threads; {cpu_ms:.0} CPU-ms/step)",
        cache.len(),
        batch as f64 * 1000.0 / ms,
        candle_core::utils::get_num_threads()
    );

    if std::env::var("EAST_BENCH_BREAKDOWN").is_ok_and(|v| v == "0") {
        return;
    }
    // Breakdown: the ops of one step, timed in isolation at the same shapes (weights hot in
    // cache, so the in-situ step costs more than the sum).
    let h = cfg.hidden_size;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let l = &m.model.layers[0];
    let xs = Tensor::randn(0f32, 1.0, (batch, 1, h), &dev).unwrap();
    let xi = Tensor::randn(0f32, 1.0, (batch, 1, cfg.intermediate_size), &dev).unwrap();
    let reps = 20;
    let proj = time(reps, || {
        for lin in [
            &l.self_attn.q_proj,
            &l.self_attn.k_proj,
            &l.self_attn.v_proj,
            &l.self_attn.o_proj,
        ] {
            candle_core::Module::forward(lin, &xs).unwrap();
        }
    });
    let mlp = time(reps, || {
        candle_core::Module::forward(&l.mlp.gate_proj, &xs).unwrap();
        candle_core::Module::forward(&l.mlp.up_proj, &xs).unwrap();
        candle_core::Module::forward(&l.mlp.down_proj, &xi).unwrap();
    });
    let g = cfg.num_kv_groups();
    let q = Tensor::randn(
        0f32,
        1.0,
        (batch, cfg.num_key_value_heads, g, cfg.head_dim),
        &dev,
    )
    .unwrap();
    let (kc, vc) = cache.layer(0).unwrap();
    let attn = time(reps, || {
        let s = q.matmul(&kc.t().unwrap()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&vc).unwrap();
    });
    let pads = vec![0usize; batch];
    let q4 = q
        .reshape((batch, cfg.num_attention_heads, 1, cfg.head_dim))
        .unwrap();
    let kernel = time(reps, || {
        east::model::attention::decode_attention(&q4, &kc, &vc, &pads).unwrap();
    });
    let qk = time(reps, || {
        q.matmul(&kc.t().unwrap()).unwrap();
    });
    let last = Tensor::randn(0f32, 1.0, (batch, h), &dev).unwrap();
    let head = time(5, || {
        candle_core::Module::forward(&m.model.lm_head, &last).unwrap();
    });
    let norm = time(reps, || {
        candle_nn::ops::rms_norm(&xs, &l.input_layernorm, 1e-5).unwrap();
    });
    let n = cfg.num_hidden_layers as f64;
    println!("per layer: q/k/v/o projections {proj:.2} ms, MLP {mlp:.2} ms, attention (QKᵀ, softmax, ·V) {attn:.2} ms (QKᵀ alone {qk:.2}), rms norm {norm:.3} ms; decode kernel {kernel:.2} ms");
    println!(
        "× {n} layers: projections {:.1} ms, MLP {:.1} ms, attention (kernel) {:.1} ms, norms {:.1} ms; lm_head {head:.1} ms; sum {:.1} ms of {ms:.1} (rest: rope, cache writes, residuals, masks)",
        proj * n,
        mlp * n,
        kernel * n,
        2.0 * norm * n,
        (proj + mlp + kernel + 2.0 * norm) * n + head
    );
    let _ = kv;
}

fn matmul_layouts() {
    let dev = Device::Cpu;
    let b = 128;
    for (k, n) in [
        (576usize, 1536usize),
        (576, 3072),
        (1536, 576),
        (576, 576),
        (576, 960),
        (576, 49152),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let reps = if n > 10000 { 3 } else { 20 };
        let a = time(reps, || {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        let c = time(reps, || {
            x.matmul(&wt).unwrap();
        });
        let layer = east::model::LinearLayer::new(w.clone());
        let e = time(reps, || {
            candle_core::Module::forward(&layer, &x).unwrap();
        });
        let gf = 2.0 * (b * k * n) as f64 / 1e6;
        println!("({b}x{k})·({k}x{n}): W.t() {a:.2} ms ({:.0} GFLOPS), Wt contiguous {c:.2} ms ({:.0} GFLOPS), LinearLayer {e:.2} ms", gf / a, gf / c);
    }
}

fn lm_head_variants() {
    let dev = Device::Cpu;
    let (b, k, n) = (128usize, 576usize, 49152usize);
    let x = Tensor::randn(0f32, 1.0, (b, k), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
    let gf = 2.0 * (b * k * n) as f64 / 1e6;
    let a = time(3, || {
        x.matmul(&w.t().unwrap()).unwrap();
    });
    let c = time(3, || {
        w.matmul(&x.t().unwrap())
            .unwrap()
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
    });
    let c2 = time(3, || {
        w.matmul(&x.t().unwrap()).unwrap();
    });
    let xt = x.t().unwrap().contiguous().unwrap();
    let c3 = time(3, || {
        w.matmul(&xt).unwrap();
    });
    let d = time(3, || {
        let parts: Vec<Tensor> = (0..8)
            .map(|i| {
                x.matmul(&w.narrow(0, i * n / 8, n / 8).unwrap().t().unwrap())
                    .unwrap()
            })
            .collect();
        Tensor::cat(&parts, 1).unwrap();
    });
    println!("lm_head x·Wᵀ {a:.1} ms ({:.0} GFLOPS); W·xᵀ then transpose {c:.1} ms ({:.0}); W·xᵀ alone {c2:.1}; W·(xᵀ contiguous) {c3:.1}; 8 chunks {d:.1} ms", gf / a, gf / c);
}

fn main() {
    let part = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let parts: [(&str, fn()); 3] = [
        ("step", decode_step_batch128),
        ("matmul", matmul_layouts),
        ("lm_head", lm_head_variants),
    ];
    for (name, f) in parts {
        if part == "all" || part == name {
            println!("== {name}");
            f();
        }
    }
}
