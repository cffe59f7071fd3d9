//! The training forward's ops with hand-written backward passes: RMS norm (also Qwen3's per-head
//! q/k norms), a projection's bias, RoPE, the attention probabilities (scores and masked
//! softmax in one) and SwiGLU.
//!
//! Each op computes its output outside candle's graph (with candle's fused kernel where there
//! is one) and enters the graph as a single node whose backward is the formula written here.
//! Composing them from candle's differentiable ops, as this crate first did, costs on every
//! backward:
//!
//! * gradients of constants: candle's `Mul`/`Add` backward computes the gradient of both
//!   operands, so the RoPE tables and the attention mask got activation-sized gradients
//!   (`(B, H, T, L)` for the mask, every layer) that stayed in the gradient store until the
//!   backward returned;
//! * a `zeros_like` + `add` for the first gradient of every node, and every intermediate of
//!   the composition kept alive for the backward (f32 copies of each norm's input, …);
//! * column sums for broadcast operands (a norm's weight gradient), which candle reduces with
//!   one thread block per column, striding through memory.
//!
//! Here a node keeps only its inputs (and its output, which the next op keeps anyway), the
//! attention scores are not kept at all, constants get no gradient, a norm's weight gradient
//! is a matrix product with a row of ones, and a backward detaches its inputs, so none of its
//! temporaries stay chained to the gradient it returns. When no input is tracked (scoring,
//! inference) the ops return their output directly.
//!
//! Every backward is checked against central finite differences of the op's formula written
//! out on the host in f64 (`tests/train_ops.rs`).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};

/// A hand-written backward pass: the gradients of an op's inputs given the inputs (detached),
/// which of them need one (`wants[i]`; the others may be `None`), the op's output and the
/// output's gradient.
trait Backward: Send + Sync {
    const NAME: &'static str;
    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// The graph node of an op: `inputs… → out`, where `out` was computed outside the graph from
/// the inputs (a fresh tensor, not a view) and is handed to the node, which copies it as its
/// output (a custom op must return new storage) and lets go of it, so that only the copy lives
/// on; its backward is `B`'s.
struct Node<B: Backward> {
    out: Mutex<Option<Tensor>>,
    bwd: B,
}

impl<B: Backward> Node<B> {
    fn new(out: Tensor, bwd: B) -> Self {
        Self {
            out: Mutex::new(Some(out)),
            bwd,
        }
    }

    /// The forward on either backend: the handed output, copied, and dropped.
    fn take_out<S: BackendStorage>(
        &self,
        storage: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let out = self
            .out
            .lock()
            .map_err(|_| candle_core::Error::Msg("training op: poisoned".into()))?
            .take();
        let Some(out) = out else {
            candle_core::bail!("{}: forward run twice", B::NAME)
        };
        let (s, layout) = out.storage_and_layout();
        // a copy of the whole storage: `out` must be a tensor of its own (an op's fresh result)
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("{}: the output must be a fresh contiguous tensor", B::NAME)
        }
        match storage(&s) {
            Some(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            None => candle_core::bail!(
                "{}: the output is on another device than the input",
                B::NAME
            ),
        }
    }

    fn grads(
        &self,
        inputs: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let refs: Vec<&Tensor> = detached.iter().collect();
        let wants: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
        let mut g = self.bwd.backward(&refs, &wants, &res.detach(), grad)?;
        // only inputs in the graph get a gradient (candle would keep any other until the end)
        for (gi, want) in g.iter_mut().zip(&wants) {
            if !want {
                *gi = None;
            }
        }
        Ok(g)
    }
}

fn cpu_of(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

fn cuda_of(s: &Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

impl<B: Backward> CustomOp1 for Node<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.take_out(cpu_of)
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.take_out(cuda_of)
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[x], res, grad)?.into_iter().next().flatten())
    }
}

impl<B: Backward> CustomOp2 for Node<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.take_out(cpu_of)
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.take_out(cuda_of)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], res, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl<B: Backward> CustomOp3 for Node<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.take_out(cpu_of)
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.take_out(cuda_of)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], res, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// `out` (computed from `x` outside the graph) as a function of `x` with `B`'s backward.
fn attach1<B: Backward + 'static>(x: &Tensor, out: Tensor, bwd: B) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(out);
    }
    x.apply_op1_arc(Arc::new(Box::new(Node::new(out, bwd))))
}

/// `out` as a function of `a` and `b` with `B`'s backward.
fn attach2<B: Backward + 'static>(a: &Tensor, b: &Tensor, out: Tensor, bwd: B) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(out);
    }
    a.apply_op2_arc(b, Arc::new(Box::new(Node::new(out, bwd))))
}

/// f32 for half-precision dtypes, else the dtype itself (f64 stays f64).
pub(crate) fn accumulation_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `Σ` over all leading dimensions of `x` `(…, n)` → `(n,)`, as a product with a row of ones
/// (a GEMV on the BLAS; candle's column reduction runs one thread block per column).
fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    let x = x.reshape(((), n))?;
    let ones = Tensor::ones((1, x.dim(0)?), x.dtype(), x.device())?;
    ones.matmul(&x)?.reshape(n)
}

/// RMS norm over the last dimension, `w ⊙ x / √(mean(x²) + ε)`, as transformers'
/// `LlamaRMSNorm`: statistics in f32 for half types, scaled by `w`.
///
/// Forward: candle's fused kernel on a GPU and for f32 (the same arithmetic as the composed
/// form); composed in f32/f64 otherwise (candle's CPU kernel sums in f32 and divides in the
/// input dtype, too coarse for f64 gradient checks and bf16 on the CPU).
///
/// Backward, with `r = (mean(x²) + ε)^-½`, `x̂ = x r`, `ĝ = g ⊙ w` per row of width `n`:
/// `∂x = r (ĝ − x̂ · mean(ĝ ⊙ x̂))`, `∂w = Σ_rows g ⊙ x̂`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let dtype = x.dtype();
    let xd = x.detach();
    let y = if x.device().is_cuda() || dtype == DType::F32 {
        candle_nn::ops::rms_norm(&xd, &w.detach(), eps as f32)?
    } else {
        let acc = accumulation_dtype(dtype);
        let xf = xd.to_dtype(acc)?;
        let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
            .sqrt()?
            .recip()?;
        xf.broadcast_mul(&r)?
            .to_dtype(dtype)?
            .broadcast_mul(&w.detach())?
    };
    attach2(&x, w, y, RmsNormBackward { eps })
}

struct RmsNormBackward {
    eps: f64,
}

impl Backward for RmsNormBackward {
    const NAME: &'static str = "east-rms-norm";

    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (inputs[0], inputs[1]);
        let acc = accumulation_dtype(x.dtype());
        let xf = x.to_dtype(acc)?;
        let g = grad.to_dtype(acc)?;
        let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = xf.broadcast_mul(&r)?;
        let dx = if wants[0] {
            let gw = g.broadcast_mul(&w.to_dtype(acc)?)?;
            let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
            let dx = (gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
            Some(dx.to_dtype(x.dtype())?)
        } else {
            None
        };
        let dw = if wants[1] {
            Some(sum_rows(&(&g * &xhat)?)?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok(vec![dx, dw])
    }
}

/// `y + b` for a bias `b` `(n,)` broadcast over the leading dimensions of `y` `(…, n)`: a
/// projection's bias (Qwen2's q, k and v).
///
/// Backward: `∂y = g`, `∂b = Σ_rows g` (a product with a row of ones, like a norm's weight
/// gradient, in the accumulation dtype).
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = y.detach().broadcast_add(&b.detach())?;
    attach2(y, b, out, BiasBackward)
}

struct BiasBackward;

impl Backward for BiasBackward {
    const NAME: &'static str = "east-bias";

    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let b = inputs[1];
        let dy = wants[0].then(|| grad.clone());
        let db = if wants[1] {
            let acc = accumulation_dtype(grad.dtype());
            Some(sum_rows(&grad.to_dtype(acc)?)?.to_dtype(b.dtype())?)
        } else {
            None
        };
        Ok(vec![dy, db])
    }
}

/// RoPE tables for one forward: `(B, T, D/2)` cos and sin in the model dtype, contiguous,
/// with `−sin` for the backward and a copy scaled by `scale` for the queries.
///
/// RoPE is a rotation, linear in its input: `rope(x, c·cos, c·sin) = c · rope(x, cos, sin)`, so
/// the queries' `1/√d` attention scale rides in their tables instead of costing a pass over
/// `q` (and its backward). Its transpose is the rotation by the opposite angles, `rope(·, cos,
/// −sin)`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    neg_sin: Tensor,
}

impl RopeTables {
    /// Tables from `cos` and `sin` `(B, T, D/2)`, both multiplied by `scale`.
    pub fn new(cos: &Tensor, sin: &Tensor, scale: f64) -> Result<Self> {
        let (cos, sin) = if scale == 1.0 {
            (cos.clone(), sin.clone())
        } else {
            ((cos * scale)?, (sin * scale)?)
        };
        let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
        Ok(Self {
            neg_sin: sin.neg()?,
            cos,
            sin,
        })
    }
}

/// HF `rotate_half` RoPE of `x` `(B, H, T, D)`: `x ⊙ cos + rotate_half(x) ⊙ sin` with the
/// tables' angles (and scale), through candle's fused kernel; backward `rope(g, cos, −sin)`.
pub fn rope(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x.detach(), &tables.cos, &tables.sin)?;
    attach1(&x, y, RopeBackward(tables.clone()))
}

struct RopeBackward(RopeTables);

impl Backward for RopeBackward {
    const NAME: &'static str = "east-rope";

    fn backward(
        &self,
        _: &[&Tensor],
        _: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let t = &self.0;
        Ok(vec![Some(candle_nn::rotary_emb::rope(
            &grad.contiguous()?,
            &t.cos,
            &t.neg_sin,
        )?)])
    }
}

/// `softmax(scores + mask)` over the last dimension, detached: on a GPU candle's fused kernel
/// (f32 arithmetic inside); on the CPU the same kernel on scores widened to the accumulation
/// dtype. `mask` (0 / −∞) broadcasts to `scores`.
fn masked_softmax_values(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let dtype = scores.dtype();
    let s = scores.detach();
    let s = if s.device().is_cuda() {
        s
    } else {
        s.to_dtype(accumulation_dtype(dtype))?
    };
    let s = match mask {
        Some(m) => s.broadcast_add(&m.to_dtype(s.dtype())?)?,
        None => s.contiguous()?,
    };
    candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)
}

/// The softmax's backward, `y ⊙ (g − Σ g ⊙ y)` over the last dimension, in the accumulation
/// dtype; returned in `y`'s dtype.
fn softmax_grad(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let dtype = y.dtype();
    let acc = accumulation_dtype(dtype);
    let (y, g) = (y.to_dtype(acc)?, g.to_dtype(acc)?);
    let dot = (&y * &g)?.sum_keepdim(D::Minus1)?;
    (y * g.broadcast_sub(&dot)?)?.to_dtype(dtype)
}

/// `softmax(scores + mask)` over the last dimension; `mask` (0 / −∞, broadcastable to
/// `scores`) is a constant. Backward: `∂scores = y ⊙ (g − Σ g ⊙ y)`.
pub fn softmax_masked(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let y = masked_softmax_values(scores, mask)?;
    attach1(scores, y, SoftmaxBackward)
}

struct SoftmaxBackward;

impl Backward for SoftmaxBackward {
    const NAME: &'static str = "east-softmax";

    fn backward(
        &self,
        _: &[&Tensor],
        _: &[bool],
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(softmax_grad(out, grad)?)])
    }
}

/// Attention probabilities `softmax(q·kᵀ + mask)`, `(B, H, T, L)`, for queries `q`
/// `(B, H, T, D)` (already scaled) and keys `k` `(B, KV, L, D)`, grouped: query head `h` reads
/// key head `h / (H / KV)`, through a `(B, KV, (H/KV)·T, D)` view of `q` (the key heads are
/// never repeated). `mask` (0 / −∞) broadcasts to `(B, H, T, L)`.
///
/// One graph node from `q`, `k` to the probabilities: the scores are not kept for the backward,
/// which needs only the probabilities (kept anyway for `probs · v`), `q` and `k`; that halves
/// attention's activations. Backward, with `dS = y ⊙ (g − Σ g ⊙ y)` viewed like the scores:
/// `∂q = dS · k`, `∂k = dSᵀ · q`.
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    check_grouped(q, k)?;
    let y = probs_values(q, k, mask)?;
    attach2(q, k, y, AttentionBackward)
}

/// The grouped attention probabilities `(B, H, T, L)` of `q` `(B, H, T, D)` and `k`
/// `(B, KV, L, D)`, detached (see [`attention_probs`]).
fn probs_values(q: &Tensor, k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kv, l) = (k.dim(1)?, k.dim(2)?);
    let qg = q.detach().reshape((b, kv, h / kv * t, d))?;
    let scores = qg.matmul(&k.detach().t()?)?.reshape((b, h, t, l))?;
    masked_softmax_values(&scores, mask)
}

/// Checks that `q` `(B, H, T, D)` and `k` `(B, KV, L, D)` make grouped attention.
fn check_grouped(q: &Tensor, k: &Tensor) -> Result<()> {
    let (b, h, _, d) = q.dims4()?;
    let (kb, kv, _, kd) = k.dims4()?;
    if kb != b || kd != d || kv == 0 || h % kv != 0 {
        candle_core::bail!(
            "attention: queries {:?} and keys {:?} do not match",
            q.dims(),
            k.dims()
        )
    }
    Ok(())
}

/// Grouped attention `softmax(q·kᵀ + mask) · v` as one graph node that keeps no
/// probabilities: for `q` `(B, H, T, D)` (already scaled), `k`, `v` `(B, KV, L, D)`, returns
/// `(B, KV, (H/KV)·T, D)` (query head `h` reads key/value head `h / (H / KV)`; row `i·T + t`
/// of group `kv` is head `kv·H/KV + i`, position `t`).
///
/// [`attention_probs`] followed by a matrix product with `v` keeps the probabilities
/// `(B, H, T, L)` of every layer for the backward — in a long-row run the largest activation
/// of all (`B·H·T²`: 512 MiB per layer in f32 for Llama-3.2-1B at 4 × 1,024 tokens). This node
/// keeps only its inputs and output and recomputes the probabilities `P` in its backward, from
/// the same ops in the same order, so its gradients are those of the two-node form:
/// `∂v = Pᵀ·g`, `∂P = g·vᵀ`, `dS = P ⊙ (∂P − Σ ∂P ⊙ P)`, `∂q = dS·k`, `∂k = dSᵀ·q`.
/// Built from candle's ops, it runs wherever they do (CPU and CUDA).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    check_grouped(q, k)?;
    if v.dims() != k.dims() {
        candle_core::bail!(
            "attention: keys {:?} and values {:?} differ in shape",
            k.dims(),
            v.dims()
        )
    }
    let (b, h, t, _) = q.dims4()?;
    let (kv, l) = (k.dim(1)?, k.dim(2)?);
    let p = probs_values(q, k, mask)?.reshape((b, kv, h / kv * t, l))?;
    let out = p.matmul(&v.detach())?;
    drop(p);
    let bwd = FusedAttentionBackward {
        mask: mask.map(|m| m.detach()),
    };
    if !q.track_op() && !k.track_op() && !v.track_op() {
        return Ok(out);
    }
    q.apply_op3_arc(k, v, Arc::new(Box::new(Node::new(out, bwd))))
}

struct FusedAttentionBackward {
    /// The additive mask (a constant, shared by all layers).
    mask: Option<Tensor>,
}

impl Backward for FusedAttentionBackward {
    const NAME: &'static str = "east-attention";

    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let (b, h, t, d) = q.dims4()?;
        let (kv, l) = (k.dim(1)?, k.dim(2)?);
        let grad = grad.contiguous()?;
        let grad = &grad;
        let p = probs_values(q, k, self.mask.as_ref())?.reshape((b, kv, h / kv * t, l))?;
        let dv = if wants[2] {
            Some(p.t()?.matmul(grad)?)
        } else {
            None
        };
        let dp = grad.matmul(&v.t()?)?;
        let ds = softmax_grad(&p, &dp)?;
        drop((p, dp));
        let dq = if wants[0] {
            Some(ds.matmul(k)?.reshape((b, h, t, d))?)
        } else {
            None
        };
        let dk = if wants[1] {
            Some(ds.t()?.matmul(&q.reshape((b, kv, h / kv * t, d))?)?)
        } else {
            None
        };
        Ok(vec![dq, dk, dv])
    }
}

struct AttentionBackward;

impl Backward for AttentionBackward {
    const NAME: &'static str = "east-attention-probs";

    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (q, k) = (inputs[0], inputs[1]);
        let (b, h, t, d) = q.dims4()?;
        let (kv, l) = (k.dim(1)?, k.dim(2)?);
        let ds = softmax_grad(out, grad)?.reshape((b, kv, h / kv * t, l))?;
        let dq = if wants[0] {
            Some(ds.matmul(k)?.reshape((b, h, t, d))?)
        } else {
            None
        };
        let dk = if wants[1] {
            Some(ds.t()?.matmul(&q.reshape((b, kv, h / kv * t, d))?)?)
        } else {
            None
        };
        Ok(vec![dq, dk])
    }
}

/// SwiGLU, `silu(gate) ⊙ up` (same shapes), in the input dtype.
///
/// Backward, with `s = σ(gate)`, `silu = gate · s`: `∂up = g ⊙ silu`,
/// `∂gate = g ⊙ up ⊙ (s + silu (1 − s))`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = (gate.detach().silu()? * up.detach())?;
    attach2(gate, up, y, SwigluBackward)
}

struct SwigluBackward;

impl Backward for SwigluBackward {
    const NAME: &'static str = "east-swiglu";

    fn backward(
        &self,
        inputs: &[&Tensor],
        wants: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let (gate, up) = (inputs[0], inputs[1]);
        let s = candle_nn::ops::sigmoid(gate)?;
        let silu = (gate * &s)?;
        let d_up = if wants[1] {
            Some((grad * &silu)?)
        } else {
            None
        };
        let d_gate = if wants[0] {
            let slope = ((&s + &silu)? - (&silu * &s)?)?;
            Some(((grad * up)? * slope)?)
        } else {
            None
        };
        Ok(vec![d_gate, d_up])
    }
}

/// Where [`checkpoint`]'s recomputations leave the gradients of the weights they read
/// (candle's backward only returns the gradients of an op's inputs, and a decoder layer has
/// nine or more weights): summed per weight, taken by the engine after the backward.
#[derive(Debug, Default)]
pub struct GradSink {
    grads: Mutex<std::collections::HashMap<candle_core::TensorId, Tensor>>,
}

impl GradSink {
    /// Adds `g` to the gradient of the weight with id `id`.
    fn add(&self, id: candle_core::TensorId, g: Tensor) -> Result<()> {
        let mut m = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink: poisoned".into()))?;
        let sum = match m.remove(&id) {
            Some(a) => (a + g)?,
            None => g,
        };
        m.insert(id, sum);
        Ok(())
    }

    /// Takes the gradient accumulated for `w`, if any.
    pub fn take(&self, w: &Tensor) -> Option<Tensor> {
        self.grads.lock().ok()?.remove(&w.id())
    }
}

/// Activation checkpointing of one layer: `layer(x)`, keeping only `x` for the backward,
/// which runs the layer again on `x` (the same ops on the same values, so the same numbers;
/// dropout masks are functions of their seed and token positions and come out the same) and
/// back-propagates through that copy. The gradients of `weights` (the tensors the layer may
/// read that the caller wants gradients of) go to `sink`; the input's is returned as usual.
///
/// The forward builds the layer's graph too (its weights are tracked) but keeps only the
/// output's values: the intermediates are freed when the layer returns.
pub fn checkpoint(
    x: &Tensor,
    layer: crate::model::LayerFn,
    weights: Arc<Vec<Tensor>>,
    sink: Arc<GradSink>,
) -> Result<Tensor> {
    let y = layer(&x.detach())?.detach();
    // An input outside the graph (LoRA's frozen embeddings) would make this node a constant
    // and cut the adapters of the layer off the backward: give it a place in the graph.
    let x = if x.track_op() {
        x.clone()
    } else {
        candle_core::Var::from_tensor(x)?.as_tensor().clone()
    };
    attach1(
        &x,
        y,
        CheckpointBackward {
            layer,
            weights,
            sink,
        },
    )
}

struct CheckpointBackward {
    layer: crate::model::LayerFn,
    weights: Arc<Vec<Tensor>>,
    sink: Arc<GradSink>,
}

impl Backward for CheckpointBackward {
    const NAME: &'static str = "east-checkpoint";

    fn backward(
        &self,
        inputs: &[&Tensor],
        _: &[bool],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let x = candle_core::Var::from_tensor(inputs[0])?;
        let y = (self.layer)(x.as_tensor())?;
        // ∂(Σ y ⊙ g)/∂y = 1 ⊙ g = g exactly: the recomputed graph gets the same upstream
        // gradient as the original would have
        let mut store = (y * grad.detach())?.sum_all()?.backward()?;
        for w in self.weights.iter() {
            if let Some(g) = store.remove(w) {
                self.sink.add(w.id(), g)?;
            }
        }
        Ok(vec![store.remove(x.as_tensor())])
    }
}
