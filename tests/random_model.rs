//! The random-weight models of `east-gpu-check` (scripts/gpu-check.sh): published shapes, the
//! synthetic tokenizer, and the streamed bf16 safetensors writer.

use candle_core::{DType, Device, Tensor};
use east::model::testing::{published_shape, synthetic_tokenizer_json, write_random_model};
use east::model::tokenizer::{decode, encode};

#[test]
fn published_shapes_have_the_published_sizes() {
    // Llama-3.2-1B: 1.24 B parameters (tied head); Llama-3.1-8B: 8.03 B.
    let b1 = published_shape("1b").unwrap();
    let b8 = published_shape("8b").unwrap();
    assert_eq!(b1.num_parameters(), 1_235_814_400);
    assert_eq!(b8.num_parameters(), 8_030_261_248);
    assert!(published_shape("70b").is_none());
}

#[test]
fn synthetic_tokenizer_has_the_vocabulary_size_and_one_token_per_byte() {
    let json = synthetic_tokenizer_json(5000);
    assert_eq!(json["model"]["vocab"].as_object().unwrap().len(), 5000);
    let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
    let ids = encode(&tok, "ab cd<|im_end|>").unwrap();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert_eq!(ids[5], 2);
    // every id decodes, filler tokens included
    let text = decode(&tok, &[1000, 4999, 300], true).unwrap();
    assert!(!text.is_empty());
}

#[test]
fn random_model_loads_and_is_reproducible() {
    let mut cfg = published_shape("1b").unwrap();
    cfg.vocab_size = 600;
    cfg.num_hidden_layers = 2;
    cfg.hidden_size = 64;
    cfg.intermediate_size = 96;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 16;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_random_model(&a, &cfg, 5).unwrap();
    write_random_model(&b, &cfg, 5).unwrap();
    let bytes = |p: &std::path::Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b));
    write_random_model(&b, &cfg, 6).unwrap();
    assert_ne!(bytes(&a), bytes(&b));

    let lm = east::model::load(&a.to_string_lossy(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(lm.config, cfg);
    assert_eq!(lm.tokenizer.get_vocab_size(true), 600);
    let norm = lm.model.norm.to_vec1::<f32>().unwrap();
    assert!(norm.iter().all(|x| (0.89..=1.11).contains(x)), "{norm:?}");
    let w = lm
        .model
        .embed_tokens
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.018..0.022).contains(&std), "std {std}");
    let ids = Tensor::new(&[[5u32, 300, 599, 7]], &Device::Cpu).unwrap();
    let h = lm.model.forward_hidden(&ids, None).unwrap();
    let logits = lm
        .model
        .logits(&h)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(logits.len(), 4 * 600);
    assert!(logits.iter().all(|x| x.is_finite()));
}
