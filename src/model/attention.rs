//! A CPU kernel for the decode step's attention (one new query column per row, f32), reading
//! K and V straight from the cache views without repeating kv heads. candle's batched matmul
//! calls gemm once per (row, kv head) — hundreds of tiny calls per layer — and its CPU
//! softmax uses scalar `exp`; this kernel does the whole `softmax(q·Kᵀ)·V` per (row, kv head)
//! in one pass with vectorised loops, parallel over rows × kv heads.
//!
//! Used by `Llama::forward_step` only for CPU, f32, T = 1 (no backward).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `q`: `(B, H, 1, D)` contiguous, already scaled by 1/√D; `k`, `v`: `(B, KV, L, D)` views
/// with unit stride on D; key `j` of row `b` is used when `j >= left_pad[b]` (the last column
/// always). Output `(B, H, 1, D)`.
pub(crate) struct DecodeAttention {
    pub left_pad: Vec<usize>,
}

/// Vectorisable exp for the softmax: `exp(x)` for x ≤ 0 (max-subtracted scores), relative
/// error < 2e-7 on [-87, 0], 0 below. Range reduction x = n·ln2 + r, |r| ≤ ln2/2, degree-6
/// polynomial for e^r, 2^n by exponent bits.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let x = x.max(-87.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r, Taylor/minimax coefficients (Cephes expf)
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    let bits = ((n as i32 + 127) as u32) << 23;
    er * f32::from_bits(bits)
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = a.len().min(b.len());
    let chunks = n / 16;
    for c in 0..chunks {
        let a = &a[c * 16..c * 16 + 16];
        let b = &b[c * 16..c * 16 + 16];
        for i in 0..16 {
            acc[i] = fmadd::<FMA>(a[i], b[i], acc[i]);
        }
    }
    let mut s = 0f32;
    for i in chunks * 16..n {
        s += a[i] * b[i];
    }
    // pairwise sum of the lanes
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0] + s
}

/// Cache element types the kernel reads: f32, or f16 (half the memory traffic; decode
/// attention is bound by reading the cache).
trait KvElem: Copy + Send + Sync {
    /// `src` as f32: either `src` itself or converted into `scratch` (resized as needed).
    /// # Safety
    /// `MODE` 4 / 3 may only be used where AVX-512F / F16C+AVX2 are available.
    unsafe fn block<'a, const MODE: u8>(src: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32];
}

impl KvElem for f32 {
    #[inline(always)]
    unsafe fn block<'a, const MODE: u8>(src: &'a [f32], _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    unsafe fn block<'a, const MODE: u8>(
        src: &'a [half::f16],
        scratch: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let d = src.len();
        scratch.resize(d, 0.0);
        let dst = &mut scratch[..d];
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            if MODE == 4 {
                while done + 16 <= d {
                    let v = _mm256_loadu_si256(src.as_ptr().add(done) as *const __m256i);
                    _mm512_storeu_ps(dst.as_mut_ptr().add(done), _mm512_cvtph_ps(v));
                    done += 16;
                }
            } else if MODE == 3 {
                while done + 8 <= d {
                    let v = _mm_loadu_si128(src.as_ptr().add(done) as *const __m128i);
                    _mm256_storeu_ps(dst.as_mut_ptr().add(done), _mm256_cvtph_ps(v));
                    done += 8;
                }
            }
        }
        for i in done..d {
            dst[i] = src[i].to_f32();
        }
        dst
    }
}

struct Geometry<'a, E> {
    q: &'a [f32],
    k: &'a [E],
    v: &'a [E],
    k_off: usize,
    v_off: usize,
    ks: [usize; 3],
    vs: [usize; 3],
    h: usize,
    kv: usize,
    g: usize,
    l: usize,
    d: usize,
}

/// Per-thread scratch: scores and the converted K and V blocks (f16 caches).
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One (row b, kv head) task: G query heads against L keys; writes `out` (G·D).
#[inline(always)]
unsafe fn task<E: KvElem, const FMA: bool, const MODE: u8>(
    geo: &Geometry<E>,
    b: usize,
    kvh: usize,
    start: usize,
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let (g, l, d) = (geo.g, geo.l, geo.d);
    let n = l - start;
    // The filled columns of one (row, kv head) are contiguous: (n, d) with row stride d.
    let kb = geo.k_off + b * geo.ks[0] + kvh * geo.ks[1] + start * d;
    let vb = geo.v_off + b * geo.vs[0] + kvh * geo.vs[1] + start * d;
    let kblk = E::block::<MODE>(&geo.k[kb..kb + n * d], &mut sc.k);
    let vblk = E::block::<MODE>(&geo.v[vb..vb + n * d], &mut sc.v);
    let scores = &mut sc.scores;
    scores.clear();
    scores.resize(g * n, 0.0);
    let q0 = (b * geo.h + kvh * g) * d;
    for j in 0..n {
        let kr = &kblk[j * d..(j + 1) * d];
        for gi in 0..g {
            scores[gi * n + j] = dot::<FMA>(&geo.q[q0 + gi * d..][..d], kr);
        }
    }
    for gi in 0..g {
        let s = &mut scores[gi * n..(gi + 1) * n];
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = exp_neg(*x - m);
        }
        for x in s.iter() {
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
    out.fill(0.0);
    for j in 0..n {
        let vr = &vblk[j * d..(j + 1) * d];
        for gi in 0..g {
            let p = scores[gi * n + j];
            let o = &mut out[gi * d..(gi + 1) * d];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o = fmadd::<FMA>(p, x, *o);
            }
        }
    }
}

// Closures do not inherit `target_feature`, so each (row, kv head) task is its own
// feature-enabled function, chosen once per call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
unsafe fn task_v4<E: KvElem>(
    geo: &Geometry<E>,
    b: usize,
    kvh: usize,
    start: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    task::<E, true, 4>(geo, b, kvh, start, out, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_v3<E: KvElem>(
    geo: &Geometry<E>,
    b: usize,
    kvh: usize,
    start: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    task::<E, true, 3>(geo, b, kvh, start, out, s)
}

#[derive(Clone, Copy)]
enum Level {
    #[cfg(target_arch = "x86_64")]
    V4,
    #[cfg(target_arch = "x86_64")]
    V3,
    Generic,
}

fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "f16c" => std::arch::is_x86_feature_detected!("f16c"),
            _ => false,
        };
        if ["avx512f", "avx512vl", "avx2", "fma", "f16c"]
            .iter()
            .all(|f| has(f))
        {
            return Level::V4;
        }
        if ["avx2", "fma", "f16c"].iter().all(|f| has(f)) {
            return Level::V3;
        }
    }
    Level::Generic
}

fn run<E: KvElem>(geo: &Geometry<E>, pads: &[usize], out: &mut [f32]) {
    let chunk = geo.g * geo.d;
    let lvl = level();
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(Scratch::default, |sc, (i, o)| {
            let (b, kvh) = (i / geo.kv, i % geo.kv);
            let start = pads[b].min(geo.l - 1);
            // SAFETY: `level()` checked that the CPU has the features of each variant.
            unsafe {
                match lvl {
                    #[cfg(target_arch = "x86_64")]
                    Level::V4 => task_v4(geo, b, kvh, start, o, sc),
                    #[cfg(target_arch = "x86_64")]
                    Level::V3 => task_v3(geo, b, kvh, start, o, sc),
                    Level::Generic => task::<E, false, 0>(geo, b, kvh, start, o, sc),
                }
            }
        });
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "east-decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = l1.shape().dims4()?;
        let (kb, kv, l, kd) = l2.shape().dims4()?;
        if t != 1 || kb != b || kd != d || l2.shape() != l3.shape() || h % kv != 0 || l == 0 {
            candle_core::bail!(
                "decode attention: q {:?}, k {:?}, v {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        if !l1.is_contiguous()
            || l2.stride()[3] != 1
            || l3.stride()[3] != 1
            || l2.stride()[2] != d
            || l3.stride()[2] != d
        {
            candle_core::bail!(
                "decode attention: q must be contiguous, k/v rows of D contiguous values"
            )
        }
        if self.left_pad.len() != b {
            candle_core::bail!(
                "decode attention: {} pads for {b} rows",
                self.left_pad.len()
            )
        }
        let q = &s1.as_slice::<f32>()?[l1.start_offset()..];
        let st = |x: &Layout| [x.stride()[0], x.stride()[1], x.stride()[2]];
        let mut out = vec![0f32; b * h * d];
        macro_rules! go {
            ($k:expr, $v:expr) => {{
                let geo = Geometry {
                    q,
                    k: $k,
                    v: $v,
                    k_off: l2.start_offset(),
                    v_off: l3.start_offset(),
                    ks: st(l2),
                    vs: st(l3),
                    h,
                    kv,
                    g: h / kv,
                    l,
                    d,
                };
                run(&geo, &self.left_pad, &mut out)
            }};
        }
        match (s2, s3) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => go!(k.as_slice(), v.as_slice()),
            (CpuStorage::F16(k), CpuStorage::F16(v)) => go!(k.as_slice(), v.as_slice()),
            _ => candle_core::bail!("decode attention: the cache must be f32 or f16"),
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, 1, d))))
    }
}

/// Run the kernel: `q` `(B, H, 1, D)` (scaled), `k`/`v` cache views `(B, KV, L, D)`.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, left_pad: &[usize]) -> Result<Tensor> {
    let q = q.contiguous()?;
    q.apply_op3_no_bwd(
        k,
        v,
        &DecodeAttention {
            left_pad: left_pad.to_vec(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
        assert_eq!(exp_neg(f32::NEG_INFINITY), exp_neg(-87.0));
    }
}
