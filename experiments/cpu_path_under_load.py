"""The CPU paths quiet and under load from another process: the PyTorch path's previous version and
the current one, our C++ kernel, compiled FlexAttention and dense SDPA on the same layouts
(interleaved, best of N).

    python experiments/cpu_path_under_load.py            # quiet
    python experiments/cpu_path_under_load.py --load     # with a 2-thread matmul loop in another process
"""
import subprocess
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
from diffsparse.kernels.cpu_native import NativeCpuKernel  # noqa: E402
from diffsparse.kernels.flex import compiled_flex_attention, to_flex_block_mask  # noqa: E402

LOAD = "import torch,time\ntorch.set_num_threads(2)\na=torch.randn(1024,1024)\nwhile True: a@a\n"
load = subprocess.Popen([sys.executable, "-c", LOAD]) if "--load" in sys.argv else None
time.sleep(2 if load else 0)
flex = compiled_flex_attention()
native = NativeCpuKernel()
cases = {
    "radial wan480p": (32760, diffsparse.block_layout("radial", (21, 30, 52)).mask),
    "band+-3 sink6 S16384": (16384, band_layout(128)[0, 0]),
}
try:
    for name, (S, mask) in cases.items():
        q, k, v = (torch.randn(1, 2, S, 64) for _ in range(3))
        index = build_block_index(mask[None, None], 128)
        bm = to_flex_block_mask(index, 1, 2, S, S)
        fns = {"previous": lambda: old.torch_block_sparse_attention(q, k, v, index),
               "ours": lambda: new.torch_block_sparse_attention(q, k, v, index),
               "c++": lambda: native(q, k, v, index, 64 ** -0.5),
               "flex": lambda: flex(q, k, v, block_mask=bm),
               "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        t = {n: [] for n in fns}
        with torch.no_grad():
            for fn in fns.values():
                fn()
            for _ in range(3):
                for n, fn in fns.items():
                    s = time.perf_counter()
                    fn()
                    t[n].append(time.perf_counter() - s)
        print(f"{'loaded' if load else 'quiet':7s} {name:22s} " + "  ".join(
            f"{n} {min(x) * 1e3:.0f} ms" for n, x in t.items()), flush=True)
finally:
    if load:
        load.kill()
