//! Gradient checks of the training paths on the tiny seeded Llama, in f64:
//!
//! * candle's autograd through `Llama::forward_hidden` + `logits` against central finite
//!   differences, for every kind of parameter (embeddings, q/k/v/o, gate/up/down, both layer
//!   norms, the final norm, lm_head) — the composed ops must not drop gradients the way candle's
//!   fused softmax/rms_norm/rope do;
//! * the CPU engine's hand-written backward against finite differences (every kind again, on
//!   rows packed without padding and longer than one attention block) and against candle's
//!   autograd, tensor by tensor, with tied and untied embeddings;
//! * LoRA gradients (with dropout) against finite differences, frozen weights without gradients.
//!
//! Each check runs on every family's layer: Llama, Qwen2 (q/k/v biases), Qwen3 (per-head q/k
//! norms, `head_dim` ≠ hidden / heads) and Llama with `attention_bias` (o_proj's bias too).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use east::model::config::{Arch, Family};
use east::model::testing::{write_tiny_model_with, TinySpec};
use east::model::{load, Llama};
use east::train::engine::cpu::CpuEngine;
use east::train::{Engine, LoraSpec, Packed};

fn tiny(seed: u64, tied: bool) -> (tempfile::TempDir, east::model::LoadedModel) {
    tiny_family(seed, tied, &FAMILIES[0])
}

/// A layer of each family: (label, arch, head_dim).
struct FamilyCase {
    label: &'static str,
    arch: fn() -> Arch,
    head_dim: Option<usize>,
}

const FAMILIES: [FamilyCase; 4] = [
    FamilyCase {
        label: "llama",
        arch: Arch::default,
        head_dim: None,
    },
    FamilyCase {
        label: "qwen2",
        arch: || Arch::of(Family::Qwen2),
        head_dim: None,
    },
    FamilyCase {
        label: "qwen3",
        arch: || Arch::of(Family::Qwen3),
        head_dim: Some(32),
    },
    FamilyCase {
        label: "llama attention_bias",
        arch: || Arch {
            qkv_bias: true,
            o_bias: true,
            ..Arch::default()
        },
        head_dim: None,
    },
];

fn tiny_family(
    seed: u64,
    tied: bool,
    family: &FamilyCase,
) -> (tempfile::TempDir, east::model::LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        tie_word_embeddings: tied,
        arch: (family.arch)(),
        head_dim: family.head_dim,
        ..TinySpec::default()
    };
    write_tiny_model_with(dir.path(), seed, &spec).unwrap();
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F64).unwrap();
    (dir, m)
}

/// Three rows: one longer than an attention query block (64), a short one, a middle one.
fn batch() -> Packed {
    let mut p = Packed::new();
    let long_prompt: Vec<u32> = (0..12).map(|i| 3 + (i * 37) % 250).collect();
    let long_resp: Vec<u32> = (0..62).map(|i| 3 + (i * 53 + 11) % 280).collect();
    p.push(&long_prompt, &long_resp);
    p.push(&[1, 40, 41], &[42, 2]);
    p.push(&[1, 7, 9, 100, 200], &[60, 61, 62, 2]);
    p
}

const COEFS: [f64; 3] = [0.7, -1.3, 0.4];

/// Every tensor of the model (each kind once per layer: norms, projections, their biases and
/// the q/k norms where the family has them; embeddings, final norm, lm_head when untied).
fn kinds(cfg: &east::model::LlamaConfig) -> Vec<String> {
    Llama::expected_tensors(cfg)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// A few indices of a tensor with `len` values; for the embedding, entries of used tokens.
fn probe_indices(name: &str, len: usize, hidden: usize) -> Vec<usize> {
    if name == "model.embed_tokens.weight" {
        vec![42 * hidden + 3, hidden + 60, 100 * hidden + 17]
    } else {
        vec![0, len / 3 + 1, len - 2]
    }
}

fn engine_objective(e: &mut CpuEngine<f64>, b: &Packed) -> f64 {
    e.score(b)
        .unwrap()
        .iter()
        .zip(COEFS)
        .map(|(s, c)| c * s.logp)
        .sum()
}

#[test]
fn cpu_engine_gradients_match_finite_differences_for_every_parameter_kind() {
    let cases = FAMILIES.iter().flat_map(|f| [(f, false), (f, true)]);
    for (family, tied) in cases {
        let label = family.label;
        let (_d, m) = tiny_family(21, tied, family);
        let mut e = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
        let b = batch();
        e.forward(&b, None, 0).unwrap();
        e.backward(Some(&COEFS)).unwrap();
        let h = m.config.hidden_size;
        for name in kinds(&m.config) {
            let g = e
                .grad(&name)
                .unwrap_or_else(|| panic!("{name} has no gradient"))
                .to_vec();
            assert!(g.iter().any(|&x| x != 0.0), "{name}: gradient is all zero");
            for i in probe_indices(&name, g.len(), h) {
                let orig = e.param(&name).unwrap()[i];
                let eps = 1e-5;
                e.param_mut(&name).unwrap()[i] = orig + eps;
                let up = engine_objective(&mut e, &b);
                e.param_mut(&name).unwrap()[i] = orig - eps;
                let down = engine_objective(&mut e, &b);
                e.param_mut(&name).unwrap()[i] = orig;
                let fd = (up - down) / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() <= 1e-6 * (1.0 + g[i].abs()),
                    "{label} tied={tied} {name}[{i}]: analytic {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }
}

/// Per-row response log-probabilities through the composed forward, as a graph.
fn autograd_logps(model: &Llama, b: &Packed) -> Tensor {
    // right-padded (B, T) batch from the packed rows
    let rows = b.num_rows();
    let t = b.max_row_len();
    let mut ids = vec![0u32; rows * t];
    let mut mask = vec![0u32; rows * t];
    for r in 0..rows {
        for (j, &tok) in b.tokens[b.rows[r]..b.rows[r + 1]].iter().enumerate() {
            ids[r * t + j] = tok;
            mask[r * t + j] = 1;
        }
    }
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(ids, (rows, t), &dev).unwrap();
    let mask = Tensor::from_vec(mask, (rows, t), &dev).unwrap();
    let hidden = model.forward_hidden(&ids, Some(&mask)).unwrap();
    let logits = model.logits(&hidden).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .flatten_to(1)
        .unwrap(); // (B·T, V)
    let mut sel = Vec::new();
    let mut onehot_rows = vec![0f64; b.targets.len() * rows];
    for (k, tg) in b.targets.iter().enumerate() {
        let r = tg.row;
        let j = tg.pos - b.rows[r];
        sel.push(((r * t + j) * model.config().vocab_size + tg.id as usize) as u32);
        onehot_rows[k * rows + r] = 1.0;
    }
    let flat = lp.flatten_all().unwrap();
    let picked = flat
        .index_select(&Tensor::new(sel.as_slice(), &dev).unwrap(), 0)
        .unwrap(); // (targets)
    let assign = Tensor::from_vec(onehot_rows, (b.targets.len(), rows), &dev).unwrap();
    picked
        .unsqueeze(0)
        .unwrap()
        .matmul(&assign)
        .unwrap()
        .squeeze(0)
        .unwrap() // (rows)
}

fn varmap_model(dir: &std::path::Path, cfg: &east::model::LlamaConfig) -> (VarMap, Llama) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = Llama::load(VarBuilder::from_varmap(&varmap, DType::F64, &dev), cfg).unwrap();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &dev).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_dtype(DType::F64).unwrap())
            .unwrap();
    }
    (varmap, model)
}

#[test]
fn forward_hidden_autograd_matches_finite_differences_for_every_parameter_kind() {
    for family in &FAMILIES {
        forward_hidden_autograd_matches_finite_differences(family);
    }
}

fn forward_hidden_autograd_matches_finite_differences(family: &FamilyCase) {
    let (d, m) = tiny_family(5, false, family);
    let (varmap, model) = varmap_model(d.path(), &m.config);
    let b = batch();
    let coefs = Tensor::new(&COEFS, &Device::Cpu).unwrap();
    let objective = |model: &Llama| {
        (autograd_logps(model, &b) * &coefs)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = objective(&model).backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for name in kinds(&m.config) {
        let var = &data[&name];
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in probe_indices(&name, g.len(), m.config.hidden_size) {
            let eps = 1e-5;
            let eval = |delta: f64| {
                let mut v = orig.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                objective(&model).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            assert!(
                (fd - g[i]).abs() <= 1e-6 * (1.0 + g[i].abs()),
                "{} {name}[{i}]: autograd {} vs finite difference {fd}",
                family.label,
                g[i]
            );
        }
    }
}

#[test]
fn cpu_engine_matches_candle_autograd_tensor_by_tensor() {
    let cases = FAMILIES.iter().flat_map(|f| [(f, false), (f, true)]);
    for (family, tied) in cases {
        let label = family.label;
        let (d, m) = tiny_family(9, tied, family);
        let (varmap, model) = varmap_model(d.path(), &m.config);
        let b = batch();
        let lp = autograd_logps(&model, &b);
        let coefs = Tensor::new(&COEFS, &Device::Cpu).unwrap();
        let grads = (&lp * &coefs)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let want_lp: Vec<f64> = lp.to_vec1().unwrap();

        let mut e = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
        let stats = e.forward(&b, None, 0).unwrap();
        e.backward(Some(&COEFS)).unwrap();
        for (s, w) in stats.iter().zip(&want_lp) {
            assert!((s.logp - w).abs() < 1e-10, "logp {} vs {w}", s.logp);
        }
        let data = varmap.data().lock().unwrap();
        for name in kinds(&m.config) {
            let want: Vec<f64> = grads
                .get(data[&name].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = e.grad(&name).unwrap();
            let scale = want.iter().fold(0f64, |a, &x| a.max(x.abs()));
            let diff = want
                .iter()
                .zip(got)
                .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                diff <= 1e-9 * scale.max(1.0),
                "{label} tied={tied} {name}: max |Δ| {diff} (max |g| {scale})"
            );
        }
    }
}

#[test]
fn coefficients_in_the_forward_give_the_same_gradients_as_in_the_backward() {
    let (_d, m) = tiny(3, false);
    let b = batch();
    let mut a = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
    a.forward(&b, Some(&COEFS), 0).unwrap();
    a.backward(None).unwrap();
    let mut c = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
    c.head_chunk = 7; // chunking must not matter
    c.forward(&b, None, 0).unwrap();
    c.backward(Some(&COEFS)).unwrap();
    for name in kinds(&m.config) {
        let (x, y) = (a.grad(&name).unwrap(), c.grad(&name).unwrap());
        let diff = x
            .iter()
            .zip(y)
            .fold(0f64, |acc, (p, q)| acc.max((p - q).abs()));
        assert!(diff < 1e-12, "{name}: {diff}");
    }
    // gradients accumulate over micro-batches
    c.forward(&b, None, 0).unwrap();
    c.backward(Some(&COEFS)).unwrap();
    let (x, y) = (
        a.grad("model.norm.weight").unwrap(),
        c.grad("model.norm.weight").unwrap(),
    );
    for (p, q) in x.iter().zip(y) {
        assert!((2.0 * p - q).abs() < 1e-12);
    }
}

#[test]
fn lora_gradients_match_finite_differences_and_the_base_stays_frozen() {
    for family in &FAMILIES {
        lora_gradients_match_finite_differences(family);
    }
}

fn lora_gradients_match_finite_differences(family: &FamilyCase) {
    let (_d, m) = tiny_family(13, false, family);
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.2,
        targets: vec![
            "q_proj".into(),
            "v_proj".into(),
            "o_proj".into(),
            "up_proj".into(),
            "down_proj".into(),
        ],
    };
    let mut e = CpuEngine::<f64>::new(&m.model, Some(spec), 7).unwrap();
    let names: Vec<String> = e.trainable().into_iter().map(|p| p.name).collect();
    assert_eq!(names.len(), 2 * 5 * 2, "A and B for 5 targets × 2 layers");
    assert!(names
        .iter()
        .all(|n| n.starts_with("base_model.model.model.layers.")));
    // B starts at 0 (then A gets no gradient): give B values so both are tested
    for n in names.iter().filter(|n| n.contains("lora_B")) {
        for (i, x) in e.param_mut(n).unwrap().iter_mut().enumerate() {
            *x = ((i as f64) * 0.37).sin() * 0.2;
        }
    }
    let b = batch();
    let seed = 99;
    e.forward(&b, None, seed).unwrap();
    e.backward(Some(&COEFS)).unwrap();
    assert!(
        e.grad("model.layers.0.self_attn.q_proj.weight").is_none(),
        "frozen base weight has no gradient buffer"
    );
    assert!(e.grad("model.embed_tokens.weight").is_none());
    // the adapted projections' own biases and the q/k norms stay frozen too
    for frozen in kinds(&m.config) {
        assert!(
            e.grad(&frozen).is_none(),
            "{}: {frozen} trains",
            family.label
        );
    }
    let objective = |e: &mut CpuEngine<f64>| {
        let s = e.forward(&b, None, seed).unwrap();
        e.discard();
        s.iter().zip(COEFS).map(|(s, c)| c * s.logp).sum::<f64>()
    };
    for name in &names {
        let g = e.grad(name).unwrap().to_vec();
        assert!(g.iter().any(|&x| x != 0.0), "{name}");
        for i in [0, g.len() / 2, g.len() - 1] {
            let orig = e.param(name).unwrap()[i];
            let eps = 1e-5;
            e.param_mut(name).unwrap()[i] = orig + eps;
            let up = objective(&mut e);
            e.param_mut(name).unwrap()[i] = orig - eps;
            let down = objective(&mut e);
            e.param_mut(name).unwrap()[i] = orig;
            let fd = (up - down) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-6 * (1.0 + g[i].abs()),
                "{} {name}[{i}]: analytic {} vs finite difference {fd}",
                family.label,
                g[i]
            );
        }
    }
    // scoring (reference log-probs) runs without dropout: deterministic and equal to the
    // training forward without dropout
    let s1 = e.score(&b).unwrap();
    let s2 = e.score(&b).unwrap();
    assert_eq!(s1, s2);
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(0f64, |m, &x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn autograd_engine_matches_the_cpu_engine() {
    use east::train::engine::autograd::AutogradEngine;
    let cases = FAMILIES.iter().flat_map(|f| [(f, false), (f, true)]);
    for (family, tied) in cases {
        let (_d, m) = tiny_family(17, tied, family);
        let tied = format!("{} tied={tied}", family.label);
        let b = batch();
        let mut c = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
        let mut a = AutogradEngine::new(&m.model, None, 0).unwrap();
        let sc = c.forward(&b, None, 0).unwrap();
        c.backward(Some(&COEFS)).unwrap();
        let sa = a.forward(&b, Some(&COEFS), 0).unwrap();
        a.backward(None).unwrap();
        for (x, y) in sc.iter().zip(&sa) {
            assert!(
                (x.logp - y.logp).abs() < 1e-10
                    && (x.wpo - y.wpo).abs() < 1e-9
                    && x.tokens == y.tokens,
                "{x:?} vs {y:?}"
            );
        }
        assert_eq!(c.trainable(), a.trainable());
        for p in c.trainable() {
            let g: Vec<f64> = a
                .grad(&p.name)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let d = max_rel_diff(c.grad(&p.name).unwrap(), &g);
            assert!(d < 1e-9, "tied={tied} {}: relative difference {d}", p.name);
        }
        // two AdamW steps each (the second on the gradients of the updated weights, with the
        // moments of the first): same parameters and moments after each
        let opt = east::train::optim::AdamW {
            weight_decay: 0.01,
            ..Default::default()
        };
        for step in 1..=2 {
            if step == 2 {
                let sc = c.forward(&b, None, 0).unwrap();
                c.backward(Some(&COEFS)).unwrap();
                let sa = a.forward(&b, Some(&COEFS), 0).unwrap();
                a.backward(None).unwrap();
                for (x, y) in sc.iter().zip(&sa) {
                    assert!(
                        (x.logp - y.logp).abs() < 1e-9,
                        "after a step: {x:?} vs {y:?}"
                    );
                }
            }
            c.step(&opt, 1e-3, 0.5).unwrap();
            a.step(&opt, 1e-3, 0.5).unwrap();
            let (sc, sa) = (c.state().unwrap(), a.state().unwrap());
            for (what, xs, ys) in [
                ("parameter", &sc.params, &sa.params),
                ("first moment", &sc.exp_avg, &sa.exp_avg),
                ("second moment", &sc.exp_avg_sq, &sa.exp_avg_sq),
            ] {
                for ((n, x), (_, y)) in xs.iter().zip(ys) {
                    let x: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
                    let y: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
                    assert!(
                        max_rel_diff(&x, &y) < 1e-9,
                        "tied={tied} {n}: {what} after step {step}"
                    );
                }
            }
        }
    }
}

#[test]
fn autograd_engine_lora_matches_the_cpu_engine_with_dropout() {
    for family in &FAMILIES {
        autograd_engine_lora_matches_the_cpu_engine(family);
    }
}

fn autograd_engine_lora_matches_the_cpu_engine(family: &FamilyCase) {
    use east::train::engine::autograd::AutogradEngine;
    let (_d, m) = tiny_family(19, false, family);
    let spec = LoraSpec {
        rank: 3,
        alpha: 6.0,
        dropout: 0.25,
        targets: east::train::engine::PROJECTIONS.map(String::from).to_vec(),
    };
    let mut c = CpuEngine::<f64>::new(&m.model, Some(spec.clone()), 5).unwrap();
    let mut a = AutogradEngine::new(&m.model, Some(spec), 5).unwrap();
    // same initialisation; give B values on both through a state round trip
    for n in c
        .trainable()
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.contains("lora_B"))
    {
        for (i, x) in c.param_mut(&n).unwrap().iter_mut().enumerate() {
            *x = ((i as f64) * 0.11).cos() * 0.1;
        }
    }
    let st = c.state().unwrap();
    let sa = a.state().unwrap();
    for ((n, x), (_, y)) in st.params.iter().zip(&sa.params) {
        if n.contains("lora_A") {
            let x: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{n}: same seeded initialisation");
        }
    }
    a.load_state(st).unwrap();
    let b = batch();
    c.forward(&b, None, 77).unwrap();
    c.backward(Some(&COEFS)).unwrap();
    a.forward(&b, None, 77).unwrap();
    a.backward(Some(&COEFS)).unwrap();
    for p in c.trainable() {
        let g: Vec<f64> = a
            .grad(&p.name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = max_rel_diff(c.grad(&p.name).unwrap(), &g);
        assert!(
            d < 1e-9,
            "{} {}: relative difference {d}",
            family.label,
            p.name
        );
    }
    assert!(a.grad("model.layers.0.self_attn.q_proj.weight").is_none());
}

#[test]
fn autograd_engine_in_bf16_keeps_f32_masters_and_close_gradients() {
    use east::train::engine::autograd::AutogradEngine;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model_with(dir.path(), 23, &TinySpec::default()).unwrap();
    let m32 = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let m16 = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::BF16).unwrap();
    let b = batch();
    let mut c = CpuEngine::<f32>::new(&m32.model, None, 0).unwrap();
    let mut a = AutogradEngine::new(&m16.model, None, 0).unwrap();
    let s32 = c.forward(&b, Some(&COEFS), 0).unwrap();
    c.backward(None).unwrap();
    let s16 = a.forward(&b, Some(&COEFS), 0).unwrap();
    a.backward(None).unwrap();
    for (x, y) in s32.iter().zip(&s16) {
        assert!(
            (x.logp - y.logp).abs() < 0.05 * x.logp.abs() + 0.5,
            "{x:?} vs {y:?}"
        );
    }
    let st = a.state().unwrap();
    assert!(
        st.params.iter().all(|(_, t)| t.dtype() == DType::F32),
        "masters are f32"
    );
    for name in [
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        let g: Vec<f32> = a
            .grad(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = c.grad(name).unwrap();
        let dot: f64 = g
            .iter()
            .zip(want)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        let n1: f64 = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let n2: f64 = want.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(dot / (n1 * n2) > 0.99, "{name}: cosine {}", dot / (n1 * n2));
    }
    // after a step, the bf16 forward runs on the updated masters (cast anew), and the
    // log-probabilities move as the f32 CPU engine's do
    let opt = east::train::optim::AdamW::default();
    c.step(&opt, 3e-3, 1.0).unwrap();
    a.step(&opt, 3e-3, 1.0).unwrap();
    let t32 = c.forward(&b, Some(&COEFS), 1).unwrap();
    let t16 = a.forward(&b, Some(&COEFS), 1).unwrap();
    for (((x0, y0), x1), y1) in s32.iter().zip(&s16).zip(&t32).zip(&t16) {
        let (d32, d16) = (x1.logp - x0.logp, y1.logp - y0.logp);
        assert!(
            d32.abs() > 0.05,
            "the step moves the f32 log-probability: {d32}"
        );
        assert!(
            (d16 - d32).abs() < 0.25 * d32.abs(),
            "bf16 moved by {d16}, f32 by {d32}"
        );
    }
}
