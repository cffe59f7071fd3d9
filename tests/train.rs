//! `east train` end to end on the tiny seeded Llama: losses at initialisation against hand
//! formulas, example weights in the gradient, SFT memorising a tiny set, checkpoints that east
//! (and `east eval`) load, LoRA adapters in PEFT layout, resuming after a kill, the reference
//! cache, a non-finite loss, and input errors that name file, line and field.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use east::config::Config;
use east::model::testing::write_tiny_model;
use east::model::ModelConfig;
use east::schema::Loss;
use east::train::engine::cpu::CpuEngine;
use east::train::loss::{LossConfig, Weighting};
use east::train::{data, Engine, TrainJob};
use serde_json::{json, Value};

const SYSTEM: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

fn tiny_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_tiny_model(&d.path().join("model"), 11).unwrap();
    d
}

fn msgs(q: &str) -> Value {
    json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
}

fn assistant(a: &str) -> Value {
    json!([{"role": "assistant", "content": a}])
}

const QA: [(&str, &str, &str); 4] = [
    ("What is 2+3?", "2+3=5. \\boxed{5}", "2+3=6. \\boxed{6}"),
    ("What is 4+4?", "4+4=8 so \\boxed{8}", "It is \\boxed{9}"),
    ("the sum of 1 and 1?", "\\boxed{2}", "\\boxed{3}"),
    (
        "how many sides has a box?",
        "a box has 6 sides: \\boxed{6}",
        "\\boxed{4}",
    ),
];
const WEIGHTS: [f64; 4] = [0.5, 1.0, 1.5, 2.0];

fn write_rows(path: &Path, rows: &[Value]) {
    std::fs::write(
        path,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
}

fn sft_rows() -> Vec<Value> {
    QA.iter()
        .zip(WEIGHTS)
        .enumerate()
        .map(|(i, ((q, a, _), w))| json!({"id": format!("q{i}"), "prompt": msgs(q), "completion": assistant(a), "weight": w}))
        .collect()
}

fn dpo_rows() -> Vec<Value> {
    QA.iter()
        .zip(WEIGHTS)
        .enumerate()
        .map(|(i, ((q, a, b), w))| json!({"id": format!("q{i}"), "prompt": msgs(q), "chosen": assistant(a), "rejected": assistant(b), "weight": w}))
        .collect()
}

fn kto_rows() -> Vec<Value> {
    let mut v = Vec::new();
    for (i, ((q, a, b), w)) in QA.iter().zip(WEIGHTS).enumerate() {
        v.push(json!({"id": format!("q{i}"), "prompt": msgs(q), "completion": assistant(a), "label": true, "weight": w}));
        v.push(json!({"id": format!("q{i}"), "prompt": msgs(q), "completion": assistant(b), "label": false, "weight": w}));
    }
    v
}

fn job(model: &Path, data: &Path, out: &Path, set: &[&str]) -> TrainJob {
    let mut overrides: Vec<String> = vec![format!("model.path={}", model.display())];
    overrides.extend(set.iter().map(|s| s.to_string()));
    let c = Config::from_toml_str("", "test", &overrides).unwrap();
    TrainJob {
        progress: false,
        ..TrainJob::new(c.model.clone(), c.train.clone(), data.into(), out.into())
    }
}

fn log_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The largest |a − b| over two f32 tensors of one shape.
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

#[test]
fn dpo_loss_at_initialisation_is_log2_times_the_mean_weight() {
    let d = tiny_dir();
    let data = d.path().join("dpo.jsonl");
    write_rows(&data, &dpo_rows());
    let out = d.path().join("out");
    let r = east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &[
            "train.loss=\"dpo\"",
            "train.batch_size=4",
            "train.micro_batch_size=2",
            "train.max_steps=2",
        ],
    ))
    .unwrap();
    assert_eq!(r.steps, 2);
    let first = &log_lines(&out)[0];
    let mean_w = WEIGHTS.iter().sum::<f64>() / 4.0;
    assert!(
        (first["loss"].as_f64().unwrap() - std::f64::consts::LN_2 * mean_w).abs() < 1e-9,
        "{first}"
    );
    assert_eq!(first["weight_mean"].as_f64().unwrap(), mean_w);
    assert_eq!(first["rewards/margins"].as_f64().unwrap(), 0.0);
    assert_eq!(
        first["lr"].as_f64().unwrap(),
        0.0,
        "warmup starts at 0 as in Hugging Face"
    );
    // the reference log-probs were cached beside the data, keyed by model and data
    let cache: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("dpo.jsonl.ref-"))
        .collect();
    assert_eq!(cache.len(), 1);
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&cache[0]).unwrap()).unwrap();
    assert_eq!(c["logps"].as_array().unwrap().len(), 4);
    assert!(c["logps"][0][0].as_f64().unwrap() < 0.0);
    // the checkpoint loads
    let m = east::model::load(out.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(m.config.num_hidden_layers, 2);
}

#[test]
fn local_weighting_baselines_train() {
    let d = tiny_dir();
    let data = d.path().join("dpo.jsonl");
    write_rows(&data, &dpo_rows());
    for (w, engine) in [("lwp", "cpu"), ("lww", "cpu"), ("lwp", "autograd")] {
        let out = d.path().join(format!("out-{w}-{engine}"));
        let set = [
            "train.loss=\"dpo\"".to_string(),
            "train.batch_size=4".into(),
            "train.micro_batch_size=4".into(),
            "train.max_steps=2".into(),
            format!("train.weighting=\"{w}\""),
            format!("train.engine=\"{engine}\""),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        east::train::train(&job(&d.path().join("model"), &data, &out, &set)).unwrap();
        let first = &log_lines(&out)[0];
        let wm = first["weight_mean"].as_f64().unwrap();
        if w == "lwp" {
            assert!(
                (wm - 1.0).abs() < 1e-9,
                "LW(P) weights average 1 over the batch: {wm}"
            );
            assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-9);
        } else {
            assert!(
                wm > 0.0 && wm.is_finite() && (wm - 1.0).abs() > 1e-6,
                "WPO weights are not normalised: {wm}"
            );
        }
    }
}

#[test]
fn kto_loss_at_initialisation_matches_the_hand_formula() {
    let d = tiny_dir();
    let data = d.path().join("kto.jsonl");
    write_rows(&data, &kto_rows());
    let out = d.path().join("out");
    east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &[
            "train.loss=\"kto\"",
            "train.batch_size=8",
            "train.micro_batch_size=4",
            "train.max_steps=1",
            "train.undesirable_weight=1.5",
        ],
    ))
    .unwrap();
    // r = 0 and z_ref = 0 at initialisation: ℓ = λ (1 − σ(0)) = λ/2, weighted, averaged.
    let want: f64 = WEIGHTS
        .iter()
        .map(|w| w * 1.0 * 0.5 + w * 1.5 * 0.5)
        .sum::<f64>()
        / 8.0;
    let first = &log_lines(&out)[0];
    assert!(
        (first["loss"].as_f64().unwrap() - want).abs() < 1e-9,
        "{first} vs {want}"
    );
    assert_eq!(first["kl"].as_f64().unwrap(), 0.0);
}

#[test]
fn example_weights_scale_the_gradient() {
    // weight 0 contributes no gradient, weight 2 doubles it
    let d = tiny_dir();
    let m = east::model::load(
        d.path().join("model").to_str().unwrap(),
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    let data_path = d.path().join("sft.jsonl");
    write_rows(&data_path, &sft_rows());
    let end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    let tk = data::Tokenizing {
        tokenizer: &m.tokenizer,
        chat: &m.chat,
        end_of_turn: end,
        max_length: 512,
        require_weight: true,
    };
    let td = data::load(&data_path, Loss::Sft, &tk).unwrap();
    let cfg = LossConfig {
        loss: Loss::Sft,
        beta: 0.0,
        desirable_weight: 1.0,
        undesirable_weight: 1.0,
        weighting: Weighting::Data,
    };
    let grad_with = |weights: [f64; 2]| {
        let mut e = CpuEngine::<f64>::new(&m.model, None, 0).unwrap();
        let exs = [&td.examples[0], &td.examples[1]];
        let tokens: Vec<usize> = exs.iter().map(|x| x.completions[0].len()).collect();
        let coefs = cfg.known_coefs(&weights, &tokens, 2).unwrap();
        e.forward(&data::pack(&exs), Some(&coefs), 0).unwrap();
        e.backward(None).unwrap();
        e.grad("model.layers.1.mlp.up_proj.weight")
            .unwrap()
            .to_vec()
    };
    let only_second = grad_with([0.0, 1.0]);
    let doubled = grad_with([0.0, 2.0]);
    let both = grad_with([1.0, 1.0]);
    let first_alone = grad_with([1.0, 0.0]);
    for i in 0..only_second.len() {
        assert!((doubled[i] - 2.0 * only_second[i]).abs() < 1e-12);
        assert!((both[i] - only_second[i] - first_alone[i]).abs() < 1e-12);
    }
    assert!(
        only_second.iter().any(|&g| g != 0.0)
            && first_alone
                .iter()
                .zip(&only_second)
                .any(|(a, b)| (a - b).abs() > 1e-9)
    );
}

#[test]
fn sft_drives_the_loss_near_zero_and_the_checkpoint_scores_the_same() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows()[..2]);
    let out = d.path().join("out");
    let r = east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &[
            "train.batch_size=2",
            "train.micro_batch_size=1",
            "train.max_steps=40",
            "train.lr=3e-3",
            "train.warmup_ratio=0.0",
            "train.schedule=\"constant\"",
            "train.weighting=\"none\"",
        ],
    ))
    .unwrap();
    let log = log_lines(&out);
    assert_eq!(log.len(), 40);
    let first = log[0]["loss"].as_f64().unwrap();
    let last = r.final_loss.unwrap();
    assert!(first > 3.0 && last < 0.05, "loss {first} → {last}");
    for (i, l) in log.iter().enumerate() {
        assert_eq!(l["step"].as_u64().unwrap() as usize, i + 1);
        for k in [
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "weight_mean",
        ] {
            assert!(l[k].is_number(), "{k} missing in {l}");
        }
    }
    // HF layout with HF names, tokenizer files beside
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "trainer_state.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(
        !out.join("resume").exists(),
        "the resume checkpoint is removed at the end"
    );
    let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        st.contains_key("model.layers.0.self_attn.q_proj.weight")
            && st.contains_key("lm_head.weight")
    );
    // the saved model gives the trained model's log-probs: mean NLL per example ≈ the last loss
    let m = east::model::load(out.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    let tk = data::Tokenizing {
        tokenizer: &m.tokenizer,
        chat: &m.chat,
        end_of_turn: end,
        max_length: 2048,
        require_weight: false,
    };
    let td = data::load(&data, Loss::Sft, &tk).unwrap();
    let mut e = CpuEngine::<f32>::new(&m.model, None, 0).unwrap();
    let exs: Vec<_> = td.examples.iter().collect();
    let stats = e.score(&data::pack(&exs)).unwrap();
    let nll: f64 = stats.iter().map(|s| -s.logp / s.tokens as f64).sum::<f64>() / 2.0;
    assert!(nll < 0.05, "{nll}");
    // a rerun with the same settings has nothing to do
    let again = east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &[
            "train.batch_size=2",
            "train.micro_batch_size=1",
            "train.max_steps=40",
            "train.lr=3e-3",
            "train.warmup_ratio=0.0",
            "train.schedule=\"constant\"",
            "train.weighting=\"none\"",
        ],
    ))
    .unwrap();
    assert!(again.already_done);
    // … and other settings do not overwrite it
    let err = east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &["train.max_steps=3"],
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("other settings"), "{err}");
}

fn east_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_east"))
}

fn train_cmd(model: &Path, data: &Path, out: &Path) -> Command {
    let mut c = east_bin();
    c.args([
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    c.args([
        "--loss",
        "dpo",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "1",
        "--max-steps",
        "6",
        "--lr",
        "1e-3",
        "--save-steps",
        "2",
    ]);
    c
}

/// Starts `cmd` and kills it with SIGKILL once its output folder holds a resume checkpoint and
/// at least `min_steps` lines of train_log.jsonl — a crash from outside, at an arbitrary moment
/// after a checkpoint. Returns the step of the checkpoint that survived.
fn kill_after_a_checkpoint(mut cmd: Command, out: &Path, min_steps: usize) -> usize {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(out.join("train_log.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if out.join("resume/state.json").is_file() && lines >= min_steps {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no resume checkpoint within two minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // killed between the two renames of a checkpoint save, the previous checkpoint waits under
    // its temporary name (the rerun takes it back)
    let old = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".resume.old-")
        });
    let state = [Some(out.join("resume")), old]
        .into_iter()
        .flatten()
        .map(|d| d.join("state.json"))
        .find(|p| p.is_file())
        .unwrap();
    let st: Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    st["step"].as_u64().unwrap() as usize
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let d = tiny_dir();
    let data = d.path().join("dpo.jsonl");
    write_rows(&data, &dpo_rows());
    let model = d.path().join("model");
    let straight = d.path().join("straight");
    let steps = ["--max-steps", "40"];
    let o = train_cmd(&model, &data, &straight)
        .args(steps)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // killed from outside after at least 5 steps: the last resume checkpoint (every 2 steps) survives
    let resumed = d.path().join("resumed");
    let mut cmd = train_cmd(&model, &data, &resumed);
    cmd.args(steps);
    let saved = kill_after_a_checkpoint(cmd, &resumed, 5);
    assert!(
        saved >= 2 && saved.is_multiple_of(2) && saved < 40,
        "checkpoint of step {saved}"
    );
    assert!(!resumed.join("trainer_state.json").exists());
    assert!(log_lines(&resumed).len() >= saved);
    // a torn temporary folder from an earlier kill is ignored
    std::fs::create_dir_all(resumed.join(".resume.tmp-1")).unwrap();
    let o = train_cmd(&model, &data, &resumed)
        .args(steps)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("resumed at step {saved}")),
        "{stdout}"
    );
    let a = std::fs::read(straight.join("model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    let (la, lb) = (log_lines(&straight), log_lines(&resumed));
    assert_eq!(la.len(), 40);
    assert_eq!(lb.len(), 40);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"]);
        assert_eq!(x["step"], y["step"]);
    }
    // another run's settings never resume from this checkpoint
    let other = d.path().join("other");
    let mut cmd = train_cmd(&model, &data, &other);
    cmd.args(steps);
    kill_after_a_checkpoint(cmd, &other, 3);
    let o = train_cmd(&model, &data, &other)
        .args(steps)
        .args(["--lr", "5e-3"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("other settings"));
}

#[test]
fn lora_writes_a_peft_adapter_that_east_loads_and_merges() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let model = d.path().join("model");
    let out = d.path().join("lora");
    east::train::train(&job(
        &model,
        &data,
        &out,
        &[
            "train.lora=true",
            "train.lora_rank=4",
            "train.lora_alpha=8.0",
            "train.merge=true",
            "train.batch_size=4",
            "train.micro_batch_size=2",
            "train.max_steps=5",
            "train.lr=1e-2",
            "train.warmup_ratio=0.0",
        ],
    ))
    .unwrap();
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "merged/model.safetensors",
        "merged/config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(
        !out.join("config.json").exists(),
        "an adapter folder holds no full model"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
    let st = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(st.len(), 2 * 7 * 2);
    let a = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &st["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[4, 64]);
    assert_eq!(b.dims(), &[64, 4]);
    assert!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0,
        "B trained away from 0"
    );
    // base + adapter (three ways) give the merged model's logits
    let ids = Tensor::new(&[[1u32, 40, 41, 42, 2, 7]], &Device::Cpu).unwrap();
    let logits = |m: &east::model::LoadedModel| {
        m.model
            .logits(&m.model.forward_hidden(&ids, None).unwrap())
            .unwrap()
    };
    let merged = east::model::load(
        out.join("merged").to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let want = logits(&merged);
    let base = east::model::load(model.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let via_flag = east::model::load_model(&ModelConfig {
        path: model.display().to_string(),
        adapter: Some(out.display().to_string()),
        ..ModelConfig::default()
    })
    .unwrap();
    let via_dir = east::model::load_model(&ModelConfig {
        path: out.display().to_string(),
        ..ModelConfig::default()
    })
    .unwrap();
    for m in [&via_flag, &via_dir] {
        let diff = max_abs_diff(&logits(m), &want);
        assert!(diff < 1e-4, "{diff}");
    }
    let base_diff = max_abs_diff(&logits(&base), &want);
    assert!(base_diff > 1e-3, "the adapter changes the model");
    // a broken adapter is refused with the reason
    let broken = d.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "use_dora": true}"#,
    )
    .unwrap();
    let e = east::model::lora::read_adapter(&broken)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DoRA"), "{e}");
}

#[test]
fn a_trained_checkpoint_loads_in_east_eval() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let out = d.path().join("ckpt");
    let o = east_bin()
        .args([
            "train",
            "--model",
            d.path().join("model").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--max-steps", "2", "--batch-size", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 steps on 4 examples"));
    let questions = d.path().join("q.jsonl");
    std::fs::write(&questions, "{\"question\": \"What is 2+3?\", \"answer\": \"5\"}\n{\"question\": \"What is 4+4?\", \"answer\": \"8\"}\n").unwrap();
    let ev = d.path().join("eval");
    let o = east_bin()
        .args([
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--dataset",
            questions.to_str().unwrap(),
            "--max-new-tokens",
            "4",
            "--out",
            ev.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ev.join("eval.json").is_file());
}

/// `east train` on a tiny SFT set: the command with `--out out` and a few steps.
fn sft_train_cmd(d: &Path, data: &Path, out: &Path) -> Command {
    let mut c = east_bin();
    c.args([
        "train",
        "--model",
        d.join("model").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
    ]);
    c
}

/// A second trainer on an output folder another east process holds fails at once, naming it
/// (two trainers on one folder used to both run, writing every step twice into train_log.jsonl).
#[test]
fn a_second_trainer_on_one_output_folder_fails_at_once() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let out = d.path().join("ckpt");
    let held = east::io::FileLock::output_dir(&out).unwrap();
    let o = sft_train_cmd(d.path(), &data, &out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("in use by another east process")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(!out.join("train_log.jsonl").exists());
    drop(held);
    let o = sft_train_cmd(d.path(), &data, &out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(log_lines(&out).len(), 1);
}

/// A failed `east train` does not leave the empty output folder it created.
#[test]
fn a_failed_train_leaves_no_empty_output_folder() {
    let d = tiny_dir();
    let data = d.path().join("missing.jsonl");
    let out = d.path().join("ckpt");
    let o = sft_train_cmd(d.path(), &data, &out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("missing.jsonl"),
        "{err}"
    );
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert!(!out.exists(), "{}", out.display());
}

/// Training in which every example weighs 0 would not change the model: refused.
#[test]
fn training_data_whose_weights_are_all_zero_is_refused() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    let rows: Vec<Value> = sft_rows()
        .into_iter()
        .map(|mut r| {
            r["weight"] = json!(0.0);
            r
        })
        .collect();
    write_rows(&data, &rows);
    let out = d.path().join("ckpt");
    let o = sft_train_cmd(d.path(), &data, &out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("every example has weight 0"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The checkpoint's files get the umask's mode like every other output (safetensors writes
/// through a 0600 temporary file); a max_length past the model's context is cut to it.
#[test]
fn checkpoint_files_follow_the_umask_and_max_length_the_context() {
    use std::os::unix::fs::PermissionsExt;
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let out = d.path().join("ckpt");
    let o = sft_train_cmd(d.path(), &data, &out)
        .args(["--max-length", "1000000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("train.max_length = 1000000 is more than the model's context (1024 tokens"),
        "{err}"
    );
    let mode = |name: &str| {
        std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    assert_eq!(mode("model.safetensors"), mode("trainer_state.json"));
    assert_ne!(
        mode("model.safetensors") & 0o044,
        0,
        "{:o}",
        mode("model.safetensors")
    );
}

/// A full disk while writing the checkpoint is an error that names the file, the OS error said
/// once. The full disk is a 64 KiB tmpfs (needs root and mount; skipped where unavailable).
#[test]
fn a_full_disk_during_training_names_the_file() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let mnt = d.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let out = mnt.join("ckpt");
    let o = sft_train_cmd(d.path(), &data, &out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}: ", out.join("model.safetensors").display()))
            && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    let d = tiny_dir();
    let data = d.path().join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let out = d.path().join("out");
    let err = east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &[
            "train.lr=1e30",
            "train.warmup_ratio=0.0",
            "train.max_grad_norm=1e30",
            "train.batch_size=4",
            "train.max_steps=5",
            "train.save_steps=1",
        ],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not finite") && err.contains("resume checkpoint of step 1"),
        "{err}"
    );
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("resume/state.json")).unwrap())
            .unwrap();
    assert_eq!(st["step"], 1);
    assert!(!out.join("trainer_state.json").exists());
    assert!(
        !out.join("model.safetensors").exists(),
        "no final checkpoint from a diverged run"
    );
}

#[test]
fn standard_form_rows_train_and_get_an_end_of_turn() {
    let d = tiny_dir();
    let data = d.path().join("std.jsonl");
    let rows: Vec<Value> = vec![
        json!({"prompt": "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n", "completion": "\\boxed{5}", "weight": 1.0}),
        json!({"prompt": "Q: 1+1?\nA:", "completion": " \\boxed{2}<|im_end|>", "weight": 2.0}),
    ];
    write_rows(&data, &rows);
    let m = east::model::load(
        d.path().join("model").to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    let tk = data::Tokenizing {
        tokenizer: &m.tokenizer,
        chat: &m.chat,
        end_of_turn: end,
        max_length: 2048,
        require_weight: true,
    };
    let td = data::load(&data, Loss::Sft, &tk).unwrap();
    assert_eq!((td.standard, td.conversational), (2, 0));
    for e in &td.examples {
        assert_eq!(
            *e.completions[0].last().unwrap(),
            end,
            "ends with exactly one end-of-turn"
        );
        assert_ne!(e.completions[0][e.completions[0].len() - 2], end);
    }
    assert_eq!(td.examples[0].id, "line 1");
    let out = d.path().join("out");
    east::train::train(&job(
        &d.path().join("model"),
        &data,
        &out,
        &["train.batch_size=2", "train.max_steps=1"],
    ))
    .unwrap();
    // conversational rows render as TRL does: completion = the answer + "<|im_end|>\n"
    let conv = d.path().join("conv.jsonl");
    write_rows(&conv, &sft_rows()[..1]);
    let tc = data::load(&conv, Loss::Sft, &tk).unwrap();
    let text = east::model::tokenizer::decode(&m.tokenizer, &tc.examples[0].completions[0], false)
        .unwrap();
    assert_eq!(text, "2+3=5. \\boxed{5}<|im_end|>\n");
    let prompt =
        east::model::tokenizer::decode(&m.tokenizer, &tc.examples[0].prompt, false).unwrap();
    assert!(
        prompt.starts_with("<|im_start|>system\n") && prompt.ends_with("<|im_start|>assistant\n"),
        "{prompt}"
    );
}

#[test]
fn input_errors_name_file_line_and_field() {
    let d = tiny_dir();
    let m = east::model::load(
        d.path().join("model").to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tk = data::Tokenizing {
        tokenizer: &m.tokenizer,
        chat: &m.chat,
        end_of_turn: 2,
        max_length: 64,
        require_weight: true,
    };
    let good = json!({"prompt": msgs("q"), "completion": assistant("a"), "weight": 1.0});
    let cases: Vec<(Value, Loss, &str)> = vec![
        (
            json!({"completion": assistant("a"), "weight": 1.0}),
            Loss::Sft,
            "field `prompt`: is missing",
        ),
        (
            json!({"prompt": msgs("q"), "completion": assistant("a"), "weight": -1.0}),
            Loss::Sft,
            "field `weight`",
        ),
        (
            json!({"prompt": msgs("q"), "completion": assistant("a")}),
            Loss::Sft,
            "--weighting none",
        ),
        (
            json!({"prompt": msgs("q"), "completion": "a", "weight": 1.0}),
            Loss::Sft,
            "field `completion`: is a string but `prompt` is a list",
        ),
        (
            json!({"prompt": msgs("q"), "completion": 3, "weight": 1.0}),
            Loss::Sft,
            "field `completion`: must be a string or a list of messages",
        ),
        (
            json!({"prompt": msgs("q"), "completion": assistant("a"), "weight": 1.0}),
            Loss::Kto,
            "field `label`",
        ),
        (
            json!({"prompt": msgs("q"), "chosen": assistant("a"), "weight": 1.0}),
            Loss::Dpo,
            "field `rejected`: is missing",
        ),
        (
            json!({"prompt": [{"role": "user"}], "completion": assistant("a"), "weight": 1.0}),
            Loss::Sft,
            "message 0",
        ),
        (
            json!({"prompt": msgs("q"), "completion": [{"role": "user", "content": "x"}], "weight": 1.0}),
            Loss::Sft,
            "role `assistant`",
        ),
        (
            json!({"prompt": "", "completion": "x", "weight": 1.0}),
            Loss::Sft,
            "field `prompt`: is empty",
        ),
    ];
    for (bad, loss, want) in cases {
        let good = match loss {
            Loss::Sft => good.clone(),
            Loss::Kto => {
                json!({"prompt": msgs("q"), "completion": assistant("a"), "label": false, "weight": 1.0})
            }
            Loss::Dpo => {
                json!({"prompt": msgs("q"), "chosen": assistant("a"), "rejected": assistant("b"), "weight": 1.0})
            }
        };
        let path = d.path().join("bad.jsonl");
        std::fs::write(&path, format!("{good}\n{good}\n{bad}\n")).unwrap();
        let e = match data::load(&path, loss, &tk) {
            Ok(_) => panic!("{bad} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("bad.jsonl:3:") && e.contains(want),
            "{e} (want {want})"
        );
    }
    let path = d.path().join("broken.jsonl");
    std::fs::write(&path, format!("{good}\n{{\"prompt\": \n")).unwrap();
    let e = data::load(&path, Loss::Sft, &tk).unwrap_err().to_string();
    assert!(
        e.contains("broken.jsonl:2:") && e.contains("malformed JSON"),
        "{e}"
    );
    // truncation to max_length keeps prompt and completion within budget
    let long = d.path().join("long.jsonl");
    write_rows(
        &long,
        &[
            json!({"prompt": msgs(&"word ".repeat(100)), "completion": assistant(&"x ".repeat(100)), "weight": 1.0}),
        ],
    );
    let td = data::load(&long, Loss::Sft, &tk).unwrap();
    let e = &td.examples[0];
    assert!(e.truncated && e.prompt.len() + e.completions[0].len() == 64 && e.prompt.len() == 32);
}

/// Writes what scripts/reference/peft_reference.py checks with transformers + PEFT
/// (`cargo test --test train dump_peft -- --ignored`; EAST_PEFT_DIR, default /tmp/east-peft):
/// the tiny base model, a LoRA adapter trained by `east train` (r=4, α=8, all projections), a
/// full fine-tuned checkpoint, and east's logits for both on fixed token ids.
#[test]
#[ignore]
fn dump_peft_reference_inputs() {
    let root = PathBuf::from(std::env::var("EAST_PEFT_DIR").unwrap_or("/tmp/east-peft".into()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let base = root.join("base");
    write_tiny_model(&base, 11).unwrap();
    let data = root.join("sft.jsonl");
    write_rows(&data, &sft_rows());
    let adapter = root.join("adapter");
    east::train::train(&job(
        &base,
        &data,
        &adapter,
        &[
            "train.lora=true",
            "train.lora_rank=4",
            "train.lora_alpha=8.0",
            "train.batch_size=4",
            "train.micro_batch_size=2",
            "train.max_steps=5",
            "train.lr=1e-2",
            "train.warmup_ratio=0.0",
        ],
    ))
    .unwrap();
    let full = root.join("full");
    east::train::train(&job(
        &base,
        &data,
        &full,
        &[
            "train.batch_size=4",
            "train.max_steps=3",
            "train.lr=1e-3",
            "train.warmup_ratio=0.0",
        ],
    ))
    .unwrap();
    let ids: Vec<u32> = vec![1, 40, 41, 42, 2, 7, 100, 200];
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = |m: &east::model::LoadedModel| -> Vec<Vec<f32>> {
        m.model
            .logits(&m.model.forward_hidden(&t, None).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let with_adapter = east::model::load_model(&ModelConfig {
        path: adapter.display().to_string(),
        ..ModelConfig::default()
    })
    .unwrap();
    let full_m = east::model::load(full.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let doc = json!({"ids": ids, "east_adapter_logits": logits(&with_adapter), "east_full_logits": logits(&full_m)});
    std::fs::write(root.join("east_logits.json"), doc.to_string()).unwrap();
    println!("{}", root.display());
}

/// PEFT loads the adapter east wrote and gives the same logits (fixture made once by
/// scripts/reference/peft_reference.py with transformers + PEFT, from the files of
/// `dump_peft_reference_inputs`; the adapter is kept in tests/fixtures/peft_tiny/).
#[test]
fn peft_gives_the_same_logits_for_an_east_adapter() {
    let fx_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fx_dir.join("peft_reference.json")).unwrap())
            .unwrap();
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    write_tiny_model(&base, 11).unwrap();
    let m = east::model::load_model(&ModelConfig {
        path: base.display().to_string(),
        adapter: Some(fx_dir.join("peft_tiny").display().to_string()),
        ..ModelConfig::default()
    })
    .unwrap();
    let ids: Vec<u32> = serde_json::from_value(fx["ids"].clone()).unwrap();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got: Vec<Vec<f32>> = m
        .model
        .logits(&m.model.forward_hidden(&t, None).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fx["peft_logits"].clone()).unwrap();
    let mut max = 0f32;
    for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
        }
    }
    assert!(
        max < 1e-4,
        "east base + adapter vs PEFT: max |Δlogit| {max}"
    );
    // and the adapter really changes the model (the check is not vacuous)
    let base_only: Vec<Vec<f32>> = serde_json::from_value(fx["base_logits"].clone()).unwrap();
    let moved = base_only
        .iter()
        .zip(&want)
        .flat_map(|(a, b)| a.iter().zip(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(moved > 1e-2, "{moved}");
}

/// LW(P) divides each example's perplexity by its mean over the optimiser batch (Eq. 9, B =
/// batch_size), not over the micro-batch: at batch 16, micro-batches of 16, 4 and 1 log the
/// same loss, weight mean (1) and gradient norm, and train the same weights. (Normalising per
/// micro-batch, micro-batch 1 would weigh every example 1.)
#[test]
fn lwp_weights_do_not_depend_on_the_micro_batch() {
    let d = tiny_dir();
    let data = d.path().join("sft16.jsonl");
    let rows: Vec<Value> = (0..16)
        .map(|i| {
            let (q, a, _) = QA[i % 4];
            json!({"id": format!("q{i}"), "prompt": msgs(&format!("{q} ({i})")),
                   "completion": assistant(&format!("{}{a}", "so ".repeat(i / 4))), "weight": 1.0})
        })
        .collect();
    write_rows(&data, &rows);
    let run = |micro: usize| {
        let out = d.path().join(format!("lwp-micro{micro}"));
        let set = [
            "train.batch_size=16".to_string(),
            format!("train.micro_batch_size={micro}"),
            "train.max_steps=2".into(),
            "train.warmup_ratio=0".into(),
            "train.lr=1e-3".into(),
            "train.weighting=\"lwp\"".into(),
            "train.engine=\"cpu\"".into(),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        east::train::train(&job(&d.path().join("model"), &data, &out, &set)).unwrap();
        let st =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        (log_lines(&out), st)
    };
    let (log16, w16) = run(16);
    for micro in [4, 1] {
        let (log, w) = run(micro);
        for (a, b) in log16.iter().zip(&log) {
            for key in ["loss", "weight_mean", "grad_norm"] {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "micro {micro}, step {}: {key} {y} vs {x} at micro 16",
                    a["step"]
                );
            }
            assert!((a["weight_mean"].as_f64().unwrap() - 1.0).abs() < 1e-6);
        }
        for (name, t16) in &w16 {
            let diff = max_abs_diff(t16, &w[name]);
            assert!(diff < 1e-5, "micro {micro}: {name} differs by {diff}");
        }
    }
}
