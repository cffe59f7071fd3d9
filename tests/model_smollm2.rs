//! The real model: SmolLM2-135M-Instruct (Q4_1 GGUF, fetched by scripts/fetch-model.sh)
//! against transformers' GGUF loader (dequantized f32). Reference values:
//! tests/fixtures/smollm2_reference.json, made by scripts/reference/smollm2_reference.py
//! (versions inside the file).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use east::model::{gguf::bundled_smollm2_path, load, tokenizer, KvCache, LoadedModel, Message};
use serde_json::Value;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let path = bundled_smollm2_path();
        assert!(
            path.is_file(),
            "{} is missing: run scripts/fetch-model.sh first",
            path.display()
        );
        load(path.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap()
    })
}

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let p =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    })
}

fn ids_of(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn smollm2_config_and_chat_format() {
    let m = model();
    let c = &m.config;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (30, 576, 9, 3, 64)
    );
    assert_eq!((c.vocab_size, c.intermediate_size), (49152, 1536));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert!(
        m.chat.template().is_some(),
        "rendered with the GGUF's own template"
    );
    assert_eq!(m.chat.end_of_turn(), "<|im_end|>");
    assert_eq!(m.eos_ids, vec![2]);
    assert_eq!(m.bos_id, Some(1));
    let fx = fixture();
    let msgs = vec![
        Message::system(fx["system"].as_str().unwrap()),
        Message::user(fx["question"].as_str().unwrap()),
    ];
    let prompt = m.chat.render(&msgs, true).unwrap();
    assert_eq!(
        prompt,
        fx["prompt"].as_str().unwrap(),
        "matches apply_chat_template"
    );
    assert_eq!(
        prompt,
        m.chat
            .east_prompt(fx["question"].as_str().unwrap())
            .unwrap()
    );
    assert_eq!(
        tokenizer::encode(&m.tokenizer, &prompt).unwrap(),
        ids_of(&fx["prompt_ids"])
    );
}

#[test]
fn smollm2_tokenizer_matches_reference() {
    let m = model();
    for case in fixture()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tokenizer::encode(&m.tokenizer, text).unwrap();
        assert_eq!(got, ids_of(&case["ids"]), "ids of {text:?}");
        assert_eq!(
            tokenizer::decode(&m.tokenizer, &got, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
    // special tokens are single ids and can be skipped when decoding
    let ids = tokenizer::encode(&m.tokenizer, "<|im_start|>assistant\n42<|im_end|>").unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
    assert_eq!(
        tokenizer::decode(&m.tokenizer, &ids, true).unwrap(),
        "assistant\n42"
    );
}

/// The `llama-bpe` (Llama 3) pre-tokenizer east builds for GGUFs, on the SmolLM2 vocabulary,
/// against the same configuration in Python `tokenizers` (onig regex engine).
#[test]
fn llama_bpe_pretokenizer_matches_reference() {
    use candle_core::quantized::gguf_file;
    let mut f = std::fs::File::open(bundled_smollm2_path()).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let strings = |k: &str| -> Vec<String> {
        match &content.metadata[k] {
            gguf_file::Value::Array(a) => {
                a.iter().map(|v| v.to_string().unwrap().clone()).collect()
            }
            _ => panic!("{k}"),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens");
    let types: Vec<i64> = (0..tokens.len())
        .map(|i| if i < 17 { 3 } else { 1 })
        .collect();
    let json = east::model::tokenizer::byte_level_bpe_json(
        &tokens,
        &strings("tokenizer.ggml.merges"),
        &types,
        "llama-bpe",
        "test",
    )
    .unwrap();
    let tok: east::model::Tokenizer = json.to_string().parse().unwrap();
    for case in fixture()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer::encode(&tok, text).unwrap(),
            ids_of(&case["llama_bpe_ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn smollm2_logits_match_transformers() {
    let m = model();
    let fx = fixture();
    let ids = ids_of(&fx["prompt_ids"]);
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache =
        KvCache::new(&m.config, 1, ids.len(), vec![0], DType::F32, &Device::Cpu).unwrap();
    let last: Vec<f32> = m
        .model
        .forward_step(&x, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();

    let scale = fx["logit_std"].as_f64().unwrap() as f32;
    let tol = 1e-3 * scale.max(1.0); // measured: ~3e-5
    let mut worst = 0f32;
    for (key_ids, key_vals) in [
        ("last_top20_ids", "last_top20_logits"),
        ("probe_ids", "probe_logits"),
    ] {
        let want_ids = ids_of(&fx[key_ids]);
        let want: Vec<f32> = serde_json::from_value(fx[key_vals].clone()).unwrap();
        for (&i, &w) in want_ids.iter().zip(&want) {
            worst = worst.max((last[i as usize] - w).abs());
        }
    }
    eprintln!("max |Δlogit| vs transformers = {worst} (tolerance {tol}, logit std {scale})");
    assert!(worst < tol, "max |Δlogit| = {worst} (tolerance {tol})");
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].partial_cmp(&last[a]).unwrap());
    let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
    assert_eq!(top5, ids_of(&fx["last_top20_ids"])[..5].to_vec());

    // the differentiable path agrees at other positions too
    let h = m.model.forward_hidden(&x, None).unwrap();
    for p in fx["positions_top5"].as_array().unwrap() {
        let pos = p["pos"].as_u64().unwrap() as usize;
        let row: Vec<f32> = m
            .model
            .logits(&h.i((0, pos)).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = serde_json::from_value(p["top5_logits"].clone()).unwrap();
        for (&i, &w) in ids_of(&p["top5_ids"]).iter().zip(&want) {
            let d = (row[i as usize] - w).abs();
            assert!(d < tol, "position {pos}, token {i}: |Δ| = {d}");
        }
    }
}

/// Greedy continuation equals transformers', with the KV cache in f32 and in f16 (the decode
/// attention widens f16 keys and values to f32: `DecodeSettings::kv_dtype`).
#[test]
fn smollm2_greedy_continuation_matches() {
    let m = model();
    let fx = fixture();
    let ids = ids_of(&fx["prompt_ids"]);
    let want = ids_of(&fx["greedy20"]);
    for kv_dtype in [DType::F32, DType::F16] {
        let mut cache = KvCache::new(
            &m.config,
            1,
            ids.len() + want.len(),
            vec![0],
            kv_dtype,
            &Device::Cpu,
        )
        .unwrap();
        let mut x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let logits = m.model.forward_step(&x, &mut cache).unwrap();
            let next = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
            got.push(next);
            x = Tensor::new(&[[next]], &Device::Cpu).unwrap();
        }
        assert_eq!(
            got,
            want,
            "{kv_dtype:?} cache, greedy: {:?}",
            tokenizer::decode(&m.tokenizer, &got, false)
        );
        assert_eq!(
            tokenizer::decode(&m.tokenizer, &got, false).unwrap(),
            fx["greedy20_text"].as_str().unwrap()
        );
    }
}

/// The GGUF's own chat template (`tokenizer.chat_template`) renders SmolLM2's prompts, and
/// their token ids are transformers' (tests/fixtures/chat_templates_reference.json, made by
/// scripts/reference/chat_templates_reference.py): the EAST prompt, the prompt without a
/// system message (the template's default system text), and TRL's training split.
#[test]
fn smollm2_template_token_ids_match_reference() {
    let m = model();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let name = "HuggingFaceTB-SmolLM2-135M-Instruct";
    let source = std::fs::read_to_string(dir.join(format!("chat_templates/{name}.jinja"))).unwrap();
    assert_eq!(m.chat.template(), Some(source.as_str()));
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("chat_templates_reference.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        if case["template"] != name {
            continue;
        }
        let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        if case["case"] == "training" {
            let completion: Vec<Message> =
                serde_json::from_value(case["completion"].clone()).unwrap();
            let (p, c) = m.chat.render_training(&msgs, &completion).unwrap();
            assert_eq!(
                tokenizer::encode(&m.tokenizer, &p).unwrap(),
                ids_of(&case["prompt_ids"])
            );
            assert_eq!(
                tokenizer::encode(&m.tokenizer, &c).unwrap(),
                ids_of(&case["completion_ids"])
            );
        } else {
            let text = m.chat.render(&msgs, true).unwrap();
            assert_eq!(text, case["expected"].as_str().unwrap());
            assert_eq!(
                tokenizer::encode(&m.tokenizer, &text).unwrap(),
                ids_of(&case["ids"])
            );
        }
        if case["case"] == "east" {
            let question = msgs[1].content.as_str();
            assert_eq!(m.east_prompt_ids(question).unwrap(), ids_of(&case["ids"]));
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}
