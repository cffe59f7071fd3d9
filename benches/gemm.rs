//! The decode step's matrix products (SmolLM2-135M's shapes: hidden 576, kv 192, MLP 1536,
//! vocabulary 49,152) through `gemm`, as east's decoder runs them: the whole batch of 128 rows
//! split across all threads, against half the batch on one thread (what each of two decode
//! shards does, `src/decode/mod.rs`). Also checks that both give the same bits.
//!
//! `cargo bench --bench gemm` prints GFLOP/s per shape; compare the columns within one run.

use std::time::Instant;

use gemm::{gemm, Parallelism};

/// `x · w`, `x` `(m, k)` and `w` `(k, n)` row-major, as `LinearLayer` multiplies by its
/// transposed, contiguous weight.
fn product(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, threads: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the slices hold m·k, k·n and m·n elements with the strides given.
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    y
}

/// Best GFLOP/s of three timed rounds of ~4 GFLOP each.
fn rate(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, threads: usize) -> f64 {
    let flop = 2.0 * (m * n * k) as f64;
    let reps = (4e9 / flop).max(3.0) as usize;
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(product(x, w, m, k, n, threads));
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::MAX, f64::min);
    flop / best / 1e9
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("{threads} threads; GFLOP/s (a shard's rate counts once per concurrent shard)");
    for (k, n) in [
        (576, 576),
        (576, 192),
        (576, 1536),
        (1536, 576),
        (576, 49152),
    ] {
        let mut s = 0x9e37_79b9_u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        };
        let x: Vec<f32> = (0..128 * k).map(|_| next()).collect();
        let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let whole = rate(&x, &w, 128, k, n, threads);
        let half = &x[..64 * k];
        let shard = rate(half, &w, 64, k, n, 1);
        let same =
            product(half, &w, 64, k, n, 1)[..] == product(&x, &w, 128, k, n, threads)[..64 * n];
        println!(
            "{k:>5} x {n:<6} 128 rows on {threads} threads {whole:6.1} | 64 rows on 1 thread {shard:6.1} | same bits: {same}"
        );
    }
}
