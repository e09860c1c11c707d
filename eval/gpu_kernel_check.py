"""Correctness of every Triton kernel on a GPU at real shapes: forward (O and LSE), backward (dQ and
dK/dV), INT8 QK^T forward and exact block scores, in bf16, against a float64 reference (and, for a
full layout, against PyTorch's SDPA).

Cases (fresh random inputs each, never zeros; forward and backward outputs poisoned with NaN first):
  wan480p-radial  B 1, H 12, S 32760 (Wan2.1 480p x 81 frames, grid 21x30x52), D 128, block 128,
                  the radial layout of that grid (head-shared)
  odd-random      B 2, H 3, S 9973 (prime), D 64, block 80 (not a power of two: padded and split
                  tiles), a random per-(batch, head) layout with an empty and a full query-block row
  dense-sdpa      B 1, H 12, S 32760, D 128, block 128, every block kept: ours and SDPA both against
                  float64, and ours against SDPA
  radial-d64      B 1, H 24, S 32760, D 64, block 128, the radial layout (the head dim with its own
                  measured Hopper launch: 128x64 tiles, 4 warps)

The float64 reference runs on the same device in query-row chunks (exact masked softmax of the
bf16 inputs upcast), so nothing of size S x S is held at once. Errors are ||x - ref|| / ||ref||
(METHOD.md: bf16 operands land between 1e-3 and 1e-2) and max |lse - ref|. Pass thresholds:

  out, dq, dk, dv (bf16)   rel <= 1e-2 (gradients 2e-2: dS is rounded to bf16 before two products)
  lse                      max abs <= 1e-3 (fp32 sums of exact logits)
  int8 out                 rel <= 5e-2 and cosine >= 0.999 (SageAttention's accuracy class)
  block scores             rel <= 1e-3 (fp32 exp of exact logits; TF32 is not used for bf16)
  NaN anywhere (an element never written, or a bad row)  fail

    python eval/gpu_kernel_check.py                      # on a GPU (estimated: about a minute on an H100)
    TRITON_INTERPRET=1 python eval/gpu_kernel_check.py --dry-run   # tiny shapes on the CPU interpreter
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

THRESHOLDS = {"out": 1e-2, "lse": 1e-3, "dq": 2e-2, "dk": 2e-2, "dv": 2e-2, "int8": 5e-2, "int8_cos": 0.999,
              "mass": 1e-3}


def import_kernels() -> str:
    """Import diffsparse; when its package __init__ cannot (no Diffusers on the machine), import the
    kernels and methods without it (they need no Diffusers). Returns a note for the log."""
    try:
        import diffsparse  # noqa: F401

        return "diffsparse imported"
    except ImportError as e:
        import types

        for name in [m for m in sys.modules if m == "diffsparse" or m.startswith("diffsparse.")]:
            del sys.modules[name]
        pkg = types.ModuleType("diffsparse")
        pkg.__path__ = [os.path.join(ROOT, "diffsparse")]
        sys.modules["diffsparse"] = pkg
        return f"diffsparse's __init__ failed ({e}); kernels and methods imported without it"


def _radial(grid, block):
    """Radial's block layout on a Wan latent grid (what `diffsparse.block_layout("radial", grid)` gives
    with no text tokens), from the method itself so that no Diffusers import is needed."""
    from diffsparse.geometry import Grid
    from diffsparse.methods import get_method

    order, mask = get_method("radial")("wan").video_layout(Grid(*grid), block, block)
    assert order is None, "radial keeps the raster order"
    return mask[None]  # (1, Hm, nq, nk)


def _random_layout(B, H, n, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, H, n, n, generator=g) < density
    mask[..., torch.arange(n), torch.arange(n)] = True  # the diagonal
    mask[..., 0, :] = False  # an empty query-block row: out 0, lse -inf, dq 0
    if n > 2:
        mask[..., 1, :] = True  # a full row
    return mask


def cases(dry_run: bool) -> List[dict]:
    if dry_run:  # CPU interpreter: the same code paths on tiny shapes
        return [
            dict(name="wan-radial-tiny", B=1, H=2, grid=(3, 6, 8), D=64, block=16, layout="radial"),
            dict(name="odd-random-tiny", B=2, H=2, S=157, D=64, block=48, layout="random", density=0.4),
            dict(name="dense-sdpa-tiny", B=1, H=2, S=130, D=64, block=32, layout="dense"),
        ]
    return [
        dict(name="wan480p-radial", B=1, H=12, grid=(21, 30, 52), D=128, block=128, layout="radial"),
        dict(name="odd-random", B=2, H=3, S=9973, D=64, block=80, layout="random", density=0.3),
        dict(name="dense-sdpa", B=1, H=12, S=32760, D=128, block=128, layout="dense"),
        dict(name="radial-d64", B=1, H=24, grid=(21, 30, 52), D=64, block=128, layout="radial"),
    ]


def build_mask(case: dict) -> torch.Tensor:
    b = case["block"]
    if case["layout"] == "radial":
        case["S"] = math.prod(case["grid"])
        return _radial(case["grid"], b)
    n = -(-case["S"] // b)
    if case["layout"] == "random":
        return _random_layout(case["B"], case["H"], n, case["density"], seed=case["S"])
    return torch.ones(1, 1, n, n, dtype=torch.bool)


@torch.no_grad()
def reference(q, k, v, do, mask, block, scale, chunk=1024):
    """float64 out, lse, dq, dk, dv and block masses (with the reference lse), chunked over query rows."""
    B, H, S, D = q.shape
    n = mask.shape[-1]
    f = torch.float64
    out = torch.zeros(B, H, S, D, dtype=f, device=q.device)
    lse = torch.full((B, H, S), float("-inf"), dtype=f, device=q.device)
    dq, dk, dv = (torch.zeros(B, H, S, D, dtype=f, device=q.device) for _ in range(3))
    mass = torch.zeros(B, H, n, n, dtype=f, device=q.device)
    kb_of = torch.arange(S, device=q.device) // block
    for b in range(B):
        for h in range(H):
            m = mask[min(b, mask.shape[0] - 1), min(h, mask.shape[1] - 1)].to(q.device)
            K, V = k[b, h].to(f), v[b, h].to(f)
            # pass 1: out, lse, and the block masses of the rows (their lse is complete within the chunk)
            for s in range(0, S, chunk):
                e = min(S, s + chunk)
                keep = m[kb_of[s:e]][:, kb_of]  # (rows, S) token mask
                logits = (q[b, h, s:e].to(f) @ K.T) * scale
                full = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), -1)
                lse[b, h, s:e] = full
                ok = torch.isfinite(full)
                p = torch.where(keep & ok[:, None], torch.exp(logits - torch.where(ok, full, 0.0)[:, None]), 0.0)
                out[b, h, s:e] = p @ V
                pm = torch.exp(logits - torch.where(ok, full, float("inf"))[:, None])  # all blocks, masked or not
                pm = torch.nn.functional.pad(pm, (0, n * block - S)).view(e - s, n, block).sum(-1)
                mass[b, h].index_add_(0, kb_of[s:e], pm)
                # backward for these rows
                dO = do[b, h, s:e].to(f)
                dp = dO @ V.T
                delta = (dO * out[b, h, s:e]).sum(-1, keepdim=True)
                ds = p * (dp - delta)
                dq[b, h, s:e] = ds @ K * scale
                dk[b, h] += ds.T @ q[b, h, s:e].to(f) * scale
                dv[b, h] += p.T @ dO
    return dict(out=out, lse=lse, dq=dq, dk=dk, dv=dv, mass=mass)


def rel(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp(min=1e-30))


def lse_err(x, ref) -> float:
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isinf(x), torch.isinf(ref)):
        return float("inf")
    return float((x.double()[fin] - ref[fin]).abs().max()) if fin.any() else 0.0


def run_case(case: dict, device: str, seed: int) -> List[dict]:
    from diffsparse.kernels import build_block_index
    from diffsparse.kernels.int8 import int8_block_sparse_attention
    from diffsparse.kernels.triton_attention import triton_backward, triton_forward
    from diffsparse.kernels.triton_block_score import triton_block_mass

    mask = build_mask(case)
    B, H, S, D, bs = case["B"], case["H"], case["S"], case["D"], case["block"]
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, S, D, generator=g).to(device, torch.bfloat16) for _ in range(4))
    scale = 1.0 / math.sqrt(D)
    index = build_block_index(mask, bs).to(device)
    t_index = index.transposed()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []

    def add(kernel, quantity, err, limit, higher_is_better=False, note=""):
        ok = (err >= limit) if higher_is_better else (err <= limit)
        ok = ok and not math.isnan(err)
        rows.append(dict(case=case["name"], kernel=kernel, quantity=quantity, value=err, limit=limit,
                         cmp=">=" if higher_is_better else "<=", ok=bool(ok), note=note))

    t0 = time.perf_counter()
    ref = reference(q, k, v, do, index.mask, bs, scale, chunk=1024 if device.startswith("cuda") else 64)
    sync()
    t_ref = time.perf_counter() - t0
    dens = f"density {index.density:.3f}"

    t0 = time.perf_counter()
    out, lse = triton_forward(q, k, v, index.counts, index.indices, bs, bs, scale, poison=True)
    sync()
    t_fwd = time.perf_counter() - t0  # includes the JIT compile of the first launch
    nan = bool(torch.isnan(out).any() or torch.isnan(lse).any())
    add("fwd", "out rel", float("nan") if nan else rel(out, ref["out"]), THRESHOLDS["out"], note=dens)
    add("fwd", "lse max abs", float("nan") if nan else lse_err(lse, ref["lse"]), THRESHOLDS["lse"])

    dq, dk, dv = triton_backward(q, k, v, out, lse, do, index.counts, index.indices, t_index.counts, t_index.indices,
                                 bs, bs, scale, poison=True)
    sync()
    for name, got, kern in (("dq", dq, "bwd_dq"), ("dk", dk, "bwd_dkdv"), ("dv", dv, "bwd_dkdv")):
        bad = bool(torch.isnan(got).any())
        add(kern, f"{name} rel", float("nan") if bad else rel(got, ref[name]), THRESHOLDS[name])

    o8, l8 = int8_block_sparse_attention(q, k, v, index, scale=scale, impl="triton")
    sync()
    bad = bool(torch.isnan(o8).any())
    add("int8_fwd", "out rel", float("nan") if bad else rel(o8, ref["out"]), THRESHOLDS["int8"])
    cos = torch.nn.functional.cosine_similarity(o8.double().flatten(), ref["out"].flatten(), dim=0)
    add("int8_fwd", "out cosine", float("nan") if bad else float(cos), THRESHOLDS["int8_cos"], higher_is_better=True)

    ref_lse = ref["lse"].float()
    mass = triton_block_mass(q, k, ref_lse, bs, bs, scale)
    sync()
    bad = bool(torch.isnan(mass).any())
    add("block_score", "mass rel", float("nan") if bad else rel(mass, ref["mass"]), THRESHOLDS["mass"])

    if case["layout"] == "dense":  # ours vs SDPA, and SDPA's own error as the yardstick
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
        if device.startswith("cuda"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o_s = sdpa(qs, ks, vs, scale=scale)
                o_s.backward(do)
        else:
            o_s = sdpa(qs, ks, vs, scale=scale)
            o_s.backward(do)
        for name, mine, theirs in (("out", out, o_s), ("dq", dq, qs.grad), ("dk", dk, ks.grad), ("dv", dv, vs.grad)):
            r_sdpa = rel(theirs.detach(), ref[name])
            add("sdpa", f"{name} rel (SDPA itself)", r_sdpa, THRESHOLDS[name], note="yardstick")
            add("fwd" if name == "out" else ("bwd_dq" if name == "dq" else "bwd_dkdv"), f"{name} rel vs SDPA",
                rel(mine, theirs.detach()), 2 * THRESHOLDS[name])
    for r in rows:
        r.update(B=B, H=H, S=S, D=D, block=bs, ref_s=round(t_ref, 2), first_fwd_s=round(t_fwd, 2))
    return rows


def device_line(device: str) -> str:
    import triton

    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        name = f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
    else:
        name = f"{platform.machine()} CPU (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})"
    return f"# device {name}; torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU, TRITON_INTERPRET=1)")
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (fresh inputs every run)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_kernel_check: no GPU; run the CPU dry run as TRITON_INTERPRET=1 ... --dry-run", file=sys.stderr)
        return 2
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference and SDPA yardstick in full precision
    seed = a.seed if a.seed is not None else int(time.time()) % 100000
    note = import_kernels()
    print(f"$ python eval/gpu_kernel_check.py {' '.join(argv)}".rstrip())
    print(device_line(device) + f"; seed {seed}; {note}", flush=True)
    rows = []
    wanted = set(a.cases.split(",")) if a.cases else None
    for i, case in enumerate(cases(a.dry_run)):
        if wanted and case["name"] not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            got = run_case(case, device, seed + i)
        except Exception as e:  # a crash is a failed row, and the other cases still run
            got = [dict(case=case["name"], kernel="-", quantity="crash", value=float("nan"), limit=0, cmp="",
                        ok=False, note=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")]
        rows += got
        print(f"  {case['name']}: {time.perf_counter() - t0:.1f} s", flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    head = f"{'case':<17}{'kernel':<12}{'quantity':<24}{'value':>11} {'':2}{'limit':>7}  status"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<17}{r['kernel']:<12}{r['quantity']:<24}{r['value']:>11.3e} {r['cmp']:<2}{r['limit']:>7.3g}  "
              f"{'ok' if r['ok'] else 'FAIL'} {r['note']}".rstrip())
    bad = [r for r in rows if not r["ok"]]
    print(f"kernel check: {len(rows) - len(bad)}/{len(rows)} ok" + (f", FAILED: {len(bad)}" if bad else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
