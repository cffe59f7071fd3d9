//! Decode-step products `x · W` against weights packed once, with the same bits as candle's
//! matmul.
//!
//! candle multiplies by a frozen weight through `gemm`, which for every call copies the weight
//! `(k, n)` into 64-column panels (its "packed lhs": the weight is the left operand of the
//! transposed product) before its AVX-512 micro-kernel runs over them. In a decode step that is
//! a pass over every weight of the model per step and per shard, read from memory, not cache.
//! Here the weight is packed once in that layout, and a micro-kernel with gemm's arithmetic
//! (each output one chain of fused multiply-adds over gemm's k-block, the blocks' sums added
//! in order) runs over it, fetching the next panel while it multiplies this one. The values are
//! candle's bit for bit, so the samples do not change (the tests below compare bits with
//! candle's matmul; tests/decode_regression.rs compares recorded samples).
//!
//! Used only where gemm itself runs those kernels and k-blocks: x86-64 with AVX-512F (gemm's
//! "V4" level), f32, at least two rows (gemm multiplies a single row as a matrix-vector
//! product), k ≥ 3, and a multiple of 64 output columns above 64 (narrower products take
//! gemm's small-matrix path, with other k-blocks).

use candle_core::{Result, Tensor};

/// Output columns per panel: gemm's `MR` for f32 AVX-512 (4 vectors of 16).
const MR: usize = 64;
/// Rows per micro-kernel call: gemm's `NR` for f32 AVX-512.
const NR: usize = 6;

/// A `(k, n)` row-major f32 weight in gemm's packed-lhs layout: per k-block (gemm's `kc`
/// split of `k`), per panel of 64 columns, `kc` runs of 64 values.
pub struct PackedWeight {
    k: usize,
    n: usize,
    /// The k-blocks, `(start, len)`, as gemm splits `k` for this machine's L1 cache.
    blocks: Vec<(usize, usize)>,
    data: Vec<f32>,
}

/// Whether gemm runs its AVX-512 f32 kernels here (the level it calls V4).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedWeight {
    /// Packs `w_t` `(k, n)` (f32, contiguous); None where the packed product would not match
    /// gemm's bits (see the module docs) or the CPU lacks AVX-512F.
    pub fn new(w_t: &Tensor) -> Result<Option<Self>> {
        let (k, n) = w_t.dims2()?;
        if !available() || w_t.dtype() != candle_core::DType::F32 || n % MR != 0 || n <= MR || k < 3
        {
            return Ok(None);
        }
        // Read in place (a frozen weight_t is contiguous): a copy first would be a second pass
        // over the weight on the decoder's first step.
        let w_t = w_t.contiguous()?;
        let (storage, layout) = w_t.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*storage else {
            return Ok(None);
        };
        let w = &w[layout.start_offset()..][..k * n];
        // gemm's k-block for this product; it depends on k and the L1 cache only, not on the
        // number of rows (checked in the tests against candle's matmul for several).
        let kc = gemm_common::cache::kernel_params(n, NR, k, MR, NR, 4)
            .kc
            .max(1);
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < k {
            let len = kc.min(k - start);
            blocks.push((start, len));
            start += len;
        }
        let mut data = Vec::with_capacity(k * n);
        for &(k0, kb) in &blocks {
            for p in 0..n / MR {
                for kk in k0..k0 + kb {
                    data.extend_from_slice(&w[kk * n + p * MR..][..MR]);
                }
            }
        }
        Ok(Some(Self { k, n, blocks, data }))
    }

    /// `x · W` for `x` `(rows, k)` (f32, contiguous), `rows >= 2`, as candle's matmul computes
    /// it. `parallel`: split the panels over rayon's threads (else run on this thread).
    pub fn matmul(&self, x: &[f32], rows: usize, parallel: bool) -> Vec<f32> {
        assert!(
            rows >= 2 && x.len() == rows * self.k,
            "packed matmul: x is not (rows, k)"
        );
        let n = self.n;
        let mut y: Vec<f32> = Vec::with_capacity(rows * n);
        let tiles = rows.div_ceil(NR);
        let mut xp = vec![0f32; tiles * NR * self.k];
        let y_ptr = SendPtr(y.as_mut_ptr());
        for (bi, &(k0, kb)) in self.blocks.iter().enumerate() {
            // x's k-block as gemm packs its right operand: per tile of 6 rows, kb runs of 6.
            let xb = &mut xp[..tiles * NR * kb];
            for (t, tile) in xb.chunks_exact_mut(NR * kb).enumerate() {
                for kk in 0..kb {
                    for r in 0..NR.min(rows - t * NR) {
                        tile[kk * NR + r] = x[(t * NR + r) * self.k + k0 + kk];
                    }
                }
            }
            let block = &self.data[k0 * n..][..kb * n];
            let first = bi == 0;
            let panels = n / MR;
            let run = |p0: usize, p1: usize| {
                for p in p0..p1 {
                    let panel = &block[p * kb * MR..][..kb * MR];
                    // The next panel is fetched from memory while this one is multiplied,
                    // a share per tile (see `kernel`): the weights are read once per step,
                    // and the hardware prefetcher stops at every 4 KiB page.
                    let next = block.get((p + 1) * kb * MR..(p + 2) * kb * MR);
                    let next = if p + 1 < p1 { next } else { None };
                    for t in 0..tiles {
                        // SAFETY: the panel holds kb·64 values, the tile kb·6; dst is row
                        // t·6, column p·64 of y (rows × n), where the kernel writes 64 columns
                        // of min(6, rows − 6t) rows (row stride n); tasks own disjoint panels.
                        unsafe {
                            micro(
                                NR.min(rows - t * NR),
                                Call {
                                    kb,
                                    dst: y_ptr.at(t * NR * n + p * MR),
                                    ldd: n,
                                    panel: panel.as_ptr(),
                                    x: xb[t * NR * kb..].as_ptr(),
                                    first,
                                    next: next.map_or(Prefetch::NONE, |next| {
                                        Prefetch::share(next, t, tiles, kb)
                                    }),
                                },
                            )
                        }
                    }
                }
            };
            if parallel && rayon::current_num_threads() > 1 {
                use rayon::prelude::*;
                let parts = rayon::current_num_threads().min(panels);
                (0..parts)
                    .into_par_iter()
                    .for_each(|i| run(i * panels / parts, (i + 1) * panels / parts));
            } else {
                run(0, panels);
            }
        }
        // SAFETY: the first block wrote every element (each panel × tile once).
        unsafe { y.set_len(rows * n) };
        y
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({} x {}, k-blocks {:?})",
            self.k, self.n, self.blocks
        )
    }
}

/// `x · W` through a packed weight, as a graph-less op (inference only).
pub(crate) struct PackedMatmul<'a>(pub &'a PackedWeight);

impl candle_core::CustomOp1 for PackedMatmul<'_> {
    fn name(&self) -> &'static str {
        "east-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, k) = l.shape().dims2()?;
        let (candle_core::CpuStorage::F32(x), true) = (s, l.is_contiguous()) else {
            candle_core::bail!("packed matmul: x must be contiguous f32")
        };
        if k != self.0.k || rows < 2 {
            candle_core::bail!(
                "packed matmul: x {:?} for a ({}, {}) weight",
                l.shape(),
                self.0.k,
                self.0.n
            )
        }
        let x = &x[l.start_offset()..][..rows * k];
        let y = self.0.matmul(x, rows, !candle_core::utils::serial_ops());
        Ok((candle_core::CpuStorage::F32(y), (rows, self.0.n).into()))
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the threads of `matmul` write disjoint panels.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` on (a method, so closures capture the whole `Sync` wrapper).
    /// # Safety
    /// In bounds of the allocation.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// The lines of the next panel one tile's kernel call asks for: one every `every` k steps.
#[derive(Clone, Copy)]
struct Prefetch {
    start: *const f32,
    lines: usize,
    every: usize,
}

impl Prefetch {
    const NONE: Prefetch = Prefetch {
        start: std::ptr::null(),
        lines: 0,
        every: usize::MAX,
    };

    /// Tile `t` of `tiles` takes the `t`-th share of `next`'s 64-byte lines, spread over the
    /// `kb` steps of its k loop; with fewer than 4 tiles the share is more than one line per
    /// step, and only tile 0 asks, for the first lines.
    fn share(next: &[f32], t: usize, tiles: usize, kb: usize) -> Self {
        let total = next.len() / 16;
        let per = total.div_ceil(tiles).min(kb);
        let first = t * per;
        if first >= total || per == 0 {
            return Self::NONE;
        }
        Self {
            start: next[first * 16..].as_ptr(),
            lines: per.min(total - first),
            every: kb / per,
        }
    }
}

/// One micro-kernel call: `dst` (rows of 64 columns, row stride `ldd`) = (first k-block) or
/// += (later ones) the tile `x` (kb runs of 6 row values) times the panel (kb runs of 64
/// column values), asking for `next`'s lines as it goes.
#[derive(Clone, Copy)]
struct Call {
    kb: usize,
    dst: *mut f32,
    ldd: usize,
    panel: *const f32,
    x: *const f32,
    first: bool,
    next: Prefetch,
}

/// Runs `call` for `nr` (1 to 6) rows.
///
/// The arithmetic of gemm's f32 AVX-512 micro-kernel (`gemm_f32::microkernel::avx512f`,
/// alpha 0 then 1, beta 1): each element is one chain of fused multiply-adds over the
/// block's k, from zero, in order; the block's sum is stored, or added to what is there
/// (gemm's `fma(1, acc, dst)` rounds as an add).
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); the pointers cover what is read and written.
#[cfg(target_arch = "x86_64")]
unsafe fn micro(nr: usize, call: Call) {
    match nr {
        1 => kernel::<1>(call),
        2 => kernel::<2>(call),
        3 => kernel::<3>(call),
        4 => kernel::<4>(call),
        5 => kernel::<5>(call),
        _ => kernel::<6>(call),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(c: Call) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let (mut line, mut countdown) = (0, c.next.every);
    for kk in 0..c.kb {
        let w = c.panel.add(kk * MR);
        let w0 = _mm512_loadu_ps(w);
        let w1 = _mm512_loadu_ps(w.add(16));
        let w2 = _mm512_loadu_ps(w.add(32));
        let w3 = _mm512_loadu_ps(w.add(48));
        let xk = c.x.add(kk * NR);
        for (r, acc) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*xk.add(r));
            acc[0] = _mm512_fmadd_ps(w0, b, acc[0]);
            acc[1] = _mm512_fmadd_ps(w1, b, acc[1]);
            acc[2] = _mm512_fmadd_ps(w2, b, acc[2]);
            acc[3] = _mm512_fmadd_ps(w3, b, acc[3]);
        }
        countdown -= 1;
        if countdown == 0 {
            countdown = c.next.every;
            if line < c.next.lines {
                _mm_prefetch::<_MM_HINT_T1>(c.next.start.add(line * 16) as *const i8);
                line += 1;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let d = c.dst.add(r * c.ldd);
        for (i, &a) in acc.iter().enumerate() {
            let d = d.add(i * 16);
            let v = if c.first {
                a
            } else {
                _mm512_add_ps(_mm512_loadu_ps(d), a)
            };
            _mm512_storeu_ps(d, v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro(_nr: usize, _call: Call) {
    unreachable!("packed weights are built only on x86-64 with AVX-512F")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Same bits as candle's matmul by the same `(k, n)` weight, for the decode shapes of
    /// SmolLM2 (k = 576 and 1536: one and three k-blocks here) and row counts around gemm's
    /// 6-row tiles, on one thread and split over threads.
    #[test]
    fn packed_products_have_candles_bits() {
        if !available() {
            eprintln!("no AVX-512F: packed weights are not used here");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (k, n) in [(576, 192), (576, 1536), (1536, 576), (100, 128), (700, 320)] {
            let w: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w_t = Tensor::from_vec(w, (k, n), &Device::Cpu).unwrap();
            let packed = PackedWeight::new(&w_t).unwrap().expect("packable shape");
            for rows in [2, 5, 6, 7, 13, 44, 64] {
                let x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
                let want: Vec<f32> = xt
                    .matmul(&w_t)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for parallel in [false, true] {
                    let got = packed.matmul(&x, rows, parallel);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "k {k} n {n} rows {rows} parallel {parallel}");
                }
            }
        }
    }

    #[test]
    fn shapes_gemm_multiplies_otherwise_are_not_packed() {
        let w = |k, n| Tensor::zeros((k, n), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(PackedWeight::new(&w(64, 64)).unwrap().is_none());
        assert!(PackedWeight::new(&w(64, 100)).unwrap().is_none());
        let half = w(64, 128).to_dtype(candle_core::DType::F16).unwrap();
        assert!(PackedWeight::new(&half).unwrap().is_none());
    }
}
