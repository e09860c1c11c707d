"""PyTorch's CPU flash kernel: GFLOP/s (one thread) by query rows per call, at a fixed key length.

    python experiments/cpu_flash_rows.py

It splits queries into 32-row pieces below 192 rows, 64-row pieces below 768 and 256-row pieces
from 768 on; our CPU path calls it with one 128-row layout block per row.
"""
import time

import torch

torch.set_num_threads(1)
op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
L = 11136  # keys of a radial row at Wan 480p (87 blocks of 128)
for D in (64, 128):
    for rows in (128, 256, 384, 512, 768, 1024):
        n = max(1, 1536 // rows)
        q, k, v = torch.randn(n, 1, rows, D), torch.randn(n, 1, L, D), torch.randn(n, 1, L, D)
        op(q, k, v, scale=0.1)
        best = 1e9
        for _ in range(3):
            t = time.perf_counter()
            op(q, k, v, scale=0.1)
            best = min(best, time.perf_counter() - t)
        print(f"D {D:4d} query rows {rows:5d}: {4 * n * rows * L * D / best / 1e9:6.1f} GFLOP/s")
