//! CPU kernels of the training engine: matrix products (the `gemm` crate candle uses, called
//! directly so weight gradients accumulate in place and transposed operands are read through
//! strides, never copied), RMS norm, rotary embeddings, causal attention and SwiGLU, each with
//! its hand-written backward. Generic over f32 (training) and f64 (gradient checks).
//!
//! Layouts: activations are row-major `(tokens, features)` with the tokens of every row of a
//! micro-batch packed end to end (no padding); a head `h` of a `(tokens, heads·D)` buffer is the
//! column block `h·D..(h+1)·D`.

use rayon::prelude::*;

use crate::train::engine::shared::Float;

/// A raw pointer that may cross threads: tasks write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}

fn parallelism() -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// A strided matrix operand: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

impl<T> View<T> {
    /// Row-major `(rows, ld)` matrix (any number of rows).
    pub fn rows(s: &[T], ld: usize) -> Self {
        View {
            ptr: s.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn t(s: &[T], ld: usize) -> Self {
        View {
            ptr: s.as_ptr(),
            rs: 1,
            cs: ld as isize,
        }
    }
    pub fn raw(ptr: *const T, rs: usize, cs: usize) -> Self {
        View {
            ptr,
            rs: rs as isize,
            cs: cs as isize,
        }
    }
}

/// `dst (m×n, row stride ld_dst) = [dst +] beta · a (m×k) · b (k×n)`.
///
/// # Safety
/// The views must address `m×k` and `k×n` valid elements and `dst` `m` rows of `n` elements
/// with row stride `ld_dst`, not overlapping the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ld_dst: usize,
    accumulate: bool,
    a: View<T>,
    b: View<T>,
    beta: T,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * ld_dst + j) = T::zero();
                }
            }
        }
        return;
    }
    let par = if parallel {
        parallelism()
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld_dst as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        T::one(),
        beta,
        false,
        false,
        false,
        par,
    );
}

/// `y (N×out) [+]= x (N×in) · Wᵀ`, `W` row-major `(out, in)`.
pub fn linear_fwd<T: Float>(
    x: &[T],
    w: &[T],
    y: &mut [T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
    accumulate: bool,
) {
    debug_assert!(x.len() >= n * in_dim && w.len() == out_dim * in_dim && y.len() >= n * out_dim);
    unsafe {
        gemm_raw(
            n,
            out_dim,
            in_dim,
            y.as_mut_ptr(),
            out_dim,
            accumulate,
            View::rows(x, in_dim),
            View::t(w, in_dim),
            T::one(),
            true,
        )
    }
}

/// `dx (N×in) [+]= beta · dy (N×out) · W (out×in)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd_x<T: Float>(
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
    accumulate: bool,
    beta: T,
) {
    unsafe {
        gemm_raw(
            n,
            in_dim,
            out_dim,
            dx.as_mut_ptr(),
            in_dim,
            accumulate,
            View::rows(dy, out_dim),
            View::rows(w, in_dim),
            beta,
            true,
        )
    }
}

/// `dW (out×in) += beta · dyᵀ (out×N) · x (N×in)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd_w<T: Float>(
    dy: &[T],
    x: &[T],
    dw: &mut [T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
    beta: T,
) {
    unsafe {
        gemm_raw(
            out_dim,
            in_dim,
            n,
            dw.as_mut_ptr(),
            in_dim,
            true,
            View::t(dy, out_dim),
            View::rows(x, in_dim),
            beta,
            true,
        )
    }
}

/// `y[r] += b` for every row `r` of `y` (rows of width `b.len()`): a projection's bias.
pub fn bias_fwd<T: Float>(y: &mut [T], b: &[T]) {
    let w = b.len();
    let rpt = rows_per_task(y.len() / w.max(1), w);
    y.par_chunks_mut(rpt * w).for_each(|yc| {
        for yr in yc.chunks_mut(w) {
            for (o, &bv) in yr.iter_mut().zip(b) {
                *o += bv;
            }
        }
    });
}

/// Backward of [`bias_fwd`]: `db += Σ_rows dy` (rows of width `db.len()`), each column summed
/// in f64.
pub fn bias_bwd<T: Float>(dy: &[T], db: &mut [T]) {
    let w = db.len();
    let n = dy.len() / w.max(1);
    let cols = (w / rayon::current_num_threads().max(1)).max(64).min(w);
    db.par_chunks_mut(cols).enumerate().for_each(|(ci, dbc)| {
        let c0 = ci * cols;
        let mut acc = vec![0f64; dbc.len()];
        for r in 0..n {
            let row = &dy[r * w + c0..r * w + c0 + dbc.len()];
            for (a, &g) in acc.iter_mut().zip(row) {
                *a += g.to_f64c();
            }
        }
        for (o, a) in dbc.iter_mut().zip(acc) {
            *o += T::from_f64c(a);
        }
    });
}

/// Rows handed to one rayon task in elementwise kernels (amortises scheduling).
fn rows_per_task(n: usize, width: usize) -> usize {
    let target = 1 << 15; // ~32k elements per task
    (target / width.max(1)).clamp(1, n.max(1))
}

/// RMS norm over rows of width `h`: `y = x · rstd · w`, `rstd = 1/sqrt(mean(x²) + eps)`
/// (accumulated in f64). Returns nothing; fills `y` and `rstd` (one per row).
pub fn rms_norm_fwd<T: Float>(x: &[T], w: &[T], eps: f64, y: &mut [T], rstd: &mut [T], h: usize) {
    let n = rstd.len();
    let rpt = rows_per_task(n, h);
    y[..n * h]
        .par_chunks_mut(rpt * h)
        .zip(rstd.par_chunks_mut(rpt))
        .zip(x[..n * h].par_chunks(rpt * h))
        .for_each(|((yc, rc), xc)| {
            for ((yr, r), xr) in yc.chunks_mut(h).zip(rc.iter_mut()).zip(xc.chunks(h)) {
                let ss: f64 = xr
                    .iter()
                    .map(|&v| {
                        let v = v.to_f64c();
                        v * v
                    })
                    .sum();
                let rs = 1.0 / (ss / h as f64 + eps).sqrt();
                let rst = T::from_f64c(rs);
                *r = rst;
                for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *o = xv * rst * wv;
                }
            }
        });
}

/// Backward of [`rms_norm_fwd`]: `dx [+]= rstd · (g − x̂ · mean(g · x̂))` with `g = dy · w`,
/// `x̂ = x · rstd`; `dw += Σ_rows dy · x̂` when given.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_bwd<T: Float>(
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    dx: &mut [T],
    accumulate: bool,
    dw: Option<&mut [T]>,
    h: usize,
) {
    let n = rstd.len();
    let rpt = rows_per_task(n, h);
    dx[..n * h]
        .par_chunks_mut(rpt * h)
        .zip(dy[..n * h].par_chunks(rpt * h))
        .zip(x[..n * h].par_chunks(rpt * h))
        .zip(rstd.par_chunks(rpt))
        .for_each(|(((dxc, dyc), xc), rc)| {
            for (((dxr, dyr), xr), &r) in dxc
                .chunks_mut(h)
                .zip(dyc.chunks(h))
                .zip(xc.chunks(h))
                .zip(rc)
            {
                let mut dot = 0f64;
                for ((&d, &xv), &wv) in dyr.iter().zip(xr).zip(w) {
                    dot += (d * wv * xv * r).to_f64c();
                }
                let mean = T::from_f64c(dot / h as f64);
                for (((o, &d), &xv), &wv) in dxr.iter_mut().zip(dyr).zip(xr).zip(w) {
                    let v = r * (d * wv - xv * r * mean);
                    if accumulate {
                        *o += v;
                    } else {
                        *o = v;
                    }
                }
            }
        });
    if let Some(dw) = dw {
        // Column sums over rows: split the features across tasks.
        let cols = (h / rayon::current_num_threads().max(1)).max(64).min(h);
        dw[..h]
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(ci, dwc)| {
                let c0 = ci * cols;
                let mut acc = vec![0f64; dwc.len()];
                for i in 0..n {
                    let r = rstd[i];
                    let dyr = &dy[i * h + c0..i * h + c0 + dwc.len()];
                    let xr = &x[i * h + c0..i * h + c0 + dwc.len()];
                    for ((a, &d), &xv) in acc.iter_mut().zip(dyr).zip(xr) {
                        *a += (d * xv * r).to_f64c();
                    }
                }
                for (o, a) in dwc.iter_mut().zip(acc) {
                    *o += T::from_f64c(a);
                }
            });
    }
}

/// `y = x · rstd · w` again, from the stored `rstd` (the backward recomputes norm outputs
/// instead of keeping them).
pub fn rms_norm_apply<T: Float>(x: &[T], w: &[T], rstd: &[T], y: &mut [T], h: usize) {
    let n = rstd.len();
    let rpt = rows_per_task(n, h);
    y[..n * h]
        .par_chunks_mut(rpt * h)
        .zip(x[..n * h].par_chunks(rpt * h))
        .zip(rstd.par_chunks(rpt))
        .for_each(|((yc, xc), rc)| {
            for ((yr, xr), &r) in yc.chunks_mut(h).zip(xc.chunks(h)).zip(rc) {
                for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *o = xv * r * wv;
                }
            }
        });
}

/// Rotary embeddings in Hugging Face's `rotate_half` layout, in place, on a `(tokens, heads·D)`
/// buffer. `cos`/`sin` are `(max_pos, D/2)`; `pos[t]` is token `t`'s position. `inverse`
/// rotates by `-θ` (the backward).
pub fn rope_inplace<T: Float>(
    x: &mut [T],
    heads: usize,
    d: usize,
    pos: &[u32],
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = d / 2;
    let width = heads * d;
    let rpt = rows_per_task(pos.len(), width);
    x[..pos.len() * width]
        .par_chunks_mut(rpt * width)
        .zip(pos.par_chunks(rpt))
        .for_each(|(xc, pc)| {
            for (xr, &p) in xc.chunks_mut(width).zip(pc) {
                let c = &cos[p as usize * half..p as usize * half + half];
                let s = &sin[p as usize * half..p as usize * half + half];
                for head in xr.chunks_mut(d) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x1, x2) = (a[i], b[i]);
                        let (ci, si) = (c[i], if inverse { -s[i] } else { s[i] });
                        a[i] = x1 * ci - x2 * si;
                        b[i] = x2 * ci + x1 * si;
                    }
                }
            }
        });
}

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).fexp())
}

/// `s = silu(gate) · up` and `sig = σ(gate)` (for the backward, one exp per element).
pub fn swiglu_fwd_sig<T: Float>(gate: &[T], up: &[T], s: &mut [T], sig: &mut [T]) {
    let c = 1 << 14;
    s.par_chunks_mut(c)
        .zip(sig.par_chunks_mut(c))
        .zip(gate.par_chunks(c).zip(up.par_chunks(c)))
        .for_each(|((sc, zc), (gc, uc))| {
            for (((o, z), &g), &u) in sc.iter_mut().zip(zc.iter_mut()).zip(gc).zip(uc) {
                let sg = sigmoid(g);
                *z = sg;
                *o = g * sg * u;
            }
        });
}

/// Backward of SwiGLU from `ds` and the stored `sig = σ(gate)`: writes `dgate` over `ds` and
/// `dup` over `sig`.
pub fn swiglu_bwd_sig<T: Float>(ds: &mut [T], sig: &mut [T], gate: &[T], up: &[T]) {
    let c = 1 << 14;
    ds.par_chunks_mut(c)
        .zip(sig.par_chunks_mut(c))
        .zip(gate.par_chunks(c).zip(up.par_chunks(c)))
        .for_each(|((dc, zc), (gc, uc))| {
            for (((d, z), &g), &u) in dc.iter_mut().zip(zc.iter_mut()).zip(gc).zip(uc) {
                let sg = *z;
                let dsv = *d;
                *z = dsv * g * sg;
                *d = dsv * u * sg * (T::one() + g * (T::one() - sg));
            }
        });
}

/// `s = silu(gate) · up`.
pub fn swiglu_fwd<T: Float>(gate: &[T], up: &[T], s: &mut [T]) {
    s.par_chunks_mut(1 << 14)
        .zip(gate.par_chunks(1 << 14))
        .zip(up.par_chunks(1 << 14))
        .for_each(|((sc, gc), uc)| {
            for ((o, &g), &u) in sc.iter_mut().zip(gc).zip(uc) {
                *o = g * sigmoid(g) * u;
            }
        });
}

/// Geometry of packed causal attention with grouped kv heads.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub scale: f64,
}

/// Query rows per block: keys `0..q1` only, so the causal upper triangle is mostly skipped.
const QBLOCK: usize = 64;

/// Causal softmax attention of every row (`rows[i]..rows[i+1]` of the packed tokens) and head.
/// `q`: `(N, heads·D)`, `k`, `v`: `(N, kv·D)`; writes `out` `(N, heads·D)` and `lse`
/// `(N, heads)` (log-sum-exp of each query's scaled scores, for the backward).
pub fn attention_fwd<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    rows: &[usize],
    s: AttnShape,
    out: &mut [T],
    lse: &mut [T],
) {
    let (h, kv, d) = (s.heads, s.kv_heads, s.d);
    let group = h / kv;
    let (qw, kw) = (h * d, kv * d);
    let scale = T::from_f64c(s.scale);
    let out_p = SyncPtr(out.as_mut_ptr());
    let lse_p = SyncPtr(lse.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..rows.len() - 1)
        .flat_map(|r| (0..h).map(move |hh| (r, hh)))
        .collect();
    tasks.par_iter().for_each(|&(r, hh)| {
        let base = rows[r];
        let len = rows[r + 1] - base;
        let g = hh / group;
        let mut sbuf = vec![T::zero(); QBLOCK.min(len.max(1)) * len.max(1)];
        for q0 in (0..len).step_by(QBLOCK) {
            let q1 = (q0 + QBLOCK).min(len);
            let (nq, nk) = (q1 - q0, q1);
            unsafe {
                let qv = View::raw(q.as_ptr().add((base + q0) * qw + hh * d), qw, 1);
                let kt = View::raw(k.as_ptr().add(base * kw + g * d), 1, kw);
                gemm_raw(
                    nq,
                    nk,
                    d,
                    sbuf.as_mut_ptr(),
                    nk,
                    false,
                    qv,
                    kt,
                    scale,
                    false,
                );
            }
            for i in 0..nq {
                let row = &mut sbuf[i * nk..(i + 1) * nk];
                let lim = q0 + i + 1; // keys 0..=q0+i
                let mut m = T::neg_infinity();
                for &x in &row[..lim] {
                    m = num_traits::Float::max(m, x);
                }
                let mut sum = T::zero();
                for x in &mut row[..lim] {
                    *x = (*x - m).fexp();
                    sum += *x;
                }
                let inv = T::one() / sum;
                for x in &mut row[..lim] {
                    *x *= inv;
                }
                for x in &mut row[lim..] {
                    *x = T::zero();
                }
                unsafe { *lse_p.get().add((base + q0 + i) * h + hh) = m + sum.ln() };
            }
            unsafe {
                let pv = View::raw(sbuf.as_ptr(), nk, 1);
                let vv = View::raw(v.as_ptr().add(base * kw + g * d), kw, 1);
                gemm_raw(
                    nq,
                    d,
                    nk,
                    out_p.get().add((base + q0) * qw + hh * d),
                    qw,
                    false,
                    pv,
                    vv,
                    T::one(),
                    false,
                );
            }
        }
    });
}

/// Backward of [`attention_fwd`] (scores recomputed from `lse`, FlashAttention-style).
/// `dout`: `(N, heads·D)`. Writes `dq` `(N, heads·D)`, `dk`, `dv` `(N, kv·D)` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    rows: &[usize],
    s: AttnShape,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let (h, kv, d) = (s.heads, s.kv_heads, s.d);
    let group = h / kv;
    let (qw, kw) = (h * d, kv * d);
    let scale = T::from_f64c(s.scale);
    let n = rows[rows.len() - 1];
    dk[..n * kw].iter_mut().for_each(|x| *x = T::zero());
    dv[..n * kw].iter_mut().for_each(|x| *x = T::zero());
    let (dq_p, dk_p, dv_p) = (
        SyncPtr(dq.as_mut_ptr()),
        SyncPtr(dk.as_mut_ptr()),
        SyncPtr(dv.as_mut_ptr()),
    );
    let tasks: Vec<(usize, usize)> = (0..rows.len() - 1)
        .flat_map(|r| (0..kv).map(move |g| (r, g)))
        .collect();
    tasks.par_iter().for_each(|&(r, g)| {
        let base = rows[r];
        let len = rows[r + 1] - base;
        let blk = QBLOCK.min(len.max(1));
        let mut p = vec![T::zero(); blk * len.max(1)];
        let mut dp = vec![T::zero(); blk * len.max(1)];
        let mut delta = vec![T::zero(); blk];
        for hh in g * group..(g + 1) * group {
            for q0 in (0..len).step_by(QBLOCK) {
                let q1 = (q0 + QBLOCK).min(len);
                let (nq, nk) = (q1 - q0, q1);
                unsafe {
                    let qv = View::raw(q.as_ptr().add((base + q0) * qw + hh * d), qw, 1);
                    let kt = View::raw(k.as_ptr().add(base * kw + g * d), 1, kw);
                    gemm_raw(nq, nk, d, p.as_mut_ptr(), nk, false, qv, kt, scale, false);
                    let dov = View::raw(dout.as_ptr().add((base + q0) * qw + hh * d), qw, 1);
                    let vt = View::raw(v.as_ptr().add(base * kw + g * d), 1, kw);
                    gemm_raw(
                        nq,
                        nk,
                        d,
                        dp.as_mut_ptr(),
                        nk,
                        false,
                        dov,
                        vt,
                        T::one(),
                        false,
                    );
                }
                for i in 0..nq {
                    let t = base + q0 + i;
                    let mut acc = T::zero();
                    for c in 0..d {
                        acc += dout[t * qw + hh * d + c] * out[t * qw + hh * d + c];
                    }
                    delta[i] = acc;
                    let l = lse[t * h + hh];
                    let lim = q0 + i + 1;
                    let pr = &mut p[i * nk..(i + 1) * nk];
                    let dpr = &mut dp[i * nk..(i + 1) * nk];
                    for j in 0..nk {
                        if j < lim {
                            let pj = (pr[j] - l).fexp();
                            pr[j] = pj;
                            dpr[j] = pj * (dpr[j] - delta[i]);
                        } else {
                            pr[j] = T::zero();
                            dpr[j] = T::zero();
                        }
                    }
                }
                unsafe {
                    // dq (head hh, rows q0..q1) = scale · dS · K
                    let dsv = View::raw(dp.as_ptr(), nk, 1);
                    let kv_ = View::raw(k.as_ptr().add(base * kw + g * d), kw, 1);
                    gemm_raw(
                        nq,
                        d,
                        nk,
                        dq_p.get().add((base + q0) * qw + hh * d),
                        qw,
                        false,
                        dsv,
                        kv_,
                        scale,
                        false,
                    );
                    // dk (group g, rows 0..nk) += scale · dSᵀ · Q
                    let dst = View::raw(dp.as_ptr(), 1, nk);
                    let qv = View::raw(q.as_ptr().add((base + q0) * qw + hh * d), qw, 1);
                    gemm_raw(
                        nk,
                        d,
                        nq,
                        dk_p.get().add(base * kw + g * d),
                        kw,
                        true,
                        dst,
                        qv,
                        scale,
                        false,
                    );
                    // dv (group g) += Pᵀ · dO
                    let pt = View::raw(p.as_ptr(), 1, nk);
                    let dov = View::raw(dout.as_ptr().add((base + q0) * qw + hh * d), qw, 1);
                    gemm_raw(
                        nk,
                        d,
                        nq,
                        dv_p.get().add(base * kw + g * d),
                        kw,
                        true,
                        pt,
                        dov,
                        T::one(),
                        false,
                    );
                }
            }
        }
    });
}

/// Adds `src` to `dst` elementwise.
pub fn add_assign<T: Float>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(1 << 15)
        .zip(src.par_chunks(1 << 15))
        .for_each(|(d, s)| {
            for (a, &b) in d.iter_mut().zip(s) {
                *a += b;
            }
        });
}

/// `dst = a + b` elementwise.
pub fn add_into<T: Float>(dst: &mut [T], a: &[T], b: &[T]) {
    dst.par_chunks_mut(1 << 15)
        .zip(a.par_chunks(1 << 15))
        .zip(b.par_chunks(1 << 15))
        .for_each(|((d, x), y)| {
            for ((o, &p), &q) in d.iter_mut().zip(x).zip(y) {
                *o = p + q;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_attention(q: &[f64], k: &[f64], v: &[f64], len: usize, s: AttnShape) -> Vec<f64> {
        let (h, kv, d) = (s.heads, s.kv_heads, s.d);
        let mut out = vec![0.0; len * h * d];
        for hh in 0..h {
            let g = hh / (h / kv);
            for i in 0..len {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[i * h * d + hh * d + c] * k[j * kv * d + g * d + c])
                            .sum::<f64>()
                            * s.scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[i * h * d + hh * d + c] =
                        (0..=i).map(|j| e[j] / z * v[j * kv * d + g * d + c]).sum();
                }
            }
        }
        out
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (i as f64 * 0.7361 + seed as f64 * 1.37).sin())
            .collect()
    }

    #[test]
    fn attention_matches_naive_and_its_gradient_matches_finite_differences() {
        let s = AttnShape {
            heads: 4,
            kv_heads: 2,
            d: 6,
            scale: 1.0 / 6f64.sqrt(),
        };
        // two rows packed: lengths 70 (crosses a query block) and 5
        let rows = vec![0usize, 70, 75];
        let n = 75;
        let q = rand_vec(n * 24, 1);
        let k = rand_vec(n * 12, 2);
        let v = rand_vec(n * 12, 3);
        let mut out = vec![0.0; n * 24];
        let mut lse = vec![0.0; n * 4];
        attention_fwd(&q, &k, &v, &rows, s, &mut out, &mut lse);
        for (r0, r1) in [(0, 70), (70, 75)] {
            let len = r1 - r0;
            let want = naive_attention(
                &q[r0 * 24..r1 * 24],
                &k[r0 * 12..r1 * 12],
                &v[r0 * 12..r1 * 12],
                len,
                s,
            );
            for (a, b) in out[r0 * 24..r1 * 24].iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
        // loss = Σ out · w for a fixed w; check dq, dk, dv against finite differences
        let w = rand_vec(n * 24, 4);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; n * 24];
            let mut l = vec![0.0; n * 4];
            attention_fwd(q, k, v, &rows, s, &mut o, &mut l);
            o.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
        };
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * 24], vec![0.0; n * 12], vec![0.0; n * 12]);
        attention_bwd(
            &q, &k, &v, &out, &lse, &w, &rows, s, &mut dq, &mut dk, &mut dv,
        );
        let eps = 1e-6;
        for (which, idx) in [
            (0, 5usize),
            (0, 69 * 24 + 7),
            (1, 3),
            (1, 71 * 12 + 2),
            (2, 0),
            (2, 40 * 12 + 11),
        ] {
            let (mut qa, mut ka, mut va) = (q.clone(), k.clone(), v.clone());
            let (mut qb, mut kb, mut vb) = (q.clone(), k.clone(), v.clone());
            match which {
                0 => {
                    qa[idx] += eps;
                    qb[idx] -= eps
                }
                1 => {
                    ka[idx] += eps;
                    kb[idx] -= eps
                }
                _ => {
                    va[idx] += eps;
                    vb[idx] -= eps
                }
            }
            let fd = (loss(&qa, &ka, &va) - loss(&qb, &kb, &vb)) / (2.0 * eps);
            let an = [&dq, &dk, &dv][which][idx];
            assert!(
                (fd - an).abs() < 1e-7 * (1.0 + an.abs()),
                "{which}[{idx}]: {an} vs {fd}"
            );
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let g: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin() * 4.0).collect();
        let u: Vec<f64> = (0..50).map(|i| (i as f64 * 0.71).cos()).collect();
        let w: Vec<f64> = (0..50).map(|i| (i as f64 * 0.13).sin()).collect();
        let f = |g: &[f64], u: &[f64]| {
            let mut s = vec![0.0; 50];
            swiglu_fwd(g, u, &mut s);
            s.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
        };
        let (mut s, mut sig) = (vec![0.0; 50], vec![0.0; 50]);
        swiglu_fwd_sig(&g, &u, &mut s, &mut sig);
        let mut d = w.clone();
        swiglu_bwd_sig(&mut d, &mut sig, &g, &u);
        for i in [0, 17, 49] {
            let mut gp = g.clone();
            gp[i] += 1e-6;
            let mut gm = g.clone();
            gm[i] -= 1e-6;
            assert!(((f(&gp, &u) - f(&gm, &u)) / 2e-6 - d[i]).abs() < 1e-7);
            let mut up = u.clone();
            up[i] += 1e-6;
            let mut um = u.clone();
            um[i] -= 1e-6;
            assert!(((f(&g, &up) - f(&g, &um)) / 2e-6 - sig[i]).abs() < 1e-7);
        }
    }
}
