//! The CPU training engine: the decoder's forward pass (every family: the projections' biases
//! and the per-head q/k norms come from the config's `Arch`) that keeps exactly what its
//! hand-written backward needs, over rows packed without padding, in f32 (training) or f64 (gradient checks).
//!
//! Why not candle's autograd here: its backward computes the gradient of *both* operands of
//! every op (a weight-sized gradient for a frozen weight, an activation-sized one for every
//! constant such as the attention mask, kept until the backward ends), first zero-fills every
//! gradient before adding to it, and composes softmax/RMS norm/RoPE from many small
//! single-threaded ops. Here each op has a fused backward, weight gradients accumulate in place
//! (`gemm` with `dst += …`), frozen weights never get a gradient buffer, attention scores are
//! recomputed in the backward instead of stored, and the vocabulary projection only runs at
//! response positions, in chunks.
//!
//! Kept per layer (tokens × …): the layer input, q/k/v after RoPE, the attention output, the
//! residual between attention and MLP, gate and up projections, and per-token norm scales and
//! attention log-sum-exps (with q/k norms: q and k as projected and their per-head scales);
//! norm outputs and `silu(gate)·up` are recomputed.

pub mod kernels;

use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use kernels::*;

pub use super::shared::Float;
use super::shared::{adamw_update, dropout, layer_seed};
use super::{
    peft_name, projection_path, Engine, EngineState, LoraSpec, Packed, ParamInfo, RowStats,
    PROJECTIONS,
};
use crate::model::{Llama, LlamaConfig};
use crate::train::optim::AdamW;

/// Where the tensors of one decoder layer live in the parameter list.
#[derive(Debug, Clone)]
struct LayerIdx {
    ln1: usize,
    ln2: usize,
    /// q, k, v, o, gate, up, down (see [`PROJECTIONS`]).
    lin: [usize; 7],
    /// The bias of each projection that has one (the config's `Arch`: Qwen2's q/k/v).
    bias: [Option<usize>; 7],
    /// The per-head RMS norms of q and k (Qwen3).
    q_norm: Option<usize>,
    k_norm: Option<usize>,
    /// LoRA (A, B) of each projection, when targeted.
    lora: [Option<(usize, usize)>; 7],
}

/// What a per-head q/k norm keeps for its backward: the projection's output (the norm's
/// input) and one `1/rms` per token and head.
struct HeadNormActs<T> {
    x: Vec<T>,
    rstd: Vec<T>,
}

/// Per-forward data every layer reads.
struct FwdCtx<'a, T> {
    batch: &'a Packed,
    pos: &'a [u32],
    cos: &'a [T],
    sin: &'a [T],
    /// LoRA dropout stream (None: off).
    seed: Option<u64>,
}

/// Activations of one layer kept for the backward.
struct LayerActs<T> {
    x_in: Vec<T>,
    rstd1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    lse: Vec<T>,
    att: Vec<T>,
    x_mid: Vec<T>,
    rstd2: Vec<T>,
    gate: Vec<T>,
    up: Vec<T>,
    /// `dropout(x)·Aᵀ` of each LoRA projection.
    lora_u: [Option<Vec<T>>; 7],
    /// The q and k norms' inputs and scales (Qwen3).
    q_pre: Option<HeadNormActs<T>>,
    k_pre: Option<HeadNormActs<T>>,
}

/// What a training forward leaves for the backward.
struct Saved<T> {
    batch: Packed,
    pos: Vec<u32>,
    cos: Vec<T>,
    sin: Vec<T>,
    layers: Vec<LayerActs<T>>,
    /// Last layer's output and the final norm's scale at the target positions.
    xt: Vec<T>,
    rstd_t: Vec<T>,
    /// Final hidden states at the target positions, `(targets, hidden)`.
    ht: Vec<T>,
    /// Their gradient, when the coefficients were given to the forward.
    dht: Option<Vec<T>>,
    dropout_seed: u64,
}

/// Recycled activation buffers. Every step allocates the same few hundred large buffers; taking
/// them from here instead of the allocator avoids zero-filling and page-faulting gigabytes per
/// step (fresh large allocations are new mmap'ed pages). Buffers are grouped by size class
/// (lengths rounded up to 8 significant steps per power of two), so micro-batches of varying
/// length reuse them with at most 1/8 slack.
struct Pool<T> {
    free: std::collections::HashMap<usize, Vec<Vec<T>>>,
}

fn size_class(n: usize) -> usize {
    if n <= 16 {
        return 16;
    }
    let e = usize::BITS - 1 - n.leading_zeros(); // 2^e <= n
    let step = 1usize << (e - 3);
    n.div_ceil(step) * step
}

impl<T: Float> Pool<T> {
    fn new() -> Self {
        Pool {
            free: Default::default(),
        }
    }

    /// A buffer of `n` values with unspecified contents.
    fn get(&mut self, n: usize) -> Vec<T> {
        let c = size_class(n);
        match self.free.get_mut(&c).and_then(Vec::pop) {
            Some(mut v) => {
                // SAFETY: T is a plain float; the capacity is c ≥ n and the caller overwrites
                // every value it reads.
                unsafe { v.set_len(n) };
                v
            }
            None => {
                let mut v = vec![T::zero(); c];
                v.truncate(n);
                v
            }
        }
    }

    fn zeroed(&mut self, n: usize) -> Vec<T> {
        let mut v = self.get(n);
        v.iter_mut().for_each(|x| *x = T::zero());
        v
    }

    fn put(&mut self, v: Vec<T>) {
        let c = v.capacity();
        if c >= 16 && size_class(c) == c {
            self.free.entry(c).or_default().push(v);
        }
    }

    fn clear(&mut self) {
        self.free.clear();
    }
}

/// Time spent in the parts of a step (seconds), for profiling.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub forward: f64,
    pub head: f64,
    pub backward: f64,
    pub optimizer: f64,
    /// Parts of forward/backward spent in attention.
    pub attention_forward: f64,
    pub attention_backward: f64,
}

/// The CPU engine over element type `T` (f32 or f64).
pub struct CpuEngine<T: Float> {
    cfg: LlamaConfig,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    data: Vec<Vec<T>>,
    /// Empty for frozen tensors.
    grads: Vec<Vec<T>>,
    exp_avg: Vec<Vec<T>>,
    exp_avg_sq: Vec<Vec<T>>,
    trainable: Vec<bool>,
    /// Trainable indices in a fixed order (base tensors first, then LoRA A/B per projection).
    order: Vec<usize>,
    embed: usize,
    lm_head: usize,
    norm: usize,
    layers: Vec<LayerIdx>,
    lora: Option<LoraSpec>,
    steps: u64,
    saved: Option<Saved<T>>,
    pool: std::cell::RefCell<Pool<T>>,
    /// Rows of logits computed at once (bounds the `rows × vocab` buffer).
    pub head_chunk: usize,
    pub timings: Timings,
}

/// `(in, out)` of projection `which` (see [`PROJECTIONS`]).
fn dims_of(cfg: &LlamaConfig, which: usize) -> (usize, usize) {
    cfg.projection_dims()[which]
}

/// The engine's tensors while it is being built: names, shapes, values, and which train.
#[derive(Default)]
struct Params<T> {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    data: Vec<Vec<T>>,
    trainable: Vec<bool>,
}

impl<T: Float> Params<T> {
    /// Appends a tensor; returns its index.
    fn push(&mut self, name: String, shape: Vec<usize>, data: Vec<T>, trains: bool) -> usize {
        self.names.push(name);
        self.shapes.push(shape);
        self.data.push(data);
        self.trainable.push(trains);
        self.names.len() - 1
    }

    /// LoRA matrices on `spec`'s targets of every layer, initialised from `seed` as PEFT does
    /// (`A` uniform in ±1/√in, `B` = 0); records their indices in `layers`.
    fn add_lora(
        &mut self,
        cfg: &LlamaConfig,
        spec: &LoraSpec,
        seed: u64,
        layers: &mut [LayerIdx],
    ) -> anyhow::Result<()> {
        if spec.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for (l, layer) in layers.iter_mut().enumerate() {
            for (w, slot) in layer.lora.iter_mut().enumerate() {
                if !spec.targets.iter().any(|t| t == PROJECTIONS[w]) {
                    continue;
                }
                let (in_dim, out_dim) = dims_of(cfg, w);
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a: Vec<T> = (0..spec.rank * in_dim)
                    .map(|_| T::from_f64c(rng.random_range(-bound..bound)))
                    .collect();
                let ai = self.push(peft_name(l, w, "A"), vec![spec.rank, in_dim], a, true);
                let b = vec![T::zero(); out_dim * spec.rank];
                self.push(peft_name(l, w, "B"), vec![out_dim, spec.rank], b, true);
                *slot = Some((ai, ai + 1));
            }
        }
        Ok(())
    }
}

/// Where layer `l`'s tensors are in the parameter list (`index`: name → position): its
/// norms, projections, their biases and the q/k norms where the family has them.
fn layer_index(
    cfg: &LlamaConfig,
    l: usize,
    index: &std::collections::HashMap<String, usize>,
) -> anyhow::Result<LayerIdx> {
    let get = |n: &str| -> anyhow::Result<usize> {
        index
            .get(n)
            .copied()
            .with_context(|| format!("model has no {n}"))
    };
    let p = format!("model.layers.{l}");
    let mut lin = [0usize; 7];
    for (w, slot) in lin.iter_mut().enumerate() {
        *slot = get(&format!("{}.weight", projection_path(l, w)))?;
    }
    let bias = std::array::from_fn(|w| {
        let name = format!("{}.bias", projection_path(l, w));
        index.get(&name).copied()
    });
    let norm = |n: &str| -> anyhow::Result<Option<usize>> {
        let name = format!("{p}.self_attn.{n}.weight");
        cfg.arch.qk_norm.then(|| get(&name)).transpose()
    };
    Ok(LayerIdx {
        ln1: get(&format!("{p}.input_layernorm.weight"))?,
        ln2: get(&format!("{p}.post_attention_layernorm.weight"))?,
        lin,
        bias,
        q_norm: norm("q_norm")?,
        k_norm: norm("k_norm")?,
        lora: [None; 7],
    })
}

/// A buffer of zeros the size of each trainable tensor, an empty one for each frozen one.
fn zeros_where<T: Float>(data: &[Vec<T>], trainable: &[bool]) -> Vec<Vec<T>> {
    data.iter()
        .zip(trainable)
        .map(|(d, &t)| {
            if t {
                vec![T::zero(); d.len()]
            } else {
                Vec::new()
            }
        })
        .collect()
}

impl<T: Float> CpuEngine<T> {
    /// Copies the weights of `model` (any dtype, any device) into the engine. Without `lora`
    /// every weight trains; with it only the LoRA matrices do (initialised from `seed` as PEFT
    /// does: `A` uniform in ±1/sqrt(in), `B` = 0).
    pub fn new(model: &Llama, lora: Option<LoraSpec>, seed: u64) -> anyhow::Result<Self> {
        let cfg = model.config().clone();
        let mut p = Params::default();
        for (name, t) in model.named_tensors() {
            let v: Vec<T> = t
                .to_device(&Device::Cpu)?
                .to_dtype(T::DTYPE)?
                .flatten_all()?
                .to_vec1()
                .with_context(|| format!("reading {name}"))?;
            p.push(name, t.dims().to_vec(), v, lora.is_none());
        }
        let index: std::collections::HashMap<String, usize> = p
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let get = |n: &str| -> anyhow::Result<usize> {
            index
                .get(n)
                .copied()
                .with_context(|| format!("model has no {n}"))
        };
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed
        } else {
            get("lm_head.weight")?
        };
        let norm = get("model.norm.weight")?;
        let mut layers = (0..cfg.num_hidden_layers)
            .map(|l| layer_index(&cfg, l, &index))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(spec) = &lora {
            p.add_lora(&cfg, spec, seed, &mut layers)?;
        }
        let Params {
            names,
            shapes,
            data,
            trainable,
        } = p;
        let order: Vec<usize> = (0..names.len()).filter(|&i| trainable[i]).collect();
        let head_chunk =
            ((64usize << 20) / (cfg.vocab_size * std::mem::size_of::<T>()).max(1)).clamp(16, 1024);
        Ok(CpuEngine {
            cfg,
            grads: zeros_where(&data, &trainable),
            exp_avg: zeros_where(&data, &trainable),
            exp_avg_sq: zeros_where(&data, &trainable),
            names,
            shapes,
            data,
            trainable,
            order,
            embed,
            lm_head,
            norm,
            layers,
            lora,
            steps: 0,
            saved: None,
            pool: std::cell::RefCell::new(Pool::new()),
            head_chunk,
            timings: Timings::default(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The gradient accumulated for a tensor (by HF or PEFT name), if it trains.
    pub fn grad(&self, name: &str) -> Option<&[T]> {
        let i = self.names.iter().position(|n| n == name)?;
        self.trainable[i].then(|| self.grads[i].as_slice())
    }

    /// A tensor's values by name.
    pub fn param(&self, name: &str) -> Option<&[T]> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.data[i].as_slice())
    }

    /// Mutable values (finite-difference tests).
    pub fn param_mut(&mut self, name: &str) -> Option<&mut [T]> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.data[i].as_mut_slice())
    }

    pub fn zero_grads(&mut self) {
        for g in &mut self.grads {
            g.iter_mut().for_each(|x| *x = T::zero());
        }
    }

    /// Bytes of parameters, gradients and optimiser state held.
    pub fn state_bytes(&self) -> usize {
        let e = std::mem::size_of::<T>();
        (self.data.iter().map(Vec::len).sum::<usize>()
            + self.grads.iter().map(Vec::len).sum::<usize>()
            + self.exp_avg.iter().map(Vec::len).sum::<usize>()
            + self.exp_avg_sq.iter().map(Vec::len).sum::<usize>())
            * e
    }

    fn rope_tables(&self, max_len: usize) -> (Vec<T>, Vec<T>) {
        // As transformers (and Llama::forward_hidden): f32 inverse frequencies and angles.
        let inv: Vec<f32> = self.cfg.rope_inv_freq().iter().map(|&f| f as f32).collect();
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_len * half);
        let mut sin = Vec::with_capacity(max_len * half);
        for p in 0..max_len {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(T::from_f64c(a.cos() as f64));
                sin.push(T::from_f64c(a.sin() as f64));
            }
        }
        (cos, sin)
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.num_key_value_heads,
            d: self.cfg.head_dim,
            scale: 1.0 / (self.cfg.head_dim as f64).sqrt(),
        }
    }

    fn buf(&self, n: usize) -> Vec<T> {
        self.pool.borrow_mut().get(n)
    }

    fn zbuf(&self, n: usize) -> Vec<T> {
        self.pool.borrow_mut().zeroed(n)
    }

    fn recycle(&self, v: Vec<T>) {
        self.pool.borrow_mut().put(v)
    }

    fn recycle_acts(&self, a: LayerActs<T>) {
        let LayerActs {
            x_in,
            rstd1,
            q,
            k,
            v,
            lse,
            att,
            x_mid,
            rstd2,
            gate,
            up,
            lora_u,
            q_pre,
            k_pre,
        } = a;
        for b in [x_in, rstd1, q, k, v, lse, att, x_mid, rstd2, gate, up] {
            self.recycle(b);
        }
        for u in lora_u.into_iter().flatten() {
            self.recycle(u);
        }
        for HeadNormActs { x, rstd } in [q_pre, k_pre].into_iter().flatten() {
            self.recycle(x);
            self.recycle(rstd);
        }
    }

    /// Frees the recycled buffers (e.g. after training).
    pub fn release_buffers(&mut self) {
        self.pool.borrow_mut().clear();
    }

    /// `y = x·Wᵀ (+ b) (+ LoRA)`; returns the LoRA intermediate `dropout(x)·Aᵀ`.
    fn lin_fwd(
        &self,
        layer: usize,
        which: usize,
        x: &[T],
        y: &mut [T],
        n: usize,
        seed: Option<u64>,
    ) -> Option<Vec<T>> {
        let (in_dim, out_dim) = dims_of(&self.cfg, which);
        let li = &self.layers[layer];
        linear_fwd(x, &self.data[li.lin[which]], y, n, in_dim, out_dim, false);
        if let Some(b) = li.bias[which] {
            bias_fwd(&mut y[..n * out_dim], &self.data[b]);
        }
        let (ai, bi) = li.lora[which]?;
        let spec = self.lora.as_ref().expect("lora indices imply a spec");
        let r = spec.rank;
        let mut u = self.buf(n * r);
        if let (true, Some(seed)) = (spec.dropout > 0.0, seed) {
            let mut xd = self.buf(n * in_dim);
            dropout(
                &x[..n * in_dim],
                &mut xd,
                layer_seed(seed, layer, which),
                spec.dropout,
            );
            linear_fwd(&xd, &self.data[ai], &mut u, n, in_dim, r, false);
            self.recycle(xd);
        } else {
            linear_fwd(x, &self.data[ai], &mut u, n, in_dim, r, false);
        }
        unsafe {
            gemm_raw(
                n,
                out_dim,
                r,
                y.as_mut_ptr(),
                out_dim,
                true,
                View::rows(&u, r),
                View::t(&self.data[bi], r),
                T::from_f64c(spec.scale()),
                true,
            );
        }
        Some(u)
    }

    /// Backward of [`Self::lin_fwd`]: `dx (=|+=) dy·W (+ LoRA)`, weight, bias and LoRA
    /// gradients accumulated when they train.
    #[allow(clippy::too_many_arguments)]
    fn lin_bwd(
        &mut self,
        layer: usize,
        which: usize,
        x: &[T],
        dy: &[T],
        dx: &mut [T],
        accumulate: bool,
        u: Option<&[T]>,
        n: usize,
        seed: u64,
    ) {
        let (in_dim, out_dim) = dims_of(&self.cfg, which);
        let wi = self.layers[layer].lin[which];
        if self.trainable[wi] {
            linear_bwd_w(dy, x, &mut self.grads[wi], n, in_dim, out_dim, T::one());
        }
        if let Some(b) = self.layers[layer].bias[which].filter(|&b| self.trainable[b]) {
            bias_bwd(&dy[..n * out_dim], &mut self.grads[b]);
        }
        linear_bwd_x(
            dy,
            &self.data[wi],
            dx,
            n,
            in_dim,
            out_dim,
            accumulate,
            T::one(),
        );
        if let Some(ab) = self.layers[layer].lora[which] {
            let u = u.expect("LoRA forward kept its intermediate");
            self.lora_bwd(layer, which, ab, x, dy, dx, u, n, seed);
        }
    }

    /// The LoRA part of [`Self::lin_bwd`] for the adapter `(A, B)` = `ab` (indices): its
    /// gradients, and `dx += ∂x` through it. `u` is the forward's `dropout(x)·Aᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn lora_bwd(
        &mut self,
        layer: usize,
        which: usize,
        (ai, bi): (usize, usize),
        x: &[T],
        dy: &[T],
        dx: &mut [T],
        u: &[T],
        n: usize,
        seed: u64,
    ) {
        let (in_dim, out_dim) = dims_of(&self.cfg, which);
        let spec = self.lora.clone().expect("lora indices imply a spec");
        let (r, scale) = (spec.rank, T::from_f64c(spec.scale()));
        // dB += scale · dyᵀ·u
        unsafe {
            gemm_raw(
                out_dim,
                r,
                n,
                self.grads[bi].as_mut_ptr(),
                r,
                true,
                View::t(dy, out_dim),
                View::rows(u, r),
                scale,
                true,
            );
        }
        // du = scale · dy·B
        let mut du = self.buf(n * r);
        unsafe {
            gemm_raw(
                n,
                r,
                out_dim,
                du.as_mut_ptr(),
                r,
                false,
                View::rows(dy, out_dim),
                View::rows(&self.data[bi], r),
                scale,
                true,
            );
        }
        let dseed = layer_seed(seed, layer, which);
        if spec.dropout > 0.0 {
            let mut xd = self.buf(n * in_dim);
            dropout(&x[..n * in_dim], &mut xd, dseed, spec.dropout);
            linear_bwd_w(&du, &xd, &mut self.grads[ai], n, in_dim, r, T::one());
            // dx += (du·A) ⊙ mask / (1 − p)
            linear_bwd_x(&du, &self.data[ai], &mut xd, n, in_dim, r, false, T::one());
            let mut t = self.buf(n * in_dim);
            dropout(&xd, &mut t, dseed, spec.dropout);
            add_assign(&mut dx[..n * in_dim], &t);
            self.recycle(xd);
            self.recycle(t);
        } else {
            linear_bwd_w(&du, x, &mut self.grads[ai], n, in_dim, r, T::one());
            linear_bwd_x(&du, &self.data[ai], dx, n, in_dim, r, true, T::one());
        }
        self.recycle(du);
    }

    /// The per-head RMS norm of `x` (q or k, `heads` per token) when the layer has one
    /// (`norm`: its weight's index): the normed values, and what the backward needs.
    fn head_norm_fwd(
        &self,
        norm: Option<usize>,
        x: Vec<T>,
        heads: usize,
    ) -> (Vec<T>, Option<HeadNormActs<T>>) {
        let Some(w) = norm else {
            return (x, None);
        };
        let d = self.cfg.head_dim;
        let rows = x.len() / d;
        let (mut y, mut rstd) = (self.buf(x.len()), self.buf(rows));
        debug_assert_eq!(rows % heads, 0);
        rms_norm_fwd(
            &x,
            &self.data[w],
            self.cfg.rms_norm_eps,
            &mut y,
            &mut rstd,
            d,
        );
        (y, Some(HeadNormActs { x, rstd }))
    }

    /// One decoder layer's forward on `x` (`n` tokens × hidden): its output and what its
    /// backward needs. `hbuf` is scratch for the norms' outputs.
    fn layer_fwd(
        &mut self,
        l: usize,
        x: Vec<T>,
        hbuf: &mut [T],
        c: &FwdCtx<T>,
    ) -> (Vec<T>, LayerActs<T>) {
        let cfg = self.cfg.clone();
        let (h, ff, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let n = c.batch.tokens.len();
        let (eps, seed) = (cfg.rms_norm_eps, c.seed);
        let li = self.layers[l].clone();
        let mut rstd1 = self.buf(n);
        rms_norm_fwd(&x, &self.data[li.ln1], eps, hbuf, &mut rstd1, h);
        let (mut q, mut k, mut v) = (
            self.buf(n * heads * d),
            self.buf(n * kv_heads * d),
            self.buf(n * kv_heads * d),
        );
        let uq = self.lin_fwd(l, 0, hbuf, &mut q, n, seed);
        let uk = self.lin_fwd(l, 1, hbuf, &mut k, n, seed);
        let uv = self.lin_fwd(l, 2, hbuf, &mut v, n, seed);
        let (mut q, q_pre) = self.head_norm_fwd(li.q_norm, q, heads);
        let (mut k, k_pre) = self.head_norm_fwd(li.k_norm, k, kv_heads);
        rope_inplace(&mut q, heads, d, c.pos, c.cos, c.sin, false);
        rope_inplace(&mut k, kv_heads, d, c.pos, c.cos, c.sin, false);
        let (mut att, mut lse) = (self.buf(n * heads * d), self.buf(n * heads));
        let ta = Instant::now();
        attention_fwd(
            &q,
            &k,
            &v,
            &c.batch.rows,
            self.attn_shape(),
            &mut att,
            &mut lse,
        );
        self.timings.attention_forward += ta.elapsed().as_secs_f64();
        let mut x_mid = self.buf(n * h);
        let uo = self.lin_fwd(l, 3, &att, &mut x_mid, n, seed);
        add_assign(&mut x_mid, &x);
        let mut rstd2 = self.buf(n);
        rms_norm_fwd(&x_mid, &self.data[li.ln2], eps, hbuf, &mut rstd2, h);
        let (mut gate, mut up) = (self.buf(n * ff), self.buf(n * ff));
        let ug = self.lin_fwd(l, 4, hbuf, &mut gate, n, seed);
        let uu = self.lin_fwd(l, 5, hbuf, &mut up, n, seed);
        let mut s = self.buf(n * ff);
        swiglu_fwd(&gate, &up, &mut s);
        let mut x_out = self.buf(n * h);
        let ud = self.lin_fwd(l, 6, &s, &mut x_out, n, seed);
        self.recycle(s);
        add_assign(&mut x_out, &x_mid);
        let acts = LayerActs {
            x_in: x,
            rstd1,
            q,
            k,
            v,
            lse,
            att,
            x_mid,
            rstd2,
            gate,
            up,
            lora_u: [uq, uk, uv, uo, ug, uu, ud],
            q_pre,
            k_pre,
        };
        (x_out, acts)
    }

    /// The embeddings of `tokens`, one row of `hidden` each.
    fn embed_rows(&self, tokens: &[u32]) -> Vec<T> {
        let h = self.cfg.hidden_size;
        let mut x = self.buf(tokens.len() * h);
        let e = &self.data[self.embed];
        x.par_chunks_mut(h)
            .zip(tokens.par_iter())
            .for_each(|(row, &t)| {
                row.copy_from_slice(&e[t as usize * h..(t as usize + 1) * h]);
            });
        x
    }

    /// The forward pass. `keep`: keep activations for the backward; `seed`: LoRA dropout on
    /// (training) with this stream, off when None.
    fn run(
        &mut self,
        batch: &Packed,
        keep: bool,
        coefs: Option<&[f64]>,
        seed: Option<u64>,
    ) -> anyhow::Result<Vec<RowStats>> {
        if batch.tokens.is_empty() {
            bail!("empty batch");
        }
        let t0 = Instant::now();
        let cfg = self.cfg.clone();
        let h = cfg.hidden_size;
        let n = batch.tokens.len();
        let eps = cfg.rms_norm_eps;
        let pos = batch.positions();
        cfg.check_sequence_len(batch.max_row_len())?;
        let (cos, sin) = self.rope_tables(batch.max_row_len());
        let vocab = cfg.vocab_size;
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary ({vocab})");
        }

        let mut x = self.embed_rows(&batch.tokens);
        let mut layers = Vec::with_capacity(if keep { cfg.num_hidden_layers } else { 0 });
        let mut hbuf = self.buf(n * h);
        let ctx = FwdCtx {
            batch,
            pos: &pos,
            cos: &cos,
            sin: &sin,
            seed,
        };
        for l in 0..cfg.num_hidden_layers {
            let (x_out, acts) = self.layer_fwd(l, x, &mut hbuf, &ctx);
            x = x_out;
            if keep {
                layers.push(acts);
            } else {
                self.recycle_acts(acts);
            }
        }
        self.recycle(hbuf);
        // final norm, only where a target is predicted
        let nt = batch.targets.len();
        let mut ht = self.buf(nt * h);
        let mut rstd_t = self.buf(nt);
        let mut xt = self.buf(nt * h);
        xt.par_chunks_mut(h)
            .zip(batch.targets.par_iter())
            .for_each(|(row, t)| row.copy_from_slice(&x[t.pos * h..(t.pos + 1) * h]));
        self.recycle(x);
        rms_norm_fwd(&xt, &self.data[self.norm], eps, &mut ht, &mut rstd_t, h);
        self.timings.forward += t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let (stats, dht) = self.head(&ht, batch, coefs)?;
        self.timings.head += t1.elapsed().as_secs_f64();
        if keep {
            self.saved = Some(Saved {
                batch: batch.clone(),
                pos,
                cos,
                sin,
                layers,
                xt,
                rstd_t,
                ht,
                dht,
                dropout_seed: seed.unwrap_or(0),
            });
        } else {
            for b in [xt, rstd_t, ht] {
                self.recycle(b);
            }
        }
        Ok(stats)
    }

    /// Log-probabilities of the targets from the final hidden states `ht` (one row per target),
    /// chunk by chunk; with `coefs`, also the gradient w.r.t. `ht` (returned) and the output
    /// layer's gradient (accumulated).
    fn head(
        &mut self,
        ht: &[T],
        batch: &Packed,
        coefs: Option<&[f64]>,
    ) -> anyhow::Result<(Vec<RowStats>, Option<Vec<T>>)> {
        let h = self.cfg.hidden_size;
        let vocab = self.cfg.vocab_size;
        let nt = batch.targets.len();
        let mut stats = vec![RowStats::default(); batch.num_rows()];
        let mut dht = coefs.map(|_| self.buf(nt * h));
        let chunk = self.head_chunk.max(1);
        let mut logits = self.buf(chunk.min(nt.max(1)) * vocab);
        let head_trains = self.trainable[self.lm_head];
        for c0 in (0..nt).step_by(chunk) {
            let nc = (nt - c0).min(chunk);
            let hc = &ht[c0 * h..(c0 + nc) * h];
            let lg = &mut logits[..nc * vocab];
            linear_fwd(hc, &self.data[self.lm_head], lg, nc, h, vocab, false);
            let targets = &batch.targets[c0..c0 + nc];
            // per target: (logp, wpo term); one exp per logit
            let per: Vec<(f64, f64)> = lg
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map(|(row, t)| {
                    let m = row
                        .iter()
                        .fold(T::neg_infinity(), |a, &b| num_traits::Float::max(a, b));
                    let zy = row[t.id as usize].to_f64c();
                    // exp in place; sums over 16 lanes (vectorisable), then in f64
                    let (mut a1, mut a2) = ([T::zero(); 16], [T::zero(); 16]);
                    let mut chunks = row.chunks_exact_mut(16);
                    for c in &mut chunks {
                        for k in 0..16 {
                            let e = (c[k] - m).fexp();
                            c[k] = e;
                            a1[k] += e;
                            a2[k] += e * e;
                        }
                    }
                    let (mut s1, mut s2) = (0f64, 0f64);
                    for z in chunks.into_remainder() {
                        let e = (*z - m).fexp();
                        *z = e;
                        s1 += e.to_f64c();
                        s2 += e.to_f64c() * e.to_f64c();
                    }
                    s1 += a1.iter().map(|x| x.to_f64c()).sum::<f64>();
                    s2 += a2.iter().map(|x| x.to_f64c()).sum::<f64>();
                    let lse = m.to_f64c() + s1.ln();
                    let logp = zy - lse;
                    // log Σ p² = log Σ exp(2(z − m)) + 2m − 2·lse
                    let log_sq = s2.ln() + 2.0 * m.to_f64c() - 2.0 * lse;
                    if let Some(c) = coefs {
                        // dlogits = c · (onehot − p), p = e / s1
                        let f = T::from_f64c(-c[t.row] / s1);
                        for z in row.iter_mut() {
                            *z *= f;
                        }
                        row[t.id as usize] += T::from_f64c(c[t.row]);
                    }
                    (logp, logp - log_sq)
                })
                .collect();
            for (t, (lp, w)) in targets.iter().zip(per) {
                let s = &mut stats[t.row];
                s.logp += lp;
                s.wpo += w;
                s.tokens += 1;
            }
            if let Some(d) = dht.as_mut() {
                linear_bwd_x(
                    lg,
                    &self.data[self.lm_head],
                    &mut d[c0 * h..(c0 + nc) * h],
                    nc,
                    h,
                    vocab,
                    false,
                    T::one(),
                );
                if head_trains {
                    linear_bwd_w(
                        lg,
                        hc,
                        &mut self.grads[self.lm_head],
                        nc,
                        h,
                        vocab,
                        T::one(),
                    );
                }
            }
        }
        self.recycle(logits);
        Ok((stats, dht))
    }

    /// The backward of an RMS norm of rows of width `width` with weight `self.data[w]`:
    /// `dx (=|+=) ∂x`, and `∂w` accumulated when the weight trains.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &mut self,
        w: usize,
        dy: &[T],
        x: &[T],
        rstd: &[T],
        dx: &mut [T],
        accumulate: bool,
        width: usize,
    ) {
        let mut dw = self.trainable[w].then(|| std::mem::take(&mut self.grads[w]));
        rms_norm_bwd(
            dy,
            x,
            &self.data[w],
            rstd,
            dx,
            accumulate,
            dw.as_deref_mut(),
            width,
        );
        if let Some(dw) = dw {
            self.grads[w] = dw;
        }
    }

    /// The backward of [`Self::head_norm_fwd`]: the gradient of the norm's input from `dy`'s
    /// (returned; `dy` itself when the layer has no such norm).
    fn head_norm_bwd(
        &mut self,
        norm: Option<usize>,
        dy: Vec<T>,
        acts: Option<&HeadNormActs<T>>,
    ) -> Vec<T> {
        let (Some(w), Some(a)) = (norm, acts) else {
            return dy;
        };
        let mut dx = self.buf(dy.len());
        self.norm_bwd(w, &dy, &a.x, &a.rstd, &mut dx, false, self.cfg.head_dim);
        self.recycle(dy);
        dx
    }

    /// The MLP half of a layer's backward: `dx` (the gradient of the layer's output) gains the
    /// gradient through the MLP and its norm.
    fn mlp_bwd(&mut self, l: usize, a: &LayerActs<T>, dx: &mut [T], n: usize, seed: u64) {
        let (h, ff) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let li = self.layers[l].clone();
        let mut sw = self.buf(n * ff);
        let mut dup = self.buf(n * ff);
        swiglu_fwd_sig(&a.gate, &a.up, &mut sw, &mut dup); // dup holds σ(gate) for now
        let mut ds = self.buf(n * ff);
        let u = |w: usize| a.lora_u[w].as_deref();
        self.lin_bwd(l, 6, &sw, dx, &mut ds, false, u(6), n, seed);
        swiglu_bwd_sig(&mut ds, &mut dup, &a.gate, &a.up); // ds: dgate, dup: dup
        std::mem::swap(&mut sw, &mut ds); // sw: dgate
        self.recycle(ds);
        let mut hb = self.buf(n * h);
        rms_norm_apply(&a.x_mid, &self.data[li.ln2], &a.rstd2, &mut hb, h);
        let mut dh = self.buf(n * h);
        self.lin_bwd(l, 4, &hb, &sw, &mut dh, false, u(4), n, seed);
        self.lin_bwd(l, 5, &hb, &dup, &mut dh, true, u(5), n, seed);
        for b in [sw, dup, hb] {
            self.recycle(b);
        }
        self.norm_bwd(li.ln2, &dh, &a.x_mid, &a.rstd2, dx, true, h);
        self.recycle(dh);
    }

    /// The attention half of a layer's backward: `dx` (the gradient of the attention's
    /// residual sum) gains the gradient through attention, the q/k norms and the input norm.
    fn attn_bwd(&mut self, l: usize, a: &LayerActs<T>, dx: &mut [T], s: &Saved<T>) {
        let cfg = self.cfg.clone();
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let n = s.batch.tokens.len();
        let li = self.layers[l].clone();
        let seed = s.dropout_seed;
        let u = |w: usize| a.lora_u[w].as_deref();
        let mut datt = self.buf(n * heads * d);
        self.lin_bwd(l, 3, &a.att, dx, &mut datt, false, u(3), n, seed);
        let (mut dq, mut dk, mut dv) = (
            self.buf(n * heads * d),
            self.buf(n * kv_heads * d),
            self.buf(n * kv_heads * d),
        );
        let ta = Instant::now();
        attention_bwd(
            &a.q,
            &a.k,
            &a.v,
            &a.att,
            &a.lse,
            &datt,
            &s.batch.rows,
            self.attn_shape(),
            &mut dq,
            &mut dk,
            &mut dv,
        );
        self.timings.attention_backward += ta.elapsed().as_secs_f64();
        self.recycle(datt);
        rope_inplace(&mut dq, heads, d, &s.pos, &s.cos, &s.sin, true);
        rope_inplace(&mut dk, kv_heads, d, &s.pos, &s.cos, &s.sin, true);
        let dq = self.head_norm_bwd(li.q_norm, dq, a.q_pre.as_ref());
        let dk = self.head_norm_bwd(li.k_norm, dk, a.k_pre.as_ref());
        let mut hb = self.buf(n * h);
        rms_norm_apply(&a.x_in, &self.data[li.ln1], &a.rstd1, &mut hb, h);
        let mut dh = self.buf(n * h);
        self.lin_bwd(l, 0, &hb, &dq, &mut dh, false, u(0), n, seed);
        self.lin_bwd(l, 1, &hb, &dk, &mut dh, true, u(1), n, seed);
        self.lin_bwd(l, 2, &hb, &dv, &mut dh, true, u(2), n, seed);
        for b in [dq, dk, dv, hb] {
            self.recycle(b);
        }
        self.norm_bwd(li.ln1, &dh, &a.x_in, &a.rstd1, dx, true, h);
        self.recycle(dh);
    }

    fn layer_bwd(&mut self, l: usize, a: LayerActs<T>, dx: &mut [T], s: &Saved<T>) {
        self.mlp_bwd(l, &a, dx, s.batch.tokens.len(), s.dropout_seed);
        self.attn_bwd(l, &a, dx, s);
        self.recycle_acts(a);
    }

    fn backward_impl(&mut self, coefs: Option<&[f64]>) -> anyhow::Result<()> {
        let mut s = self
            .saved
            .take()
            .context("backward without a training forward")?;
        let h = self.cfg.hidden_size;
        let n = s.batch.tokens.len();
        let dht = match (s.dht.take(), coefs) {
            (Some(d), None) => d,
            (None, Some(c)) => {
                let t = Instant::now();
                let (_, d) = self.head(&s.ht, &s.batch, Some(c))?;
                self.timings.head += t.elapsed().as_secs_f64();
                d.expect("coefficients give a gradient")
            }
            (Some(_), Some(_)) => bail!("coefficients were already given to the forward"),
            (None, None) => bail!("backward needs the per-row coefficients"),
        };
        let t0 = Instant::now();
        // final norm backward at the target rows
        let nt = s.batch.targets.len();
        let mut dxt = self.buf(nt * h);
        self.norm_bwd(self.norm, &dht, &s.xt, &s.rstd_t, &mut dxt, false, h);
        let mut dx = self.zbuf(n * h);
        for (i, t) in s.batch.targets.iter().enumerate() {
            dx[t.pos * h..(t.pos + 1) * h].copy_from_slice(&dxt[i * h..(i + 1) * h]);
        }
        self.recycle(dxt);
        self.recycle(dht);
        let layers = std::mem::take(&mut s.layers);
        for (l, a) in layers.into_iter().enumerate().rev() {
            self.layer_bwd(l, a, &mut dx, &s);
        }
        if self.trainable[self.embed] {
            let g = &mut self.grads[self.embed];
            for (t, &tok) in s.batch.tokens.iter().enumerate() {
                let row = &mut g[tok as usize * h..(tok as usize + 1) * h];
                for (a, &b) in row.iter_mut().zip(&dx[t * h..(t + 1) * h]) {
                    *a += b;
                }
            }
        }
        self.recycle(dx);
        let Saved { xt, rstd_t, ht, .. } = s;
        for b in [xt, rstd_t, ht] {
            self.recycle(b);
        }
        self.timings.backward += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn tensor_of(&self, i: usize, v: &[T]) -> anyhow::Result<Tensor> {
        Ok(Tensor::from_slice(
            v,
            self.shapes[i].as_slice(),
            &Device::Cpu,
        )?)
    }
}

impl<T: Float> Engine for CpuEngine<T> {
    fn score(&mut self, batch: &Packed) -> anyhow::Result<Vec<RowStats>> {
        self.run(batch, false, None, None)
    }

    fn forward(
        &mut self,
        batch: &Packed,
        coefs: Option<&[f64]>,
        dropout_seed: u64,
    ) -> anyhow::Result<Vec<RowStats>> {
        if let Some(c) = coefs {
            if c.len() != batch.num_rows() {
                bail!("{} coefficients for {} rows", c.len(), batch.num_rows());
            }
        }
        self.saved = None;
        self.run(batch, true, coefs, Some(dropout_seed))
    }

    fn backward(&mut self, coefs: Option<&[f64]>) -> anyhow::Result<()> {
        self.backward_impl(coefs)
    }

    fn discard(&mut self) {
        if let Some(s) = self.saved.take() {
            for a in s.layers {
                self.recycle_acts(a);
            }
        }
    }

    fn grad_sq_norm(&self) -> anyhow::Result<f64> {
        Ok(self
            .order
            .iter()
            .map(|&i| {
                // fixed chunks summed in order: the same value on every run (resume reproduces
                // clipping exactly)
                let parts: Vec<f64> = self.grads[i]
                    .par_chunks(1 << 15)
                    .map(|c| c.iter().map(|&g| g.to_f64c() * g.to_f64c()).sum::<f64>())
                    .collect();
                parts.iter().sum::<f64>()
            })
            .sum())
    }

    fn step(&mut self, opt: &AdamW, lr: f64, grad_scale: f64) -> anyhow::Result<()> {
        let t0 = Instant::now();
        self.steps += 1;
        let t = self.steps;
        for &i in &self.order.clone() {
            let (p, g, m, v) = (
                &mut self.data[i],
                &self.grads[i],
                &mut self.exp_avg[i],
                &mut self.exp_avg_sq[i],
            );
            adamw_update(opt, t, lr, grad_scale, p, g, m, v);
        }
        self.zero_grads();
        self.timings.optimizer += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn trainable(&self) -> Vec<ParamInfo> {
        self.order
            .iter()
            .map(|&i| ParamInfo {
                name: self.names[i].clone(),
                shape: self.shapes[i].clone(),
            })
            .collect()
    }

    fn state(&self) -> anyhow::Result<EngineState> {
        let mut s = EngineState {
            step: self.steps,
            params: vec![],
            exp_avg: vec![],
            exp_avg_sq: vec![],
        };
        for &i in &self.order {
            s.params
                .push((self.names[i].clone(), self.tensor_of(i, &self.data[i])?));
            s.exp_avg
                .push((self.names[i].clone(), self.tensor_of(i, &self.exp_avg[i])?));
            s.exp_avg_sq.push((
                self.names[i].clone(),
                self.tensor_of(i, &self.exp_avg_sq[i])?,
            ));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: EngineState) -> anyhow::Result<()> {
        let find = |list: &[(String, Tensor)], name: &str| -> anyhow::Result<Vec<T>> {
            let t = list
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("resume state has no {name}"))?;
            Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?)
        };
        for &i in &self.order.clone() {
            let name = self.names[i].clone();
            let (p, m, v) = (
                find(&state.params, &name)?,
                find(&state.exp_avg, &name)?,
                find(&state.exp_avg_sq, &name)?,
            );
            if p.len() != self.data[i].len() || m.len() != p.len() || v.len() != p.len() {
                bail!(
                    "resume state: {name} has {} values, the model {}",
                    p.len(),
                    self.data[i].len()
                );
            }
            self.data[i] = p;
            self.exp_avg[i] = m;
            self.exp_avg_sq[i] = v;
        }
        self.steps = state.step;
        Ok(())
    }

    fn base_weights(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for i in 0..self.names.len() {
            if self.names[i].starts_with("base_model.") {
                continue;
            }
            out.push((self.names[i].clone(), self.tensor_of(i, &self.data[i])?));
        }
        Ok(out)
    }

    fn release_training_state(&mut self) {
        for v in self
            .grads
            .iter_mut()
            .chain(self.exp_avg.iter_mut())
            .chain(self.exp_avg_sq.iter_mut())
        {
            *v = Vec::new();
        }
    }

    fn lora_weights(&self) -> anyhow::Result<Option<Vec<(String, Tensor)>>> {
        if self.lora.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for i in 0..self.names.len() {
            if self.names[i].starts_with("base_model.") {
                out.push((self.names[i].clone(), self.tensor_of(i, &self.data[i])?));
            }
        }
        Ok(Some(out))
    }
}
