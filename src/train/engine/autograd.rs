//! The device-generic training engine: candle's autograd through [`Llama::forward_hidden`]
//! (whose norms, RoPE, attention probabilities and SwiGLU are
//! [`train_ops`](crate::model::train_ops) with hand-written backward passes), for CUDA and for
//! dtypes the CPU engine does not run (bf16, f16). Master weights and AdamW state are f32 (f64
//! for an f64 model); the forward runs in the model dtype on copies cast from the masters once
//! per optimiser step, which are graph leaves of their own: their gradients are widened into
//! f32 accumulators after each micro-batch's backward.
//!
//! The vocabulary projection is not part of the graph: the final hidden states at the target
//! positions are detached, the logits are computed chunk by chunk (multiplied in bf16/f16 for
//! such models, as autocast does; softmax statistics in f32) with the gradient
//! `c·(onehot − softmax)` formed by hand, and the graph is then back-propagated from
//! `Σ hidden · ∂L/∂hidden`.
//!
//! LoRA: the frozen base projections go through `LinearLayer`'s frozen-weight matmul, a custom
//! op whose backward returns only the input's gradient. A plain `x.matmul(&w.detach().t())`
//! does not avoid the weight-sized gradient: candle's matmul backward computes the gradient of
//! both operands and keeps the untracked one in the gradient store until the backward ends
//! (see `tests/train_memory.rs`). The frozen norm weights need nothing of the kind: the
//! training RMS norm gives a constant weight no gradient.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};

use super::profile::PhaseProfile;
use super::shared::{dropout_keep, layer_seed};
use super::{
    peft_name, projection_path, Engine, EngineState, LoraSpec, Packed, ParamInfo, RowStats,
    PROJECTIONS,
};
use crate::model::train_ops::{checkpoint, GradSink};
use crate::model::{LayerFn, LinearAdapter, LinearLayer, Llama, LlamaConfig};
use crate::train::optim::AdamW;

/// A deterministic dropout mask (the CPU engine's hash), as a tensor of 0 and 1/(1−p), for
/// `x` of shape `(…, features)`. Row `i` of `x` draws the stream of packed token
/// `token_map[i]` (so both engines drop the same values); padding rows are zero.
fn dropout_mask(
    shape: &[usize],
    token_map: &[u32],
    seed: u64,
    p: f64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let f = *shape.last().unwrap_or(&1);
    let rows: usize = shape[..shape.len() - 1].iter().product();
    if rows != token_map.len() {
        candle_core::bail!(
            "dropout mask: {rows} rows, {} mapped tokens",
            token_map.len()
        )
    }
    let scale = 1.0 / (1.0 - p);
    let mut v = vec![0f64; rows * f];
    for (r, &k) in token_map.iter().enumerate() {
        if k == u32::MAX {
            continue;
        }
        for j in 0..f {
            if dropout_keep(seed, (k as usize * f + j) as u64, p) {
                v[r * f + j] = scale;
            }
        }
    }
    let t = if dtype == DType::F64 {
        Tensor::from_vec(v, shape, &Device::Cpu)?
    } else {
        Tensor::from_vec(
            v.into_iter().map(|x| x as f32).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )?
        .to_dtype(dtype)?
    };
    t.to_device(device)
}

/// LoRA on a projection for the autograd engine: `W x + scale · B A dropout(x)`.
#[derive(Debug)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    /// Dropout stream (None: no dropout, e.g. scoring).
    pub seed: Option<u64>,
    /// Packed token index of each (batch row, position) of the input (u32::MAX: padding).
    pub token_map: Arc<Vec<u32>>,
    /// Use a plain `x.matmul(&w.detach().t())` for the base instead of `LinearLayer`'s
    /// frozen-weight op — only to measure what that costs.
    pub plain: bool,
}

impl LinearAdapter for LoraAdapter {
    fn forward(&self, layer: &LinearLayer, x: &Tensor) -> candle_core::Result<Tensor> {
        let base = if self.plain {
            let dims = x.dims().to_vec();
            let n: usize = dims[..dims.len() - 1].iter().product();
            let y = x
                .reshape((n, layer.in_dim()))?
                .matmul(&layer.weight().detach().t()?)?;
            let mut out = dims[..dims.len() - 1].to_vec();
            out.push(layer.out_dim());
            y.reshape(out)?
        } else {
            // a constant weight: LinearLayer's frozen-weight matmul (no weight gradient)
            layer.base_forward(x)?
        };
        let xd = match self.seed {
            Some(seed) if self.dropout > 0.0 => {
                (x * dropout_mask(
                    x.dims(),
                    &self.token_map,
                    seed,
                    self.dropout,
                    x.dtype(),
                    x.device(),
                )?)?
            }
            _ => x.clone(),
        };
        // 2-D products: a broadcast_matmul over the leading dimensions would make A and B
        // broadcast operands, whose gradients candle then sums over the batch dimension
        let dims = xd.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let u = xd.reshape((rows, layer.in_dim()))?.matmul(&self.a.t()?)?;
        // the scale on B (out × r), not on the (rows × out) product
        let l = u.matmul(&(&self.b * self.scale)?.t()?)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(layer.out_dim());
        base + l.reshape(out)?
    }
}

struct Pending {
    /// Final hidden states at the target positions, in the graph.
    ht: Tensor,
    batch: Packed,
    /// ∂L/∂ht when the coefficients came with the forward.
    dht: Option<Tensor>,
    /// With activation checkpointing: where the recomputed layers leave their weights'
    /// gradients during the backward.
    sink: Option<Arc<GradSink>>,
}

/// Rows of f32 logits per chunk of the vocabulary projection: 64 MiB on the CPU (cache
/// sized), 512 MiB on a GPU, where small matmuls leave most of it idle.
pub fn head_chunk_rows(vocab_size: usize, cuda: bool) -> usize {
    let chunk_bytes: usize = if cuda { 512 << 20 } else { 64 << 20 };
    (chunk_bytes / (vocab_size * 4).max(1)).clamp(16, 4096)
}

/// The autograd engine.
pub struct AutogradEngine {
    cfg: LlamaConfig,
    device: Device,
    dtype: DType,
    master_dtype: DType,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    vars: Vec<Var>,
    grads: Vec<Option<Tensor>>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// LoRA: base tensors in the compute dtype.
    frozen: HashMap<String, Tensor>,
    /// LoRA: the base model over `frozen`, loaded at the first forward.
    frozen_model: Option<Llama>,
    /// The trainable tensors in the compute dtype (see [`AutogradEngine::compute_weights`]);
    /// None after an optimiser step until the next forward.
    compute: Option<Vec<Tensor>>,
    lora: Option<LoraSpec>,
    /// (layer, projection, A index, B index)
    lora_idx: Vec<(usize, usize, usize, usize)>,
    head_name: String,
    pub plain_frozen_matmul: bool,
    steps: u64,
    pending: Option<Pending>,
    pub head_chunk: usize,
    /// Activation checkpointing: keep each decoder layer's input only and recompute the layer
    /// in the backward pass (`train.gradient_checkpointing`).
    pub checkpointing: bool,
    /// Phase timings (off unless set to [`PhaseProfile::enabled`]).
    pub profile: PhaseProfile,
}

/// Elements of a gradient widened to f64 at a time by [`sum_of_squares`] (32 MiB).
const SQUARES_CHUNK_ELEMS: usize = 1 << 22;

/// `Σ x²` in f64 as a scalar tensor, reduced along the last dimension first (one block per
/// row on a GPU) and then over the row sums.
///
/// The rows are widened and squared a chunk at a time: the f64 copy of a whole gradient and
/// its square were 4× the largest gradient's f32 size (the tied embedding's 432 MiB for
/// SmolLM2-135M on the CPU, the peak of a checkpointed step), for the same row sums.
fn sum_of_squares(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.rank() < 2 {
        return x.to_dtype(DType::F64)?.sqr()?.sum_all();
    }
    let rows = x.dim(0)?;
    let per_row = (x.elem_count() / rows.max(1)).max(1);
    let chunk = (SQUARES_CHUNK_ELEMS / per_row).max(1);
    let parts = (0..rows)
        .step_by(chunk)
        .map(|r0| {
            x.narrow(0, r0, chunk.min(rows - r0))?
                .to_dtype(DType::F64)?
                .sqr()?
                .sum(D::Minus1)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)?.sum_all()
}

impl AutogradEngine {
    /// Takes the weights of `model` (on its device, in its dtype = the compute dtype).
    pub fn new(model: &Llama, lora: Option<LoraSpec>, seed: u64) -> anyhow::Result<Self> {
        let cfg = model.config().clone();
        let device = model.device().clone();
        let dtype = model.dtype();
        let master_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let mut names = Vec::new();
        let mut shapes = Vec::new();
        let mut vars = Vec::new();
        let mut frozen = HashMap::new();
        let mut lora_idx = Vec::new();
        match &lora {
            None => {
                for (name, t) in model.named_tensors() {
                    shapes.push(t.dims().to_vec());
                    vars.push(Var::from_tensor(&t.to_dtype(master_dtype)?)?);
                    names.push(name);
                }
            }
            Some(spec) => {
                frozen.extend(model.named_tensors());
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                for l in 0..cfg.num_hidden_layers {
                    for (w, proj) in PROJECTIONS.iter().enumerate() {
                        if !spec.targets.iter().any(|t| t == proj) {
                            continue;
                        }
                        let wt = &frozen[&format!("{}.weight", projection_path(l, w))];
                        let (out_dim, in_dim) = wt.dims2()?;
                        let bound = 1.0 / (in_dim as f64).sqrt();
                        let a: Vec<f64> = (0..spec.rank * in_dim)
                            .map(|_| rng.random_range(-bound..bound))
                            .collect();
                        let a = Tensor::from_vec(a, (spec.rank, in_dim), &Device::Cpu)?
                            .to_dtype(master_dtype)?
                            .to_device(&device)?;
                        let ai = vars.len();
                        names.push(peft_name(l, w, "A"));
                        shapes.push(vec![spec.rank, in_dim]);
                        vars.push(Var::from_tensor(&a)?);
                        names.push(peft_name(l, w, "B"));
                        shapes.push(vec![out_dim, spec.rank]);
                        vars.push(Var::zeros((out_dim, spec.rank), master_dtype, &device)?);
                        lora_idx.push((l, w, ai, ai + 1));
                    }
                }
            }
        }
        let exp_avg = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let exp_avg_sq = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let grads = vec![None; vars.len()];
        let head_name = if cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
        .to_string();
        let head_chunk = head_chunk_rows(cfg.vocab_size, device.is_cuda());
        Ok(AutogradEngine {
            cfg,
            device,
            dtype,
            master_dtype,
            names,
            shapes,
            vars,
            grads,
            exp_avg,
            exp_avg_sq,
            frozen,
            frozen_model: None,
            compute: None,
            lora,
            lora_idx,
            head_name,
            plain_frozen_matmul: false,
            steps: 0,
            pending: None,
            head_chunk,
            checkpointing: false,
            profile: PhaseProfile::default(),
        })
    }

    /// The gradient accumulated for a trainable tensor (HF or PEFT name), on the CPU.
    pub fn grad(&self, name: &str) -> Option<Tensor> {
        let i = self.names.iter().position(|n| n == name)?;
        self.grads[i]
            .as_ref()
            .map(|g| g.to_device(&Device::Cpu).expect("copy to CPU"))
    }

    /// The trainable tensors in the compute dtype, as graph leaves: the masters themselves when
    /// they are in that dtype, else copies cast once per optimiser step. A cast inside the
    /// graph would instead cast the whole model again for every micro-batch (the gradients
    /// are widened once per micro-batch either way: here in `add_grad`).
    fn compute_weights(&mut self) -> anyhow::Result<Vec<Tensor>> {
        if self.compute.is_none() {
            let cast = |v: &Var| -> anyhow::Result<Tensor> {
                if v.dtype() == self.dtype {
                    return Ok(v.as_tensor().clone());
                }
                Ok(Var::from_tensor(&v.as_tensor().to_dtype(self.dtype)?)?
                    .as_tensor()
                    .clone())
            };
            self.compute = Some(self.vars.iter().map(cast).collect::<anyhow::Result<_>>()?);
        }
        Ok(self.compute.clone().expect("just made"))
    }

    /// The compute model: the compute weights, or the frozen base with LoRA adapters.
    /// `graph`: false for scoring (constant weights: no activations kept for a backward).
    fn build(
        &mut self,
        dropout_seed: Option<u64>,
        batch: &Packed,
        graph: bool,
    ) -> anyhow::Result<Llama> {
        let _phase = self.profile.phase("build", &self.device);
        let weights = self.compute_weights()?;
        let fix = |t: &Tensor| if graph { t.clone() } else { t.detach() };
        let mut model = if self.lora.is_none() {
            let map: HashMap<String, Tensor> = self
                .names
                .iter()
                .zip(&weights)
                .map(|(name, w)| (name.clone(), fix(w)))
                .collect();
            Llama::load(
                VarBuilder::from_tensors(map, self.dtype, &self.device),
                &self.cfg,
            )?
        } else {
            // the frozen base never changes: load it once (on the CPU loading transposes every
            // projection) and hand out copies that share its tensors
            if self.frozen_model.is_none() {
                let map = self.frozen.clone();
                let mut m = Llama::load(
                    VarBuilder::from_tensors(map, self.dtype, &self.device),
                    &self.cfg,
                )?;
                // tied: loading made the output layer a transposed copy of the embedding
                // (the CPU's layout for inference); training's head reads `frozen` instead
                if self.cfg.tie_word_embeddings {
                    m.lm_head = LinearLayer::as_stored(m.embed_tokens.clone());
                }
                self.frozen_model = Some(m);
            }
            self.frozen_model.clone().expect("just loaded")
        };
        if let Some(spec) = &self.lora {
            let t = batch.max_row_len();
            let mut map = vec![u32::MAX; batch.num_rows() * t];
            for r in 0..batch.num_rows() {
                for j in 0..batch.row_len(r) {
                    map[r * t + j] = (batch.rows[r] + j) as u32;
                }
            }
            let token_map = Arc::new(map);
            let mut adapters = HashMap::new();
            for &(l, w, ai, bi) in &self.lora_idx {
                adapters.insert(
                    projection_path(l, w),
                    Arc::new(LoraAdapter {
                        a: fix(&weights[ai]),
                        b: fix(&weights[bi]),
                        scale: spec.scale(),
                        dropout: spec.dropout,
                        seed: dropout_seed.map(|s| layer_seed(s, l, w)),
                        token_map: token_map.clone(),
                        plain: self.plain_frozen_matmul,
                    }) as Arc<dyn LinearAdapter>,
                );
            }
            for (name, layer) in model.linear_layers_mut() {
                if let Some(a) = adapters.remove(&name) {
                    layer.set_adapter(Some(a));
                }
            }
        }
        Ok(model)
    }

    /// The output layer's weight for the head's matmuls (detached): in the compute dtype when
    /// that is a half type, else in the master dtype.
    fn head_weight(&self) -> anyhow::Result<Tensor> {
        let t = match self.names.iter().position(|n| n == &self.head_name) {
            Some(i) => match &self.compute {
                Some(c) => c[i].detach(),
                None => self.vars[i].as_tensor().detach(),
            },
            None => self
                .frozen
                .get(&self.head_name)
                .context("no output layer weight")?
                .detach(),
        };
        Ok(t.to_dtype(self.head_matmul_dtype())?)
    }

    /// bf16/f16 models multiply the vocabulary projection in their own dtype (f32 accumulation
    /// in cuBLAS) and take the softmax statistics in f32, as PyTorch's autocast does; an f32 or
    /// f64 model stays in its dtype. Multiplying in f32 was most of the head's time on a GPU.
    fn head_matmul_dtype(&self) -> DType {
        match self.dtype {
            DType::BF16 | DType::F16 => self.dtype,
            _ => self.master_dtype,
        }
    }

    /// Hidden states at the target positions `(targets, hidden)`, in the graph.
    /// `sink`: run every decoder layer checkpointed, its weights' gradients going there.
    fn hidden_at_targets(
        &self,
        model: &Llama,
        batch: &Packed,
        sink: Option<&Arc<GradSink>>,
    ) -> anyhow::Result<Tensor> {
        let _phase = self.profile.phase("forward", &self.device);
        let rows = batch.num_rows();
        let t = batch.max_row_len();
        let mut ids = vec![0u32; rows * t];
        let mut mask = vec![0u32; rows * t];
        for r in 0..rows {
            for (j, &tok) in batch.tokens[batch.rows[r]..batch.rows[r + 1]]
                .iter()
                .enumerate()
            {
                ids[r * t + j] = tok;
                mask[r * t + j] = 1;
            }
        }
        let ids = Tensor::from_vec(ids, (rows, t), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, t), &self.device)?;
        let hidden = match sink {
            None => model.forward_hidden(&ids, Some(&mask))?,
            Some(sink) => {
                let weights = Arc::new(self.compute.clone().context("no compute weights")?);
                let run = |_: usize, layer: LayerFn, x: &Tensor| {
                    checkpoint(x, layer, weights.clone(), sink.clone())
                };
                model.forward_hidden_with(&ids, Some(&mask), Some(&run))?
            }
        };
        let sel: Vec<u32> = batch
            .targets
            .iter()
            .map(|tg| (tg.row * t + tg.pos - batch.rows[tg.row]) as u32)
            .collect();
        let sel = Tensor::from_vec(sel, batch.targets.len(), &self.device)?;
        Ok(hidden
            .reshape((rows * t, self.cfg.hidden_size))?
            .index_select(&sel, 0)?)
    }

    /// Statistics and (with coefficients) `∂L/∂ht` and the output layer's gradient.
    fn head(
        &self,
        ht: &Tensor,
        batch: &Packed,
        coefs: Option<&[f64]>,
    ) -> anyhow::Result<(Vec<RowStats>, Option<Tensor>, Option<Tensor>)> {
        let _phase = self.profile.phase("head", &self.device);
        let w = self.head_weight()?;
        let mm = self.head_matmul_dtype();
        let ht = ht.detach().to_dtype(mm)?;
        let nt = batch.targets.len();
        let mut stats = vec![RowStats::default(); batch.num_rows()];
        let mut dht_parts = Vec::new();
        let mut logp_parts = Vec::new();
        let mut log_sq_parts = Vec::new();
        let mut dw: Option<Tensor> = None;
        let head_trains = self.names.iter().any(|n| n == &self.head_name);
        let chunk = self.head_chunk.max(1);
        for c0 in (0..nt).step_by(chunk) {
            let nc = (nt - c0).min(chunk);
            let targets = &batch.targets[c0..c0 + nc];
            let hc = ht.narrow(0, c0, nc)?;
            let logits = hc.matmul(&w.t()?)?.to_dtype(self.master_dtype)?;
            let m = logits.max_keepdim(D::Minus1)?;
            let e = logits.broadcast_sub(&m)?.exp()?;
            let s1 = e.sum_keepdim(D::Minus1)?;
            let lse = (&m + s1.log()?)?;
            let ids = Tensor::from_vec(
                targets.iter().map(|t| t.id).collect::<Vec<u32>>(),
                (nc, 1),
                &self.device,
            )?;
            logp_parts.push((logits.gather(&ids, 1)? - &lse)?);
            log_sq_parts
                .push(((e.sqr()?.sum_keepdim(D::Minus1)?.log()? + (&m * 2.0)?)? - (&lse * 2.0)?)?);
            if let Some(c) = coefs {
                let cv: Vec<f64> = targets.iter().map(|t| c[t.row]).collect();
                let cv = Tensor::from_vec(cv, (nc, 1), &Device::Cpu)?
                    .to_dtype(self.master_dtype)?
                    .to_device(&self.device)?;
                let p = e.broadcast_div(&s1)?;
                let dlogits = p
                    .broadcast_mul(&cv.neg()?)?
                    .scatter_add(&ids, &cv, 1)?
                    .to_dtype(mm)?;
                dht_parts.push(dlogits.matmul(&w)?.to_dtype(self.master_dtype)?);
                if head_trains {
                    let g = dlogits.t()?.matmul(&hc)?.to_dtype(self.master_dtype)?;
                    dw = Some(match dw {
                        Some(d) => (d + g)?,
                        None => g,
                    });
                }
            }
        }
        if logp_parts.is_empty() {
            // no target tokens: nothing to learn from this batch
            let dht = coefs
                .map(|_| Tensor::zeros((0, self.cfg.hidden_size), self.master_dtype, &self.device))
                .transpose()?;
            return Ok((stats, dht, None));
        }
        // one copy to the host for all chunks (each copy waits for the GPU)
        let lp: Vec<f64> = Tensor::cat(&logp_parts, 0)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let lsq: Vec<f64> = Tensor::cat(&log_sq_parts, 0)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        for ((t, a), b) in batch.targets.iter().zip(&lp).zip(&lsq) {
            let s = &mut stats[t.row];
            s.logp += a;
            s.wpo += a - b;
            s.tokens += 1;
        }
        let dht = if coefs.is_some() {
            Some(Tensor::cat(&dht_parts, 0)?)
        } else {
            None
        };
        Ok((stats, dht, dw))
    }

    fn add_grad(&mut self, i: usize, g: &Tensor) -> anyhow::Result<()> {
        let g = g.to_dtype(self.master_dtype)?;
        self.grads[i] = Some(match self.grads[i].take() {
            Some(a) => (a + g)?,
            None => g,
        });
        Ok(())
    }
}

impl Engine for AutogradEngine {
    fn score(&mut self, batch: &Packed) -> anyhow::Result<Vec<RowStats>> {
        let model = self.build(None, batch, false)?;
        let ht = self.hidden_at_targets(&model, batch, None)?.detach();
        Ok(self.head(&ht, batch, None)?.0)
    }

    fn forward(
        &mut self,
        batch: &Packed,
        coefs: Option<&[f64]>,
        dropout_seed: u64,
    ) -> anyhow::Result<Vec<RowStats>> {
        self.pending = None;
        let model = self.build(Some(dropout_seed), batch, true)?;
        let sink = self.checkpointing.then(|| Arc::new(GradSink::default()));
        let ht = self.hidden_at_targets(&model, batch, sink.as_ref())?;
        let (stats, dht, dw) = self.head(&ht, batch, coefs)?;
        if let Some(dw) = dw {
            let i = self
                .names
                .iter()
                .position(|n| n == &self.head_name)
                .expect("head trains");
            self.add_grad(i, &dw)?;
        }
        self.pending = Some(Pending {
            ht,
            batch: batch.clone(),
            dht,
            sink,
        });
        Ok(stats)
    }

    fn backward(&mut self, coefs: Option<&[f64]>) -> anyhow::Result<()> {
        let p = self
            .pending
            .take()
            .context("backward without a training forward")?;
        let dht = match (p.dht, coefs) {
            (Some(d), None) => d,
            (None, Some(c)) => {
                let (_, d, dw) = self.head(&p.ht, &p.batch, Some(c))?;
                if let Some(dw) = dw {
                    let i = self
                        .names
                        .iter()
                        .position(|n| n == &self.head_name)
                        .expect("head trains");
                    self.add_grad(i, &dw)?;
                }
                d.expect("coefficients give a gradient")
            }
            (Some(_), Some(_)) => bail!("coefficients were already given to the forward"),
            (None, None) => bail!("backward needs the per-row coefficients"),
        };
        let phase = self.profile.phase("backward", &self.device);
        // rows first (see sum_of_squares)
        let surrogate = (p.ht.to_dtype(self.master_dtype)? * dht.detach())?
            .sum(D::Minus1)?
            .sum_all()?;
        let mut grads = surrogate.backward()?;
        // the graph (every kept activation) hangs off `surrogate` and `p.ht`: free it before
        // the gradients are summed into the accumulators, whose sums would come on top of it
        drop(surrogate);
        drop(p.ht);
        drop(phase);
        let _phase = self.profile.phase("accumulate", &self.device);
        let weights = self
            .compute
            .clone()
            .context("backward without compute weights")?;
        for (i, w) in weights.iter().enumerate() {
            // taken out of the store, so that each gradient is freed once it is summed
            if let Some(g) = grads.remove(w) {
                self.add_grad(i, &g)?;
            }
            if let Some(g) = p.sink.as_ref().and_then(|s| s.take(w)) {
                self.add_grad(i, &g)?;
            }
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.pending = None;
    }

    fn grad_sq_norm(&self) -> anyhow::Result<f64> {
        let _phase = self.profile.phase("grad_norm", &self.device);
        // Summed on the device, with one wait for the GPU rather than one per tensor. Rows
        // first: candle reduces a whole tensor to a scalar in a single thread block, which for
        // the 1B's gradients took most of a second per step on an H200.
        let sums = self
            .grads
            .iter()
            .flatten()
            .map(|g| sum_of_squares(g)?.reshape(1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if sums.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::cat(&sums, 0)?.sum_all()?.to_scalar::<f64>()?)
    }

    fn step(&mut self, opt: &AdamW, lr: f64, grad_scale: f64) -> anyhow::Result<()> {
        let _phase = self.profile.phase("optimizer", &self.device);
        self.compute = None;
        self.steps += 1;
        for i in 0..self.vars.len() {
            let Some(g) = self.grads[i].take() else {
                continue;
            };
            super::inplace_adamw::step(
                opt,
                self.steps,
                lr,
                grad_scale,
                self.vars[i].as_tensor(),
                &g,
                (&self.exp_avg[i], &self.exp_avg_sq[i]),
            )?;
        }
        Ok(())
    }

    fn phase_times(&self) -> std::collections::BTreeMap<&'static str, (f64, u64)> {
        self.profile.totals()
    }

    fn trainable(&self) -> Vec<ParamInfo> {
        self.names
            .iter()
            .zip(&self.shapes)
            .map(|(n, s)| ParamInfo {
                name: n.clone(),
                shape: s.clone(),
            })
            .collect()
    }

    fn state(&self) -> anyhow::Result<EngineState> {
        let cpu = |t: &Tensor| -> anyhow::Result<Tensor> { Ok(t.to_device(&Device::Cpu)?) };
        let mut s = EngineState {
            step: self.steps,
            params: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
        };
        for i in 0..self.vars.len() {
            s.params
                .push((self.names[i].clone(), cpu(self.vars[i].as_tensor())?));
            s.exp_avg
                .push((self.names[i].clone(), cpu(&self.exp_avg[i])?));
            s.exp_avg_sq
                .push((self.names[i].clone(), cpu(&self.exp_avg_sq[i])?));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: EngineState) -> anyhow::Result<()> {
        let find =
            |list: &[(String, Tensor)], name: &str, shape: &[usize]| -> anyhow::Result<Tensor> {
                let t = list
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t)
                    .with_context(|| format!("resume state has no {name}"))?;
                if t.dims() != shape {
                    bail!(
                        "resume state: {name} has shape {:?}, the model {:?}",
                        t.dims(),
                        shape
                    );
                }
                // a copy of its own: the optimiser updates it in place
                Ok(t.to_dtype(self.master_dtype)?
                    .to_device(&self.device)?
                    .copy()?)
            };
        for i in 0..self.vars.len() {
            let (name, shape) = (self.names[i].clone(), self.shapes[i].clone());
            self.vars[i].set(&find(&state.params, &name, &shape)?)?;
            self.exp_avg[i] = find(&state.exp_avg, &name, &shape)?;
            self.exp_avg_sq[i] = find(&state.exp_avg_sq, &name, &shape)?;
        }
        self.steps = state.step;
        self.compute = None;
        Ok(())
    }

    fn base_weights(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        if self.lora.is_none() {
            return self
                .names
                .iter()
                .zip(&self.vars)
                .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
                .collect();
        }
        let mut out = Vec::new();
        for (name, _) in Llama::expected_tensors(&self.cfg) {
            let t = self
                .frozen
                .get(&name)
                .with_context(|| format!("no {name}"))?;
            out.push((name, t.detach().to_device(&Device::Cpu)?));
        }
        Ok(out)
    }

    fn release_training_state(&mut self) {
        self.compute = None;
        self.grads.iter_mut().for_each(|g| *g = None);
        self.exp_avg.clear();
        self.exp_avg_sq.clear();
    }

    fn lora_weights(&self) -> anyhow::Result<Option<Vec<(String, Tensor)>>> {
        if self.lora.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.names
                .iter()
                .zip(&self.vars)
                .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?)))
                .collect::<anyhow::Result<_>>()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_by_rows_is_the_hand_sum() {
        let m = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        assert_eq!(
            sum_of_squares(&m).unwrap().to_scalar::<f64>().unwrap(),
            91.0
        );
        let v = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        assert_eq!(
            sum_of_squares(&v).unwrap().to_scalar::<f64>().unwrap(),
            25.0
        );
        let t = Tensor::new(&[[[1f32], [2.0]], [[2.0], [4.0]]], &Device::Cpu).unwrap();
        assert_eq!(
            sum_of_squares(&t).unwrap().to_scalar::<f64>().unwrap(),
            25.0
        );
    }

    #[test]
    fn sum_of_squares_in_chunks_is_the_whole_tensor_sum() {
        // 9 rows of 2^19: chunks of 8 rows and 1 row
        let cols = SQUARES_CHUNK_ELEMS / 8;
        let x: Vec<f32> = (0..9 * cols)
            .map(|i| ((i % 1013) as f32 - 506.0) * 1e-3)
            .collect();
        let host: Vec<f64> = x
            .chunks(cols)
            .map(|row| row.iter().map(|&v| (v as f64) * (v as f64)).sum())
            .collect();
        let t = Tensor::from_vec(x, (9, cols), &Device::Cpu).unwrap();
        let whole = t
            .to_dtype(DType::F64)
            .and_then(|t| t.sqr()?.sum(D::Minus1)?.sum_all())
            .and_then(|s| s.to_scalar::<f64>())
            .unwrap();
        let chunked = sum_of_squares(&t).unwrap().to_scalar::<f64>().unwrap();
        // the same row sums, summed in the same order: the same bits
        assert_eq!(chunked.to_bits(), whole.to_bits());
        let hand: f64 = host.iter().sum();
        assert!(
            (chunked - hand).abs() <= 1e-12 * hand,
            "{chunked} vs {hand}"
        );
    }
}
