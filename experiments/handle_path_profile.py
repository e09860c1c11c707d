"""Time the handle's sparse call split into plan gather (model -> method order), kernel, scatter back.

    python experiments/handle_path_profile.py [method] [heads] [head_dim]
"""
import sys
import time

import torch

import diffsparse
from diffsparse.geometry import Grid, TokenSpans
from diffsparse.kernels import block_sparse_attention
from diffsparse.preview import plan_for

method = sys.argv[1] if len(sys.argv) > 1 else "radial"
H = int(sys.argv[2]) if len(sys.argv) > 2 else 2
D = int(sys.argv[3]) if len(sys.argv) > 3 else 128
grid = Grid(21, 30, 52)
plan = plan_for(method, grid.dims)
S = grid.numel
q, k, v = (torch.randn(1, S, H, D) for _ in range(3))  # (B, S, H, D) as the processors hand them over
t = {"gather": [], "kernel": [], "scatter": [], "sdpa": []}
with torch.inference_mode():
    for _ in range(3):
        s = time.perf_counter()
        qh, kh, vh = plan.gather(q, k, v)
        t["gather"].append(time.perf_counter() - s)
        s = time.perf_counter()
        o = block_sparse_attention(qh, kh, vh, plan.index)
        t["kernel"].append(time.perf_counter() - s)
        s = time.perf_counter()
        plan.scatter(o)
        t["scatter"].append(time.perf_counter() - s)
        s = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        t["sdpa"].append(time.perf_counter() - s)
d = plan.index.density
print(f"{method} H{H} D{D} density {d:.3f}: " + ", ".join(f"{n} {min(x)*1e3:.0f} ms" for n, x in t.items())
      + f"; kernel at {min(t['sdpa']) * d / min(t['kernel']):.2f} of ideal")
