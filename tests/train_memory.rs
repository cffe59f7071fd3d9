//! Does candle skip the gradient of a frozen (detached) weight? No: its matmul backward
//! computes the gradient of both operands and, when one is not tracked, keeps that
//! weight-sized gradient in the gradient store until the backward returns. This test measures
//! the store after a LoRA backward on the tiny model with the frozen projections computed
//! (a) as `x.matmul(&w.detach().t())` and (b) through `LinearLayer`'s frozen-weight matmul,
//! whose backward returns no weight gradient. The peak-memory consequence on SmolLM2 is measured by
//! `EAST_BENCH_MODE=autograd-lora[-plain] cargo bench --bench train`.
//!
//! The memory estimate (`east::train::memory`) against the measured peak RSS above the
//! process's baseline, each measurement in a child process of its own: within ±15% for a
//! small shape, full and LoRA, checkpointing on and off (the other shapes:
//! `EAST_BENCH_MODE=estimate cargo bench --bench train`).

use std::sync::Arc;

#[path = "support/memory_probe.rs"]
mod memory_probe;

use candle_core::{DType, Device, Tensor};
use east::model::testing::write_tiny_model;
use east::model::{load, LinearAdapter};
use east::train::engine::autograd::LoraAdapter;

/// Bytes of all tensors in the gradient store of one LoRA backward, and the bytes of the
/// frozen projection weights.
fn grad_store_bytes(plain: bool) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 4).unwrap();
    let mut m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let mut frozen_bytes = 0;
    let mut vars = Vec::new();
    for (name, layer) in m.model.linear_layers_mut() {
        // Layer 0's q/k/v read the (frozen) embeddings: nothing upstream needs a gradient, so
        // candle never runs their backward. Every other frozen projection is on the path.
        if !name.starts_with("model.layers.0.self_attn.") || name.ends_with("o_proj") {
            frozen_bytes += layer.weight().elem_count() * 4;
        }
        let a = candle_core::Var::from_tensor(
            &Tensor::ones((2, layer.in_dim()), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let b = candle_core::Var::from_tensor(
            &Tensor::ones((layer.out_dim(), 2), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let ad = LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 0.01,
            dropout: 0.0,
            seed: None,
            token_map: Arc::new(vec![]),
            plain,
        };
        layer.set_adapter(Some(Arc::new(ad) as Arc<dyn LinearAdapter>));
        vars.push(a);
        vars.push(b);
    }
    let ids = Tensor::new(&[[1u32, 40, 41, 42, 2, 7, 9, 11]], &Device::Cpu).unwrap();
    let h = m.model.forward_hidden(&ids, None).unwrap();
    let loss = m.model.logits(&h).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for v in &vars {
        assert!(
            grads.get(v.as_tensor()).is_some(),
            "LoRA matrices get gradients"
        );
    }
    let total: usize = grads
        .get_ids()
        .map(|id| grads.get_id(*id).unwrap().elem_count() * 4)
        .sum();
    (total, frozen_bytes)
}

#[test]
fn frozen_matmul_keeps_no_weight_sized_gradients() {
    let (plain, frozen) = grad_store_bytes(true);
    let (custom, _) = grad_store_bytes(false);
    // The plain matmul leaves one weight-sized gradient per frozen weight on the backward path;
    // the custom op none.
    assert_eq!(
        plain - custom,
        frozen,
        "plain {plain} B, custom op {custom} B, frozen weights {frozen} B"
    );
    assert!(custom < plain);
}

/// The probe a child process runs (see `memory_probe::run_child`); nothing without its
/// environment variable.
#[test]
#[ignore = "run in a child process by estimate_is_within_15_percent_of_the_measured_peak"]
fn memory_probe_child() {
    assert!(
        memory_probe::child_main(),
        "run with {} set",
        memory_probe::ENV
    );
}

#[test]
fn estimate_is_within_15_percent_of_the_measured_peak() {
    use memory_probe::Probe;
    let spec = east::model::testing::TinySpec {
        num_hidden_layers: 4,
        hidden_size: 256,
        intermediate_size: 768,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 512,
        ..Default::default()
    };
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--ignored",
        "--exact",
        "memory_probe_child",
        "--nocapture",
        "--test-threads=1",
    ];
    let mut report = Vec::new();
    for (lora, checkpointing) in [(false, false), (false, true), (true, false), (true, true)] {
        let p = Probe {
            cfg: east::model::testing::tiny_config(&spec, 4096),
            lora,
            checkpointing,
            rows: 2,
            tokens: 384,
            accumulation: 2,
        };
        let measured = memory_probe::run_child(&exe, &args, &p) as f64;
        let e = p.estimate();
        let est = e.total as f64;
        report.push(format!(
            "lora={lora} checkpointing={checkpointing}: estimate {:.1} MiB, measured {:.1} MiB ({:+.1}%)\n{}",
            est / 1048576.0,
            measured / 1048576.0,
            100.0 * (est / measured - 1.0),
            e.table()
        ));
        assert!(
            (est / measured - 1.0).abs() <= 0.15,
            "{}",
            report.join("\n")
        );
    }
    eprintln!("{}", report.join("\n"));
}
