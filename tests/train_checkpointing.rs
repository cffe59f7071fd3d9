//! Activation checkpointing (`train.gradient_checkpointing`) recomputes each decoder layer in
//! the backward pass from its kept input. The recomputation runs the same ops on the same
//! values, so the gradients must be the ones of the engine without checkpointing — which
//! `tests/train_grad.rs` checks against finite differences and the CPU engine — bit for bit:
//! for full fine-tuning (tied and untied embeddings) and LoRA with dropout (the masks must be
//! drawn again exactly), with the coefficients given to the forward (SFT) and to the backward
//! (DPO/KTO), over two accumulated micro-batches, in f32 and bf16, and after an optimiser step.
//! The trainer-level test runs SFT, DPO and KTO, full and LoRA, through `east::train::train`.

use candle_core::{DType, Device, Tensor};
use east::config::Config;
use east::model::testing::{write_tiny_model, write_tiny_model_with, TinySpec};
use east::model::{load, LoadedModel};
use east::train::engine::autograd::AutogradEngine;
use east::train::{Engine, LoraSpec, Packed, TrainJob};
use serde_json::{json, Value};

fn tiny(seed: u64, tied: bool, dtype: DType) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        tie_word_embeddings: tied,
        ..TinySpec::default()
    };
    write_tiny_model_with(dir.path(), seed, &spec).unwrap();
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, dtype).unwrap();
    (dir, m)
}

/// Two micro-batches: rows of different lengths (padding), one longer than 64 tokens.
fn batches() -> [Packed; 2] {
    let mut a = Packed::new();
    let long_prompt: Vec<u32> = (0..12).map(|i| 3 + (i * 37) % 250).collect();
    let long_resp: Vec<u32> = (0..62).map(|i| 3 + (i * 53 + 11) % 280).collect();
    a.push(&long_prompt, &long_resp);
    a.push(&[1, 40, 41], &[42, 2]);
    let mut b = Packed::new();
    b.push(&[1, 7, 9, 100, 200], &[60, 61, 62, 2]);
    b.push(&[5, 6], &[8, 9, 10]);
    [a, b]
}

const COEFS: [f64; 2] = [0.7, -1.3];

fn lora() -> LoraSpec {
    LoraSpec {
        rank: 3,
        alpha: 6.0,
        dropout: 0.25,
        targets: east::train::engine::PROJECTIONS.map(String::from).to_vec(),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Values by tensor name.
type Named = Vec<(String, Vec<f32>)>;

/// The accumulated gradients and, after one AdamW step, the parameters of the engine, with
/// the coefficients in the forward (`early`) or the backward.
fn run(
    m: &LoadedModel,
    spec: Option<LoraSpec>,
    checkpointing: bool,
    early: bool,
) -> (Named, Named) {
    let mut e = AutogradEngine::new(&m.model, spec.clone(), 5).unwrap();
    if spec.is_some() {
        // B starts at zero: give it values so every path of the adapters carries gradient
        let mut st = e.state().unwrap();
        for (n, t) in st.params.iter_mut() {
            if n.contains("lora_B") {
                let k = t.elem_count();
                let v: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.11).cos() * 0.1).collect();
                *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
            }
        }
        e.load_state(st).unwrap();
    }
    e.checkpointing = checkpointing;
    for (i, b) in batches().iter().enumerate() {
        if early {
            e.forward(b, Some(&COEFS), 77 + i as u64).unwrap();
            e.backward(None).unwrap();
        } else {
            e.forward(b, None, 77 + i as u64).unwrap();
            e.backward(Some(&COEFS)).unwrap();
        }
    }
    let grads: Vec<(String, Vec<f32>)> = e
        .trainable()
        .into_iter()
        .map(|p| {
            let g = e
                .grad(&p.name)
                .unwrap_or_else(|| panic!("{} has no gradient", p.name));
            (p.name, values(&g))
        })
        .collect();
    let norm = e.grad_sq_norm().unwrap().sqrt();
    let opt = east::train::optim::AdamW::default();
    e.step(&opt, 1e-3, east::train::optim::clip_scale(norm, 1.0))
        .unwrap();
    let params = e
        .state()
        .unwrap()
        .params
        .iter()
        .map(|(n, t)| (n.clone(), values(t)))
        .collect();
    (grads, params)
}

fn assert_identical(what: &str, a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(b) {
        assert!(
            x.iter().any(|v| *v != 0.0),
            "{what} {n}: all zero — the check would prove nothing"
        );
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs() / p.abs().max(q.abs()).max(1e-30))
            .fold(0f32, f32::max);
        assert!(same, "{what} {n}: max relative difference {d}");
    }
}

#[test]
fn checkpointed_gradients_and_step_equal_the_plain_ones_full_and_lora() {
    for dtype in [DType::F32, DType::BF16] {
        for tied in [false, true] {
            let (_d, m) = tiny(31, tied, dtype);
            for spec in [None, Some(lora())] {
                for early in [true, false] {
                    let what = format!(
                        "{dtype:?} tied={tied} lora={} coefs in {}",
                        spec.is_some(),
                        if early { "forward" } else { "backward" }
                    );
                    let (g0, p0) = run(&m, spec.clone(), false, early);
                    let (g1, p1) = run(&m, spec.clone(), true, early);
                    assert_identical(&format!("{what} gradient"), &g0, &g1);
                    assert_identical(&format!("{what} parameter after a step"), &p0, &p1);
                }
            }
        }
    }
}

#[test]
fn lora_dropout_changes_the_gradient_so_its_masks_are_really_redrawn() {
    // The equality above would hold trivially if dropout were inactive: a different dropout
    // stream must give a different gradient.
    let (_d, m) = tiny(31, false, DType::F32);
    let grad_with_seed = |seed: u64| {
        let mut e = AutogradEngine::new(&m.model, Some(lora()), 5).unwrap();
        e.checkpointing = true;
        e.forward(&batches()[0], Some(&COEFS), seed).unwrap();
        e.backward(None).unwrap();
        values(
            &e.grad("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight")
                .unwrap(),
        )
    };
    // (B starts at zero, so A's gradient is zero: B's carries the dropped input)
    let (g1, g2) = (grad_with_seed(1), grad_with_seed(2));
    assert!(g1.iter().any(|v| *v != 0.0));
    assert_ne!(g1, g2);
}

fn msgs(q: &str) -> Value {
    json!([{"role": "user", "content": q}])
}

fn assistant(a: &str) -> Value {
    json!([{"role": "assistant", "content": a}])
}

const QA: [(&str, &str, &str); 4] = [
    ("What is 2+3?", "2+3=5. \\boxed{5}", "2+3=6. \\boxed{6}"),
    ("What is 4+4?", "4+4=8 so \\boxed{8}", "It is \\boxed{9}"),
    ("the sum of 1 and 1?", "\\boxed{2}", "\\boxed{3}"),
    (
        "sides of a box?",
        "a box has 6 sides: \\boxed{6}",
        "\\boxed{4}",
    ),
];

fn rows(loss: &str) -> String {
    let mut out = String::new();
    for (i, (q, a, b)) in QA.iter().enumerate() {
        let w = 0.5 + i as f64 * 0.5;
        let rows = match loss {
            "sft" => vec![json!({"prompt": msgs(q), "completion": assistant(a), "weight": w})],
            "dpo" => vec![
                json!({"prompt": msgs(q), "chosen": assistant(a), "rejected": assistant(b), "weight": w}),
            ],
            _ => vec![
                json!({"prompt": msgs(q), "completion": assistant(a), "label": true, "weight": w}),
                json!({"prompt": msgs(q), "completion": assistant(b), "label": false, "weight": w}),
            ],
        };
        for (j, mut r) in rows.into_iter().enumerate() {
            r["id"] = json!(format!("q{i}-{j}"));
            out.push_str(&format!("{r}\n"));
        }
    }
    out
}

/// The trained weights' bytes and the log's losses of a run through the trainer.
fn train(dir: &std::path::Path, loss: &str, lora: bool, ckpt: bool) -> (Vec<u8>, Vec<f64>) {
    let data = dir.join(format!("{loss}.jsonl"));
    std::fs::write(&data, rows(loss)).unwrap();
    let out = dir.join(format!("out-{loss}-{lora}-{ckpt}"));
    let set = [
        format!("model.path={}", dir.join("model").display()),
        "model.dtype=\"f32\"".into(),
        "train.engine=\"autograd\"".into(),
        format!("train.loss=\"{loss}\""),
        format!("train.lora={lora}"),
        "train.lora_dropout=0.1".into(),
        "train.batch_size=4".into(),
        "train.micro_batch_size=2".into(),
        "train.max_steps=2".into(),
        "train.lr=1e-3".into(),
        format!("train.gradient_checkpointing={ckpt}"),
    ];
    let c = Config::from_toml_str("", "test", &set).unwrap();
    let job = TrainJob {
        progress: false,
        ..TrainJob::new(c.model.clone(), c.train.clone(), data, out.clone())
    };
    east::train::train(&job).unwrap();
    let file = if lora {
        "adapter_model.safetensors"
    } else {
        "model.safetensors"
    };
    let losses = std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    (std::fs::read(out.join(file)).unwrap(), losses)
}

#[test]
fn trainer_runs_with_checkpointing_give_the_same_weights_for_every_loss() {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(&d.path().join("model"), 11).unwrap();
    for loss in ["sft", "dpo", "kto"] {
        for lora in [false, true] {
            let (w0, l0) = train(d.path(), loss, lora, false);
            let (w1, l1) = train(d.path(), loss, lora, true);
            assert_eq!(l0.len(), 2, "{loss}: two steps logged");
            assert_eq!(l0, l1, "{loss} lora={lora}: losses");
            assert!(w0 == w1, "{loss} lora={lora}: trained weights differ");
        }
    }
}
