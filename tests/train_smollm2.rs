//! One short training run on the real model (SmolLM2-135M-Instruct GGUF, f32 on the CPU): two
//! SFT steps on two examples. The loss falls, the checkpoint (built from a GGUF source, so its
//! tokenizer.json comes from the GGUF metadata) loads back as a Hugging Face folder with the
//! same chat format, and it scores the data as the trained engine did.

use candle_core::{DType, Device};
use east::config::Config;
use east::model::gguf::bundled_smollm2_path;
use east::schema::Loss;
use east::train::{data, Engine};
use serde_json::{json, Value};

#[test]
fn smollm2_sft_steps_and_checkpoint_round_trip() {
    let model = bundled_smollm2_path();
    assert!(
        model.is_file(),
        "{} is missing: run scripts/fetch-model.sh first",
        model.display()
    );
    let d = tempfile::tempdir().unwrap();
    let data_path = d.path().join("train.jsonl");
    let sys = "Please reason step by step, and put your final answer within \\boxed{}.";
    let rows = [
        json!({"id": "a", "prompt": [{"role": "system", "content": sys}, {"role": "user", "content": "What is 12 + 35?"}],
               "completion": [{"role": "assistant", "content": "12 + 35 = 47. The answer is \\boxed{47}."}], "weight": 1.5}),
        json!({"id": "b", "prompt": [{"role": "system", "content": sys}, {"role": "user", "content": "Tom has 3 apples and eats one. How many are left?"}],
               "completion": [{"role": "assistant", "content": "3 - 1 = 2, so \\boxed{2}."}], "weight": 0.5}),
    ];
    std::fs::write(
        &data_path,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let out = d.path().join("ckpt");
    let c = Config::from_toml_str(
        "",
        "test",
        &[
            format!("model.path={}", model.display()),
            "train.batch_size=2".into(),
            "train.micro_batch_size=2".into(),
            "train.max_steps=3".into(),
            "train.lr=1e-4".into(),
            "train.warmup_ratio=0.0".into(),
        ],
    )
    .unwrap();
    let job = east::train::TrainJob {
        progress: false,
        ..east::train::TrainJob::new(
            c.model.clone(),
            c.train.clone(),
            data_path.clone(),
            out.clone(),
        )
    };
    let r = east::train::train(&job).unwrap();
    assert_eq!((r.steps, r.engine.as_str()), (3, "cpu"));
    let log: Vec<Value> = std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (
        log[0]["loss"].as_f64().unwrap(),
        log[2]["loss"].as_f64().unwrap(),
    );
    assert!(first > 0.1 && last < first, "loss {first} → {last}");
    assert_eq!(log[0]["weight_mean"].as_f64().unwrap(), 1.0);

    let m = east::model::load(out.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert!(m.chat.template().is_some(), "the GGUF's own template");
    assert_eq!(m.config.vocab_size, 49152);
    // the reloaded checkpoint scores the data like a fresh engine on the trained weights would:
    // the final loss of the run is from before the last update, so it must be higher
    let end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    let tk = data::Tokenizing {
        tokenizer: &m.tokenizer,
        chat: &m.chat,
        end_of_turn: end,
        max_length: 2048,
        require_weight: true,
    };
    let td = data::load(&data_path, Loss::Sft, &tk).unwrap();
    let mut e = east::train::engine::cpu::CpuEngine::<f32>::new(&m.model, None, 0).unwrap();
    let exs: Vec<_> = td.examples.iter().collect();
    let stats = e.score(&data::pack(&exs)).unwrap();
    let loss: f64 = stats
        .iter()
        .zip(&td.examples)
        .map(|(s, x)| x.weight * -s.logp / s.tokens as f64)
        .sum::<f64>()
        / 2.0;
    assert!(
        loss < last,
        "reloaded checkpoint loss {loss} vs last logged {last}"
    );
}
