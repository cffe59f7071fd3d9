//! The training loop of `east train`: epochs of seeded shuffles, batches of `batch_size`
//! examples accumulated from micro-batches, the weighted loss, global gradient-norm clipping,
//! AdamW with warmup and linear (or cosine) decay, a JSON-lines log, resume checkpoints, and
//! the final checkpoint (a Hugging Face folder, or a PEFT adapter with LoRA).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::autograd::AutogradEngine;
use super::checkpoint::{self, ModelMeta, ResumeState};
use super::cpu::CpuEngine;
use super::data::{self, Example, TrainData, Tokenizing};
use super::engine::{Engine, LoraSpec, Packed};
use super::loss::{LossConfig, Metrics, Weighting};
use super::optim::{clip_scale, lr_at, warmup_steps, AdamW, Schedule};
use crate::config::{ModelConfig, TrainConfig};
use crate::model::{LoadedModel, ModelSource};
use crate::weight::Loss;

/// One `east train` run.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub model: ModelConfig,
    pub data: PathBuf,
    pub out: PathBuf,
    pub train: TrainConfig,
    /// The DPO/KTO β in force.
    pub beta: f64,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Time the autograd engine's phases (forward, head, backward, optimizer…) into
    /// [`TrainReport::phases`]; each phase waits for the GPU, which slows training down.
    pub profile: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub examples: usize,
    pub steps: usize,
    pub total_steps: usize,
    /// Step the run resumed from (0: fresh).
    pub resumed_from: usize,
    /// The output was already complete for these settings; nothing ran.
    pub already_done: bool,
    pub final_loss: Option<f64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub engine: String,
    pub truncated: usize,
    /// Seconds and calls per engine phase, when the job asked to profile.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub phases: std::collections::BTreeMap<String, (f64, u64)>,
}

/// (size, modification time) of the files that make up a model, for fingerprints.
fn files_fingerprint(h: &mut Sha256, path: &Path) {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.ends_with(".json") || name.ends_with(".safetensors") || name.ends_with(".gguf")) {
            continue;
        }
        let meta = std::fs::metadata(&f).ok();
        let mtime = meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        h.update(name.as_bytes());
        h.update(meta.map(|m| m.len()).unwrap_or(0).to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
}

/// Identifies the starting model: where it came from and its files' sizes and times.
pub fn model_fingerprint(lm: &LoadedModel, adapter: Option<&str>, dtype: DType) -> String {
    let mut h = Sha256::new();
    h.update(lm.spec.as_bytes());
    match &lm.source {
        ModelSource::Gguf(p) | ModelSource::Folder(p) => {
            h.update(p.canonicalize().unwrap_or_else(|_| p.clone()).to_string_lossy().as_bytes());
            files_fingerprint(&mut h, p);
        }
        ModelSource::Hub { repo, revision } => {
            h.update(repo.as_bytes());
            h.update(revision.clone().unwrap_or_default().as_bytes());
            if let Some(d) = &lm.dir {
                files_fingerprint(&mut h, d);
            }
        }
    }
    if let Some(a) = adapter {
        h.update(b"adapter");
        files_fingerprint(&mut h, Path::new(a));
    }
    h.update(format!("{dtype:?}").as_bytes());
    format!("{:x}", h.finalize())
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// Reference log-probabilities of every example's rows (DPO: chosen, rejected; KTO:
/// completion, KL row), from the starting model, cached beside the data file.
pub struct RefLogps {
    pub values: Vec<Vec<f64>>,
    pub cache: Option<PathBuf>,
    pub computed: bool,
}

fn ref_rows(loss: Loss) -> usize {
    match loss {
        Loss::Sft => 0,
        Loss::Dpo => 2,
        Loss::Kto => 2,
    }
}

/// Reads the cache or scores the examples with `engine` (which must hold the starting
/// weights) and writes the cache.
pub fn reference_logps(engine: &mut dyn Engine, data: &TrainData, key: &str, progress: bool) -> anyhow::Result<RefLogps> {
    let name = data.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "train.jsonl".into());
    let cache = data.path.with_file_name(format!("{name}.ref-{}.json", &key[..16]));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if v.get("key").and_then(Value::as_str) == Some(key) {
                let values: Option<Vec<Vec<f64>>> = v.get("logps").and_then(|l| serde_json::from_value(l.clone()).ok());
                if let Some(values) = values.filter(|vals| vals.len() == data.examples.len()) {
                    return Ok(RefLogps { values, cache: Some(cache), computed: false });
                }
            }
        }
    }
    // Score in groups of similar length (bounded tokens per forward).
    let mut order: Vec<usize> = (0..data.examples.len()).collect();
    order.sort_by_key(|&i| data.examples[i].tokens());
    let budget = 8192usize;
    let mut values = vec![Vec::new(); data.examples.len()];
    let bar = progress.then(|| crate::progress::items_bar(data.examples.len() as u64, "reference"));
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let mut tokens = 0;
        while j < order.len() && (j == i || tokens + data.examples[order[j]].tokens() <= budget) {
            tokens += data.examples[order[j]].tokens();
            j += 1;
        }
        let exs: Vec<&Example> = order[i..j].iter().map(|&k| &data.examples[k]).collect();
        let main = engine.score(&data::pack(&exs))?;
        let m = exs.len();
        for (k, &idx) in order[i..j].iter().enumerate() {
            values[idx] = match data.loss {
                Loss::Dpo => vec![main[k].logp, main[m + k].logp],
                _ => vec![main[k].logp],
            };
        }
        if data.loss == Loss::Kto {
            let kl = engine.score(&data::pack_kl(&exs))?;
            for (k, &idx) in order[i..j].iter().enumerate() {
                values[idx].push(kl[k].logp);
            }
        }
        if let Some(b) = &bar {
            b.inc((j - i) as u64);
        }
        i = j;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (v, e) in values.iter().zip(&data.examples) {
        if v.len() != ref_rows(data.loss) || v.iter().any(|x| !x.is_finite()) {
            bail!("{}:{}: the reference log-probability is not finite", data.path.display(), e.line);
        }
    }
    let doc = json!({"key": key, "data": data.path, "loss": data.loss, "logps": values});
    let written = crate::io::write_json_atomic(&cache, &doc).is_ok();
    Ok(RefLogps { values, cache: written.then_some(cache), computed: true })
}

/// Keeps the first `lines` lines of the log (the steps a resume checkpoint covers).
fn truncate_log(path: &Path, lines: usize) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let kept: String = text.split_inclusive('\n').filter(|l| l.ends_with('\n')).take(lines).collect();
    std::fs::write(path, kept).with_context(|| format!("writing {}", path.display()))
}

fn make_engine(model: &crate::model::Llama, lora: Option<LoraSpec>, seed: u64, choice: &str, profile: bool) -> anyhow::Result<(Box<dyn Engine>, String)> {
    let cpu = matches!(model.device(), Device::Cpu);
    let dtype = model.dtype();
    let cpu_ok = cpu && matches!(dtype, DType::F32 | DType::F64);
    match (choice, cpu_ok) {
        ("cpu", false) => bail!("train.engine = cpu needs the CPU and f32 or f64 weights (model is {dtype:?} on {:?})", model.device()),
        ("auto" | "cpu", true) if dtype == DType::F64 => Ok((Box::new(CpuEngine::<f64>::new(model, lora, seed)?), "cpu-f64".into())),
        ("auto" | "cpu", true) => Ok((Box::new(CpuEngine::<f32>::new(model, lora, seed)?), "cpu".into())),
        _ => {
            let mut engine = AutogradEngine::new(model, lora, seed)?;
            if profile {
                engine.profile = super::profile::PhaseProfile::enabled();
            }
            Ok((Box::new(engine), format!("autograd-{}", format!("{dtype:?}").to_lowercase())))
        }
    }
}

/// Runs `east train`.
pub fn train(job: &TrainJob) -> anyhow::Result<TrainReport> {
    let started = Instant::now();
    let t = &job.train;
    let loss_cfg = LossConfig {
        loss: t.loss,
        beta: job.beta,
        desirable_weight: t.desirable_weight,
        undesirable_weight: t.undesirable_weight,
        weighting: Weighting::parse(&t.weighting)?,
    };
    let schedule = Schedule::parse(&t.schedule)?;
    let out = &job.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let lm = crate::runtime::load_model(&job.model)?;
    let dtype = lm.model.dtype();
    let end_of_turn = lm.tokenizer.token_to_id(lm.chat.end_of_turn()).unwrap_or(lm.eos_ids[0]);
    let tk = Tokenizing {
        tokenizer: &lm.tokenizer,
        chat: lm.chat,
        end_of_turn,
        max_length: t.max_length,
        require_weight: loss_cfg.weighting == Weighting::Data,
    };
    let data = data::load(&job.data, t.loss, &tk)?;
    if data.examples.is_empty() {
        bail!("{}: no training examples", job.data.display());
    }
    let model_fp = model_fingerprint(&lm, job.model.adapter.as_deref(), dtype);
    let mut settings = serde_json::to_value(t)?;
    if let Some(o) = settings.as_object_mut() {
        o.remove("save_steps");
    }
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(b"east-train-v1");
        h.update(model_fp.as_bytes());
        h.update(data.sha256.as_bytes());
        h.update(settings.to_string().as_bytes());
        h.update(job.beta.to_le_bytes());
        h.update(job.model.device.as_bytes());
        format!("{:x}", h.finalize())
    };

    // A finished run with the same settings is not redone; another run's output is not overwritten.
    let state_path = out.join("trainer_state.json");
    if let Ok(text) = std::fs::read_to_string(&state_path) {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v.get("complete").and_then(Value::as_bool) == Some(true) {
            if v.get("fingerprint").and_then(Value::as_str) == Some(fingerprint.as_str()) {
                return Ok(TrainReport {
                    out: out.clone(),
                    examples: data.examples.len(),
                    steps: v.get("global_step").and_then(Value::as_u64).unwrap_or(0) as usize,
                    total_steps: v.get("global_step").and_then(Value::as_u64).unwrap_or(0) as usize,
                    resumed_from: 0,
                    already_done: true,
                    final_loss: v.get("final_loss").and_then(Value::as_f64),
                    seconds: started.elapsed().as_secs_f64(),
                    tokens_per_s: 0.0,
                    engine: v.get("engine").and_then(Value::as_str).unwrap_or("").into(),
                    truncated: data.truncated,
                    phases: Default::default(),
                });
            }
            bail!(
                "{} holds a finished training run with other settings (model, data or [train] keys differ); use another --out or remove it",
                out.display()
            );
        }
    }
    let resume = checkpoint::load_resume(out)?;
    if let Some((r, _)) = &resume {
        if r.fingerprint != fingerprint {
            bail!(
                "{} holds a resume checkpoint of a run with other settings (model, data or [train] keys differ); rerun with the same settings to resume, or use another --out",
                checkpoint::resume_dir(out).display()
            );
        }
    }

    let LoadedModel { model, tokenizer, config, chat_template, eos_ids, bos_id, pad_id, dir, tokenizer_json, spec, source, .. } = lm;
    let meta = ModelMeta { config: config.clone(), tokenizer, tokenizer_json, dir, chat_template, eos_ids, bos_id, pad_id };
    let lora = t.lora.then(|| LoraSpec { rank: t.lora_rank, alpha: t.lora_alpha, dropout: t.lora_dropout, targets: t.lora_targets.clone() });
    let (mut engine, engine_name) = make_engine(&model, lora.clone(), t.seed, &t.engine, job.profile)?;
    drop(model);

    // Reference log-probabilities from the starting weights (before a resume loads others).
    let refs = if t.loss.needs_rejected() {
        let key = {
            let mut h = Sha256::new();
            h.update(b"east-ref-v1");
            h.update(model_fp.as_bytes());
            h.update(data.sha256.as_bytes());
            h.update(t.loss.name().as_bytes());
            h.update(t.max_length.to_le_bytes());
            h.update(engine_name.as_bytes());
            format!("{:x}", h.finalize())
        };
        Some(reference_logps(engine.as_mut(), &data, &key, job.progress)?)
    } else {
        None
    };

    let n = data.examples.len();
    let per_epoch = n.div_ceil(t.batch_size);
    let total = t.max_steps.unwrap_or(t.epochs * per_epoch);
    let warmup = warmup_steps(total, t.warmup_ratio);
    if job.progress {
        eprintln!(
            "east train: {n} examples ({} truncated), {total} steps of {} ({per_epoch} per epoch), {} loss, {} engine{}",
            data.truncated,
            t.batch_size,
            t.loss.name(),
            engine_name,
            if t.lora { format!(", LoRA r={} α={}", t.lora_rank, t.lora_alpha) } else { String::new() }
        );
    }
    let opt = AdamW { weight_decay: t.weight_decay, ..AdamW::default() };
    let log_path = out.join("train_log.jsonl");
    let mut start = 0;
    let mut log_lines = 0;
    match resume {
        Some((r, st)) => {
            engine.load_state(st)?;
            start = r.step;
            log_lines = r.log_lines;
            truncate_log(&log_path, log_lines)?;
        }
        None => {
            std::fs::write(&log_path, "").with_context(|| format!("writing {}", log_path.display()))?;
        }
    }
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let bar = job.progress.then(|| {
        let b = crate::progress::items_bar(total as u64, "train");
        b.set_position(start as u64);
        b
    });
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
    let mut last_loss = None;
    let mut tokens_done = 0usize;
    let train_started = Instant::now();
    let mut last_saved = start;
    for step in start..total {
        let t0 = Instant::now();
        let epoch = step / per_epoch;
        if epoch != order_epoch {
            order = data::epoch_order(n, t.seed, epoch);
            order_epoch = epoch;
        }
        let k = step % per_epoch;
        let idx = &order[k * t.batch_size..((k + 1) * t.batch_size).min(n)];
        let b = idx.len();
        let mut step_loss = 0.0;
        let mut metrics = Metrics::default();
        let mut tokens = 0;
        for (mi, micro) in idx.chunks(t.micro_batch_size).enumerate() {
            let exs: Vec<&Example> = micro.iter().map(|&i| &data.examples[i]).collect();
            let packed: Packed = data::pack(&exs);
            tokens += packed.tokens.len();
            let weights: Vec<f64> = exs.iter().map(|e| e.weight).collect();
            let resp_tokens: Vec<usize> = exs.iter().map(|e| e.completions[0].len()).collect();
            let known = loss_cfg.known_coefs(&weights, &resp_tokens, b);
            let row_refs: Option<Vec<f64>> = refs.as_ref().map(|r| match t.loss {
                Loss::Dpo => micro.iter().map(|&i| r.values[i][0]).chain(micro.iter().map(|&i| r.values[i][1])).collect(),
                _ => micro.iter().map(|&i| r.values[i][0]).collect(),
            });
            let kl = if t.loss == Loss::Kto {
                let kp: Vec<f64> = engine.score(&data::pack_kl(&exs))?.iter().map(|s| s.logp).collect();
                let kr: Vec<f64> = micro.iter().map(|&i| refs.as_ref().expect("kto has refs").values[i][1]).collect();
                Some((kp, kr))
            } else {
                None
            };
            let labels: Option<Vec<bool>> = (t.loss == Loss::Kto).then(|| exs.iter().map(|e| e.label.unwrap_or(true)).collect());
            let stats = engine.forward(&packed, known.as_deref(), mix(t.seed, (step as u64) << 16 | mi as u64))?;
            let lo = loss_cfg.compute(
                &stats,
                row_refs.as_deref(),
                &weights,
                labels.as_deref(),
                kl.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
                b,
            )?;
            if !lo.loss.is_finite() || lo.coefs.iter().any(|c| !c.is_finite()) {
                engine.discard();
                let ids: Vec<&str> = exs.iter().map(|e| e.id.as_str()).collect();
                bail!(
                    "step {}: the loss is not finite ({}) on examples {ids:?}; training stopped. {}",
                    step + 1,
                    lo.loss,
                    if last_saved > 0 {
                        format!("The resume checkpoint of step {last_saved} in {} is intact.", checkpoint::resume_dir(out).display())
                    } else {
                        "No checkpoint had been written yet.".to_string()
                    }
                );
            }
            engine.backward(if known.is_some() { None } else { Some(&lo.coefs) })?;
            step_loss += lo.loss;
            metrics.add(&lo.metrics);
        }
        let grad_norm = engine.grad_sq_norm()?.sqrt();
        if !grad_norm.is_finite() {
            bail!(
                "step {}: the gradient norm is not finite; training stopped before the update. {}",
                step + 1,
                if last_saved > 0 {
                    format!("The resume checkpoint of step {last_saved} in {} is intact.", checkpoint::resume_dir(out).display())
                } else {
                    "No checkpoint had been written yet.".to_string()
                }
            );
        }
        let lr = lr_at(t.lr, step, total, warmup, schedule);
        engine.step(&opt, lr, clip_scale(grad_norm, t.max_grad_norm))?;
        let dt = t0.elapsed().as_secs_f64();
        tokens_done += tokens;
        last_loss = Some(step_loss);
        let mut line = json!({
            "step": step + 1,
            "epoch": (step + 1) as f64 / per_epoch as f64,
            "loss": step_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "tokens_per_s": tokens as f64 / dt,
            "weight_mean": metrics.weight_sum / metrics.examples.max(1) as f64,
        });
        let mean = |s: f64, c: usize| if c > 0 { json!(s / c as f64) } else { Value::Null };
        match t.loss {
            Loss::Dpo => {
                let c = mean(metrics.chosen_reward_sum, metrics.chosen_count);
                let r = mean(metrics.rejected_reward_sum, metrics.rejected_count);
                line["rewards/chosen"] = c;
                line["rewards/rejected"] = r;
                line["rewards/margins"] = mean(metrics.chosen_reward_sum - metrics.rejected_reward_sum, metrics.chosen_count);
                line["rewards/accuracies"] = mean(metrics.correct_pairs as f64, metrics.chosen_count);
            }
            Loss::Kto => {
                line["rewards/chosen"] = mean(metrics.chosen_reward_sum, metrics.chosen_count);
                line["rewards/rejected"] = mean(metrics.rejected_reward_sum, metrics.rejected_count);
                line["kl"] = mean(metrics.kl_sum, metrics.kl_count);
            }
            Loss::Sft => {}
        }
        writeln!(log, "{line}").with_context(|| format!("writing {}", log_path.display()))?;
        log.flush()?;
        log_lines += 1;
        if let Some(b) = &bar {
            b.set_message(format!("loss {step_loss:.4} · {:.0} tok/s", tokens as f64 / dt));
            b.inc(1);
        }
        let done = step + 1;
        if t.save_steps > 0 && done % t.save_steps == 0 && done < total {
            log.sync_data().ok();
            checkpoint::save_resume(out, &ResumeState { fingerprint: fingerprint.clone(), step: done, total_steps: total, log_lines }, &engine.state()?)?;
            last_saved = done;
        }
        // Testing aid: die here like a killed process (tests/train.rs checks the resume).
        if std::env::var("EAST_TRAIN_EXIT_AFTER_STEP").ok().and_then(|v| v.parse::<usize>().ok()) == Some(done) {
            std::process::exit(137);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    log.sync_data().ok();
    let train_seconds = train_started.elapsed().as_secs_f64();

    // final checkpoint
    engine.release_training_state();
    let base_spec = match &source {
        ModelSource::Gguf(p) | ModelSource::Folder(p) => p.canonicalize().unwrap_or_else(|_| p.clone()).display().to_string(),
        ModelSource::Hub { .. } => spec.clone(),
    };
    let merge = t.lora && (t.merge || job.model.adapter.is_some());
    match engine.lora_weights()? {
        None => checkpoint::write_model_dir(out, &meta, engine.base_weights()?, dtype)?,
        Some(lw) => {
            let spec = lora.as_ref().expect("lora weights imply a spec");
            crate::model::lora::write_adapter(out, &lw, spec.rank, spec.alpha, spec.dropout, &spec.targets, &base_spec)?;
            checkpoint::write_tokenizer_files(out, &meta)?;
            if merge {
                let mut base = engine.base_weights()?;
                let scale = spec.scale();
                for (name, w) in base.iter_mut() {
                    let Some(module) = name.strip_suffix(".weight") else { continue };
                    let a = lw.iter().find(|(n, _)| n == &format!("base_model.model.{module}.lora_A.weight"));
                    let bb = lw.iter().find(|(n, _)| n == &format!("base_model.model.{module}.lora_B.weight"));
                    if let (Some((_, a)), Some((_, bm))) = (a, bb) {
                        *w = crate::model::lora::merged_weight(w, a, bm, scale)?;
                    }
                }
                checkpoint::write_model_dir(&out.join("merged"), &meta, base, dtype)?;
            }
        }
    }
    let trained = total.saturating_sub(start);
    let report = TrainReport {
        out: out.clone(),
        examples: n,
        steps: total,
        total_steps: total,
        resumed_from: start,
        already_done: false,
        final_loss: last_loss,
        seconds: started.elapsed().as_secs_f64(),
        tokens_per_s: if train_seconds > 0.0 && trained > 0 { tokens_done as f64 / train_seconds } else { 0.0 },
        engine: engine_name.clone(),
        truncated: data.truncated,
        phases: engine.phase_times().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    let state = json!({
        "complete": true,
        "fingerprint": fingerprint,
        "global_step": total,
        "epochs": total as f64 / per_epoch as f64,
        "final_loss": last_loss,
        "engine": engine_name,
        "model": job.model.path,
        "adapter": job.model.adapter,
        "data": job.data,
        "data_sha256": data.sha256,
        "examples": n,
        "truncated_examples": data.truncated,
        "reference_cache": refs.as_ref().and_then(|r| r.cache.clone()),
        "lora": t.lora,
        "merged": merge,
        "train": t,
        "beta": job.beta,
    });
    crate::io::write_json_atomic(&state_path, &state).with_context(|| format!("writing {}", state_path.display()))?;
    checkpoint::remove_resume(out)?;
    Ok(report)
}
