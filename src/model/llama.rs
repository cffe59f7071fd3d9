//! The decoder of every family east runs (HF layout and tensor names; what the families
//! change, biases and q/k norms, comes from the config's [`Arch`](super::config::Arch)) with
//! two forward paths:
//!
//! * [`Llama::forward_hidden`] + [`Llama::logits`]: no cache, every position, padding mask,
//!   differentiable: RMS norm, RoPE, attention and SwiGLU are
//!   [`train_ops`] with hand-written backward passes, for training and
//!   scoring.
//! * [`Llama::forward_step`]: KV-cached inference (prefill and decode) with fused kernels,
//!   returning the last column's logits.
//!
//! Both use the same weights and agree to float rounding (tested).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::config::PROJECTIONS;
use super::packed::{PackedMatmul, PackedWeight};
use super::train_ops;

/// A hook that replaces (or augments) the output of a [`LinearLayer`] — e.g. a LoRA adapter,
/// or a matmul whose backward skips the frozen weight's gradient.
pub trait LinearAdapter: std::fmt::Debug + Send + Sync {
    /// The layer's output for `x` of shape `(…, in_dim)`, shape `(…, out_dim)`.
    /// `layer.base_forward(x)` is the plain `x · Wᵀ`.
    fn forward(&self, layer: &LinearLayer, x: &Tensor) -> Result<Tensor>;
}

/// A projection `y = x · Wᵀ (+ b)`, `W` of shape `(out_dim, in_dim)` (HF `nn.Linear` layout),
/// `b` of shape `(out_dim,)` when the family's projection has a bias, with an optional
/// [`LinearAdapter`] that takes over its forward.
///
/// On the CPU a weight that is not a training variable is stored transposed, `(in_dim,
/// out_dim)` contiguous, which gemm multiplies ~1.5× faster; [`LinearLayer::weight`] is then a
/// transposed view of it (no second copy). Variables (`VarMap` weights) are used as they are,
/// so optimiser updates are seen.
#[derive(Debug, Clone)]
pub struct LinearLayer {
    /// `(out_dim, in_dim)`; a view of `weight_t` when that is set.
    weight: Tensor,
    /// `(in_dim, out_dim)` contiguous.
    weight_t: Option<Tensor>,
    /// `weight_t` packed for the decoder's products, made on its first decode step (see
    /// [`LinearLayer::decode_forward`]); None inside where it does not apply.
    packed: Arc<OnceLock<Option<PackedWeight>>>,
    /// `(out_dim,)`, added after the product (Qwen2's q/k/v).
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl LinearLayer {
    pub fn new(weight: Tensor) -> Self {
        let mut l = Self {
            weight: weight.clone(),
            weight_t: None,
            packed: Arc::default(),
            bias: None,
            adapter: None,
        };
        l.store(weight);
        l
    }

    /// The layer with `bias` `(out_dim,)` added after the product.
    pub fn with_bias(mut self, bias: Option<Tensor>) -> Self {
        self.bias = bias;
        self
    }

    /// A layer over `weight` as it is, never a transposed copy: for a layer that is kept but
    /// not multiplied by (the training engine's frozen model, whose head it computes itself).
    pub fn as_stored(weight: Tensor) -> Self {
        Self {
            weight,
            weight_t: None,
            packed: Arc::default(),
            bias: None,
            adapter: None,
        }
    }

    fn store(&mut self, weight: Tensor) {
        // Only constants: a weight in a graph (a variable, or e.g. its bf16 cast) must stay
        // where the optimiser's gradient reaches it.
        self.packed = Arc::default();
        let transpose = weight.device().is_cpu() && !weight.track_op() && weight.rank() == 2;
        match transpose.then(|| weight.t().and_then(|t| t.contiguous())) {
            Some(Ok(wt)) => {
                self.weight = wt.t().expect("rank 2");
                self.weight_t = Some(wt);
            }
            _ => {
                self.weight = weight;
                self.weight_t = None;
            }
        }
    }

    /// Load `weight` of shape `(out_dim, in_dim)` from `vb` (e.g. `vb.pp("q_proj")`), and
    /// `bias` `(out_dim,)` when `bias`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let b = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Ok(Self::new(vb.get((out_dim, in_dim), "weight")?).with_bias(b))
    }

    /// The bias, `(out_dim,)`, when the projection has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight, `(out_dim, in_dim)` (possibly a non-contiguous view).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `(in_dim, out_dim)` contiguous copy the CPU multiplies by, when the weight is
    /// stored that way (frozen weights on the CPU); `weight()` is then its transpose.
    pub fn weight_t(&self) -> Option<&Tensor> {
        self.weight_t.as_ref()
    }

    /// Replace the weight (e.g. after merging a LoRA adapter); the shape must not change.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "set_weight: shape {:?} differs from {:?}",
                weight.dims(),
                self.weight.dims()
            )
        }
        self.store(weight);
        Ok(())
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn adapter(&self) -> Option<&Arc<dyn LinearAdapter>> {
        self.adapter.as_ref()
    }

    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }

    /// The forward of the KV-cached decoder (inference): on the CPU, a frozen f32 weight
    /// without an adapter is packed once, on first use, in the layout gemm copies it to on
    /// every call, and multiplied by gemm's own kernels over it ([`packed`]): the same bits
    /// as [`Module::forward`], without a pass over the weight per call. Elsewhere it is
    /// `forward`. The packed copy is as large as the weight.
    pub fn decode_forward(&self, x: &Tensor) -> Result<Tensor> {
        let packed = match &self.weight_t {
            Some(wt) if self.packs_for(x) => self
                .packed
                .get_or_init(|| PackedWeight::new(wt).ok().flatten())
                .as_ref(),
            _ => None,
        };
        let Some(p) = packed else {
            return self.forward(x);
        };
        let dims = x.dims();
        let mut out = dims[..dims.len() - 1].to_vec();
        let x2 = x.reshape((out.iter().product::<usize>(), self.in_dim()))?;
        let mut y = x2.contiguous()?.apply_op1_no_bwd(&PackedMatmul(p))?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        out.push(self.out_dim());
        y.reshape(out)
    }

    /// Whether [`LinearLayer::decode_forward`] may multiply `x` by a packed weight: a frozen
    /// CPU weight without an adapter, an f32 input outside any graph, at least two rows.
    fn packs_for(&self, x: &Tensor) -> bool {
        self.adapter.is_none()
            && self.weight_t.is_some()
            && !x.track_op()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.elem_count() >= 2 * self.in_dim()
    }

    /// `x · Wᵀ (+ b)` over the last dimension of `x`, any number of leading dimensions.
    pub fn base_forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let lead: Vec<usize> = dims[..dims.len().saturating_sub(1)].to_vec();
        let n: usize = lead.iter().product();
        let x2 = x.reshape((n, in_dim))?;
        let rhs = match &self.weight_t {
            Some(wt) => wt.clone(),
            None => self.weight.t()?,
        };
        let y = if self.weight.track_op() {
            // trains (a variable, or computed from one such as a bf16 cast of f32 masters)
            x2.matmul(&rhs)?
        } else {
            // A frozen weight: a matmul whose backward yields only the input's gradient.
            x2.apply_op1(FrozenMatmul { rhs })?
        };
        let y = match &self.bias {
            Some(b) => train_ops::add_bias(&y, b)?,
            None => y,
        };
        let mut out = lead;
        out.push(self.out_dim());
        y.reshape(out)
    }
}

/// `x · rhs` for a constant `rhs` `(k, n)`: the backward pass gives `x`'s gradient only.
/// candle's matmul backward always computes both operands' gradients, which for a frozen
/// weight (LoRA, reference models) is a weight-sized matmul and buffer per layer for nothing.
struct FrozenMatmul {
    rhs: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "east-frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l.shape().dims2()?;
        let n = self.rhs.dim(1)?;
        let (rs, rl) = self.rhs.storage_and_layout();
        match &*rs {
            candle_core::Storage::Cpu(r) => Ok((s.matmul(r, (1, m, n, k), l, rl)?, (m, n).into())),
            _ => candle_core::bail!("frozen matmul: weight and input on different devices"),
        }
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l.shape().dims2()?;
        let n = self.rhs.dim(1)?;
        let (rs, rl) = self.rhs.storage_and_layout();
        match &*rs {
            candle_core::Storage::Cuda(r) => Ok((s.matmul(r, (1, m, n, k), l, rl)?, (m, n).into())),
            _ => candle_core::bail!("frozen matmul: weight and input on different devices"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.rhs.t()?)?))
    }
}

impl Module for LinearLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.adapter {
            Some(a) => a.forward(self, x),
            None => self.base_forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: LinearLayer,
    pub k_proj: LinearLayer,
    pub v_proj: LinearLayer,
    pub o_proj: LinearLayer,
    /// `(head_dim,)` RMS norm weights over each head of q and of k, before RoPE (Qwen3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rms_norm_eps: f64,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: LinearLayer,
    pub up_proj: LinearLayer,
    pub down_proj: LinearLayer,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&train_ops::swiglu(&gate, &up)?)
    }

    /// [`Mlp::forward`] of the KV-cached inference path ([`LinearLayer::decode_forward`]).
    fn decode_forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.decode_forward(x)?;
        let up = self.up_proj.decode_forward(x)?;
        self.down_proj
            .decode_forward(&train_ops::swiglu(&gate, &up)?)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

/// Per-forward data shared by all layers.
struct Ctx<'a> {
    /// `(B, T, D/2)` in the model dtype.
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Additive mask broadcastable to `(B, H, T, L)` (0 / -inf), or None.
    mask: Option<&'a Tensor>,
    /// Per-row left padding of the cache (decode kernel), when cached.
    left_pad: Option<&'a [usize]>,
}

/// Per-forward data of [`Llama::forward_hidden`], shared by all layers.
#[derive(Clone)]
struct TrainCtx {
    /// The queries' tables are scaled by `1/√head_dim` (see [`train_ops::RopeTables`]).
    q_rope: train_ops::RopeTables,
    k_rope: train_ops::RopeTables,
    /// Additive mask `(B, 1, T, T)` (0 / −∞) in the model dtype, or None.
    mask: Option<Tensor>,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let dims = cfg.projection_dims();
        let proj = |w: usize| {
            let (i, o) = dims[w];
            LinearLayer::load(vb.pp(PROJECTIONS[w]), i, o, cfg.arch.has_bias(w))
        };
        let norm = |name: &str| {
            cfg.arch
                .qk_norm
                .then(|| vb.pp(name).get(cfg.head_dim, "weight"))
                .transpose()
        };
        Ok(Self {
            q_proj: proj(0)?,
            k_proj: proj(1)?,
            v_proj: proj(2)?,
            o_proj: proj(3)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            rms_norm_eps: cfg.rms_norm_eps,
        })
    }

    /// The per-head q/k RMS norms (Qwen3) of `q` `(B, H, T, D)` and `k` `(B, KV, T, D)`,
    /// when the family has them: [`train_ops::rms_norm`] in the training graph, candle's
    /// fused kernel in the KV-cached decoder.
    fn norm_qk(&self, q: Tensor, k: Tensor, cached: bool) -> Result<(Tensor, Tensor)> {
        let eps = self.rms_norm_eps;
        let norm = |x: Tensor, w: &Option<Tensor>| match w {
            None => Ok(x),
            Some(w) if cached => candle_nn::ops::rms_norm(&x, w, eps as f32),
            Some(w) => train_ops::rms_norm(&x, w, eps),
        };
        Ok((norm(q, &self.q_norm)?, norm(k, &self.k_norm)?))
    }

    /// q, k, v as `(B, heads, T, D)`, contiguous; the projections by
    /// [`LinearLayer::decode_forward`] when `cached` (the KV-cached inference path).
    fn qkv(&self, x: &Tensor, cached: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let project = |l: &LinearLayer| {
            if cached {
                l.decode_forward(x)
            } else {
                l.forward(x)
            }
        };
        let q = project(&self.q_proj)?;
        let k = project(&self.k_proj)?;
        let v = project(&self.v_proj)?;
        let q = q
            .reshape((b, t, self.n_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = k
            .reshape((b, t, self.n_kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((b, t, self.n_kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok((q, k, v))
    }

    /// Attention of `q` `(B, H, T, D)` (already scaled) against `k`, `v` `(B, KV, L, D)`
    /// (views are fine) without materialising repeated kv heads: q is viewed as
    /// `(B, KV, G·T, D)`. Returns `(B, T, H·D)`. Differentiable.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        // one node that recomputes the probabilities in its backward (see train_ops::attention)
        let out = train_ops::attention(q, k, v, mask)?; // (B, KV, G·T, D)
        out.reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))
    }

    /// Training/scoring attention: RoPE with the queries' tables carrying the `1/√d` scale.
    fn forward_train(&self, x: &Tensor, ctx: &TrainCtx) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, false)?;
        let (q, k) = self.norm_qk(q, k, false)?;
        let q = train_ops::rope(&q, &ctx.q_rope)?;
        let k = train_ops::rope(&k, &ctx.k_rope)?;
        let y = self.attend(&q, &k, &v, ctx.mask.as_ref())?;
        self.o_proj.forward(&y)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        ctx: &Ctx,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, true)?;
        let (q, k) = self.norm_qk(q, k, true)?;
        let q = candle_nn::rotary_emb::rope(&q, ctx.cos, ctx.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, ctx.cos, ctx.sin)?;
        let kv = cache.append(layer, &k, &v)?;
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        let (b, _, t, _) = q.dims4()?;
        let y = match ctx.left_pad {
            Some(pads)
                if t == 1
                    && q.device().is_cpu()
                    && q.dtype() == DType::F32
                    && matches!(kv.k.dtype(), DType::F32 | DType::F16) =>
            {
                super::attention::decode_attention_kv(&q, &kv, pads)?.reshape((
                    b,
                    1,
                    self.n_heads * self.head_dim,
                ))?
            }
            _ => {
                let (kc, vc) = kv.full()?;
                // A cache kept in another dtype (e.g. f16 on the CPU): widen for the matmul.
                let kc = kc.to_dtype(q.dtype())?;
                let vc = vc.to_dtype(q.dtype())?;
                self.attend(&q, &kc, &vc, ctx.mask)?
            }
        };
        self.o_proj.decode_forward(&y)
    }
}

/// One decoder layer of [`Llama::forward_hidden`] as a function of its input, `(B, T, hidden)`
/// → `(B, T, hidden)`, owning what it needs (cheap clones of the layer's weights and the
/// forward's RoPE tables and mask): it can be run again, e.g. to recompute the layer in the
/// backward pass (activation checkpointing).
pub type LayerFn = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Runs decoder layer `index` (given as a [`LayerFn`]) on its input in
/// [`Llama::forward_hidden_with`]; the plain run is `layer(x)`.
pub type LayerRunner<'a> = &'a dyn Fn(usize, LayerFn, &Tensor) -> Result<Tensor>;

impl Block {
    /// The layer's tensors under their HF names, in [`LlamaConfig::layer_tensors`]' order.
    fn named_tensors(&self, layer: usize) -> Vec<(String, Tensor)> {
        let p = format!("model.layers.{layer}");
        let a = &self.self_attn;
        let mut v = vec![(
            format!("{p}.input_layernorm.weight"),
            self.input_layernorm.clone(),
        )];
        let projections = [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &self.mlp.gate_proj,
            &self.mlp.up_proj,
            &self.mlp.down_proj,
        ];
        for (w, lin) in projections.into_iter().enumerate() {
            if w == 4 {
                for (n, t) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                    if let Some(t) = t {
                        v.push((format!("{p}.self_attn.{n}.weight"), t.clone()));
                    }
                }
                v.push((
                    format!("{p}.post_attention_layernorm.weight"),
                    self.post_attention_layernorm.clone(),
                ));
            }
            let group = if w < 4 { "self_attn" } else { "mlp" };
            let module = format!("{p}.{group}.{}", PROJECTIONS[w]);
            v.push((format!("{module}.weight"), lin.weight().clone()));
            if let Some(b) = lin.bias() {
                v.push((format!("{module}.bias"), b.clone()));
            }
        }
        v
    }

    /// The training/scoring forward of the layer: pre-norm attention and MLP with residuals.
    fn forward_train(&self, x: &Tensor, ctx: &TrainCtx, eps: f64) -> Result<Tensor> {
        let h = train_ops::rms_norm(x, &self.input_layernorm, eps)?;
        let h = self.self_attn.forward_train(&h, ctx)?;
        let x = (x + h)?;
        let h = train_ops::rms_norm(&x, &self.post_attention_layernorm, eps)?;
        let h = self.mlp.forward(&h)?;
        x + h
    }

    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let dims = cfg.projection_dims();
        let mlp = vb.pp("mlp");
        let proj =
            |w: usize| LinearLayer::load(mlp.pp(PROJECTIONS[w]), dims[w].0, dims[w].1, false);
        Ok(Self {
            input_layernorm: vb.pp("input_layernorm").get(h, "weight")?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: vb.pp("post_attention_layernorm").get(h, "weight")?,
            mlp: Mlp {
                gate_proj: proj(4)?,
                up_proj: proj(5)?,
                down_proj: proj(6)?,
            },
        })
    }
}

/// A causal LM of any family east runs (Llama 2/3/3.1/3.2, SmolLM2, Mistral, Qwen2/2.5,
/// Qwen3; see [`Family`](super::config::Family)) with HF tensor names. The name is
/// historical: every family is Llama's layout plus what its [`Arch`](super::config::Arch) adds.
#[derive(Debug, Clone)]
pub struct Llama {
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    /// The output projection; its weight *is* `embed_tokens` when embeddings are tied.
    pub lm_head: LinearLayer,
    cfg: LlamaConfig,
    /// `(D/2,)` f32 RoPE inverse frequencies.
    inv_freq: Tensor,
    device: Device,
    dtype: DType,
}

impl Llama {
    /// Build from a `VarBuilder` holding HF tensor names (`model.embed_tokens.weight`, …) at
    /// its root. Works with safetensors/GGUF-backed builders and with a `VarMap` (training).
    /// `lm_head.weight` is read only when embeddings are not tied.
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate("Llama::load")
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(m.pp(format!("layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = m.pp("norm").get(cfg.hidden_size, "weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            LinearLayer::new(embed_tokens.clone())
        } else {
            LinearLayer::load(vb.pp("lm_head"), cfg.hidden_size, cfg.vocab_size, false)?
        };
        let inv: Vec<f32> = cfg.rope_inv_freq().iter().map(|&f| f as f32).collect();
        let inv_freq = Tensor::new(inv.as_slice(), &device)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cfg: cfg.clone(),
            inv_freq,
            device,
            dtype,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `(name, shape)` of every tensor a checkpoint of `cfg` must hold, HF names, in order
    /// (`lm_head.weight` only when embeddings are not tied; each layer as
    /// [`LlamaConfig::layer_tensors`]).
    pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
        )];
        for l in 0..cfg.num_hidden_layers {
            v.extend(cfg.layer_tensors(l));
        }
        v.push(("model.norm.weight".to_string(), vec![h]));
        if !cfg.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
        }
        v
    }

    /// Every weight under its HF name (what a `model.safetensors` checkpoint holds;
    /// `lm_head.weight` only when not tied), in [`Llama::expected_tensors`]' order. Adapters
    /// are not included.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (l, b) in self.layers.iter().enumerate() {
            v.extend(b.named_tensors(l));
        }
        v.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.cfg.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), self.lm_head.weight().clone()));
        }
        v
    }

    /// A copy of the model whose weights are training variables, and the `VarMap` holding them
    /// under their HF names (for full fine-tuning; tied embeddings stay one variable).
    /// `dtype` is the variables' dtype (e.g. f32 master weights).
    pub fn trainable_copy(&self, dtype: DType) -> Result<(candle_nn::VarMap, Llama)> {
        let varmap = candle_nn::VarMap::new();
        {
            let mut data = varmap.data().lock().expect("VarMap lock");
            for (name, t) in self.named_tensors() {
                let var = candle_core::Var::from_tensor(&t.to_dtype(dtype)?.contiguous()?)?;
                data.insert(name, var);
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, dtype, &self.device);
        let model = Llama::load(vb, &self.cfg)?;
        Ok((varmap, model))
    }

    /// Mutable access to every projection of the decoder layers under its HF module name
    /// (`model.layers.{i}.self_attn.q_proj`, …, `model.layers.{i}.mlp.down_proj`), e.g. to
    /// attach LoRA adapters with PEFT's naming. `lm_head` is reachable as `self.lm_head`.
    pub fn linear_layers_mut(&mut self) -> Vec<(String, &mut LinearLayer)> {
        let mut v = Vec::new();
        for (l, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.self_attn.q_proj"), &mut b.self_attn.q_proj));
            v.push((format!("{p}.self_attn.k_proj"), &mut b.self_attn.k_proj));
            v.push((format!("{p}.self_attn.v_proj"), &mut b.self_attn.v_proj));
            v.push((format!("{p}.self_attn.o_proj"), &mut b.self_attn.o_proj));
            v.push((format!("{p}.mlp.gate_proj"), &mut b.mlp.gate_proj));
            v.push((format!("{p}.mlp.up_proj"), &mut b.mlp.up_proj));
            v.push((format!("{p}.mlp.down_proj"), &mut b.mlp.down_proj));
        }
        v
    }

    /// Token embeddings, `(B, T)` u32 → `(B, T, hidden)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        self.embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.hidden_size))
    }

    /// cos/sin `(B, T, D/2)` in the model dtype for f32 positions `(B, T)`.
    fn rope_tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let angles = positions
            .unsqueeze(D::Minus1)?
            .broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?;
        Ok((
            angles.cos()?.to_dtype(self.dtype)?,
            angles.sin()?.to_dtype(self.dtype)?,
        ))
    }

    /// Final hidden states (after the final RMS norm), `(B, T, hidden)`, for every position,
    /// without a cache and through differentiable ops only.
    ///
    /// `ids`: `(B, T)` u32. `attention_mask`: `(B, T)` (any dtype; 1 = real token, 0 =
    /// padding, left or right). Position of a token = number of real tokens before it in its
    /// row (so a left-padded row has the same positions as the unpadded prompt); keys at
    /// padding positions are masked. Outputs at padding positions are finite but meaningless.
    pub fn forward_hidden(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_hidden_with(ids, attention_mask, None)
    }

    /// [`Llama::forward_hidden`] with every decoder layer run by `runner` (None: directly),
    /// e.g. to keep only each layer's input for the backward and recompute the rest.
    pub fn forward_hidden_with(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        runner: Option<LayerRunner>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let real: Vec<Vec<bool>> = match attention_mask {
            Some(m) => {
                if m.dims() != [b, t] {
                    candle_core::bail!(
                        "attention_mask shape {:?} differs from ids shape {:?}",
                        m.dims(),
                        ids.dims()
                    )
                }
                m.to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(|row| row.into_iter().map(|x| x != 0.0).collect())
                    .collect()
            }
            None => vec![vec![true; t]; b],
        };
        let longest = real.iter().map(|r| r.iter().filter(|&&x| x).count()).max();
        self.cfg
            .check_sequence_len(longest.unwrap_or(0))
            .map_err(|e| e.into_candle())?;
        let mut positions = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t * t);
        let mut any_masked = false;
        for row in &real {
            // position = cumsum(mask) - 1, clamped at 0 (transformers' convention)
            let mut seen = 0usize;
            for &r in row {
                seen += r as usize;
                positions.push(seen.saturating_sub(1) as f32);
            }
            for i in 0..t {
                for (j, &real) in row.iter().enumerate() {
                    let ok = j == i || (j < i && real);
                    any_masked |= j < i && !real;
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let positions = Tensor::from_vec(positions, (b, t), &self.device)?;
        let (cos, sin) = self.rope_tables(&positions)?;
        let mask = if t > 1 || any_masked {
            Some(Tensor::from_vec(mask, (b, 1, t, t), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        let ctx = TrainCtx {
            q_rope: train_ops::RopeTables::new(
                &cos,
                &sin,
                1.0 / (self.cfg.head_dim as f64).sqrt(),
            )?,
            k_rope: train_ops::RopeTables::new(&cos, &sin, 1.0)?,
            mask,
        };
        let eps = self.cfg.rms_norm_eps;
        let mut x = self.embed(ids)?;
        for (i, block) in self.layers.iter().enumerate() {
            x = match runner {
                None => block.forward_train(&x, &ctx, eps)?,
                Some(run) => {
                    let (block, ctx) = (block.clone(), ctx.clone());
                    let layer: LayerFn =
                        Arc::new(move |x: &Tensor| block.forward_train(x, &ctx, eps));
                    run(i, layer, &x)?
                }
            };
        }
        train_ops::rms_norm(&x, &self.norm, eps)
    }

    /// Logits for hidden states from [`Llama::forward_hidden`]: `(…, hidden)` → `(…, vocab)`,
    /// in the model dtype. Apply it to chunks of positions to bound memory.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// One KV-cached step: append `ids` `(B, T)` as the next `T` columns of `cache` and return
    /// the f32 logits of the last column, `(B, vocab)`.
    ///
    /// Prefill: `T` = (left-padded) prompt length on an empty cache whose `left_pad` tells each
    /// row's padding; decode: `T = 1`. Row `b`'s RoPE position of column `c` is
    /// `c - left_pad[b]`; keys in columns `< left_pad[b]` are masked.
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let last = self.forward_step_hidden(ids, cache)?;
        self.step_logits(&last)?.to_dtype(DType::F32)
    }

    /// [`Llama::logits`] of the KV-cached inference path, for hidden states from
    /// [`Llama::forward_step_hidden`] ([`LinearLayer::decode_forward`]: same values).
    pub fn step_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.decode_forward(hidden)
    }

    /// [`Llama::forward_step`] without the vocabulary head: the final-normed hidden state of
    /// the last column, `(B, hidden)`, for [`Llama::logits`] (the decoder runs the head once
    /// over the rows of several shards).
    pub fn forward_step_hidden(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if b != cache.batch() {
            candle_core::bail!(
                "forward_step: ids have {b} rows, the cache {}",
                cache.batch()
            )
        }
        if t == 0 {
            candle_core::bail!("forward_step: no new tokens")
        }
        cache.ensure_room(t).map_err(|e| e.into_candle())?;
        let start = cache.len();
        let l = start + t;
        let pads = cache.left_pad().to_vec();
        let longest = l - pads.iter().copied().min().unwrap_or(0).min(l);
        self.cfg
            .check_sequence_len(longest)
            .map_err(|e| e.into_candle())?;
        let mut positions = Vec::with_capacity(b * t);
        for &p in &pads {
            for c in start..l {
                positions.push(c.saturating_sub(p) as f32);
            }
        }
        let positions = Tensor::from_vec(positions, (b, t), &self.device)?;
        let (cos, sin) = self.rope_tables(&positions)?;
        let needs_mask = t > 1 || pads.iter().any(|&p| p > 0);
        let mask = if needs_mask {
            let mut m = Vec::with_capacity(b * t * l);
            for &p in &pads {
                for i in 0..t {
                    let qcol = start + i;
                    for j in 0..l {
                        let ok = j == qcol || (j < qcol && j >= p);
                        m.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                    }
                }
            }
            Some(Tensor::from_vec(m, (b, 1, t, l), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        let ctx = Ctx {
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
            left_pad: Some(&pads),
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = self.embed(ids)?;
        for (li, block) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.input_layernorm, eps)?;
            let h = block.self_attn.forward_cached(&h, &ctx, cache, li)?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &block.post_attention_layernorm, eps)?;
            let h = block.mlp.decode_forward(&h)?;
            x = (x + h)?;
        }
        cache.advance(t);
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?;
        candle_nn::ops::rms_norm(&last, &self.norm, eps)
    }
}
