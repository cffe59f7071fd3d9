//! The training loop of `east train`, read top to bottom in [`train`]: prepare (model, data,
//! engine, reference log-probabilities, resume), then per optimiser step the micro-batches
//! (forward, weighted loss, backward), the clipped AdamW step with warmup and decay, a JSON line
//! in `train_log.jsonl` and a resume checkpoint every `save_steps`; finally the checkpoint (a
//! Hugging Face folder, or a PEFT adapter with LoRA, merged on request).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use super::board::{self, Board, SharedBoard};
use super::checkpoint::{self, ModelMeta, ResumeState};
use super::config::TrainConfig;
use super::data::{self, Example, Tokenizing, TrainData};
use super::engine::autograd::AutogradEngine;
use super::engine::cpu::CpuEngine;
use super::engine::{Engine, EngineChoice, LoraSpec};
use super::identity::{model_fingerprint, reference_key, run_fingerprint};
use super::loss::{KtoRows, LossConfig, LossOut, Metrics, Rows, Weighting};
use super::optim::{clip_scale, lr_at, warmup_steps, AdamW};
use super::reference::{reference_logps, RefLogps};
use crate::model::{LoadedModel, ModelConfig};
use crate::schema::Loss;

/// One `east train` run.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub model: ModelConfig,
    pub data: PathBuf,
    pub out: PathBuf,
    pub train: TrainConfig,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Time the autograd engine's phases (forward, head, backward, optimizer…) into
    /// [`TrainReport::phases`]; each phase waits for the GPU, which slows training down.
    pub profile: bool,
    /// An event folder of another stage that the step metrics also go to (`east run`).
    pub board: Option<SharedBoard>,
}

impl TrainJob {
    /// A job with a progress bar when stderr is a terminal, and no profiling.
    pub fn new(model: ModelConfig, train: TrainConfig, data: PathBuf, out: PathBuf) -> Self {
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        TrainJob {
            model,
            data,
            out,
            train,
            progress,
            profile: false,
            board: None,
        }
    }
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

/// Runs `east train`.
pub fn train(job: &TrainJob) -> anyhow::Result<TrainReport> {
    let started = Instant::now();
    let mut run = match Run::prepare(job)? {
        Prepared::AlreadyDone(report) => return Ok(report),
        Prepared::Ready(run) => run,
    };
    let train_started = Instant::now();
    for step in run.start..run.total {
        let t0 = Instant::now();
        let step_out = run.accumulate_gradients(step)?;
        let (lr, grad_norm) = run.optimizer_step(step, step_out.grad_scale)?;
        run.log_step(step, &step_out, lr, grad_norm, t0.elapsed().as_secs_f64())?;
        run.save_if_due(step + 1)?;
    }
    run.finish(started, train_started.elapsed().as_secs_f64())
}

/// Either the output already holds this run, finished, or everything needed to train.
enum Prepared {
    AlreadyDone(TrainReport),
    Ready(Box<Run>),
}

/// A training run in progress: the data, the engine, the schedule and the log.
struct Run {
    job: TrainJob,
    data: TrainData,
    loss: LossConfig,
    engine: Box<dyn Engine>,
    engine_name: String,
    refs: Option<RefLogps>,
    /// What the final checkpoint needs of the source model.
    meta: ModelMeta,
    base_spec: String,
    dtype: DType,
    lora: Option<LoraSpec>,
    fingerprint: String,
    opt: AdamW,
    /// Steps: the first to run (after a resume), the total, per epoch, of warmup.
    start: usize,
    total: usize,
    per_epoch: usize,
    warmup: usize,
    /// The current epoch's shuffle.
    order: (usize, Vec<usize>),
    log: StepLog,
    /// TensorBoard event files the step metrics also go to.
    boards: Vec<Board>,
    bar: Option<ProgressBar>,
    last_loss: Option<f64>,
    last_saved: usize,
    tokens_done: usize,
}

/// What one optimiser step's micro-batches added up to.
struct StepOut {
    loss: f64,
    tokens: usize,
    metrics: Metrics,
    /// Factor of the accumulated gradient ([`LossConfig::batch_scale`]; 1 but for LW(P)).
    grad_scale: f64,
}

impl Run {
    /// Loads the model and data, refuses an output folder of another run, builds the engine,
    /// computes the reference log-probabilities and restores a resume checkpoint.
    fn prepare(job: &TrainJob) -> anyhow::Result<Prepared> {
        let t = &job.train;
        std::fs::create_dir_all(&job.out)
            .with_context(|| format!("creating {}", job.out.display()))?;
        let lm = crate::model::load_model(&job.model)?;
        let dtype = lm.model.dtype();
        let data = load_data(&lm, job)?;
        let model_fp = model_fingerprint(&lm, job.model.adapter.as_deref(), dtype);
        let fingerprint = run_fingerprint(&model_fp, &data.sha256, t, &job.model);
        if let Some(report) = finished_run(job, &fingerprint, &data)? {
            return Ok(Prepared::AlreadyDone(report));
        }
        let resume = resume_of(job, &fingerprint)?;

        let (model, meta, base_spec) = ModelMeta::split(lm);
        let lora = t.lora_spec();
        let longest = data
            .examples
            .iter()
            .flat_map(|e| e.completions.iter().map(|c| e.prompt.len() + c.len()))
            .max()
            .unwrap_or(0);
        let (checkpointing, estimate) = super::memory::decide(
            model.config(),
            t,
            match model.device().location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
                _ => None,
            },
            dtype,
            (longest, data.examples.len()),
            !cpu_engine_runs(&model, t.engine),
        )?;
        super::memory::log(&estimate);
        let (mut engine, engine_name) = make_engine(
            &model,
            lora.clone(),
            t.seed,
            (t.engine, checkpointing),
            job.profile,
        )?;
        drop(model);
        // Reference log-probabilities come from the starting weights, before a resume loads others.
        let refs = match t.loss.needs_rejected() {
            true => {
                let key =
                    reference_key(&model_fp, &data.sha256, t.loss, t.max_length, &engine_name);
                Some(reference_logps(engine.as_mut(), &data, &key, job.progress)?)
            }
            false => None,
        };

        let per_epoch = data.examples.len().div_ceil(t.batch_size);
        let total = t.max_steps.unwrap_or(t.epochs * per_epoch);
        let (start, log) = match resume {
            Some((r, state)) => {
                engine.load_state(state)?;
                (r.step, StepLog::reopen(&job.out, r.log_lines)?)
            }
            None => (0, StepLog::create(&job.out)?),
        };
        let boards = board::open(&job.out, t.report_to, job.board.as_ref(), start)?;
        let bar = progress_bar(job, &data, &engine_name, (start, total, per_epoch));
        Ok(Prepared::Ready(Box::new(Run {
            job: job.clone(),
            data,
            loss: t.loss_config(),
            engine,
            engine_name,
            refs,
            meta,
            base_spec,
            dtype,
            lora,
            fingerprint,
            opt: AdamW {
                weight_decay: t.weight_decay,
                ..AdamW::default()
            },
            start,
            total,
            per_epoch,
            warmup: warmup_steps(total, t.warmup_ratio),
            order: (usize::MAX, Vec::new()),
            log,
            boards,
            bar,
            last_loss: None,
            last_saved: start,
            tokens_done: 0,
        })))
    }

    /// The examples of optimiser step `step`: the next `batch_size` of the epoch's shuffle.
    fn batch(&mut self, step: usize) -> Vec<usize> {
        let t = &self.job.train;
        let epoch = step / self.per_epoch;
        if self.order.0 != epoch {
            self.order = (
                epoch,
                data::epoch_order(self.data.examples.len(), t.seed, epoch),
            );
        }
        let k = step % self.per_epoch;
        let n = self.data.examples.len();
        self.order.1[k * t.batch_size..((k + 1) * t.batch_size).min(n)].to_vec()
    }

    /// Forward, loss and backward of every micro-batch of step `step`; the gradients add up.
    fn accumulate_gradients(&mut self, step: usize) -> anyhow::Result<StepOut> {
        let batch = self.batch(step);
        let mut out = StepOut {
            loss: 0.0,
            tokens: 0,
            metrics: Metrics::default(),
            grad_scale: 1.0,
        };
        for (mi, micro) in batch.chunks(self.job.train.micro_batch_size).enumerate() {
            let seed = dropout_seed(self.job.train.seed, step, mi);
            let (lo, tokens) = self.micro_batch(step, micro, batch.len(), seed)?;
            out.loss += lo.loss;
            out.tokens += tokens;
            out.metrics.add(&lo.metrics);
        }
        // LW(P) normalises over the whole batch (Eq. 9), known only now: the gradient is
        // scaled with the same factor before clipping, in `optimizer_step`.
        out.grad_scale = self.loss.batch_scale(&out.metrics);
        out.loss *= out.grad_scale;
        out.metrics.weight_sum *= out.grad_scale;
        Ok(out)
    }

    /// One micro-batch (`micro`: example indices) of a step of `batch_examples` examples.
    /// Returns its loss and the tokens it processed.
    fn micro_batch(
        &mut self,
        step: usize,
        micro: &[usize],
        batch_examples: usize,
        seed: u64,
    ) -> anyhow::Result<(LossOut, usize)> {
        let loss_kind = self.job.train.loss;
        let exs: Vec<&Example> = micro.iter().map(|&i| &self.data.examples[i]).collect();
        let packed = data::pack(&exs);
        let weights: Vec<f64> = exs.iter().map(|e| e.weight).collect();
        let resp_tokens: Vec<usize> = exs.iter().map(|e| e.completions[0].len()).collect();
        // SFT with fixed weights: the coefficients are known before the forward, which then
        // computes the output layer's gradient in the same pass.
        let known = self
            .loss
            .known_coefs(&weights, &resp_tokens, batch_examples);
        let refs = self.refs.as_ref().map(|r| r.rows(micro, loss_kind));
        let kl = match (loss_kind, &self.refs) {
            (Loss::Kto, Some(r)) => {
                let policy: Vec<f64> = self
                    .engine
                    .score(&data::pack_kl(&exs))?
                    .iter()
                    .map(|s| s.logp)
                    .collect();
                Some((policy, r.kl_rows(micro)))
            }
            _ => None,
        };
        let labels: Vec<bool> = exs.iter().map(|e| e.label.unwrap_or(true)).collect();
        let stats = self.engine.forward(&packed, known.as_deref(), seed)?;
        let rows = match (loss_kind, &refs, &kl) {
            (Loss::Sft, _, _) => Rows::Sft(&stats),
            (Loss::Dpo, Some(r), _) => Rows::dpo(&stats, r),
            (Loss::Kto, Some(r), Some((kp, kr))) => Rows::Kto(KtoRows {
                policy: &stats,
                reference: r,
                desirable: &labels,
                kl_policy: kp,
                kl_reference: kr,
            }),
            _ => bail!("{} needs reference log-probabilities", loss_kind.name()),
        };
        let lo = self.loss.compute(&rows, &weights, batch_examples)?;
        if !lo.loss.is_finite() || lo.coefs.iter().any(|c| !c.is_finite()) {
            self.engine.discard();
            let ids: Vec<&str> = exs.iter().map(|e| e.id.as_str()).collect();
            bail!(
                "step {}: the loss is not finite ({}) on examples {ids:?}; training stopped. {}",
                step + 1,
                lo.loss,
                self.resume_note()
            );
        }
        self.engine.backward(if known.is_some() {
            None
        } else {
            Some(&lo.coefs)
        })?;
        Ok((lo, packed.tokens.len()))
    }

    /// Scales the accumulated gradients by `grad_scale`, clips them to `max_grad_norm` and
    /// takes the AdamW step at the scheduled learning rate. Returns (learning rate, gradient
    /// norm before clipping).
    fn optimizer_step(&mut self, step: usize, grad_scale: f64) -> anyhow::Result<(f64, f64)> {
        let t = &self.job.train;
        let grad_norm = self.engine.grad_sq_norm()?.sqrt() * grad_scale;
        if !grad_norm.is_finite() {
            bail!(
                "step {}: the gradient norm is not finite; training stopped before the update. {}",
                step + 1,
                self.resume_note()
            );
        }
        let lr = lr_at(t.lr, step, self.total, self.warmup, t.schedule);
        self.engine.step(
            &self.opt,
            lr,
            grad_scale * clip_scale(grad_norm, t.max_grad_norm),
        )?;
        Ok((lr, grad_norm))
    }

    /// Appends the step's line to `train_log.jsonl` and advances the progress bar.
    fn log_step(
        &mut self,
        step: usize,
        s: &StepOut,
        lr: f64,
        grad_norm: f64,
        seconds: f64,
    ) -> anyhow::Result<()> {
        let epoch = (step + 1) as f64 / self.per_epoch as f64;
        let line = step_line(
            step + 1,
            epoch,
            s,
            lr,
            grad_norm,
            seconds,
            self.job.train.loss,
        );
        self.log.append(&line)?;
        for board in &mut self.boards {
            board.log(step + 1, &line)?;
        }
        self.tokens_done += s.tokens;
        self.last_loss = Some(s.loss);
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "loss {:.4} · {:.0} tok/s",
                s.loss,
                s.tokens as f64 / seconds
            ));
            b.inc(1);
        }
        Ok(())
    }

    /// Writes a resume checkpoint every `save_steps` optimiser steps (not after the last one:
    /// the final checkpoint follows).
    fn save_if_due(&mut self, done: usize) -> anyhow::Result<()> {
        let every = self.job.train.save_steps;
        if every == 0 || !done.is_multiple_of(every) || done >= self.total {
            return Ok(());
        }
        self.log.sync();
        let state = ResumeState {
            fingerprint: self.fingerprint.clone(),
            step: done,
            total_steps: self.total,
            log_lines: self.log.lines,
        };
        checkpoint::save_resume(&self.job.out, &state, &self.engine.state()?)?;
        self.last_saved = done;
        Ok(())
    }

    /// What survives a failure now, for error messages.
    fn resume_note(&self) -> String {
        match self.last_saved {
            0 => "No checkpoint had been written yet.".to_string(),
            s => format!(
                "The resume checkpoint of step {s} in {} is intact.",
                checkpoint::resume_dir(&self.job.out).display()
            ),
        }
    }

    /// Writes the final checkpoint and `trainer_state.json`, removes the resume checkpoint.
    fn finish(mut self, started: Instant, train_seconds: f64) -> anyhow::Result<TrainReport> {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.log.sync();
        self.engine.release_training_state();
        let merged = self.write_checkpoint()?;
        let state_path = self.job.out.join("trainer_state.json");
        crate::io::write_json_atomic(&state_path, &self.trainer_state(merged))?;
        checkpoint::remove_resume(&self.job.out)?;
        let trained = self.total.saturating_sub(self.start);
        Ok(TrainReport {
            out: self.job.out.clone(),
            examples: self.data.examples.len(),
            steps: self.total,
            total_steps: self.total,
            resumed_from: self.start,
            already_done: false,
            final_loss: self.last_loss,
            seconds: started.elapsed().as_secs_f64(),
            tokens_per_s: if train_seconds > 0.0 && trained > 0 {
                self.tokens_done as f64 / train_seconds
            } else {
                0.0
            },
            engine: self.engine_name.clone(),
            truncated: self.data.truncated,
            phases: (self.engine.phase_times().into_iter())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
    }

    /// The trained model: a Hugging Face folder, or with LoRA a PEFT adapter (and the merged
    /// model in `merged/` when asked for, or when the run started from an adapter). Returns
    /// whether a merged model was written.
    fn write_checkpoint(&self) -> anyhow::Result<bool> {
        let (job, t) = (&self.job, &self.job.train);
        let (Some(lw), Some(spec)) = (self.engine.lora_weights()?, &self.lora) else {
            let weights = self.engine.base_weights()?;
            checkpoint::write_model_dir(&job.out, &self.meta, weights, self.dtype)?;
            return Ok(false);
        };
        let (rank, alpha, dropout) = (spec.rank, spec.alpha, spec.dropout);
        let base = &self.base_spec;
        crate::model::lora::write_adapter(
            &job.out,
            &lw,
            rank,
            alpha,
            dropout,
            &spec.targets,
            base,
        )?;
        checkpoint::write_tokenizer_files(&job.out, &self.meta)?;
        let merge = t.merge || job.model.adapter.is_some();
        if merge {
            let mut weights = self.engine.base_weights()?;
            crate::model::lora::merge_named(&mut weights, &lw, spec.scale())?;
            checkpoint::write_model_dir(&job.out.join("merged"), &self.meta, weights, self.dtype)?;
        }
        Ok(merge)
    }

    /// `trainer_state.json`: the run is complete, and what it was.
    fn trainer_state(&self, merged: bool) -> Value {
        let (job, t) = (&self.job, &self.job.train);
        json!({
            "complete": true,
            "fingerprint": self.fingerprint,
            "global_step": self.total,
            "epochs": self.total as f64 / self.per_epoch as f64,
            "final_loss": self.last_loss,
            "engine": self.engine_name,
            "model": job.model.path,
            "adapter": job.model.adapter,
            "data": job.data,
            "data_sha256": self.data.sha256,
            "examples": self.data.examples.len(),
            "truncated_examples": self.data.truncated,
            "reference_cache": self.refs.as_ref().and_then(|r| r.cache.clone()),
            "lora": t.lora,
            "merged": merged,
            "train": t,
            "beta": t.beta,
        })
    }
}

/// Tokenises the training file with the model's chat format.
fn load_data(lm: &LoadedModel, job: &TrainJob) -> anyhow::Result<TrainData> {
    let t = &job.train;
    let end_of_turn = lm
        .tokenizer
        .token_to_id(lm.chat.end_of_turn())
        .unwrap_or(lm.eos_ids[0]);
    // Positions past the model's context are untrained (and the RoPE tables stop there).
    let context = lm.config.max_position_embeddings;
    if t.max_length > context {
        eprintln!(
            "east train: train.max_length = {} is more than the model's context ({context} tokens, max_position_embeddings): using {context}",
            t.max_length
        );
    }
    let tk = Tokenizing {
        tokenizer: &lm.tokenizer,
        chat: &lm.chat,
        end_of_turn,
        max_length: t.max_length.min(context),
        require_weight: t.weighting == Weighting::Data,
    };
    let data = data::load(&job.data, t.loss, &tk)?;
    if data.examples.is_empty() {
        bail!("{}: no training examples", job.data.display());
    }
    if t.weighting == Weighting::Data && data.examples.iter().all(|e| e.weight == 0.0) {
        bail!(
            "{}: every example has weight 0, so training would not change the model; check the weights east weight wrote (or use train.weighting = \"none\")",
            job.data.display()
        );
    }
    Ok(data)
}

/// A finished run in the output folder: its report when it is this run; an error when it is
/// another one (never overwritten).
fn finished_run(
    job: &TrainJob,
    fingerprint: &str,
    data: &TrainData,
) -> anyhow::Result<Option<TrainReport>> {
    let Ok(text) = std::fs::read_to_string(job.out.join("trainer_state.json")) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if v.get("complete").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    if v.get("fingerprint").and_then(Value::as_str) != Some(fingerprint) {
        bail!(
            "{} holds a finished training run with other settings (model, data or [train] keys differ); use another --out or remove it",
            job.out.display()
        );
    }
    let steps = v.get("global_step").and_then(Value::as_u64).unwrap_or(0) as usize;
    Ok(Some(TrainReport {
        out: job.out.clone(),
        examples: data.examples.len(),
        steps,
        total_steps: steps,
        resumed_from: 0,
        already_done: true,
        final_loss: v.get("final_loss").and_then(Value::as_f64),
        seconds: 0.0,
        tokens_per_s: 0.0,
        engine: v.get("engine").and_then(Value::as_str).unwrap_or("").into(),
        truncated: data.truncated,
        phases: Default::default(),
    }))
}

/// The resume checkpoint in the output folder, if any; one of another run is an error.
fn resume_of(
    job: &TrainJob,
    fingerprint: &str,
) -> anyhow::Result<Option<(ResumeState, super::engine::EngineState)>> {
    let resume = checkpoint::load_resume(&job.out)?;
    if resume
        .as_ref()
        .is_some_and(|(r, _)| r.fingerprint != fingerprint)
    {
        bail!(
            "{} holds a resume checkpoint of a run with other settings (model, data or [train] keys differ); rerun with the same settings to resume, or use another --out",
            checkpoint::resume_dir(&job.out).display()
        );
    }
    Ok(resume)
}

/// On a terminal: one line saying what will run, and a bar over the steps.
fn progress_bar(
    job: &TrainJob,
    data: &TrainData,
    engine: &str,
    (start, total, per_epoch): (usize, usize, usize),
) -> Option<ProgressBar> {
    if !job.progress {
        return None;
    }
    let t = &job.train;
    let lora = match t.lora {
        true => format!(", LoRA r={} α={}", t.lora_rank, t.lora_alpha),
        false => String::new(),
    };
    eprintln!(
        "east train: {} examples ({} truncated), {total} steps of {} ({per_epoch} per epoch), {} loss, {engine} engine{lora}",
        data.examples.len(),
        data.truncated,
        t.batch_size,
        t.loss.name(),
    );
    let bar = crate::progress::items_bar(total as u64, "train");
    bar.set_position(start as u64);
    Some(bar)
}

/// Whether `choice` runs the CPU engine for `model` (f32/f64 on the CPU, unless autograd is asked for).
fn cpu_engine_runs(model: &crate::model::Llama, choice: EngineChoice) -> bool {
    let cpu_ok =
        matches!(model.device(), Device::Cpu) && matches!(model.dtype(), DType::F32 | DType::F64);
    cpu_ok && matches!(choice, EngineChoice::Auto | EngineChoice::Cpu)
}

/// The engine `choice` asks for, on the model's device and dtype, and its name for logs.
fn make_engine(
    model: &crate::model::Llama,
    lora: Option<LoraSpec>,
    seed: u64,
    (choice, checkpointing): (EngineChoice, bool),
    profile: bool,
) -> anyhow::Result<(Box<dyn Engine>, String)> {
    let dtype = model.dtype();
    let cpu_ok = matches!(model.device(), Device::Cpu) && matches!(dtype, DType::F32 | DType::F64);
    if checkpointing && cpu_engine_runs(model, choice) {
        bail!(
            "train.gradient_checkpointing = true needs the autograd engine (train.engine = \"autograd\"); \
             the CPU engine keeps no per-op activations to drop (see README, \"Training memory\")"
        );
    }
    match (choice, cpu_ok) {
        (EngineChoice::Cpu, false) => bail!(
            "train.engine = cpu needs the CPU and f32 or f64 weights (model is {dtype:?} on {:?})",
            model.device()
        ),
        (EngineChoice::Auto | EngineChoice::Cpu, true) if dtype == DType::F64 => Ok((
            Box::new(CpuEngine::<f64>::new(model, lora, seed)?),
            "cpu-f64".into(),
        )),
        (EngineChoice::Auto | EngineChoice::Cpu, true) => Ok((
            Box::new(CpuEngine::<f32>::new(model, lora, seed)?),
            "cpu".into(),
        )),
        _ => {
            let mut engine = AutogradEngine::new(model, lora, seed)?;
            engine.checkpointing = checkpointing;
            if profile {
                engine.profile = super::engine::profile::PhaseProfile::enabled();
            }
            Ok((
                Box::new(engine),
                format!("autograd-{}", format!("{dtype:?}").to_lowercase()),
            ))
        }
    }
}

/// The LoRA dropout stream of micro-batch `micro` of step `step`.
fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let b = (step as u64) << 16 | micro as u64;
    let mut z = seed ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// The `train_log.jsonl` line of one step (TRL's names for the DPO/KTO reward statistics).
fn step_line(
    step: usize,
    epoch: f64,
    s: &StepOut,
    lr: f64,
    grad_norm: f64,
    seconds: f64,
    loss: Loss,
) -> Value {
    let m = &s.metrics;
    let mut line = json!({
        "step": step,
        "epoch": epoch,
        "loss": s.loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": s.tokens,
        "tokens_per_s": s.tokens as f64 / seconds,
        "weight_mean": m.weight_sum / m.examples.max(1) as f64,
    });
    let mean = |sum: f64, count: usize| {
        if count > 0 {
            json!(sum / count as f64)
        } else {
            Value::Null
        }
    };
    match loss {
        Loss::Dpo => {
            line["rewards/chosen"] = mean(m.chosen_reward_sum, m.chosen_count);
            line["rewards/rejected"] = mean(m.rejected_reward_sum, m.rejected_count);
            line["rewards/margins"] =
                mean(m.chosen_reward_sum - m.rejected_reward_sum, m.chosen_count);
            line["rewards/accuracies"] = mean(m.correct_pairs as f64, m.chosen_count);
        }
        Loss::Kto => {
            line["rewards/chosen"] = mean(m.chosen_reward_sum, m.chosen_count);
            line["rewards/rejected"] = mean(m.rejected_reward_sum, m.rejected_count);
            line["kl"] = mean(m.kl_sum, m.kl_count);
        }
        Loss::Sft => {}
    }
    line
}

/// `train_log.jsonl`, one line per optimiser step; `lines` counts them so that a resume
/// checkpoint knows how much of the log it covers.
struct StepLog {
    file: File,
    path: PathBuf,
    lines: usize,
}

impl StepLog {
    fn create(out: &Path) -> anyhow::Result<StepLog> {
        let path = out.join("train_log.jsonl");
        std::fs::write(&path, "").with_context(|| format!("writing {}", path.display()))?;
        Self::open(path, 0)
    }

    /// Keeps the first `lines` lines (the steps a resume checkpoint covers) and appends after them.
    fn reopen(out: &Path, lines: usize) -> anyhow::Result<StepLog> {
        let path = out.join("train_log.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())))
            }
        };
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .take(lines)
            .collect();
        std::fs::write(&path, kept).with_context(|| format!("writing {}", path.display()))?;
        Self::open(path, lines)
    }

    fn open(path: PathBuf, lines: usize) -> anyhow::Result<StepLog> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(StepLog { file, path, lines })
    }

    fn append(&mut self, line: &Value) -> anyhow::Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.lines += 1;
        Ok(())
    }

    fn sync(&self) {
        self.file.sync_data().ok();
    }
}
