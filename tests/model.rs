//! Model tests on the tiny seeded random Llama (no network, no big files).
//!
//! Reference logits in tests/fixtures/tiny_reference.json come from transformers'
//! `LlamaForCausalLM` run on the very folders `write_tiny_model_with` writes (see
//! scripts/reference/tiny_reference.py; the folders are dumped by the ignored test
//! `dump_tiny_models_for_reference`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use east::model::config::RopeScaling;
use east::model::gguf::{permute_qk, unpermute_qk};
use east::model::testing::{write_tiny_model, write_tiny_model_with, TinySpec};
use east::model::{
    load, tokenizer, Chat, ChatFormat, ChatSettings, KvCache, LlamaConfig, Message, ModelError,
    EAST_SYSTEM_PROMPT,
};

const TOL: f32 = 1e-4;

fn tiny(seed: u64) -> (tempfile::TempDir, east::model::LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), seed).unwrap();
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    (dir, m)
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Full-sequence logits (T, V) through the differentiable path.
fn full_logits(m: &east::model::Llama, ids: &[u32]) -> Tensor {
    let h = m.forward_hidden(&ids_tensor(ids), None).unwrap();
    m.logits(&h).unwrap().squeeze(0).unwrap()
}

fn prompt_ids(m: &east::model::LoadedModel, q: &str) -> Vec<u32> {
    m.east_prompt_ids(q).unwrap()
}

#[test]
fn tiny_folder_loads() {
    let (_d, m) = tiny(1);
    assert_eq!(m.config.num_hidden_layers, 2);
    assert_eq!(m.config.hidden_size, 64);
    assert_eq!(m.config.num_attention_heads, 4);
    assert_eq!(m.config.num_key_value_heads, 2);
    assert!(m.config.vocab_size > 256 && m.config.vocab_size < 400);
    // The tiny model's own template (tokenizer_config.json) renders its prompts.
    assert_eq!(
        m.chat.template(),
        Some(east::model::testing::CHATML_TEMPLATE)
    );
    assert_eq!(m.chat.end_of_turn(), "<|im_end|>");
    // config eos 2, generation_config adds 0; <|im_end|> (2) is the end of turn.
    assert_eq!(m.eos_ids, vec![2, 0]);
    assert_eq!(m.pad_id, 2);
    let ids = tokenizer::encode(&m.tokenizer, "<|im_start|>user\nthe 12<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    let text = tokenizer::decode(&m.tokenizer, &ids, false).unwrap();
    assert_eq!(text, "<|im_start|>user\nthe 12<|im_end|>");
}

#[test]
fn same_seed_same_weights() {
    let (_d1, a) = tiny(7);
    let (_d2, b) = tiny(7);
    let (_d3, c) = tiny(8);
    let ids = [5u32, 9, 77, 100];
    let la = full_logits(&a.model, &ids);
    assert_eq!(max_abs_diff(&la, &full_logits(&b.model, &ids)), 0.0);
    assert!(max_abs_diff(&la, &full_logits(&c.model, &ids)) > 1e-2);
}

/// Prefill of the first `k` tokens then one-token decode steps give the same logits as the
/// uncached forward at every position.
#[test]
fn cached_step_matches_forward_hidden() {
    let (_d, m) = tiny(3);
    let ids = prompt_ids(&m, "How much is 3 + 4?");
    assert!(ids.len() > 20);
    let full = full_logits(&m.model, &ids);
    for k in [1usize, 7] {
        let mut cache =
            KvCache::new(&m.config, 1, ids.len(), vec![0], DType::F32, &Device::Cpu).unwrap();
        let l = m
            .model
            .forward_step(&ids_tensor(&ids[..k]), &mut cache)
            .unwrap();
        assert_eq!(l.dims(), &[1, m.config.vocab_size]);
        let d = max_abs_diff(&l.squeeze(0).unwrap(), &full.i(k - 1).unwrap());
        assert!(d < TOL, "prefill {k}: {d}");
        for p in k..ids.len() {
            let l = m
                .model
                .forward_step(&ids_tensor(&ids[p..p + 1]), &mut cache)
                .unwrap();
            let d = max_abs_diff(&l.squeeze(0).unwrap(), &full.i(p).unwrap());
            assert!(d < TOL, "position {p}: {d}");
        }
        assert_eq!(cache.len(), ids.len());
    }
    // chunked prefill: several multi-token steps on a non-empty cache
    let mut cache =
        KvCache::new(&m.config, 1, ids.len(), vec![0], DType::F32, &Device::Cpu).unwrap();
    let mut p = 0;
    for chunk in [5usize, 7, 1, ids.len() - 13] {
        let l = m
            .model
            .forward_step(&ids_tensor(&ids[p..p + chunk]), &mut cache)
            .unwrap();
        p += chunk;
        let d = max_abs_diff(&l.squeeze(0).unwrap(), &full.i(p - 1).unwrap());
        assert!(d < TOL, "chunk ending at {p}: {d}");
    }
}

/// Two prompts of different lengths, left-padded into one batch, give each row the logits of
/// the prompt run alone, at prefill and over several decode steps.
#[test]
fn left_padded_batch_matches_single_rows() {
    let (_d, m) = tiny(4);
    let a = prompt_ids(&m, "the cat");
    let b = prompt_ids(&m, "a much longer question about 12 + 345 and more");
    let (la, lb) = (a.len(), b.len());
    let t = la.max(lb);
    let pad = m.pad_id;
    let mut batch = vec![pad; t - la];
    batch.extend(&a);
    batch.extend(std::iter::repeat_n(pad, t - lb));
    batch.extend(&b);
    let x = Tensor::from_vec(batch, (2, t), &Device::Cpu).unwrap();
    let cap = t + 6;
    let mut cache = KvCache::new(
        &m.config,
        2,
        cap,
        vec![t - la, t - lb],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut logits = m.model.forward_step(&x, &mut cache).unwrap();
    let follow_a = [10u32, 20, 30, 40];
    let follow_b = [50u32, 60, 70, 80];
    let mut seq_a = a.clone();
    let mut seq_b = b.clone();
    for step in 0..=follow_a.len() {
        let ra = full_logits(&m.model, &seq_a);
        let rb = full_logits(&m.model, &seq_b);
        let da = max_abs_diff(&logits.i(0).unwrap(), &ra.i(seq_a.len() - 1).unwrap());
        let db = max_abs_diff(&logits.i(1).unwrap(), &rb.i(seq_b.len() - 1).unwrap());
        assert!(da < TOL && db < TOL, "step {step}: {da} {db}");
        if step == follow_a.len() {
            break;
        }
        seq_a.push(follow_a[step]);
        seq_b.push(follow_b[step]);
        let x =
            Tensor::from_vec(vec![follow_a[step], follow_b[step]], (2, 1), &Device::Cpu).unwrap();
        logits = m.model.forward_step(&x, &mut cache).unwrap();
    }
}

/// forward_hidden with a padding mask (left or right) equals the unpadded rows at real
/// positions.
#[test]
fn forward_hidden_respects_padding_mask() {
    let (_d, m) = tiny(5);
    let a: Vec<u32> = vec![1, 40, 41, 42, 43, 2];
    let b: Vec<u32> = vec![1, 50, 51, 2];
    let ra = full_logits(&m.model, &a);
    let rb = full_logits(&m.model, &b);
    // row 0 = a; row 1 = b left-padded by 2; row 2 = b right-padded by 2
    let ids = Tensor::new(
        &[
            [1u32, 40, 41, 42, 43, 2],
            [0, 0, 1, 50, 51, 2],
            [1, 50, 51, 2, 0, 0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(
        &[
            [1u32, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
            [1, 1, 1, 1, 0, 0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let h = m.model.forward_hidden(&ids, Some(&mask)).unwrap();
    let l = m.model.logits(&h).unwrap();
    assert!(max_abs_diff(&l.i(0).unwrap(), &ra) < TOL);
    assert!(max_abs_diff(&l.i((1, 2..6)).unwrap(), &rb) < TOL);
    assert!(max_abs_diff(&l.i((2, 0..4)).unwrap(), &rb) < TOL);
    let all: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        all.iter().all(|x| x.is_finite()),
        "padding positions must stay finite"
    );
}

/// repeat_rows shares one prefill among samples; select_rows drops finished rows — the kept
/// rows continue exactly as they would alone.
#[test]
fn repeat_and_select_rows_keep_the_right_rows() {
    let (_d, m) = tiny(6);
    let a = prompt_ids(&m, "the");
    let b = prompt_ids(&m, "how is the system");
    let (la, lb) = (a.len(), b.len());
    let t = la.max(lb);
    let mut batch = vec![m.pad_id; t - la];
    batch.extend(&a);
    batch.extend(std::iter::repeat_n(m.pad_id, t - lb));
    batch.extend(&b);
    let x = Tensor::from_vec(batch, (2, t), &Device::Cpu).unwrap();
    let mut cache = KvCache::new(
        &m.config,
        2,
        t + 4,
        vec![t - la, t - lb],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    m.model.forward_step(&x, &mut cache).unwrap();
    cache.repeat_rows(&[2, 3]).unwrap();
    assert_eq!(cache.batch(), 5);
    assert_eq!(cache.left_pad(), &[t - la, t - la, t - lb, t - lb, t - lb]);
    // each of the 5 rows continues with its own token
    let next = [11u32, 12, 13, 14, 15];
    let owner = [&a, &a, &b, &b, &b];
    let x = Tensor::from_vec(next.to_vec(), (5, 1), &Device::Cpu).unwrap();
    let l = m.model.forward_step(&x, &mut cache).unwrap();
    for r in 0..5 {
        let mut s = owner[r].clone();
        s.push(next[r]);
        let want = full_logits(&m.model, &s);
        let d = max_abs_diff(&l.i(r).unwrap(), &want.i(s.len() - 1).unwrap());
        assert!(d < TOL, "row {r}: {d}");
    }
    // rows 4 and 1 survive, in that order
    cache.select_rows(&[4, 1]).unwrap();
    assert_eq!(cache.batch(), 2);
    assert_eq!(cache.left_pad(), &[t - lb, t - la]);
    let x = Tensor::from_vec(vec![21u32, 22], (2, 1), &Device::Cpu).unwrap();
    let l = m.model.forward_step(&x, &mut cache).unwrap();
    for (r, (own, tok1, tok2)) in [(&b, 15u32, 21u32), (&a, 12, 22)].into_iter().enumerate() {
        let mut s = own.clone();
        s.push(tok1);
        s.push(tok2);
        let want = full_logits(&m.model, &s);
        let d = max_abs_diff(&l.i(r).unwrap(), &want.i(s.len() - 1).unwrap());
        assert!(d < TOL, "kept row {r}: {d}");
    }
    assert!(cache.select_rows(&[2]).is_err());
    cache.select_rows(&[]).unwrap();
    assert_eq!(cache.batch(), 0);
}

/// An f16 cache (half the memory; read by the CPU decode kernel) stays close to the f32 path,
/// including left-padded rows.
#[test]
fn f16_cache_matches_f32() {
    let (_d, m) = tiny(13);
    let a = prompt_ids(&m, "the");
    let b = prompt_ids(&m, "how is the system 12");
    let t = a.len().max(b.len());
    let mut batch = vec![m.pad_id; t - a.len()];
    batch.extend(&a);
    batch.extend(std::iter::repeat_n(m.pad_id, t - b.len()));
    batch.extend(&b);
    let x = Tensor::from_vec(batch, (2, t), &Device::Cpu).unwrap();
    let pads = vec![t - a.len(), t - b.len()];
    let mut c32 =
        KvCache::new(&m.config, 2, t + 3, pads.clone(), DType::F32, &Device::Cpu).unwrap();
    let mut c16 = KvCache::new(&m.config, 2, t + 3, pads, DType::F16, &Device::Cpu).unwrap();
    let mut l32 = m.model.forward_step(&x, &mut c32).unwrap();
    let mut l16 = m.model.forward_step(&x, &mut c16).unwrap();
    for step in 0..3u32 {
        let d = max_abs_diff(&l32, &l16);
        assert!(d < 2e-2, "step {step}: {d}");
        let x = Tensor::new(&[[40 + step], [50 + step]], &Device::Cpu).unwrap();
        l32 = m.model.forward_step(&x, &mut c32).unwrap();
        l16 = m.model.forward_step(&x, &mut c16).unwrap();
    }
}

/// The CPU decode kernel equals plain softmax(q·Kᵀ)·V on strided cache views, with padding
/// and grouped heads.
#[test]
fn decode_kernel_matches_reference_attention() {
    let dev = Device::Cpu;
    let (b, kv, g, cap, l, d) = (3usize, 2usize, 3usize, 40usize, 29usize, 64usize);
    let h = kv * g;
    let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &dev).unwrap();
    let kfull = Tensor::randn(0f32, 1.0, (b, kv, cap, d), &dev).unwrap();
    let vfull = Tensor::randn(0f32, 1.0, (b, kv, cap, d), &dev).unwrap();
    let k = kfull.narrow(2, 0, l).unwrap();
    let v = vfull.narrow(2, 0, l).unwrap();
    let pads = [0usize, 5, 28];
    let got = east::model::attention::decode_attention(&q, &k, &v, &pads).unwrap();
    for (r, &pad) in pads.iter().enumerate().take(b) {
        for head in 0..h {
            let qh = q.i((r, head)).unwrap(); // (1, d)
            let kh = k.i((r, head / g)).unwrap().narrow(0, pad, l - pad).unwrap();
            let vh = v.i((r, head / g)).unwrap().narrow(0, pad, l - pad).unwrap();
            let p =
                candle_nn::ops::softmax(&qh.matmul(&kh.t().unwrap()).unwrap(), D::Minus1).unwrap();
            let want = p.matmul(&vh).unwrap();
            let d = max_abs_diff(&got.i((r, head)).unwrap(), &want);
            assert!(d < 1e-5, "row {r} head {head}: {d}");
        }
    }
    // the f16 cache gives the same up to f16 rounding of K and V
    let got16 = east::model::attention::decode_attention(
        &q,
        &kfull.to_dtype(DType::F16).unwrap().narrow(2, 0, l).unwrap(),
        &vfull.to_dtype(DType::F16).unwrap().narrow(2, 0, l).unwrap(),
        &pads,
    )
    .unwrap();
    assert!(max_abs_diff(&got, &got16) < 1e-2);
}

#[test]
fn cache_capacity_is_enforced() {
    let (_d, m) = tiny(2);
    let mut cache = KvCache::new(&m.config, 1, 4, vec![0], DType::F32, &Device::Cpu).unwrap();
    m.model
        .forward_step(&ids_tensor(&[1, 5, 6]), &mut cache)
        .unwrap();
    m.model.forward_step(&ids_tensor(&[7]), &mut cache).unwrap();
    assert!(matches!(
        cache.ensure_room(1),
        Err(ModelError::CacheFull {
            needed: 5,
            capacity: 4
        })
    ));
    let err = m
        .model
        .forward_step(&ids_tensor(&[8]), &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("KV cache full"), "{err}");
    assert_eq!(cache.len(), 4, "a refused step leaves the cache as it was");
    assert!(KvCache::new(&m.config, 2, 4, vec![0], DType::F32, &Device::Cpu).is_err());
}

fn corrupt(dir: &Path, f: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) {
    let p = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &p).unwrap();
}

#[test]
fn missing_tensor_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 1).unwrap();
    corrupt(dir.path(), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    let err = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    match &err {
        ModelError::MissingTensor { name, .. } => {
            assert_eq!(name, "model.layers.1.mlp.up_proj.weight")
        }
        e => panic!("wrong error: {e}"),
    }
    assert!(err
        .to_string()
        .contains("model.layers.1.mlp.up_proj.weight"));
}

#[test]
fn untied_model_without_lm_head_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 1).unwrap();
    corrupt(dir.path(), |t| {
        t.remove("lm_head.weight");
    });
    let err = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name, .. } if name == "lm_head.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 1).unwrap();
    corrupt(dir.path(), |t| {
        t.insert(
            "model.layers.0.self_attn.k_proj.weight".into(),
            Tensor::zeros((48, 64), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    match &err {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!(expected, &vec![32, 64]);
            assert_eq!(found, &vec![48, 64]);
        }
        e => panic!("wrong error: {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("k_proj") && msg.contains("[48, 64]") && msg.contains("[32, 64]"),
        "{msg}"
    );
}

#[test]
fn wrong_architecture_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 1).unwrap();
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["model_type"] = "gemma2".into();
    cfg["architectures"] = serde_json::json!(["Gemma2ForCausalLM"]);
    std::fs::write(&p, cfg.to_string()).unwrap();
    let err = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(&err, ModelError::WrongArchitecture { found, .. } if found == "gemma2"),
        "{err}"
    );
}

#[test]
fn gguf_with_other_architecture_is_rejected() {
    use candle_core::quantized::{gguf_file, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.gguf");
    let mut f = std::fs::File::create(&p).unwrap();
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    let arch = gguf_file::Value::String("gemma2".into());
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let err = load(p.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(&err, ModelError::WrongArchitecture { found, .. } if found == "gemma2"),
        "{err}"
    );
}

#[test]
fn missing_paths_are_reported() {
    let err = load("/nonexistent/model.gguf", &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    let err = load("./no/such/dir", &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    // a folder without weights
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 1).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );
    // a repo id resolves to the hub
    assert_eq!(
        east::model::load::resolve_spec("meta-llama/Llama-3.2-1B-Instruct").unwrap(),
        east::model::ModelSource::Hub {
            repo: "meta-llama/Llama-3.2-1B-Instruct".into(),
            revision: None
        }
    );
    assert_eq!(
        east::model::load::resolve_spec("org/name@v1.0").unwrap(),
        east::model::ModelSource::Hub {
            repo: "org/name".into(),
            revision: Some("v1.0".into())
        }
    );
}

/// The hub path works offline from a populated cache (HF_HOME layout), as for real users with
/// a pre-downloaded model.
#[test]
fn hub_spec_loads_from_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let snap = home
        .path()
        .join("hub/models--east-test--tiny/snapshots/0123456789abcdef");
    write_tiny_model(&snap, 9).unwrap();
    std::fs::create_dir_all(home.path().join("hub/models--east-test--tiny/refs")).unwrap();
    std::fs::write(
        home.path().join("hub/models--east-test--tiny/refs/main"),
        "0123456789abcdef",
    )
    .unwrap();
    // Only this test touches these variables in this test binary.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let m = load("east-test/tiny", &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        m.source,
        east::model::ModelSource::Hub {
            repo: "east-test/tiny".into(),
            revision: None
        }
    );
    let err = load("east-test/absent", &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(err, ModelError::Hub { .. }), "{err}");
    unsafe {
        std::env::remove_var("HF_HOME");
        std::env::remove_var("HF_HUB_OFFLINE");
    }
}

#[test]
fn sharded_folder_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 11).unwrap();
    let single = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let p = dir.path().join("model.safetensors");
    let all = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let sub: std::collections::HashMap<_, _> =
            part.iter().map(|n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&sub, dir.path().join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    std::fs::remove_file(&p).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let sharded = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let ids = [1u32, 30, 31, 32];
    assert_eq!(
        max_abs_diff(
            &full_logits(&single.model, &ids),
            &full_logits(&sharded.model, &ids)
        ),
        0.0
    );
}

#[test]
fn checkpoint_roundtrip() {
    let (src, m) = tiny(12);
    let out = tempfile::tempdir().unwrap();
    east::model::load::save_checkpoint(&m.model, out.path(), Some("float32")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.path().join(f), out.path().join(f)).unwrap();
    }
    let back = load(out.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(back.config, m.config);
    let ids = [1u32, 30, 31, 32, 2];
    assert_eq!(
        max_abs_diff(
            &full_logits(&m.model, &ids),
            &full_logits(&back.model, &ids)
        ),
        0.0
    );
}

/// Tied embeddings: no lm_head tensor needed, and logits use the embedding matrix.
#[test]
fn tied_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        tie_word_embeddings: true,
        ..TinySpec::default()
    };
    write_tiny_model_with(dir.path(), 3, &spec).unwrap();
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert!(m.config.tie_word_embeddings);
    assert!(m
        .model
        .named_tensors()
        .iter()
        .all(|(n, _)| n != "lm_head.weight"));
    let ids = [1u32, 50, 60];
    let h = m.model.forward_hidden(&ids_tensor(&ids), None).unwrap();
    let manual = h
        .squeeze(0)
        .unwrap()
        .matmul(&m.model.embed_tokens.t().unwrap())
        .unwrap();
    assert!(max_abs_diff(&manual, &full_logits(&m.model, &ids)) < 1e-6);
}

#[test]
fn qk_permutation_roundtrip() {
    let w = Tensor::arange(0f32, (12 * 3) as f32, &Device::Cpu)
        .unwrap()
        .reshape((12, 3))
        .unwrap();
    let p = permute_qk(&w, 2).unwrap();
    assert!(max_abs_diff(&p, &w) > 0.0);
    assert_eq!(max_abs_diff(&unpermute_qk(&p, 2).unwrap(), &w), 0.0);
    // llama.cpp: HF row (head, half, i) goes to (head, i, half): head 0 rows 0,1,2 | 3,4,5
    // become 0,3,1,4,2,5.
    let rows: Vec<f32> = p.i((.., 0)).unwrap().to_vec1().unwrap();
    assert_eq!(&rows[..6], &[0.0, 9.0, 3.0, 12.0, 6.0, 15.0]);
}

/// Every parameter gets a gradient through forward_hidden + logits (no fused op without a
/// backward on the path), and the gradient agrees with a finite difference.
#[test]
fn forward_hidden_is_differentiable() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), 21).unwrap();
    let varmap = VarMap::new();
    let model =
        east::model::Llama::load(VarBuilder::from_varmap(&varmap, DType::F64, &dev), &cfg).unwrap();
    // Load the tiny weights into the varmap (f64 for an accurate finite difference).
    let weights =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &dev).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights[name].to_dtype(DType::F64).unwrap())
            .unwrap();
    }
    let ids = Tensor::new(&[[1u32, 40, 41, 42, 2], [0, 1, 50, 51, 2]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [0, 1, 1, 1, 1]], &dev).unwrap();
    let targets = Tensor::new(&[[40u32, 41, 42, 2, 0], [1, 50, 51, 2, 0]], &dev).unwrap();
    let loss_of = |m: &east::model::Llama| {
        let h = m.forward_hidden(&ids, Some(&mask)).unwrap();
        let logits = m.logits(&h).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        lp.gather(&targets.unsqueeze(2).unwrap(), 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap()
    };
    let loss = loss_of(&model);
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names.len(),
        east::model::Llama::expected_tensors(&cfg).len()
    );
    for name in &names {
        let g = grads
            .get(data[name].as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(n > 0.0 && n.is_finite(), "{name}: |g|² = {n}");
    }
    // finite differences on a few entries of tensors that go through rope, norm and softmax
    for (name, flat_idx) in [
        ("model.layers.0.self_attn.q_proj.weight", 37usize),
        ("model.layers.1.self_attn.k_proj.weight", 5),
        ("model.layers.0.input_layernorm.weight", 3),
        ("model.norm.weight", 10),
        ("model.embed_tokens.weight", 41 * 64 + 7),
    ] {
        let var = &data[name];
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-5;
        let eval = |delta: f64| {
            let mut v = orig.clone();
            v[flat_idx] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
            loss_of(&model).to_scalar::<f64>().unwrap()
        };
        let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
        var.set(&Tensor::from_vec(orig.clone(), var.shape(), &dev).unwrap())
            .unwrap();
        let an = g[flat_idx];
        assert!(
            (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
            "{name}[{flat_idx}]: analytic {an}, finite difference {fd}"
        );
    }
}

/// A LoRA-style adapter attached through the public API, as the training code will do.
#[derive(Debug)]
struct TestLora {
    a: candle_core::Var, // (r, in)
    b: candle_core::Var, // (out, r)
    scale: f64,
}

impl east::model::LinearAdapter for TestLora {
    fn forward(&self, layer: &east::model::LinearLayer, x: &Tensor) -> candle_core::Result<Tensor> {
        let base = layer.base_forward(x)?;
        let delta = x
            .broadcast_matmul(&self.a.as_tensor().t()?)?
            .broadcast_matmul(&self.b.as_tensor().t()?)?;
        base + (delta * self.scale)?
    }
}

/// Frozen (loaded) weights get no gradient — not even a computed-and-dropped one — while
/// adapter variables get the right one.
#[test]
fn adapters_train_on_a_frozen_model() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 31).unwrap();
    let mut m = load(dir.path().to_str().unwrap(), &dev, DType::F32).unwrap();
    let ids = Tensor::new(&[[1u32, 40, 41, 42, 2]], &dev).unwrap();
    let before = full_logits(&m.model, &[1, 40, 41, 42, 2]);
    let mut vars = Vec::new();
    for (name, layer) in m.model.linear_layers_mut() {
        if name.ends_with("q_proj") || name.ends_with("v_proj") {
            let a = candle_core::Var::randn(0f32, 0.1, (4, layer.in_dim()), &dev).unwrap();
            let b = candle_core::Var::randn(0f32, 0.1, (layer.out_dim(), 4), &dev).unwrap();
            vars.push((name.clone(), a.clone(), b.clone()));
            layer.set_adapter(Some(std::sync::Arc::new(TestLora { a, b, scale: 2.0 })));
        }
    }
    assert_eq!(vars.len(), 4);
    let loss_of = |m: &east::model::Llama| {
        let h = m.forward_hidden(&ids, None).unwrap();
        let lp = candle_nn::ops::log_softmax(&m.logits(&h).unwrap(), D::Minus1).unwrap();
        lp.i((0, .., 7)).unwrap().sum_all().unwrap()
    };
    let loss = loss_of(&m.model);
    let after = full_logits(&m.model, &[1, 40, 41, 42, 2]);
    assert!(
        max_abs_diff(&before, &after) > 1e-4,
        "the adapters change the output"
    );
    let grads = loss.backward().unwrap();
    for (name, w) in m.model.named_tensors() {
        assert!(grads.get(&w).is_none(), "frozen {name} got a gradient");
    }
    for (name, layer) in m.model.linear_layers_mut() {
        let wt = layer.weight_t().expect("CPU layout");
        assert!(grads.get(wt).is_none(), "frozen {name} got a gradient");
    }
    // control: a plain matmul against the same frozen tensor does compute one
    let wt = m.model.layers[0].mlp.up_proj.weight_t().unwrap().clone();
    let x = candle_core::Var::ones((2, wt.dim(0).unwrap()), DType::F32, &dev).unwrap();
    let g = x
        .as_tensor()
        .matmul(&wt)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&wt).is_some());
    // the inference path uses the adapters too
    let mut cache = KvCache::new(&m.config, 1, 5, vec![0], DType::F32, &dev).unwrap();
    let l = m.model.forward_step(&ids, &mut cache).unwrap();
    assert!(max_abs_diff(&l.squeeze(0).unwrap(), &after.i(4).unwrap()) < TOL);
    // finite differences on adapter entries (f32: loose tolerance)
    for (name, a, b) in vars.iter().take(2) {
        for (var, idx) in [(a, 3usize), (b, 5usize)] {
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let eps = 1e-2f32;
            let eval = |delta: f32| {
                let mut v = orig.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                    .unwrap();
                loss_of(&m.model).to_scalar::<f32>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(orig, var.shape(), &dev).unwrap())
                .unwrap();
            assert!(
                (fd - g[idx]).abs() < 2e-2 * (1.0 + g[idx].abs()),
                "{name}[{idx}]: {} vs {fd}",
                g[idx]
            );
        }
    }
}

/// trainable_copy: same function, every weight a variable with a gradient; updates through
/// the VarMap are seen by the model.
#[test]
fn trainable_copy_is_a_varmap_model() {
    let (_d, m) = tiny(41);
    let ids = [1u32, 60, 61, 62];
    let (varmap, tm) = m.model.trainable_copy(DType::F32).unwrap();
    // (gemm sums in another order for (out,in) variables than for the (in,out) frozen copy)
    assert!(max_abs_diff(&full_logits(&m.model, &ids), &full_logits(&tm, &ids)) < 1e-4);
    let loss = full_logits(&tm, &ids).sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.all_vars();
    assert_eq!(
        vars.len(),
        east::model::Llama::expected_tensors(&m.config).len()
    );
    for v in &vars {
        assert!(grads.get(v.as_tensor()).is_some());
    }
    let data = varmap.data().lock().unwrap();
    let e = &data["model.norm.weight"];
    e.set(&e.as_tensor().zeros_like().unwrap()).unwrap();
    let h = tm.forward_hidden(&ids_tensor(&ids), None).unwrap();
    assert_eq!(
        h.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

/// Independent reference: transformers' LlamaForCausalLM on the same tiny folders.
#[test]
fn tiny_logits_match_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_reference.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let spec = tiny_spec_by_name(name);
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model_with(dir.path(), case["seed"].as_u64().unwrap(), &spec).unwrap();
        let m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let want = Tensor::new(want, &Device::Cpu).unwrap();
        let got = full_logits(&m.model, &ids);
        let d = max_abs_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{name}: forward_hidden differs from transformers by {d}"
        );
        // and the cached path, one token at a time
        let mut cache =
            KvCache::new(&m.config, 1, ids.len(), vec![0], DType::F32, &Device::Cpu).unwrap();
        for (p, &id) in ids.iter().enumerate() {
            let l = m
                .model
                .forward_step(&ids_tensor(&[id]), &mut cache)
                .unwrap();
            let d = max_abs_diff(&l.squeeze(0).unwrap(), &want.i(p).unwrap());
            assert!(d < 1e-4, "{name}: forward_step at {p} differs by {d}");
        }
    }
}

fn tiny_spec_by_name(name: &str) -> TinySpec {
    match name {
        "default" => TinySpec::default(),
        "llama3_rope_tied_mha" => TinySpec {
            num_key_value_heads: 4,
            tie_word_embeddings: true,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            ..TinySpec::default()
        },
        "gqa4_linear_rope" => TinySpec {
            num_attention_heads: 8,
            num_key_value_heads: 2,
            hidden_size: 64,
            rope_scaling: Some(RopeScaling::Linear { factor: 2.0 }),
            ..TinySpec::default()
        },
        other => panic!("unknown tiny case {other}"),
    }
}

/// Writes the tiny folders that scripts/reference/tiny_reference.py reads
/// (`cargo test --test model dump_tiny -- --ignored`; EAST_TINY_DIR, default /tmp/east-tiny).
#[test]
#[ignore]
fn dump_tiny_models_for_reference() {
    let root = PathBuf::from(std::env::var("EAST_TINY_DIR").unwrap_or("/tmp/east-tiny".into()));
    for (name, seed) in [
        ("default", 101u64),
        ("llama3_rope_tied_mha", 102),
        ("gqa4_linear_rope", 103),
    ] {
        write_tiny_model_with(&root.join(name), seed, &tiny_spec_by_name(name)).unwrap();
        println!("{} (seed {seed})", root.join(name).display());
    }
}

#[test]
fn chatml_rendering() {
    let msgs = vec![
        Message::system(EAST_SYSTEM_PROMPT),
        Message::user("What is 2+2?"),
    ];
    let chat = Chat::builtin(ChatFormat::ChatMl, ChatSettings::default());
    let p = chat.render(&msgs, true).unwrap();
    assert_eq!(
        p,
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let (prompt, completion) = chat
        .render_training(&msgs, &[Message::assistant("It is \\boxed{4}.")])
        .unwrap();
    assert_eq!(prompt, p);
    assert_eq!(completion, "It is \\boxed{4}.<|im_end|>\n");
}

/// The built-in fallback formats (template-less models) against jinja2 renderings of Meta's
/// Llama-3.1/3.2 Instruct template and SmolLM2's (scripts/reference/chat_reference.py).
#[test]
fn builtin_formats_match_official_templates() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_reference.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let fmt = match case["format"].as_str().unwrap() {
            "llama3" => ChatFormat::Llama3,
            "chatml" => ChatFormat::ChatMl,
            f => panic!("{f}"),
        };
        let got = fmt.render(&msgs, gen, "26 Jul 2024");
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
    }
    let (p, c) = Chat::builtin(ChatFormat::Llama3, ChatSettings::default())
        .render_training(
            &[Message::system(EAST_SYSTEM_PROMPT), Message::user(" Q ")],
            &[Message::assistant(" A \n")],
        )
        .unwrap();
    assert!(p.ends_with("<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    assert_eq!(c, "A<|eot_id|>");
}

#[test]
fn chat_format_detection() {
    let (_d, m) = tiny(1);
    assert_eq!(ChatFormat::detect(&m.tokenizer), Some(ChatFormat::ChatMl));
}

fn cfg_json(text: &str) -> Result<LlamaConfig, ModelError> {
    LlamaConfig::from_hf_json(text, "test")
}

/// config.json of the target families (values from their public configs).
#[test]
fn configs_of_llama_family_parse() {
    let llama2 = cfg_json(r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":11008,"max_position_embeddings":4096,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":32,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":null,"tie_word_embeddings":false,"torch_dtype":"float16","transformers_version":"4.32.0.dev0","use_cache":true,"vocab_size":32000}"#).unwrap();
    assert_eq!(
        (
            llama2.head_dim,
            llama2.num_key_value_heads,
            llama2.rope_theta
        ),
        (128, 32, 10000.0)
    );
    assert_eq!(llama2.eos_token_ids, vec![2]);

    let llama3 = cfg_json(r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":128009,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":8192,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":500000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.40.0.dev0","use_cache":true,"vocab_size":128256}"#).unwrap();
    assert_eq!(llama3.num_kv_groups(), 4);

    let llama31 = cfg_json(r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.43.0.dev0","use_cache":true,"vocab_size":128256}"#).unwrap();
    assert_eq!(llama31.eos_token_ids, vec![128001, 128008, 128009]);
    assert!(
        matches!(llama31.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
    );

    let llama32 = cfg_json(r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"head_dim":64,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,"intermediate_size":8192,"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,"num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.45.0.dev0","use_cache":true,"vocab_size":128256}"#).unwrap();
    assert!(llama32.tie_word_embeddings);
    assert_eq!(llama32.head_dim, 64);
    assert_eq!(llama32.num_parameters(), 1_235_814_400);

    let smol = cfg_json(r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":1,"eos_token_id":2,"head_dim":64,"hidden_act":"silu","hidden_size":576,"initializer_range":0.041666666666666664,"intermediate_size":1536,"is_llama_config":true,"max_position_embeddings":8192,"mlp_bias":false,"model_type":"llama","num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,"pad_token_id":2,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_interleaved":false,"rope_scaling":null,"rope_theta":100000,"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers.js_config":{"kv_cache_dtype":{"q4f16":"float16","fp16":"float16"}},"transformers_version":"4.42.3","use_cache":true,"vocab_size":49152}"#).unwrap();
    assert_eq!(smol.num_parameters(), 134_515_008);
    assert_eq!(smol.pad_token_id, Some(2));

    // transformers 5 layout: rope_theta and scaling inside rope_parameters
    let v5 = cfg_json(r#"{"model_type":"llama","vocab_size":1000,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"rope_parameters":{"factor":8.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_theta":500000.0,"rope_type":"llama3"}}"#).unwrap();
    assert_eq!(v5.rope_theta, 500000.0);
    assert!(matches!(v5.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    // older "type" key
    let lin = cfg_json(r#"{"model_type":"llama","vocab_size":1000,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"rope_scaling":{"type":"linear","factor":2.0}}"#).unwrap();
    assert_eq!(lin.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));

    // round trip through to_hf_json
    let back = LlamaConfig::from_hf_value(&llama31.to_hf_json(None), "rt").unwrap();
    assert_eq!(back, llama31);
}

#[test]
fn invalid_configs_are_rejected() {
    let base =
        r#""model_type":"llama","vocab_size":1000,"intermediate_size":128,"num_hidden_layers":2"#;
    let e = cfg_json(&format!(
        r#"{{{base},"hidden_size":66,"num_attention_heads":4}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("not divisible"), "{e}");
    let e = cfg_json(&format!(
        r#"{{{base},"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":3}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
    let e = cfg_json(r#"{"model_type":"llama","vocab_size":1000}"#).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    let e = cfg_json(&format!(r#"{{{base},"hidden_size":64,"num_attention_heads":4,"rope_scaling":{{"rope_type":"yarn","factor":4.0}}}}"#)).unwrap_err();
    assert!(e.to_string().contains("yarn"), "{e}");
    let e = cfg_json(&format!(
        r#"{{{base},"hidden_size":64,"num_attention_heads":4,"mlp_bias":true}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("mlp_bias"), "{e}");
    let e = cfg_json(r#"{"model_type":"qwen2","vocab_size":1000,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"attention_bias":true}"#).unwrap_err();
    assert!(e.to_string().contains("attention_bias"), "{e}");
    let e = cfg_json(r#"{"model_type":"gemma2","vocab_size":1000}"#).unwrap_err();
    assert!(matches!(e, ModelError::WrongArchitecture { .. }), "{e}");
}

/// llama3 inverse frequencies agree with transformers' _compute_llama3_parameters
/// (values printed by scripts/reference/tiny_reference.py for Llama-3.1's settings).
#[test]
fn llama3_inv_freq_matches_transformers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_reference.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let want: Vec<f64> = serde_json::from_value(fx["llama31_inv_freq"].clone()).unwrap();
    let cfg = LlamaConfig {
        arch: Default::default(),
        vocab_size: 10,
        hidden_size: 4096,
        intermediate_size: 14336,
        num_hidden_layers: 1,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        max_position_embeddings: 131072,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
    };
    let got = cfg.rope_inv_freq();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs(), "inv_freq[{i}]: {g} vs {w}");
    }
}
