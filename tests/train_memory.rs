//! Does candle skip the gradient of a frozen (detached) weight? No: its matmul backward
//! computes the gradient of both operands and, when one is not tracked, keeps that
//! weight-sized gradient in the gradient store until the backward returns. This test measures
//! the store after a LoRA backward on the tiny model with the frozen projections computed
//! (a) as `x.matmul(&w.detach().t())` and (b) through `LinearLayer`'s frozen-weight matmul,
//! whose backward returns no weight gradient. The peak-memory consequence on SmolLM2 is measured by
//! `EAST_BENCH_MODE=autograd-lora[-plain] cargo bench --bench train`.

use std::sync::Arc;

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
