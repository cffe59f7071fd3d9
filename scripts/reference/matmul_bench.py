#!/usr/bin/env python3
"""PyTorch's CPU matmul (its BLAS: MKL/oneDNN in the PyPI wheel) on the shapes of
`cargo bench --bench gemm` (SmolLM2-135M's decode-step products, x (m, k) times a weight
(n, k) as nn.Linear holds it), to compare east's `gemm` with the BLAS a user's PyTorch ships.
Run right after the Rust bench; compare GFLOP/s per shape.

    cargo bench --bench gemm && python3 scripts/reference/matmul_bench.py
"""
import time

import torch

threads = torch.get_num_threads()
print(f"torch {torch.__version__}, {threads} threads; GFLOP/s")
for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]:
    row = []
    for m, t in [(128, threads), (64, 1)]:
        torch.set_num_threads(t)
        x = torch.rand(m, k) * 2 - 1
        w = torch.rand(n, k) * 2 - 1
        flop = 2 * m * n * k
        reps = max(3, int(4e9 / flop))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                torch.nn.functional.linear(x, w)
            best = min(best, (time.perf_counter() - start) / reps)
        row.append(flop / best / 1e9)
    torch.set_num_threads(threads)
    print(f"{k:>5} x {n:<6} 128 rows on {threads} threads {row[0]:6.1f} | 64 rows on 1 thread {row[1]:6.1f}")
