"""Where the CPU path's time goes on a method's real layout: fused-kernel calls, key gathers, the rest.

    python experiments/cpu_path_profile.py radial 21x30x52
"""
import sys
import time
from collections import defaultdict

import torch

import diffsparse
from diffsparse.kernels import build_block_index, block_sparse_attention
from diffsparse.kernels import torch_sparse as ts

method = sys.argv[1] if len(sys.argv) > 1 else "radial"
grid = tuple(int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "21x30x52").split("x"))
extra = dict(a.split("=") for a in sys.argv[3:])
opts = {k: eval(v) for k, v in extra.items()}
lay = diffsparse.block_layout(method, grid, **opts)
S = grid[0] * grid[1] * grid[2]
index = build_block_index(lay.mask[None, None], 128)
D = int(__import__("os").environ.get("HEAD_DIM", "64"))
q, k, v = (torch.randn(1, 2, S, D) for _ in range(3))
acc = defaultdict(float)
calls = defaultdict(int)


def wrap(name, fn):
    def inner(*a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        acc[name] += time.perf_counter() - t
        calls[name] += 1
        return out
    return inner


for name in ("_fused", "_keys", "_group_rows"):
    setattr(ts, name, wrap(name, getattr(ts, name)))
with torch.no_grad():
    block_sparse_attention(q, k, v, index)
    acc.clear(); calls.clear()
    t = time.perf_counter()
    block_sparse_attention(q, k, v, index)
    total = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(q, k, v)
    dense = time.perf_counter() - t
print(f"{method} {grid} density {lay.density:.3f}: ours {total*1e3:.0f} ms, dense {dense*1e3:.0f} ms, "
      f"ideal {lay.density*dense*1e3:.0f} ms")
for name in acc:
    print(f"  {name:10s} {calls[name]:6d} calls {acc[name]*1e3:8.1f} ms")
print(f"  other      {1e3*(total-sum(acc.values())):8.1f} ms")
R = ts.schedule(index, 1, 2, S, S, 2 * D)
sizes = [(g.stop - g.start, g.n_keys) for g in R.groups]
print(f"  chunks {len(sizes)}; rows per chunk min/median/max "
      f"{min(s[0] for s in sizes)}/{sorted(s[0] for s in sizes)[len(sizes)//2]}/{max(s[0] for s in sizes)}")
