//! A CPU kernel for the decode step's attention (one new query column per row, f32), reading
//! K and V straight from the cache views without repeating kv heads. candle's batched matmul
//! calls gemm once per (row, kv head) — hundreds of tiny calls per layer — and its CPU
//! softmax uses scalar `exp`; this kernel does the whole `softmax(q·Kᵀ)·V` per (row, kv head)
//! in one pass with vectorised loops, parallel over rows × kv heads.
//!
//! Used by `Llama::forward_step` only for CPU, f32, T = 1 (no backward).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `q`: `(B, H, 1, D)` contiguous, already scaled by 1/√D; `k`, `v`: a row's own columns,
/// `(B, KV, L, D)` views with unit stride on D; `prefix`: shared prefix columns
/// `(P_rows, KV, P, D)` (same layout) read before row `b`'s own columns from prefix row
/// `rows[b]`. Key `j` (counted over prefix and own columns) of row `b` is used when
/// `j >= left_pad[b]` (the last column always). Output `(B, H, 1, D)`.
pub(crate) struct DecodeAttention {
    pub left_pad: Vec<usize>,
    pub prefix: Option<(Tensor, Tensor, Vec<usize>)>,
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

/// One part of the keys and values (a row's own columns, or a shared prefix): `(rows, KV, L, D)`
/// with unit stride on D and row stride D within a (row, kv head).
struct Part<'a, E> {
    k: &'a [E],
    v: &'a [E],
    k_off: usize,
    v_off: usize,
    ks: [usize; 2],
    vs: [usize; 2],
    l: usize,
}

impl<E> Part<'_, E> {
    /// Key and value columns `start..l` of (row, kv head), contiguous `(l - start, d)`.
    #[inline(always)]
    fn cols(&self, row: usize, kvh: usize, start: usize, d: usize) -> (&[E], &[E]) {
        let n = self.l - start;
        let kb = self.k_off + row * self.ks[0] + kvh * self.ks[1] + start * d;
        let vb = self.v_off + row * self.vs[0] + kvh * self.vs[1] + start * d;
        (&self.k[kb..kb + n * d], &self.v[vb..vb + n * d])
    }
}

struct Geometry<'a, E> {
    q: &'a [f32],
    own: Part<'a, E>,
    /// The shared prefix and the prefix row of each row, read before the row's own columns.
    prefix: Option<(Part<'a, E>, &'a [usize])>,
    h: usize,
    kv: usize,
    g: usize,
    d: usize,
}

/// Per-thread scratch: scores and the converted K and V blocks (f16 caches).
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    pk: Vec<f32>,
    pv: Vec<f32>,
}

/// One (row b, kv head) task: G query heads against the row's keys — its prefix columns from
/// `pads[b]` on, then its own columns (from `pads[b]` on when there is no prefix) — in column
/// order, so the result does not depend on whether the prefix is shared; writes `out` (G·D).
#[inline(always)]
unsafe fn task<E: KvElem, const FMA: bool, const MODE: u8>(
    geo: &Geometry<E>,
    b: usize,
    kvh: usize,
    pad: usize,
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let (g, d) = (geo.g, geo.d);
    let (pk, pv, own_start) = match &geo.prefix {
        Some((p, rows)) => {
            let (k, v) = p.cols(rows[b], kvh, pad.min(p.l), d);
            (
                E::block::<MODE>(k, &mut sc.pk),
                E::block::<MODE>(v, &mut sc.pv),
                0,
            )
        }
        None => (&[][..], &[][..], pad.min(geo.own.l - 1)),
    };
    let (k, v) = geo.own.cols(b, kvh, own_start, d);
    let kblk = E::block::<MODE>(k, &mut sc.k);
    let vblk = E::block::<MODE>(v, &mut sc.v);
    let np = pk.len() / d;
    let n = np + kblk.len() / d;
    let key = |j: usize| {
        if j < np {
            &pk[j * d..(j + 1) * d]
        } else {
            &kblk[(j - np) * d..(j - np + 1) * d]
        }
    };
    let value = |j: usize| {
        if j < np {
            &pv[j * d..(j + 1) * d]
        } else {
            &vblk[(j - np) * d..(j - np + 1) * d]
        }
    };
    let scores = &mut sc.scores;
    scores.clear();
    scores.resize(g * n, 0.0);
    let q0 = (b * geo.h + kvh * g) * d;
    for j in 0..n {
        let kr = key(j);
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
        let vr = value(j);
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
    pad: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    task::<E, true, 4>(geo, b, kvh, pad, out, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_v3<E: KvElem>(
    geo: &Geometry<E>,
    b: usize,
    kvh: usize,
    pad: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    task::<E, true, 3>(geo, b, kvh, pad, out, s)
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

/// The output buffer, written by disjoint tasks from several threads.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own (row, kv head) chunk.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// `len` values from `offset` on (a method, so closures capture the whole `Send` wrapper).
    /// # Safety
    /// In bounds, and no other live reference to those values.
    unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

/// Runs every (row, kv head) task. Tasks are ordered kv head first, then row, and rayon hands
/// each thread contiguous runs of them, so consecutive tasks of a thread read the same shared
/// prefix block (`(L, D)` K and V of one prompt and kv head, tens of kilobytes) from its caches
/// instead of from memory.
fn run<E: KvElem>(geo: &Geometry<E>, pads: &[usize], out: &mut [f32]) {
    let chunk = geo.g * geo.d;
    let rows = pads.len();
    let lvl = level();
    let ptr = OutPtr(out.as_mut_ptr());
    (0..rows * geo.kv)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, i| {
            let (kvh, b) = (i / rows, i % rows);
            // SAFETY: task (b, kvh) owns out[(b·KV + kvh)·G·D ..][..G·D]; tasks are distinct.
            let o = unsafe { ptr.slice((b * geo.kv + kvh) * chunk, chunk) };
            // SAFETY: `level()` checked that the CPU has the features of each variant.
            unsafe {
                match lvl {
                    #[cfg(target_arch = "x86_64")]
                    Level::V4 => task_v4(geo, b, kvh, pads[b], o, sc),
                    #[cfg(target_arch = "x86_64")]
                    Level::V3 => task_v3(geo, b, kvh, pads[b], o, sc),
                    Level::Generic => task::<E, false, 0>(geo, b, kvh, pads[b], o, sc),
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
        if t != 1 || kb != b || kd != d || l2.shape() != l3.shape() || h % kv != 0 {
            candle_core::bail!(
                "decode attention: q {:?}, k {:?}, v {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        if !l1.is_contiguous() || !rows_of_d(l2, d) || !rows_of_d(l3, d) {
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
        let prefix = match &self.prefix {
            None => None,
            Some((pk, pv, rows)) => {
                let (pr, pkv, pl, pd) = pk.dims4()?;
                if pk.dims() != pv.dims()
                    || (pkv, pd) != (kv, d)
                    || rows.len() != b
                    || rows.iter().any(|&r| r >= pr)
                    || pk.dtype() != pv.dtype()
                {
                    candle_core::bail!(
                        "decode attention: prefix {:?} / {:?} for {b} rows",
                        pk.dims(),
                        pv.dims()
                    )
                }
                let (ks, kl) = pk.storage_and_layout();
                let (vs, vl) = pv.storage_and_layout();
                if !rows_of_d(kl, d) || !rows_of_d(vl, d) {
                    candle_core::bail!("decode attention: prefix rows of D contiguous values")
                }
                Some((ks, kl.clone(), vs, vl.clone(), pl, rows.as_slice()))
            }
        };
        if l == 0 && prefix.is_none() {
            candle_core::bail!("decode attention: no keys")
        }
        let q = &s1.as_slice::<f32>()?[l1.start_offset()..];
        let mut out = vec![0f32; b * h * d];
        macro_rules! go {
            ($ty:ty, $k:expr, $v:expr) => {{
                let prefix = match &prefix {
                    None => None,
                    Some((ks, kl, vs, vl, pl, rows)) => match (&**ks, &**vs) {
                        (candle_core::Storage::Cpu(k), candle_core::Storage::Cpu(v)) => {
                            Some((part::<$ty>(k, kl, v, vl, *pl)?, *rows))
                        }
                        _ => candle_core::bail!("decode attention: prefix not on the CPU"),
                    },
                };
                let geo = Geometry {
                    q,
                    own: part::<$ty>($k, l2, $v, l3, l)?,
                    prefix,
                    h,
                    kv,
                    g: h / kv,
                    d,
                };
                run(&geo, &self.left_pad, &mut out)
            }};
        }
        match (s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => go!(f32, s2, s3),
            (CpuStorage::F16(_), CpuStorage::F16(_)) => go!(half::f16, s2, s3),
            _ => candle_core::bail!("decode attention: the cache must be f32 or f16"),
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, 1, d))))
    }
}

/// The kernel's view of one part's storages.
fn part<'a, E: candle_core::WithDType>(
    k: &'a CpuStorage,
    kl: &Layout,
    v: &'a CpuStorage,
    vl: &Layout,
    l: usize,
) -> Result<Part<'a, E>> {
    Ok(Part {
        k: k.as_slice::<E>()?,
        v: v.as_slice::<E>()?,
        k_off: kl.start_offset(),
        v_off: vl.start_offset(),
        ks: [kl.stride()[0], kl.stride()[1]],
        vs: [vl.stride()[0], vl.stride()[1]],
        l,
    })
}

/// K/V layout the kernel reads: unit stride on D, row stride D.
fn rows_of_d(l: &Layout, d: usize) -> bool {
    l.stride()[3] == 1 && l.stride()[2] == d
}

/// Run the kernel: `q` `(B, H, 1, D)` (scaled), `k`/`v` cache views `(B, KV, L, D)`.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, left_pad: &[usize]) -> Result<Tensor> {
    let kv = super::cache::LayerKv {
        k: k.clone(),
        v: v.clone(),
        prefix: None,
    };
    decode_attention_kv(q, &kv, left_pad)
}

/// Run the kernel against a layer's cached keys and values (own columns and, when shared, the
/// prefix columns of each row's prompt).
pub(crate) fn decode_attention_kv(
    q: &Tensor,
    kv: &super::cache::LayerKv,
    left_pad: &[usize],
) -> Result<Tensor> {
    let q = q.contiguous()?;
    q.apply_op3_no_bwd(
        &kv.k,
        &kv.v,
        &DecodeAttention {
            left_pad: left_pad.to_vec(),
            prefix: kv.prefix.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::exp_neg;
    use crate::model::cache::LayerKv;
    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// softmax(q·kᵀ)·v in f64 over the keys of row b: prefix columns of prefix row `rows[b]`,
    /// then the row's own, the first `pads[b]` masked.
    fn naive(
        q: &[f32],
        keys: impl Fn(usize, usize) -> Vec<(Vec<f32>, Vec<f32>)>,
        (b_n, h, kv, d): (usize, usize, usize, usize),
        pads: &[usize],
    ) -> Vec<f64> {
        let mut out = vec![0f64; b_n * h * d];
        for b in 0..b_n {
            for hh in 0..h {
                let cols = keys(b, hh / (h / kv));
                let qv = &q[(b * h + hh) * d..][..d];
                let s: Vec<f64> = cols[pads[b]..]
                    .iter()
                    .map(|(k, _)| k.iter().zip(qv).map(|(&a, &b)| a as f64 * b as f64).sum())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (x, (_, v)) in s.iter().zip(&cols[pads[b]..]) {
                    let p = (x - m).exp() / z;
                    for i in 0..d {
                        out[(b * h + hh) * d + i] += p * v[i] as f64;
                    }
                }
            }
        }
        out
    }

    /// Shared-prefix attention equals a naive softmax attention over prefix + own columns,
    /// and equals (bit for bit) the kernel on a cache where each row holds a copy of the prefix.
    #[test]
    fn shared_prefix_attention_matches_a_naive_reference_and_the_copied_prefix() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (prompts, b_n, h, kv, d, p_len, own) = (2, 5, 6, 2, 64, 9, 4);
        let rows = vec![0, 0, 1, 1, 1];
        let pads = vec![2, 2, 0, 0, 0];
        let q = random(&[b_n, h, 1, d], &mut rng);
        let pk = random(&[prompts, kv, p_len, d], &mut rng);
        let pv = random(&[prompts, kv, p_len, d], &mut rng);
        // own columns as a view into a larger buffer, as the cache hands them over
        let ok = random(&[b_n, kv, own + 3, d], &mut rng);
        let ov = random(&[b_n, kv, own + 3, d], &mut rng);
        let (okn, ovn) = (ok.narrow(2, 0, own).unwrap(), ov.narrow(2, 0, own).unwrap());
        for dtype in [DType::F32, DType::F16] {
            let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let shared = LayerKv {
                k: c(&ok).narrow(2, 0, own).unwrap(),
                v: c(&ov).narrow(2, 0, own).unwrap(),
                prefix: Some((c(&pk), c(&pv), rows.clone())),
            };
            let got: Vec<f32> = super::decode_attention_kv(&q, &shared, &pads)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (fk, fv) = shared.full().unwrap();
            let copied = LayerKv {
                k: fk,
                v: fv,
                prefix: None,
            };
            let plain: Vec<f32> = super::decode_attention_kv(&q, &copied, &pads)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, plain, "{dtype:?}: shared prefix vs copied prefix");

            // the reference reads the values as the kernel sees them (rounded to `dtype`)
            let as_f32 = |t: &Tensor| -> Vec<f32> {
                c(t).to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let (pkv, pvv) = (as_f32(&pk), as_f32(&pv));
            let (okv, ovv) = (
                as_f32(&okn.contiguous().unwrap()),
                as_f32(&ovn.contiguous().unwrap()),
            );
            let keys = |b: usize, kvh: usize| {
                let mut cols = Vec::new();
                for j in 0..p_len {
                    let o = ((rows[b] * kv + kvh) * p_len + j) * d;
                    cols.push((pkv[o..o + d].to_vec(), pvv[o..o + d].to_vec()));
                }
                for j in 0..own {
                    let o = ((b * kv + kvh) * own + j) * d;
                    cols.push((okv[o..o + d].to_vec(), ovv[o..o + d].to_vec()));
                }
                cols
            };
            let qv: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
            let want = naive(&qv, keys, (b_n, h, kv, d), &pads);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()),
                    "{dtype:?} element {i}: {g} vs {w}"
                );
            }
        }
    }

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
