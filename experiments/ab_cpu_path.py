"""A/B: two versions of the CPU path on the methods' real layouts, interleaved, best of N.

    python experiments/ab_cpu_path.py [repeats]
"""
import sys
import time

import torch

sys.path.insert(0, "eval")
sys.path.insert(0, "experiments")
import _old_torch_sparse as old  # noqa: E402
from diffsparse.bench.attention import band_layout  # noqa: E402

import diffsparse  # noqa: E402
from diffsparse.kernels import build_block_index  # noqa: E402
from diffsparse.kernels import torch_sparse as new  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
cases = {
    "radial": (32760, diffsparse.block_layout("radial", (21, 30, 52)).mask),
    "radial-paper": (32760, diffsparse.block_layout("radial", (21, 30, 52), band="paper", block_select="any").mask),
    "sw-668": (32760, diffsparse.block_layout("sliding_window", (21, 30, 52)).mask),
    "sw-288": (32760, diffsparse.block_layout("sliding_window", (21, 30, 52), tile=(2, 8, 8)).mask),
    "band": (16384, band_layout(128)[0, 0]),
}
for name, (S, mask) in cases.items():
    q, k, v = (torch.randn(1, 2, S, 64) for _ in range(3))
    index = build_block_index(mask[None, None], 128)
    fns = {"old": lambda: old.torch_block_sparse_attention(q, k, v, index),
           "new": lambda: new.torch_block_sparse_attention(q, k, v, index),
           "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
    with torch.no_grad():
        a, b = fns["old"](), fns["new"]()
        assert (a - b).abs().max() < 1e-4
        t = {n: [] for n in fns}
        for _ in range(reps):
            for n, fn in fns.items():
                s = time.perf_counter()
                fn()
                t[n].append(time.perf_counter() - s)
    d = float(mask.float().mean())
    best = {n: min(x) for n, x in t.items()}
    print(f"{name:13s} d {d:.3f} sdpa {best['sdpa']*1e3:6.0f}  old {best['old']*1e3:6.0f} ({best['sdpa']/best['old']/(1/d):.2f} of ideal)"
          f"  new {best['new']*1e3:6.0f} ({best['sdpa']/best['new']/(1/d):.2f})  spread old {max(t['old'])/best['old']:.2f} new {max(t['new'])/best['new']:.2f}", flush=True)
