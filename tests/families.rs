//! Qwen2, Qwen3 and Mistral against transformers, PEFT, PyTorch and llama.cpp, on tiny random
//! models made by `scripts/reference/families_reference.py` (tests/fixtures/families/): each
//! model's config.json is transformers', its weights a hash of each tensor's name that this
//! file computes again (`unit`), so no weights are checked in besides two small GGUFs made by
//! llama.cpp's converter.
//!
//! * logits of the KV-cached decoder and of the training forward within 1e-4 (f32);
//! * greedy continuations token for token, two prompts decoded as one left-padded batch;
//! * one SFT and one DPO step on the CPU engine and on the autograd engine: loss and gradient
//!   norm within 1e-4 relative of PyTorch's;
//! * a LoRA adapter named as PEFT names it, giving PEFT's logits;
//! * the GGUFs llama.cpp's converter wrote load with transformers' logits; exported by east,
//!   llama.cpp's server reads them back and answers east's greedy tokens;
//! * published configs (Qwen2.5-Math-1.5B-Instruct, Qwen3-0.6B, Mistral-7B-v0.1,
//!   DeepSeek-R1-Distill-Qwen-1.5B) parse to their published parameter counts;
//! * a sequence longer than a sliding window is an error naming `sliding_window`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use east::decode::{generate_group, DecodeSettings, Request, SamplerPlacement, Sampling};
use east::model::config::{Family, LlamaConfig};
use east::model::{load, KvCache, LoadedModel};
use east::train::engine::autograd::AutogradEngine;
use east::train::engine::cpu::CpuEngine;
use east::train::loss::{dpo, sft, DpoRows};
use east::train::{Engine, Packed, RowStats};

#[path = "support/llama_server.rs"]
mod llama_server;
use llama_server::LlamaServer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn reference() -> Value {
    let path = fixtures().join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn case<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn cases(fx: &Value) -> Vec<&Value> {
    fx["cases"].as_array().unwrap().iter().collect()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

const M64: u64 = u64::MAX;

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3) & M64
    })
}

/// The script's `unit`: `n` values `k / 2²³` in [−1, 1) from the tensor's name and a seed.
fn unit(seed: u64, name: &str, n: usize) -> Vec<f64> {
    let base = splitmix64(seed ^ fnv1a64(name));
    (0..n as u64)
        .map(|i| {
            ((splitmix64(base.wrapping_add(i)) >> 40) as f64 - (1u64 << 23) as f64)
                / (1u64 << 23) as f64
        })
        .collect()
}

/// A case's weights, as the script set them: `scale · u` (norms `1 + scale · u`), in f32.
fn weights(case: &Value) -> Vec<(String, Tensor)> {
    let seed = case["seed"].as_u64().unwrap();
    case["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap();
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            let scale = t["scale"].as_f64().unwrap();
            let norm = t["kind"] == "norm";
            let vals: Vec<f32> = unit(seed, name, shape.iter().product())
                .into_iter()
                .map(|u| if norm { 1.0 + scale * u } else { scale * u } as f32)
                .collect();
            let t = Tensor::from_vec(vals, shape, &Device::Cpu).unwrap();
            (name.to_string(), t)
        })
        .collect()
}

/// Writes a case's folder: transformers' config.json, the hashed weights, the tiny tokenizer.
fn write_case(dir: &Path, case: &Value) {
    std::fs::write(dir.join("config.json"), case["config"].to_string()).unwrap();
    let map: std::collections::HashMap<String, Tensor> = weights(case).into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("tokenizer").join(f), dir.join(f)).unwrap();
    }
}

fn load_case(case: &Value, dtype: DType) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), case);
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, dtype).unwrap();
    (dir, m)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn row(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Logits at `positions` of `prompt` from the training forward (every position at once).
fn training_logits(m: &LoadedModel, prompt: &[u32], positions: &[usize]) -> Vec<Vec<f64>> {
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = m.model.forward_hidden(&x, None).unwrap();
    let logits = m.model.logits(&hidden).unwrap().squeeze(0).unwrap();
    positions
        .iter()
        .map(|&p| row(&logits.get(p).unwrap()))
        .collect()
}

/// Logits at `positions` from the KV-cached decoder: a prefill of the first token, then one
/// token per step.
fn decoder_logits(m: &LoadedModel, prompt: &[u32], positions: &[usize]) -> Vec<Vec<f64>> {
    let dev = Device::Cpu;
    let mut cache = KvCache::new(&m.config, 1, prompt.len(), vec![0], DType::F32, &dev).unwrap();
    let mut out = Vec::new();
    for (p, &tok) in prompt.iter().enumerate() {
        let x = Tensor::new(&[tok], &dev).unwrap().unsqueeze(0).unwrap();
        let logits = m.model.forward_step(&x, &mut cache).unwrap();
        if positions.contains(&p) {
            out.push(row(&logits));
        }
    }
    out
}

#[test]
fn logits_of_the_decoder_and_the_training_forward_match_transformers() {
    let fx = reference();
    let prompt = ids(&fx["prompt"]);
    let positions: Vec<usize> = serde_json::from_value(fx["logit_positions"].clone()).unwrap();
    for c in cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let (_d, m) = load_case(c, DType::F32);
        let want: Vec<Vec<f64>> = serde_json::from_value(c["logits"].clone()).unwrap();
        for (what, got) in [
            ("training forward", training_logits(&m, &prompt, &positions)),
            ("decoder", decoder_logits(&m, &prompt, &positions)),
        ] {
            let mut worst = 0f64;
            for (p, (g, w)) in positions.iter().zip(got.iter().zip(&want)) {
                let d = max_abs_diff(g, w);
                assert!(d <= 1e-4, "{name} {what}: position {p} differs by {d}");
                worst = worst.max(d);
            }
            eprintln!("{name} {what}: max |Δ logit| {worst:.2e}");
        }
    }
}

#[test]
fn the_families_read_as_their_config_says() {
    let fx = reference();
    let want = [
        ("qwen2", Family::Qwen2, true, false, None),
        ("qwen2_small_tied", Family::Qwen2, true, false, None),
        ("qwen3", Family::Qwen3, false, true, None),
        ("mistral", Family::Mistral, false, false, Some(4096)),
    ];
    for (name, family, qkv_bias, qk_norm, window) in want {
        let c = case(&fx, name);
        let cfg = LlamaConfig::from_hf_value(&c["config"], name).unwrap();
        assert_eq!(cfg.arch.family, family, "{name}");
        assert_eq!(cfg.arch.qkv_bias, qkv_bias, "{name}");
        assert!(!cfg.arch.o_bias, "{name}");
        assert_eq!(cfg.arch.qk_norm, qk_norm, "{name}");
        assert_eq!(cfg.arch.sliding_window.map(|w| w.size), window, "{name}");
        // what east writes back is the same model to east
        let again = LlamaConfig::from_hf_value(&cfg.to_hf_json(None), name).unwrap();
        assert_eq!(again, cfg, "{name}");
        // and every tensor transformers made is one east loads, no more, no fewer
        let mut theirs: Vec<String> = c["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        let mut ours: Vec<String> = east::model::Llama::expected_tensors(&cfg)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        theirs.sort();
        ours.sort();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn greedy_continuations_match_transformers_token_for_token() {
    let fx = reference();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(fx["greedy_prompts"].clone()).unwrap();
    for c in cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let (_d, m) = load_case(c, DType::F32);
        let want: Vec<Vec<u32>> = serde_json::from_value(c["greedy"].clone()).unwrap();
        let requests: Vec<Request> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Request {
                prompt_ids: p.clone(),
                id: format!("p{i}"),
                first_sample: 0,
                samples: 1,
            })
            .collect();
        let settings = DecodeSettings {
            sampling: Sampling::GREEDY,
            max_new_tokens: want[0].len(),
            seed: 0,
            stop: vec![],
            sampler: SamplerPlacement::Auto,
            kv_dtype: None,
            cpu_shards: None,
        };
        let (gens, _) = generate_group(&m, &requests, &settings, |_| {}).unwrap();
        for (i, (g, w)) in gens.iter().zip(&want).enumerate() {
            // east stops at an end-of-sequence token (not kept); transformers' run did not
            let end = w
                .iter()
                .position(|t| m.eos_ids.contains(t))
                .unwrap_or(w.len());
            assert!(
                end >= 8,
                "{name}: prompt {i} stops after {end} tokens: too few to compare"
            );
            assert_eq!(g[0].token_ids, w[..end], "{name}: prompt {i}");
            eprintln!("{name}: prompt {i}, {end} greedy tokens equal");
        }
    }
}

/// The fixture's rows packed: `order` picks them.
fn packed(fx: &Value, order: &[usize]) -> Packed {
    let rows: Vec<(Vec<u32>, Vec<u32>)> = serde_json::from_value(fx["rows"].clone()).unwrap();
    let mut p = Packed::new();
    for &i in order {
        p.push(&rows[i].0, &rows[i].1);
    }
    p
}

/// One SFT step and one DPO step on `engine`: (loss, gradient norm) of each.
fn steps(fx: &Value, c: &Value, engine: &mut dyn Engine) -> [(f64, f64); 2] {
    let w_sft = floats(&c["sft"]["weights"]);
    let stats = engine.forward(&packed(fx, &[0, 1]), None, 0).unwrap();
    let out = sft(&stats, &w_sft, w_sft.len());
    engine.backward(Some(&out.coefs)).unwrap();
    let sft_step = (out.loss, engine.grad_sq_norm().unwrap().sqrt());
    engine.step(&Default::default(), 0.0, 1.0).unwrap();
    // pairs (0, 1) and (2, 3), packed as every chosen row then every rejected row
    let refs = floats(&c["dpo"]["ref_logps"]);
    let stats: Vec<RowStats> = engine.forward(&packed(fx, &[0, 2, 1, 3]), None, 0).unwrap();
    let w_dpo = floats(&c["dpo"]["weights"]);
    let rows = DpoRows {
        chosen: &stats[..2],
        rejected: &stats[2..],
        ref_chosen: &[refs[0], refs[2]],
        ref_rejected: &[refs[1], refs[3]],
    };
    let out = dpo(
        &rows,
        &w_dpo,
        c["dpo"]["beta"].as_f64().unwrap(),
        w_dpo.len(),
    );
    engine.backward(Some(&out.coefs)).unwrap();
    [sft_step, (out.loss, engine.grad_sq_norm().unwrap().sqrt())]
}

#[test]
fn sft_and_dpo_steps_match_pytorch_on_both_engines() {
    let fx = reference();
    for c in cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let (_d, m) = load_case(c, DType::F32);
        let engines: [(&str, Box<dyn Engine>); 2] = [
            (
                "cpu",
                Box::new(CpuEngine::<f32>::new(&m.model, None, 0).unwrap()),
            ),
            (
                "autograd",
                Box::new(AutogradEngine::new(&m.model, None, 0).unwrap()),
            ),
        ];
        for (engine, mut e) in engines {
            let got = steps(&fx, c, e.as_mut());
            for ((loss, norm), what) in got.iter().zip(["sft", "dpo"]) {
                let want = (
                    c[what]["loss"].as_f64().unwrap(),
                    c[what]["grad_norm"].as_f64().unwrap(),
                );
                let rel = |x: f64, y: f64| (x - y).abs() / y.abs();
                eprintln!(
                    "{name} {engine} {what}: loss rel Δ {:.1e}, grad norm rel Δ {:.1e}",
                    rel(*loss, want.0),
                    rel(*norm, want.1)
                );
                assert!(
                    rel(*loss, want.0) <= 1e-4 && rel(*norm, want.1) <= 1e-4,
                    "{name} {engine} {what}: loss {loss} vs {}, grad norm {norm} vs {}",
                    want.0,
                    want.1
                );
            }
        }
    }
}

#[test]
fn a_lora_adapter_named_as_peft_names_it_gives_pefts_logits() {
    use east::model::lora::{merge_adapter, read_adapter, write_adapter, LORA_TARGETS};
    let fx = reference();
    let prompt = ids(&fx["prompt"]);
    let positions: Vec<usize> = serde_json::from_value(fx["logit_positions"].clone()).unwrap();
    for c in cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let l = &c["lora"];
        let (_d, mut m) = load_case(c, DType::F32);
        let mut names = Vec::new();
        for layer in 0..m.config.num_hidden_layers {
            for w in 0..LORA_TARGETS.len() {
                for ab in ["A", "B"] {
                    names.push(east::train::engine::peft_name(layer, w, ab));
                }
            }
        }
        let mut sorted = names.clone();
        sorted.sort();
        let theirs: Vec<String> = serde_json::from_value(l["tensor_names"].clone()).unwrap();
        assert_eq!(sorted, theirs, "{name}: the tensor names PEFT writes");
        let (rank, alpha) = (
            l["r"].as_u64().unwrap() as usize,
            l["alpha"].as_f64().unwrap(),
        );
        let scale = l["scale"].as_f64().unwrap();
        let tensors: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| {
                let layer_dims = m.config.projection_dims();
                let w = LORA_TARGETS
                    .iter()
                    .position(|p| n.contains(&format!(".{p}.")))
                    .unwrap();
                let (din, dout) = layer_dims[w];
                let shape = if n.contains("lora_A") {
                    (rank, din)
                } else {
                    (dout, rank)
                };
                let v: Vec<f32> = unit(l["seed"].as_u64().unwrap(), n, shape.0 * shape.1)
                    .into_iter()
                    .map(|u| (scale * u) as f32)
                    .collect();
                (n.clone(), Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = LORA_TARGETS.iter().map(|s| s.to_string()).collect();
        write_adapter(dir.path(), &tensors, rank, alpha, 0.0, &targets, "base").unwrap();
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let peft_keys: Vec<String> = serde_json::from_value(l["config_keys"].clone()).unwrap();
        for k in keys.as_object().unwrap().keys() {
            assert!(
                peft_keys.contains(k),
                "{name}: adapter_config.json key {k} is not PEFT's"
            );
        }
        let adapter = read_adapter(dir.path()).unwrap();
        assert_eq!(
            merge_adapter(&mut m.model, &adapter).unwrap(),
            names.len() / 2
        );
        let want: Vec<Vec<f64>> = serde_json::from_value(l["logits"].clone()).unwrap();
        for (p, (g, w)) in positions
            .iter()
            .zip(training_logits(&m, &prompt, &positions).iter().zip(&want))
        {
            let d = max_abs_diff(g, w);
            assert!(
                d <= 1e-4,
                "{name}: base + adapter, position {p} differs by {d}"
            );
            eprintln!("{name}: base + adapter, position {p}: max |Δ logit| {d:.2e}");
        }
    }
}

fn gguf_cases(fx: &Value) -> Vec<&Value> {
    cases(fx)
        .into_iter()
        .filter(|c| c["gguf"].is_string())
        .collect()
}

#[test]
fn ggufs_made_by_llama_cpp_load_with_transformers_logits() {
    let fx = reference();
    let prompt = ids(&fx["prompt"]);
    let positions: Vec<usize> = serde_json::from_value(fx["logit_positions"].clone()).unwrap();
    assert_eq!(gguf_cases(&fx).len(), 2, "a Qwen2 and a Qwen3 GGUF");
    for c in gguf_cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let path = fixtures().join(c["gguf"].as_str().unwrap());
        let m = load(path.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
        let folder = LlamaConfig::from_hf_value(&c["config"], name).unwrap();
        assert_eq!(m.config.arch, folder.arch, "{name}");
        assert_eq!(m.config.head_dim, folder.head_dim, "{name}");
        assert_eq!(
            m.config.tie_word_embeddings, folder.tie_word_embeddings,
            "{name}"
        );
        let want: Vec<Vec<f64>> = serde_json::from_value(c["logits"].clone()).unwrap();
        let got = training_logits(&m, &prompt, &positions);
        for (p, (g, w)) in positions.iter().zip(got.iter().zip(&want)) {
            let d = max_abs_diff(g, w);
            assert!(d <= 1e-4, "{name} from GGUF: position {p} differs by {d}");
            eprintln!("{name} from GGUF, position {p}: max |Δ logit| {d:.2e}");
        }
    }
}

/// llama-server's greedy tokens after `prompt` (token ids in and out: no tokenizer involved).
fn served_greedy(server: &LlamaServer, prompt: &[u32], n: usize) -> Vec<u32> {
    let body = serde_json::json!({
        "prompt": prompt, "n_predict": n, "temperature": 0.0, "return_tokens": true,
        "cache_prompt": false, "ignore_eos": true,
    });
    let resp: Value = ureq::post(&format!("{}/completion", server.root))
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap();
    ids(&resp["tokens"])
}

/// Greedy tokens from east's decoder, without stopping at EOS.
fn east_greedy(m: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let dev = Device::Cpu;
    let mut cache =
        KvCache::new(&m.config, 1, prompt.len() + n, vec![0], DType::F32, &dev).unwrap();
    let mut x = Tensor::new(prompt, &dev).unwrap().unsqueeze(0).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = m.model.forward_step(&x, &mut cache).unwrap();
        let next = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        out.push(next);
        x = Tensor::new(&[next], &dev).unwrap().unsqueeze(0).unwrap();
    }
    out
}

#[test]
fn exported_qwen_ggufs_are_served_by_llama_cpp_with_easts_greedy_tokens() {
    let fx = reference();
    let prompts: Vec<Vec<u32>> = serde_json::from_value(fx["greedy_prompts"].clone()).unwrap();
    for c in gguf_cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let base = fixtures().join(c["gguf"].as_str().unwrap());
        let (_d, m) = load_case(c, DType::F32);
        let dir = tempfile::tempdir().unwrap();
        let exported = dir.path().join("model.gguf");
        east::serve::gguf_export::write_gguf(&base, &m.config, &m.model.named_tensors(), &exported)
            .unwrap();
        let back = load(exported.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(c["greedy"].clone()).unwrap();
        let server = LlamaServer::start(&exported, 256, 1);
        for (p, w) in prompts.iter().zip(&want) {
            let ours = east_greedy(&back, p, w.len());
            assert_eq!(&ours, w, "{name}: east on its export against transformers");
            assert_eq!(
                served_greedy(&server, p, w.len()),
                ours,
                "{name}: llama.cpp on east's export"
            );
        }
    }
}

/// Writes the tiny tokenizer the script's models use (`cargo test --test families
/// dump_tokenizer -- --ignored`): tests/fixtures/families/tokenizer/.
#[test]
#[ignore]
fn dump_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    east::model::testing::write_tiny_model(dir.path(), 1).unwrap();
    let out = fixtures().join("tokenizer");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir.path().join(f), out.join(f)).unwrap();
    }
}

/// The checked-in tokenizer is east's tiny tokenizer (the fixtures' vocabulary size is its).
#[test]
fn the_fixture_tokenizer_is_easts_tiny_tokenizer() {
    let text = std::fs::read_to_string(fixtures().join("tokenizer/tokenizer.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, east::model::testing::tiny_tokenizer_json());
}

/// Published config.json files (as on the Hugging Face hub) parse to the parameter counts the
/// model cards state, with the family's layout.
#[test]
fn published_configs_give_the_published_parameter_counts() {
    let qwen25_math_15b = r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 4096, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.37.0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}"#;
    let qwen3_06b = r#"{"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936}"#;
    let mistral_7b_v01 = r#"{"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 32000}"#;
    let r1_distill_qwen_15b = r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "use_mrope": false, "use_sliding_window": false, "vocab_size": 151936}"#;
    // (config, family, q/k/v bias, q/k norm, window, parameters): Qwen2.5-1.5B's 1.54B,
    // Qwen3-0.6B's 0.6B (0.44B without the embedding), Mistral-7B's 7.24B; the R1 distill is
    // Qwen2.5-Math-1.5B with an untied head (+0.23B)
    let want = [
        (
            qwen25_math_15b,
            Family::Qwen2,
            true,
            false,
            None,
            1_543_714_304usize,
        ),
        (qwen3_06b, Family::Qwen3, false, true, None, 596_049_920),
        (
            mistral_7b_v01,
            Family::Mistral,
            false,
            false,
            Some(4096),
            7_241_732_096,
        ),
        (
            r1_distill_qwen_15b,
            Family::Qwen2,
            true,
            false,
            None,
            1_777_088_000,
        ),
    ];
    for (text, family, bias, norm, window, params) in want {
        let cfg = LlamaConfig::from_hf_json(text, "config.json").unwrap();
        assert_eq!(cfg.arch.family, family);
        assert_eq!(
            (cfg.arch.qkv_bias, cfg.arch.qk_norm),
            (bias, norm),
            "{family:?}"
        );
        assert_eq!(
            cfg.arch.sliding_window.map(|w| w.size),
            window,
            "{family:?}"
        );
        assert_eq!(cfg.num_parameters(), params, "{family:?}");
        if family == Family::Qwen3 {
            assert_eq!(
                cfg.projection_dims()[0],
                (1024, 2048),
                "q is 16 heads of 128"
            );
        }
    }
}

/// A sequence longer than the sliding window is an error that names the setting, in the
/// decoder (before any work: at the cache), the training forward and the CPU engine; up to
/// the window everything runs.
#[test]
fn a_sliding_window_shorter_than_the_sequences_is_an_error_naming_it() {
    use east::model::config::{Arch, SlidingWindow};
    use east::model::testing::{write_tiny_model_with, TinySpec};
    let dir = tempfile::tempdir().unwrap();
    let arch = Arch {
        sliding_window: Some(SlidingWindow {
            size: 8,
            first_layer: 0,
        }),
        ..Arch::of(Family::Mistral)
    };
    let spec = TinySpec {
        arch,
        ..TinySpec::default()
    };
    write_tiny_model_with(dir.path(), 3, &spec).unwrap();
    let m = load(dir.path().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(m.config.arch.sliding_window.map(|w| w.size), Some(8));
    let says = |e: String| {
        assert!(
            e.contains("sliding_window") && e.contains("9 tokens"),
            "{e}"
        )
    };
    let dev = Device::Cpu;
    let err = KvCache::new(&m.config, 2, 9, vec![0, 1], DType::F32, &dev).unwrap_err();
    says(err.to_string());
    assert!(KvCache::new(&m.config, 2, 9, vec![1, 3], DType::F32, &dev).is_ok());
    let x = |n: u32| {
        Tensor::new(&(0..n).map(|i| 3 + i).collect::<Vec<u32>>()[..], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    says(m.model.forward_hidden(&x(9), None).unwrap_err().to_string());
    assert!(m.model.forward_hidden(&x(8), None).is_ok());
    let mut e = CpuEngine::<f32>::new(&m.model, None, 0).unwrap();
    let mut p = Packed::new();
    p.push(&[1, 5, 6, 7], &[8, 9, 10, 11, 2]);
    says(format!("{:#}", e.score(&p).unwrap_err()));
    let mut p = Packed::new();
    p.push(&[1, 5, 6, 7], &[8, 9, 10, 2]);
    assert!(e.score(&p).is_ok());
}

/// The GGUF `qwen2` pre-tokenizer (Qwen2's tokenizer.json: its split pattern and NFC) splits
/// digits one by one, where Llama 3's keeps up to three together, and composes a decomposed
/// accent before the bytes are merged; `deepseek-r1-qwen` is the same.
#[test]
fn the_qwen2_gguf_pre_tokenizer_splits_digits_one_by_one_and_composes_accents() {
    use east::model::tokenizer::{byte_level_bpe_json, encode, Tokenizer};
    let bytes = east::model::testing::bytes_to_unicode();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.push("12".into());
    let merges = vec!["1 2".to_string()];
    let types = vec![1; tokens.len()];
    let build = |pre: &str| -> Tokenizer {
        let json = byte_level_bpe_json(&tokens, &merges, &types, pre, "test").unwrap();
        json.to_string().parse().unwrap()
    };
    let count = |t: &Tokenizer, s: &str| encode(t, s).unwrap().len();
    for pre in ["qwen2", "deepseek-r1-qwen"] {
        let qwen = build(pre);
        assert_eq!(count(&qwen, "123"), 3, "{pre}: 1, 2, 3");
        // é as e + U+0301 (3 bytes) is é (2 bytes) after NFC
        assert_eq!(count(&qwen, "e\u{301}"), 2, "{pre}");
    }
    let llama3 = build("llama-bpe");
    assert_eq!(count(&llama3, "123"), 2, "12, 3");
    assert_eq!(count(&llama3, "e\u{301}"), 3);
}

const SYSTEM: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

/// Conversational training rows (TRL's form, what `east weight` writes) for `loss`.
fn training_rows(loss: &str) -> String {
    let qa = [
        ("What is 2+3?", "2+3=5. \\boxed{5}", "\\boxed{6}"),
        ("the sum of 1 and 1?", "\\boxed{2}", "it is \\boxed{3}"),
    ];
    let msgs = |q: &str| serde_json::json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]);
    let said = |a: &str| serde_json::json!([{"role": "assistant", "content": a}]);
    let mut out = String::new();
    for (i, (q, a, b)) in qa.iter().enumerate() {
        let (id, w) = (format!("q{i}"), 1.0 + i as f64);
        let rows = match loss {
            "sft" => vec![
                serde_json::json!({"id": id, "prompt": msgs(q), "completion": said(a), "weight": w}),
            ],
            "dpo" => vec![
                serde_json::json!({"id": id, "prompt": msgs(q), "chosen": said(a), "rejected": said(b), "weight": w}),
            ],
            _ => vec![
                serde_json::json!({"id": id, "prompt": msgs(q), "completion": said(a), "label": true, "weight": w}),
                serde_json::json!({"id": id, "prompt": msgs(q), "completion": said(b), "label": false, "weight": w}),
            ],
        };
        for r in rows {
            out.push_str(&format!("{r}\n"));
        }
    }
    out
}

/// `east train` of `model` for one step (`loss`, `engine`, LoRA r 4 or full) into `out`.
fn train_one_step(
    model: &Path,
    out: &Path,
    loss: &str,
    engine: &str,
    lora: bool,
) -> east::train::TrainReport {
    let data = out.with_extension("jsonl");
    std::fs::write(&data, training_rows(loss)).unwrap();
    let mut set = vec![
        format!("model.path={:?}", model.display().to_string()),
        format!("train.loss={loss:?}"),
        format!("train.engine={engine:?}"),
        "train.max_steps=1".into(),
        "train.batch_size=4".into(),
        "train.lr=0.01".into(),
        "train.warmup_ratio=0.0".into(),
        "train.schedule=\"constant\"".into(),
    ];
    if lora {
        set.extend(
            ["train.lora=true", "train.lora_rank=4", "train.lora_alpha=8"].map(String::from),
        );
    }
    let c = east::config::Config::from_toml_str("", "test", &set).unwrap();
    let job = east::train::TrainJob {
        progress: false,
        ..east::train::TrainJob::new(c.model.clone(), c.train.clone(), data, out.into())
    };
    east::train::train(&job).unwrap()
}

/// `east train` runs SFT, DPO and KTO, full and LoRA, on both engines for each family, and
/// its output (a checkpoint, or a PEFT adapter over the base folder) loads back into east with
/// logits that moved; a GGUF base trains into a folder of its family.
#[test]
fn training_runs_every_loss_full_and_lora_on_both_engines() {
    let fx = reference();
    let prompt = ids(&fx["prompt"]);
    for name in ["qwen2", "qwen3", "mistral"] {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        write_case(&base, case(&fx, name));
        let before = load(base.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
        let before = training_logits(&before, &prompt, &[11]);
        for (loss, engine, lora) in itertools_product() {
            let out = dir.path().join(format!("{loss}-{engine}-{lora}"));
            let r = train_one_step(&base, &out, loss, engine, lora);
            let what = format!("{name} {loss} {engine} lora={lora}");
            assert_eq!(r.steps, 1, "{what}");
            assert!(r.final_loss.is_some_and(f64::is_finite), "{what}");
            assert!(r.engine.starts_with(engine), "{what}: ran {}", r.engine);
            let m = load_model(&out);
            assert_eq!(m.config.arch.family, before_family(name), "{what}");
            let after = training_logits(&m, &prompt, &[11]);
            assert!(
                max_abs_diff(&after[0], &before[0]) > 1e-4,
                "{what}: the weights did not move"
            );
        }
    }
    let gguf = fixtures().join("qwen2_small_tied.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("from-gguf");
    train_one_step(&gguf, &out, "sft", "cpu", false);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    load(out.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
}

/// What `--model DIR` loads (a checkpoint, or a PEFT adapter folder over its base), in f32.
fn load_model(dir: &Path) -> LoadedModel {
    let cfg = east::model::ModelConfig {
        path: dir.display().to_string(),
        device: east::model::DeviceChoice::Cpu,
        dtype: east::model::DTypeChoice::F32,
        ..Default::default()
    };
    east::model::load_model(&cfg).unwrap()
}

fn before_family(name: &str) -> Family {
    match name {
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        _ => Family::Mistral,
    }
}

/// Every (loss, engine, LoRA) combination.
fn itertools_product() -> Vec<(&'static str, &'static str, bool)> {
    let mut v = Vec::new();
    for loss in ["sft", "dpo", "kto"] {
        for engine in ["cpu", "autograd"] {
            for lora in [false, true] {
                v.push((loss, engine, lora));
            }
        }
    }
    v
}

fn east_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "east {args:?}: {log}");
    log
}

/// `east sample`, `east eval` and `east train --estimate-memory` take a Qwen3 folder and a
/// Qwen2 GGUF.
#[test]
fn sample_eval_and_the_memory_estimate_take_the_families() {
    let fx = reference();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("qwen3");
    std::fs::create_dir(&folder).unwrap();
    write_case(&folder, case(&fx, "qwen3"));
    let data = dir.path().join("q.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 2 + 3?\", \"answer\": \"5\"}\n{\"question\": \"And 4 + 4?\", \"answer\": \"8\"}\n",
    )
    .unwrap();
    let gguf = fixtures().join("qwen2_small_tied.gguf");
    for (name, model) in [("qwen3", folder.as_path()), ("gguf", gguf.as_path())] {
        let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
        let samples = dir.path().join(format!("{name}-samples.jsonl"));
        east_cli(&[
            "sample",
            "--model",
            m,
            "--dataset",
            d,
            "--n",
            "3",
            "--max-new-tokens",
            "6",
            "--out",
            samples.to_str().unwrap(),
        ]);
        let lines: Vec<Value> = std::fs::read_to_string(&samples)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{name}");
        assert!(
            lines
                .iter()
                .all(|l| l["completions"].as_array().unwrap().len() == 3),
            "{name}"
        );
        let eval = dir.path().join(format!("{name}-eval"));
        east_cli(&[
            "eval",
            "--model",
            m,
            "--dataset",
            d,
            "--max-new-tokens",
            "6",
            "--out",
            eval.to_str().unwrap(),
        ]);
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(eval.join("eval.json")).unwrap())
                .unwrap();
        assert_eq!(report["n"], 2, "{name}");
        let est = east_cli(&["train", "--model", m, "--estimate-memory"]);
        assert!(est.contains("AdamW moments"), "{name}: {est}");
    }
}

/// For every case: the base folder, one full SFT step's checkpoint and one LoRA SFT step's
/// adapter (CPU engine), and east's logits of the prompt for both.
fn trained_checkpoints(root: &Path) -> Value {
    let fx = reference();
    let prompt = ids(&fx["prompt"]);
    let positions: Vec<usize> = serde_json::from_value(fx["logit_positions"].clone()).unwrap();
    let mut out = serde_json::Map::new();
    for c in cases(&fx) {
        let name = c["name"].as_str().unwrap();
        let dir = root.join(name);
        let base = dir.join("base");
        std::fs::create_dir_all(&base).unwrap();
        write_case(&base, c);
        let mut logits = serde_json::Map::new();
        for (kind, lora) in [("full", false), ("adapter", true)] {
            train_one_step(&base, &dir.join(kind), "sft", "cpu", lora);
            let m = load_model(&dir.join(kind));
            logits.insert(
                kind.into(),
                serde_json::json!(training_logits(&m, &prompt, &positions)),
            );
        }
        out.insert(name.into(), Value::Object(logits));
    }
    Value::Object(out)
}

/// Writes what `families_reference.py checkpoints DIR` loads with transformers and PEFT
/// (`cargo test --test families dump_checkpoints -- --ignored`; EAST_FAMILIES_DIR, default
/// /tmp/east-families): per case `base/`, `full/`, `adapter/`, and `east_logits.json`.
#[test]
#[ignore]
fn dump_checkpoints() {
    let root =
        PathBuf::from(std::env::var("EAST_FAMILIES_DIR").unwrap_or("/tmp/east-families".into()));
    let _ = std::fs::remove_dir_all(&root);
    let logits = trained_checkpoints(&root);
    std::fs::write(root.join("east_logits.json"), logits.to_string()).unwrap();
}

/// east's full checkpoints and LoRA adapters of every family give the logits transformers
/// (`AutoModelForCausalLM` on the checkpoint folder) and PEFT (`PeftModel.from_pretrained` on
/// the base) gave for the same files (tests/fixtures/families/checkpoints.json).
#[test]
fn checkpoints_give_the_logits_transformers_and_peft_give() {
    let path = fixtures().join("checkpoints.json");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let got = trained_checkpoints(root.path());
    for (name, kinds) in got.as_object().unwrap() {
        for (kind, who) in [("full", "transformers"), ("adapter", "peft")] {
            let g: Vec<Vec<f64>> = serde_json::from_value(kinds[kind].clone()).unwrap();
            let w: Vec<Vec<f64>> = serde_json::from_value(want[name][who].clone()).unwrap();
            let d = g
                .iter()
                .zip(&w)
                .map(|(a, b)| max_abs_diff(a, b))
                .fold(0f64, f64::max);
            eprintln!("{name} {kind}: max |Δ logit| against {who} {d:.2e}");
            assert!(d <= 1e-4, "{name} {kind}: {who} differs by {d}");
        }
    }
}
