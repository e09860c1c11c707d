"""Our C++ CPU kernel against the PyTorch path and compiled FlexAttention, on one layout per run,
and the cases behind `backend="auto"`'s rule (blocks of 64, fully dense, small calls).

    python experiments/cpu_native_probe.py radial wan            # radial at Wan 480p (21x30x52), D 64
    python experiments/cpu_native_probe.py sliding_window hunyuan --threads 1
    python experiments/cpu_native_probe.py --rule                # the auto rule's cases

Interleaved, best of `--repeats` after a warm-up; fp32, B 1, H 2.
"""

import argparse
import time

import torch

import diffsparse
from diffsparse.kernels import block_sparse_attention, build_block_index
from diffsparse.kernels.cpu_native import NativeCpuKernel
from diffsparse.kernels.flex import compiled_flex_attention, flex_block_sparse_attention

GRIDS = {"wan": (21, 30, 52), "hunyuan": (9, 45, 80)}


def timed(fns, repeats):
    with torch.inference_mode():
        for f in fns.values():
            f()
        best = {n: float("inf") for n in fns}
        for _ in range(repeats):
            for n, f in fns.items():
                t = time.perf_counter()
                f()
                best[n] = min(best[n], time.perf_counter() - t)
    return {n: round(t * 1000, 1) for n, t in best.items()}


def contenders(mask, S, D, bs, native, flex=None):
    index = build_block_index(mask, bs)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, S, D, generator=g) for _ in range(3))
    fns = {"pytorch path": lambda: block_sparse_attention(q, k, v, index, backend="torch"),
           "ours C++": lambda: native(q, k, v, index, D ** -0.5)}
    if flex is not None:
        fns["compiled flex"] = lambda: flex_block_sparse_attention(q, k, v, index, compiled_fn=flex)
    return index.density, fns


def main():
    p = argparse.ArgumentParser()
    p.add_argument("method", nargs="?", default="radial")
    p.add_argument("family", nargs="?", default="wan")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rule", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    native = NativeCpuKernel()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, B 1, H 2")
    if not args.rule:
        grid = GRIDS[args.family]
        lay = diffsparse.block_layout(args.method, grid, family=args.family, block_size=128).mask
        mask = (lay if lay.dim() == 3 else lay[None])[None]
        d, fns = contenders(mask, grid[0] * grid[1] * grid[2], args.head_dim, 128, native, compiled_flex_attention())
        print(f"{args.method} {args.family} {grid} D {args.head_dim} density {d:.3f}: {timed(fns, args.repeats)} ms")
        return
    lay = diffsparse.block_layout("radial", (25, 32, 32), family="wan", block_size=64).mask
    d, fns = contenders((lay if lay.dim() == 3 else lay[None])[None], 25 * 32 * 32, 64, 64, native)
    print(f"radial 25x32x32 blocks 64 density {d:.3f}: {timed(fns, args.repeats)} ms")
    n = 8192 // 128
    d, fns = contenders(torch.ones(1, 1, n, n, dtype=torch.bool), 8192, 64, 128, native)
    print(f"dense S 8192 blocks 128: {timed(fns, args.repeats)} ms")
    for S, bs, dens, D in ((256, 16, 0.5, 64), (1000, 64, 0.5, 64), (2048, 64, 0.5, 64), (4096, 32, 0.4, 64),
                           (4096, 64, 0.3, 64), (8192, 64, 0.3, 64), (16384, 64, 0.9, 64), (16384, 128, 0.95, 64),
                           (16384, 128, 0.5, 128)):
        n = -(-S // bs)
        mask = torch.rand(1, 2, n, n, generator=torch.Generator().manual_seed(S)) < dens
        mask[..., torch.arange(n), torch.arange(n)] = True
        d, fns = contenders(mask, S, D, bs, native)
        print(f"random S {S} blocks {bs} D {D} density {d:.2f}: {timed(fns, args.repeats)} ms")


if __name__ == "__main__":
    main()
