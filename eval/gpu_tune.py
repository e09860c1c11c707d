"""Launch-configuration sweep of our Triton kernels on a GPU: which tiles / warps / stages are fastest
on the layouts the methods produce, so the dispatcher (`kernel_config`) can be set from measurements.

For each layout (Wan 480p x 81 frames radial, and every block kept) and each kernel (forward, backward
dQ, backward dK/dV) it launches the kernel with each candidate configuration on the same inputs,
checks the result against the dispatcher's own configuration (rel error <= 1e-2, no NaN: a config
that computes something else is reported, never chosen) and times it with `triton.testing.do_bench`
(median of CUDA-event timings). The dispatcher's choice is marked `*`; `eff` is the achieved rate
in TFLOP/s of the computed blocks (4*D per query-key pair forward, 2.5x that for dQ + dK/dV).

    python eval/gpu_tune.py                                   # on a GPU (about a minute on an H200)
    TRITON_INTERPRET=1 python eval/gpu_tune.py --dry-run      # tiny shapes, CPU interpreter
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_kernel_check import ROOT, _radial, device_line, import_kernels  # noqa: E402

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates per kernel, for 16-bit inputs at D 128.
FWD = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 4, 3)]
# The backward also tries the Triton fused-attention tutorial's Hopper shapes: narrow query tiles against wide
# key tiles for dK/dV (32x128) and the transpose for dQ (128x32), 4 warps, deeper pipelines (not yet measured).
BWD = [(64, 64, 4, 2), (128, 128, 8, 2), (128, 128, 8, 3), (64, 128, 4, 2), (128, 64, 4, 2), (128, 128, 4, 2),
       (32, 128, 4, 3), (32, 128, 4, 5), (128, 32, 4, 3), (128, 32, 4, 5)]


def _time(fn: Callable[[], object], dry: bool) -> float:
    if dry:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _override(cfg: dict, bm: int, bn: int, warps: int, stages: int, dry: bool) -> dict:
    c = dict(cfg, BLOCK_M=bm, BLOCK_N=bn, TILES_M=-(-cfg["BQ"] // bm), TILES_N=-(-cfg["BK"] // bn))
    if not dry:
        c.update(num_warps=warps, num_stages=stages)
    return c


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    if not bool(torch.isfinite(x).all()):
        return float("nan")
    return float((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def sweep(name: str, mask: torch.Tensor, B: int, H: int, S: int, D: int, block: int, device: str, dry: bool) -> List[dict]:
    from diffsparse.kernels import build_block_index
    from diffsparse.kernels.index import num_blocks
    from diffsparse.kernels.triton_attention import _arch_major, backward_launches, forward_launch

    g = torch.Generator(device="cpu").manual_seed(S)
    q, k, v, do = (torch.randn(B, H, S, D, generator=g).to(device, torch.bfloat16) for _ in range(4))
    index = build_block_index(mask, block).to(device)
    t_index = index.transposed()
    scale = 1.0 / math.sqrt(D)
    arch = _arch_major(q.device)
    pairs = float(index.mask.expand(B, H, -1, -1).sum()) * block * block  # computed query-key pairs (upper bound)
    rows: List[dict] = []

    def trial(kernel_name, kern, cfg, cands, tiles_key, n_blocks, args, outs, refs, flops_per_pair):
        """Launch `kern` with each candidate launch, check it against `refs`, time it; one row each."""
        for bm, bn, w, st in cands:
            c = _override(cfg, bm, bn, w, st, dry)
            default = (bm, bn, w, st) == (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg.get("num_warps"), cfg.get("num_stages"))
            grid = (n_blocks * c[tiles_key], B * H)
            row = dict(layout=name, kernel=kernel_name, cfg=(bm, bn, w, st), default=default)
            try:
                for t in outs:
                    t.fill_(float("nan"))
                kern[grid](*args, **c)
                err = max(_rel(x, r) for x, r in zip(outs, refs))
                ms = _time(lambda: kern[grid](*args, **c), dry)
                rows.append(dict(row, ms=ms, err=err, tflops=flops_per_pair * pairs / ms / 1e9))
            except Exception as e:  # out of resources etc.: reported, never chosen
                rows.append(dict(row, ms=None, err=None, note=f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"))

    nq = nk = num_blocks(S, block)  # square: queries and keys are the same tokens
    # forward
    out = torch.empty(B, H, S, D, dtype=q.dtype, device=device)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=device)
    kern, grid, args, cfg = forward_launch(q, k, v, out, lse, index.counts, index.indices, block, block, scale, None, arch)
    kern[grid](*args, **cfg)
    ref_out, ref_lse = out.clone(), lse.clone()
    trial("fwd", kern, cfg, FWD, "TILES_M", nq, args, (out, lse), (ref_out, ref_lse), 4 * D)

    # backward: dQ and dK/dV timed separately (each its own launch); matmuls per pair: dQ 2 (dP, dQ),
    # dK/dV 3 (S, dV, dK) + recompute
    delta = (do.float() * ref_out.float()).sum(-1).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launches = backward_launches(q, k, v, do, ref_lse, delta, dq, dk, dv, index.counts, index.indices,
                                 t_index.counts, t_index.indices, block, block, scale, arch)
    for kern_, grid_, args_, cfg_ in launches:
        kern_[grid_](*args_, **cfg_)
    (kq, _, aq, cq), (kkv, _, akv, ckv) = launches
    trial("bwd_dq", kq, cq, BWD, "TILES_M", nq, aq, (dq,), (dq.clone(),), 2 * 2 * D)
    trial("bwd_dkdv", kkv, ckv, BWD, "TILES_N", nk, akv, (dk, dv), (dk.clone(), dv.clone()), 2 * 3 * D)
    return rows


def sdpa_backends(B: int = 1, H: int = 12, S: int = 32760, D: int = 128, device: str = "cuda") -> None:
    """PyTorch SDPA's GPU backends at the Wan 480p shape: the yardsticks (Diffusers' stock attention
    calls SDPA without choosing, so PyTorch picks; bench_attention.py compares against FLASH)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v, do = (torch.randn(B, H, S, D, generator=g).to(device, torch.bfloat16) for _ in range(4))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    flops = 4 * B * H * S * S * D
    print(f"-- SDPA backends, B {B} H {H} S {S} D {D} bf16 (median ms; TFLOP/s forward, fwd+bwd at 3.5x the forward's flops)")
    for name, backends in (("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]),
                           ("cudnn", [SDPBackend.CUDNN_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION])):
        def fwd():
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        def fwd_bwd():
            torch.nn.functional.scaled_dot_product_attention(qg, kg, vg).backward(do)
            qg.grad = kg.grad = vg.grad = None

        try:
            dry = device == "cpu"
            with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                tf, tb = _time(fwd, dry), _time(fwd_bwd, dry)
            print(f"sdpa {name:<10} fwd {tf:8.3f} ms {flops / tf / 1e9:7.1f} TFLOP/s | fwd+bwd {tb:8.3f} ms "
                  f"{3.5 * flops / tb / 1e9:7.1f} TFLOP/s", flush=True)
        except Exception as e:
            print(f"sdpa {name:<10} not available ({type(e).__name__}: {str(e).splitlines()[0][:80]})", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU interpreter (TRITON_INTERPRET=1)")
    p.add_argument("--layouts", nargs="+", default=None, help="subset: wan480p-radial wan480p-dense radial-d64")
    p.add_argument("--no-sdpa", action="store_true", help="skip the SDPA backends' timings")
    a = p.parse_args(argv)
    note = import_kernels()
    device = "cpu" if a.dry_run else "cuda"
    if a.dry_run:
        FWD[:] = FWD[:2]
        BWD[:] = BWD[:2]
        layouts = [("radial-tiny", dict(grid=(3, 6, 8), B=1, H=2, D=64, block=32))]
    else:
        layouts = [("wan480p-radial", dict(grid=(21, 30, 52), B=1, H=12, D=128, block=128)),
                   ("wan480p-dense", dict(grid=(21, 30, 52), B=1, H=12, D=128, block=128, dense=True)),
                   ("radial-d64", dict(grid=(21, 30, 52), B=1, H=24, D=64, block=128))]
    if a.layouts:
        unknown = sorted(set(a.layouts) - {n for n, _ in layouts})
        if unknown:
            raise SystemExit(f"error: unknown --layouts {unknown}; choose from {[n for n, _ in layouts]}")
        layouts = [(n, L) for n, L in layouts if n in a.layouts]
    print(f"$ python eval/gpu_tune.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {device_line(device)[2:]}; {note}")
    print(f"{'layout':<16} {'kernel':<9} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'ms':>9} {'TFLOP/s':>8} "
          f"{'rel err':>9}  note")
    best: Dict[tuple, dict] = {}
    for name, L in layouts:
        S = math.prod(L["grid"])
        mask = _radial(L["grid"], L["block"])
        if L.get("dense"):
            mask = torch.ones_like(mask)
        density = float(mask.float().mean())
        for r in sweep(f"{name}", mask, L["B"], L["H"], S, L["D"], L["block"], device, a.dry_run):
            ok = r["ms"] is not None and r["err"] == r["err"] and r["err"] <= 1e-2
            note_ = r.get("note", "") if r["ms"] is None else ("" if ok else "WRONG RESULT")
            ms = f"{r['ms']:9.3f}" if r["ms"] is not None else f"{'-':>9}"
            tf = f"{r['tflops']:8.1f}" if r["ms"] is not None else f"{'-':>8}"
            err = f"{r['err']:9.2e}" if r["err"] is not None else f"{'-':>9}"
            bm, bn, w, st = r["cfg"]
            print(f"{name:<16} {r['kernel']:<9} {bm:>4} {bn:>4} {w:>5} {st:>6} {ms} {tf} {err}  "
                  f"{'*' if r['default'] else ' '} {note_} (density {density:.3f})", flush=True)
            key = (name, r["kernel"])
            if ok and (key not in best or r["ms"] < best[key]["ms"]):
                best[key] = r
    if not a.no_sdpa:
        sdpa_backends(**(dict(S=256, D=64, H=2, device="cpu") if a.dry_run else {}))
    print("-- fastest correct configuration per layout and kernel (BM, BN, warps, stages):")
    for (name, kern), r in best.items():
        print(f"best {name:<16} {kern:<9} {r['cfg']}  {r['ms']:.3f} ms{'  (the default)' if r['default'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
