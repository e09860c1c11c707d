"""Attention-level benchmark: ours vs compiled FlexAttention (same block layout) vs dense SDPA.

Layouts are either the ones our methods produce at real model geometries (`--layout radial
sliding_window grat band`, on `--grids`, family presets, blocks of `--block-size`) or random block
masks at given densities (`--layout random`, the same number of kept key blocks in every row,
diagonal included). Every row is measured in this run: the three contenders are timed
*interleaved* (one call of each per round, `--repeats` rounds after `--warmup`), and each cell
reports the best of the rounds and the spread (max/min). Ratios come from the best times of the
same run. `ideal` is 1/density, the speed-up of a kernel whose cost is exactly proportional to the
computed blocks; `ours/ideal` is the fraction of it we reach. `ours` is what a handle runs with
`--backend` (default auto: on CPU, our C++ kernel where it pays, else the PyTorch path; `--backend
torch` times the PyTorch path alone). FlexAttention is compiled (eager
flex materialises the full score matrix) and has no CPU backward, so on CPU its forward+backward
cells read n/a.

    python eval/bench_attention.py --layout radial sliding_window band     # CPU, Wan 480p grid
    python eval/bench_attention.py --layout random --seqs 4096 16384       # random layouts
    python eval/bench_attention.py --device cuda --dtype bf16 --heads 12 --head-dims 128 \
        --layout radial sliding_window grat --grids 21x30x52 30x45x80 --backward
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import sys
import time
from contextlib import redirect_stdout
from typing import Callable, Dict, List, Optional, Tuple

import torch

import diffsparse
from diffsparse.kernels import block_sparse_attention, build_block_index
from diffsparse.kernels.cpu_native import NativeCpuKernel
from diffsparse.kernels.flex import compiled_flex_attention, to_flex_block_mask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
METHOD_LAYOUTS = ("radial", "sliding_window", "grat")
#: named latent grids (T, H, W): Wan 2.1 480p 81 frames; HunyuanVideo 720p at 33 frames (its
#: full 129 frames does not fit a 2-core machine's time budget)
GRIDS = {"wan480p": (21, 30, 52), "hunyuan720p33f": (9, 45, 80), "wan720p": (21, 45, 80), "hunyuan720p": (33, 45, 80)}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def random_layout(H: int, nq: int, nk: int, density: float, seed: int = 0) -> torch.Tensor:
    """Bool `(1, H, nq, nk)`: per row round(density * nk) kept key blocks (>= 1), diagonal included."""
    g = torch.Generator().manual_seed(seed)
    keep = max(1, round(density * nk))
    score = torch.rand(1, H, nq, nk, generator=g)
    score[..., torch.arange(nq), torch.arange(nq) * nk // nq] = 2.0
    top = score.topk(keep, dim=-1).indices
    return torch.zeros(1, H, nq, nk, dtype=torch.bool).scatter_(-1, top, True)


def band_layout(n: int, half: int = 3, sinks: int = 6) -> torch.Tensor:
    """Bool `(1, 1, n, n)`: a band of +-`half` blocks and `sinks` leading key blocks (attention-sink shape)."""
    i = torch.arange(n)
    keep = ((i[:, None] - i[None, :]).abs() <= half) | (i[None, :] < sinks)
    return keep[None, None]


def parse_grid(text: str) -> Tuple[int, int, int]:
    if text in GRIDS:
        return GRIDS[text]
    try:
        t, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --grids takes TxHxW latent grids or one of {sorted(GRIDS)}, got {text!r}")
    return t, h, w


def parse_layout(text: str) -> Tuple[str, dict]:
    """`radial` or `radial:band='paper':block_select='any'` -> (name, options)."""
    import ast

    name, *pairs = text.split(":")
    opts = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            opts[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            opts[key] = raw
    return name, opts


def cases(args) -> List[Tuple[str, int, torch.Tensor]]:
    """(label, sequence length, bool block mask (1, Hm, nq, nk)) for every requested layout."""
    out = []
    for text in args.layout:
        name, opts = parse_layout(text)
        if name in METHOD_LAYOUTS:
            for g in args.grids:
                grid = parse_grid(g)
                family = "hunyuan" if g.startswith("hunyuan") else "wan"
                lay = diffsparse.block_layout(name, grid, family=family, block_size=args.block_size, **opts)
                mask = lay.mask if lay.mask.dim() == 3 else lay.mask[None]
                label = " ".join([name] + [f"{k}={v}" for k, v in opts.items()] + [family, "x".join(map(str, grid))])
                out.append((label, math.prod(grid), mask[None]))
        elif name == "band":
            for S in args.seqs:
                n = math.ceil(S / args.block_size)
                out.append((f"band+-3 sink6 S{S}", S, band_layout(n)))
        elif name == "random":
            for S in args.seqs:
                n = math.ceil(S / args.block_size)
                for d in args.densities:
                    out.append((f"random d{d:g} S{S}", S, random_layout(args.heads, n, n, d)))
        else:
            raise SystemExit(f"error: unknown layout {name!r}; choose from {list(METHOD_LAYOUTS) + ['band', 'random']}")
    return out


def interleaved(fns: Dict[str, Callable[[], object]], device: str, warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds per call of each function, timed round-robin so load changes hit all of them alike."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def sdpa(q, k, v):
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _pass(fn, q, k, v, p: str) -> Callable[[], object]:
    if p == "fwd":
        def call():
            with torch.no_grad():
                return fn(q, k, v)
        return call
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    do = torch.randn_like(q)

    def step():
        out = fn(qg, kg, vg)
        out.backward(do)
        qg.grad = kg.grad = vg.grad = None

    return step


def run(args) -> List[dict]:
    dev, dtype = args.device, DTYPES[args.dtype]
    flex = compiled_flex_attention() if not args.no_flex else None
    native = NativeCpuKernel() if args.backend == "auto" else None  # held, as a handle holds it
    torch._dynamo.config.recompile_limit = 256  # one graph per (shape, layout, pass)
    print(f"device: {device_name(dev)} | dtype {args.dtype} | B {args.batch} H {args.heads} | block {args.block_size} "
          f"| torch {torch.__version__} | interleaved, best of {args.repeats} after {args.warmup} warm-up "
          f"(spread = max/min)")
    head = (f"{'layout':<50} {'S':>6} {'D':>4} {'dens':>6} {'pass':>7} | {'sdpa ms':>9} {'ours ms':>9} {'flex ms':>9} | "
            f"{'ideal':>6} {'ours x':>7} {'flex x':>7} {'ours/ideal':>10} {'flex/ours':>9} | spread s/o/f")
    print(head)
    print("-" * len(head))
    rows = []
    for label, S, mask in cases(args):
        for D in args.head_dims:
            g = torch.Generator(device="cpu").manual_seed(S + D)
            shape = (args.batch, args.heads, S, D)
            q, k, v = (torch.randn(shape, generator=g).to(dev, dtype) for _ in range(3))
            index = build_block_index(mask.to(dev), args.block_size)
            density = float(mask.float().mean())
            bm = to_flex_block_mask(index, args.batch, args.heads, S, S) if flex is not None else None
            for p in ("fwd", "fwd+bwd") if args.backward else ("fwd",):
                fns = {"sdpa": _pass(sdpa, q, k, v, p),
                       "ours": _pass(lambda q, k, v: block_sparse_attention(q, k, v, index, backend=args.backend,
                                                                             native_fn=native), q, k, v, p)}
                if bm is not None and not (p == "fwd+bwd" and not q.is_cuda):
                    fns["flex"] = _pass(lambda q, k, v: flex(q, k, v, block_mask=bm), q, k, v, p)
                times = interleaved(fns, dev, args.warmup, args.repeats)
                best = {k: min(v) for k, v in times.items()}
                spread = {k: max(v) / min(v) for k, v in times.items()}
                t_flex = best.get("flex")
                row = dict(layout=label, S=S, D=D, density=round(density, 4), pass_=p, sdpa_ms=best["sdpa"] * 1e3,
                           ours_ms=best["ours"] * 1e3, flex_ms=None if t_flex is None else t_flex * 1e3,
                           ideal=1 / density, ours_speedup=best["sdpa"] / best["ours"],
                           flex_speedup=None if t_flex is None else best["sdpa"] / t_flex, spread=spread)
                row["ours_of_ideal"] = row["ours_speedup"] / row["ideal"]
                rows.append(row)
                fx = lambda x, w=9: f"{x:{w}.2f}" if x is not None else f"{'n/a':>{w}}"  # noqa: E731
                sp = "/".join(f"{spread[k]:.2f}" if k in spread else "-" for k in ("sdpa", "ours", "flex"))
                print(f"{label:<50} {S:>6} {D:>4} {density:>6.3f} {p:>7} | {fx(row['sdpa_ms'])} {fx(row['ours_ms'])} "
                      f"{fx(row['flex_ms'])} | {row['ideal']:>6.2f} {row['ours_speedup']:>7.2f} {fx(row['flex_speedup'], 7)} "
                      f"{row['ours_of_ideal']:>10.2f} {fx(None if t_flex is None else t_flex / best['ours'])} | {sp}",
                      flush=True)
    return rows


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--layout", nargs="+", default=["radial", "sliding_window", "grat", "band"],
                   help="radial | sliding_window | grat (method presets on --grids; options as "
                        "radial:band=paper:block_select=any) | band | random (on --seqs)")
    p.add_argument("--grids", nargs="+", default=["wan480p"],
                   help=f"latent grids TxHxW for method layouts, or names {sorted(GRIDS)} (hunyuan* use Hunyuan presets)")
    p.add_argument("--seqs", type=int, nargs="+", default=None, help="band/random lengths; default 16384 (CPU), 32768 75600 (CUDA)")
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1], help="random layouts")
    p.add_argument("--head-dims", type=int, nargs="+", default=None, help="default 128 (CUDA), 64 (CPU)")
    p.add_argument("--heads", type=int, default=None, help="default 12 (CUDA), 2 (CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--backend", default="auto", help="our backend (auto, torch, triton, ...)")
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=None, help="also write the command, device and table to this file")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bf16" if gpu else "fp32")
    a.seqs = a.seqs or ([32768, 75600] if gpu else [16384])
    a.head_dims = a.head_dims or ([128] if gpu else [64])
    a.heads = a.heads or (12 if gpu else 2)
    return a


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    buf = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, s):
            sys.__stdout__.write(s)
            buf.write(s)
            return len(s)

        def flush(self):
            sys.__stdout__.flush()

    cmd = "python eval/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with redirect_stdout(Tee()):
        print(f"$ {cmd.strip()}")
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        run(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
