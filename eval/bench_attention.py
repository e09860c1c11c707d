"""Attention-level benchmark: ours vs compiled FlexAttention (same block layout) vs dense SDPA.

Every row of the table is measured in this run, on this device: time per call (median of
`--repeats` after `--warmup`), TFLOP/s counting only the computed blocks (4 * kept pairs * D for a
forward, 2.5x that for a backward), and the ratios dense/ours and flex/ours. FlexAttention is
compiled (eager flex materialises the full score matrix); it has no CPU backward, so on CPU its
forward+backward cells read n/a. Layouts are random
block masks with the same number of kept key blocks in every query-block row (the diagonal always
kept), so the work is what the density says.

    python eval/bench_attention.py                                  # CPU: fp32, S 4k and 16k
    python eval/bench_attention.py --device cuda --dtype bf16 \
        --seqs 8192 32768 75600 --head-dims 64 128 --backward       # the GPU table of issue 8
    python eval/bench_attention.py --out eval/results/bench_attention_cpu.txt
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import statistics
import sys
import time
from contextlib import redirect_stdout
from typing import Callable, List, Optional

import torch

from diffsparse.kernels import block_sparse_attention, build_block_index
from diffsparse.kernels.flex import compiled_flex_attention, to_flex_block_mask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def layout(B: int, H: int, nq: int, nk: int, density: float, device: str, seed: int = 0) -> torch.Tensor:
    """Bool `(1, H, nq, nk)`: per row round(density * nk) kept key blocks (>= 1), diagonal included."""
    g = torch.Generator().manual_seed(seed)
    keep = max(1, round(density * nk))
    score = torch.rand(1, H, nq, nk, generator=g)
    diag = torch.arange(nq) * nk // nq
    score[..., torch.arange(nq), diag] = 2.0
    top = score.topk(keep, dim=-1).indices
    return torch.zeros(1, H, nq, nk, dtype=torch.bool).scatter_(-1, top, True).to(device)


def timeit(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sdpa(q, k, v):
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def run(args) -> List[dict]:
    dev, dtype = args.device, DTYPES[args.dtype]
    rows = []
    flex = compiled_flex_attention() if not args.no_flex else None
    # One compiled graph per (shape, layout, grad mode): allow them all instead of falling back to eager.
    torch._dynamo.config.recompile_limit = 256
    print(f"device: {device_name(dev)} | dtype {args.dtype} | B {args.batch} H {args.heads} | block {args.block_size} "
          f"| torch {torch.__version__} | median of {args.repeats} after {args.warmup} warm-up")
    head = f"{'S':>6} {'D':>4} {'dens':>5} {'pass':>4} | {'ours ms':>9} {'TF/s':>6} | {'flex ms':>9} {'TF/s':>6} | " \
           f"{'sdpa ms':>9} {'TF/s':>6} | {'sdpa/ours':>9} {'flex/ours':>9} {'ours/(d*ours@1)':>15}"
    print(head)
    print("-" * len(head))
    for S in args.seqs:
        for D in args.head_dims:
            g = torch.Generator(device="cpu").manual_seed(S + D)
            shape = (args.batch, args.heads, S, D)
            q, k, v = (torch.randn(shape, generator=g).to(dev, dtype) for _ in range(3))
            n = math.ceil(S / args.block_size)
            dense_ours = {}
            t_sdpa = {}
            for p in ("fwd", "fwd+bwd") if args.backward else ("fwd",):
                t_sdpa[p] = _time_pass(lambda q, k, v: sdpa(q, k, v), q, k, v, p, args)
            for d in args.densities:
                mask = layout(args.batch, args.heads, n, n, d, dev)
                index = build_block_index(mask, args.block_size)
                kept = int(mask.sum()) * args.batch
                pairs = kept * args.block_size * args.block_size
                bm = to_flex_block_mask(index, args.batch, args.heads, S, S) if flex is not None else None
                for p in ("fwd", "fwd+bwd") if args.backward else ("fwd",):
                    flops = 4 * pairs * D * (3.5 if p == "fwd+bwd" else 1.0)
                    dense_flops = 4 * args.batch * args.heads * S * S * D * (3.5 if p == "fwd+bwd" else 1.0)
                    t_ours = _time_pass(lambda q, k, v: block_sparse_attention(q, k, v, index), q, k, v, p, args)
                    t_flex = None
                    if bm is not None and p == "fwd+bwd" and not q.is_cuda:
                        pass  # FlexAttention has no CPU backward (NotImplementedError in torch 2.13)
                    elif bm is not None:
                        try:
                            t_flex = _time_pass(lambda q, k, v: flex(q, k, v, block_mask=bm), q, k, v, p, args)
                        except Exception as e:  # report, do not hide: flex may not support this pass here
                            print(f"  flex n/a at S={S} D={D} d={d} {p}: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
                    if d == 1.0:
                        dense_ours[p] = t_ours
                    rel = t_ours / (d * dense_ours[p]) if p in dense_ours else float("nan")
                    row = dict(S=S, D=D, density=round(kept / (args.batch * args.heads * n * n), 4), pass_=p,
                               ours_ms=t_ours * 1e3, flex_ms=None if t_flex is None else t_flex * 1e3,
                               sdpa_ms=t_sdpa[p] * 1e3, ours_tflops=flops / t_ours / 1e12,
                               flex_tflops=None if t_flex is None else flops / t_flex / 1e12,
                               sdpa_tflops=dense_flops / t_sdpa[p] / 1e12)
                    rows.append(row)
                    fx = lambda x: f"{x:9.2f}" if x is not None else f"{'n/a':>9}"  # noqa: E731
                    ft = lambda x: f"{x:6.2f}" if x is not None else f"{'n/a':>6}"  # noqa: E731
                    print(f"{S:>6} {D:>4} {row['density']:>5.2f} {p:>4} | {fx(row['ours_ms'])} {ft(row['ours_tflops'])} | "
                          f"{fx(row['flex_ms'])} {ft(row['flex_tflops'])} | {fx(row['sdpa_ms'])} {ft(row['sdpa_tflops'])} | "
                          f"{t_sdpa[p] / t_ours:9.2f} {(t_flex / t_ours if t_flex else float('nan')):9.2f} {rel:15.2f}",
                          flush=True)
    return rows


def _time_pass(fn, q, k, v, p: str, args) -> float:
    if p == "fwd":
        with torch.no_grad():
            return timeit(lambda: fn(q, k, v), args.device, args.warmup, args.repeats)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    do = torch.randn_like(q)

    def step():
        out = fn(qg, kg, vg)
        out.backward(do)
        qg.grad = kg.grad = vg.grad = None

    return timeit(step, args.device, args.warmup, args.repeats)


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--seqs", type=int, nargs="+", default=None, help="default 8192 32768 75600 (CUDA), 4096 16384 (CPU)")
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    p.add_argument("--head-dims", type=int, nargs="+", default=None, help="default 64 128 (CUDA), 64 (CPU)")
    p.add_argument("--heads", type=int, default=None, help="default 16 (CUDA), 2 (CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=None, help="also write the command, device and table to this file")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bf16" if gpu else "fp32")
    a.seqs = a.seqs or ([8192, 32768, 75600] if gpu else [4096, 16384])
    a.head_dims = a.head_dims or ([64, 128] if gpu else [64])
    a.heads = a.heads or (16 if gpu else 2)
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
        run(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
