"""Compile every Triton kernel configuration the dispatcher can launch, ahead of time, for sm_80 and sm_90.

No GPU needed: Triton compiles for a named target (`GPUTarget("cuda", 90, 32)` is sm_90a, Hopper with
wgmma) with the ptxas it ships, so a CPU-only machine can prove that every configuration compiles, fits
the architecture's shared memory per block and, on Hopper, uses `wgmma` where it should.

What is compiled comes from the dispatcher itself: `forward_launch` / `backward_launches` (which call
`kernel_config`) and `mass_launch` build the arguments of each launch on meta tensors of a real shape
(Wan2.1 480p, 81 frames: B 1, H 12, S 32760), with the compute capability as `arch_major`; Triton's own
binder then specialises them as a launch would (pointers 16-byte aligned, integer 1 as a constant,
multiples of 16 marked divisible; contiguous tensors and the models' transposed `(B, S, H, D)` views
specialise alike). So the constexprs (tiles, head-dim padding, precision flags), warps and stages are
exactly those a launch on that GPU uses.

Grid: kernels fwd (O + LSE), bwd_dq, bwd_dkdv, int8_fwd (INT8 QK^T, the forward kernel with QUANT),
block_score (`_mass_kernel`) x dtypes fp16/bf16/fp32 x head dims 64/128 x layout blocks 16, 48, 64,
128, 256 (48 -> padded 64-row tiles, 256 -> two 128-row tiles) x sm_80/sm_90 (`--kernels`, `--dtypes`,
`--head-dims`, `--blocks` take subsets or other values, e.g. `--head-dims 256`). `--quick`: bf16, D 128,
block 128, every kernel (tests/test_aot.py runs it for sm_90).

Columns: tiles `BLOCK_MxBLOCK_N` (`xT` tiles per layout block), warps/stages, shared memory bytes (the
kernel's dynamic shared memory, against 164 KB on A100 / 227 KB on H100 per block), the tensor-core
instructions in the PTX, the dots lowered to wgmma (from the TTGIR: `ttng.warp_group_dot`) over all
dots (`ser.`: ptxas serialised the wgmma), registers per thread and spilled bytes (ptxas -v), compile
seconds. wgmma is expected on sm_90
for a dot whose operands are fp16/bf16/int8 (or fp32 in TF32) with an M tile that is a multiple of 64
and warps a multiple of 4 (Triton's MMAv3 rule); fp32 attention dots run in IEEE precision (no TF32)
on purpose, so they use FMAs and expect none; 16-row tiles (16-token layout blocks) use mma.sync.
A row fails when it does not compile, exceeds the shared memory limit, or lacks wgmma where expected.

    python eval/aot_check.py                          # all kernels, sm_80 and sm_90
    python eval/aot_check.py --arch 90 --quick        # CI subset
    python eval/aot_check.py --out eval/results/aot_check.txt

Results: eval/results/aot_check.txt (triton 3.9, both archs) and aot_check_triton36_sm90.txt (triton 3.6,
the version on the lent H200, compiled before the measured Hopper launches `SM90_MEASURED` existed; the H200
itself then built and ran those with Triton 3.6: eval/results/gpu/). Needs Triton's bundled ptxas (triton/backends/nvidia/bin); no CUDA driver.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Per-block shared memory limits (opt-in maximum): A100 164 KB, H100/H200 227 KB.
SMEM_LIMIT = {80: 164 * 1024, 90: 227 * 1024}
KERNELS = ("fwd", "bwd_dq", "bwd_dkdv", "int8_fwd", "block_score")
DTYPES = ("fp16", "bf16", "fp32")
HEAD_DIMS = (64, 128)
BLOCKS = (16, 48, 64, 128, 256)
SHAPE = (1, 12, 32760)  # B, H, S: Wan2.1 480p x 81 frames (21 x 30 x 52 latent tokens)


def quick_grid(archs: Sequence[int]) -> List[dict]:
    return [dict(kernel=k, dtype="bf16", head_dim=128, block=128, arch=a) for a in archs for k in KERNELS]


def full_grid(archs: Sequence[int], kernels=KERNELS, dtypes=DTYPES, head_dims=HEAD_DIMS, blocks=BLOCKS) -> List[dict]:
    return [dict(kernel=k, dtype=dt, head_dim=d, block=b, arch=a)
            for a, k, dt, d, b in itertools.product(archs, kernels, dtypes, head_dims, blocks)]


def ptxas_status(archs: Sequence[int] = (80, 90)) -> Optional[str]:
    """None when Triton's ptxas for every arch runs here, else the reason it does not."""
    for arch in archs:
        try:
            from triton.backends.nvidia.compiler import get_ptxas

            path = get_ptxas(arch).path
        except Exception as e:  # no NVIDIA backend, or no ptxas shipped
            return f"no ptxas for sm_{arch}: {type(e).__name__}: {e}"
        try:
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        except Exception as e:
            return f"ptxas for sm_{arch} at {path} does not run: {e}"
    return None


def _kernels_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    from diffsparse.kernels import triton_attention as ta

    return isinstance(ta._fwd_kernel, InterpretedFunction)


def _launch(case: dict):
    """(kernel, args, kwargs) of the dispatcher's launch for this case, on meta tensors of SHAPE."""
    import torch

    from diffsparse.kernels.index import num_blocks
    from diffsparse.kernels.triton_attention import backward_launches, forward_launch
    from diffsparse.kernels.triton_block_score import mass_launch

    B, H, S = SHAPE
    D, bs, major = case["head_dim"], case["block"], case["arch"] // 10
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[case["dtype"]]

    def t(*shape, dt=dtype):
        return torch.empty(*shape, dtype=dt, device="meta")

    n = num_blocks(S, bs)
    # Head-shared layout (radial, sliding_window): counts (1, 1, n), indices (1, 1, n, width).
    counts, indices = t(1, 1, n, dt=torch.int32), t(1, 1, n, max(1, n // 4), dt=torch.int32)
    scale = D ** -0.5
    q, k, v = t(B, H, S, D), t(B, H, S, D), t(B, H, S, D)
    lse = t(B, H, S, dt=torch.float32)
    kern = case["kernel"]
    if kern in ("fwd", "int8_fwd"):
        quant = None
        if kern == "int8_fwd":
            q, k = t(B, H, S, D, dt=torch.int8), t(B, H, S, D, dt=torch.int8)
            quant = (t(B, H, n, dt=torch.float32), t(B, H, n, dt=torch.float32))
        fn, _, args, kw = forward_launch(q, k, v, t(B, H, S, D), lse, counts, indices, bs, bs, scale, quant, major)
    elif kern in ("bwd_dq", "bwd_dkdv"):
        launches = backward_launches(q, k, v, t(B, H, S, D), lse, t(B, H, S, dt=torch.float32), t(B, H, S, D),
                                     t(B, H, S, D), t(B, H, S, D), counts, indices, counts, indices, bs, bs, scale,
                                     major)
        fn, _, args, kw = launches[0 if kern == "bwd_dq" else 1]
    elif kern == "block_score":
        out = t(B, H, n, n, dt=torch.float32)
        fn, _, args, kw = mass_launch(q, k, lse, out, bs, bs, scale, gpu=True)
    else:
        raise ValueError(f"unknown kernel {kern!r}")
    return fn, args, dict(kw)


def _dots(case: dict, kw: dict) -> List[tuple]:
    """The kernel's `tl.dot`s as (M tile, operand precision): what Triton's MMAv3 rule looks at."""
    dt = case["dtype"]
    attn = "fp32-ieee" if kw.get("FP32_IEEE") else dt  # attention kernels: fp32 exactly, no TF32
    kern = case["kernel"]
    if kern == "fwd":
        return [(kw["BLOCK_M"], attn)] * 2  # S = Q K^T, O += P V
    if kern == "int8_fwd":
        return [(kw["BLOCK_M"], "int8"), (kw["BLOCK_M"], attn)]
    if kern == "bwd_dq":
        return [(kw["BLOCK_M"], attn)] * 3  # S, dP, dQ
    if kern == "bwd_dkdv":
        return [(kw["BLOCK_N"], attn)] * 4  # S^T, dP^T, dV, dK
    return [(kw["BLOCK_M"], "tf32" if dt == "fp32" else dt)]  # block_score: TF32 allowed (ranking only)


def _wgmma_eligible(case: dict, kw: dict) -> int:
    """How many dots may use wgmma on sm_90: operands fp16/bf16/int8/tf32, M a multiple of 64, warps of 4."""
    if case["arch"] < 90 or kw.get("num_warps", 4) % 4:
        return 0
    return sum(m % 64 == 0 and prec != "fp32-ieee" for m, prec in _dots(case, kw))


def _compile(case: dict) -> dict:
    """Compile one case; a row of the table (never raises)."""
    row = dict(case)
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        fn, args, kw = _launch(case)
        tiles = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}"
        if kw["TILES_M"] * kw["TILES_N"] > 1:
            tiles += f"x{max(kw['TILES_M'], kw['TILES_N'])}"
        eligible = _wgmma_eligible(case, kw)
        row.update(tiles=tiles, warps=kw.get("num_warps", 4), stages=kw.get("num_stages", 3),
                   limit=SMEM_LIMIT.get(case["arch"]), wgmma_expected=eligible > 0,
                   expected_dots=f"{eligible}/{len(_dots(case, kw))}")
        target = GPUTarget("cuda", case["arch"], 32)
        backend = make_backend(target)
        # Triton's own launch-time specialisation (the JIT's binder), so the attributes match a real launch.
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, opts = binder(*args, **kw)
        options, signature, constexprs, attrs = fn._pack_args(backend, opts, bound, spec, opts)
        src = ASTSource(fn, signature, constexprs, attrs)
        log = io.StringIO()
        t0 = time.perf_counter()
        with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v: registers, spills, wgmma serialisation
            compiled = triton.compile(src, target=target, options=options.__dict__)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
        row["shared"] = int(compiled.metadata.shared)
        row["cubin_bytes"] = len(compiled.asm["cubin"])
        row["wgmma"] = "wgmma.mma_async" in ptx
        row["mma"] = "wgmma" if row["wgmma"] else ("mma.sync" if "mma.sync" in ptx else "fma")
        n_wg = len(re.findall(r"ttng\.warp_group_dot\b", ttgir))
        n_dots = n_wg + len(re.findall(r"= tt\.dot\b", ttgir))
        row["dots"] = f"{n_wg}/{n_dots}"
        text = log.getvalue()
        regs = re.search(r"Used (\d+) registers", text)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
        row["regs"] = int(regs.group(1)) if regs else None
        row["spill"] = int(spill.group(1)) + int(spill.group(2)) if spill else None
        row["serialized"] = "wgmma.mma_async instructions are serialized" in text
        problems = []
        if row["limit"] is not None and row["shared"] > row["limit"]:
            problems.append(f"shared {row['shared']} > {row['limit']}")
        if eligible and not (row["wgmma"] and n_wg >= eligible):
            problems.append(f"wgmma expected in {eligible} dots, found in {n_wg}")
        row["ok"] = not problems
        row["error"] = "; ".join(problems) or None
    except Exception as e:  # report the configuration, keep going
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        row.update(ok=False, error=f"{type(e).__name__}: {first}")
        row.setdefault("seconds", None)
    return row


def _init_worker() -> None:
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")


@contextlib.contextmanager
def _fresh_cache():
    """A throw-away Triton cache, so every configuration really compiles (and times its compile)."""
    old = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="aot_triton_cache_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = old


def run_checks(archs: Sequence[int] = (80, 90), quick: bool = False, jobs: Optional[int] = None,
               grid: Optional[Dict[str, Sequence]] = None) -> List[dict]:
    """Compile the grid (or the quick subset) and return one dict per configuration.

    `grid`: optional subsets {"kernels", "dtypes", "head_dims", "blocks"} of the full grid.
    Runs in a subprocess when this process has the kernels under TRITON_INTERPRET=1 (the test suite):
    interpreted kernels cannot be compiled. Every call compiles from scratch (fresh Triton cache).
    """
    grid = dict(grid or {})
    if os.environ.get("TRITON_INTERPRET") == "1" or _kernels_interpreted():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--arch", ",".join(map(str, archs)), "--json", path]
            cmd += ["--quick"] if quick else []
            cmd += ["--jobs", str(jobs)] if jobs else []
            for key, values in grid.items():
                cmd += [f"--{key.replace('_', '-')}", ",".join(map(str, values))]
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if not os.path.exists(path):
                raise RuntimeError(f"aot_check subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            with open(path) as f:
                return json.load(f)
    cases = quick_grid(archs) if quick else full_grid(archs, **grid)
    jobs = jobs or min(len(cases), os.cpu_count() or 1)
    with _fresh_cache():
        if jobs <= 1:
            with warnings.catch_warnings():
                _init_worker()
                return [_compile(c) for c in cases]
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
            return list(pool.map(_compile, cases))


def _fmt(v, spec=""):
    return "-" if v is None else format(v, spec)


def table(rows: List[dict]) -> str:
    head = (f"{'kernel':<12}{'dtype':<6}{'D':>4}{'block':>6} {'tiles':<10}{'w/s':<5}{'arch':<6}{'smem B':>8}"
            f"{'limit':>8}{'%':>5} {'mma':<9}{'dots':>5} {'wgmma':<6}{'exp':<5}{'regs':>5}{'spill B':>9}{'s':>7}  status")
    out = [head, "-" * len(head)]
    for r in rows:
        pct = f"{100 * r['shared'] / r['limit']:.0f}" if r.get("shared") is not None and r.get("limit") else "-"
        wg = None if r.get("wgmma") is None else ("yes" if r["wgmma"] else "no")
        if wg == "yes" and r.get("serialized"):
            wg = "ser."
        exp = r.get("expected_dots") if r.get("wgmma_expected") else "no"
        out.append(
            f"{r['kernel']:<12}{r['dtype']:<6}{r['head_dim']:>4}{r['block']:>6} {_fmt(r.get('tiles')):<10}"
            f"{_fmt(r.get('warps'))}/{_fmt(r.get('stages')):<3}sm_{r['arch']:<3}{_fmt(r.get('shared')):>8}"
            f"{_fmt(r.get('limit')):>8}{pct:>5} {_fmt(r.get('mma')):<9}{_fmt(r.get('dots')):>5} {_fmt(wg):<6}{_fmt(exp):<5}"
            f"{_fmt(r.get('regs')):>5}{_fmt(r.get('spill')):>9}{_fmt(r.get('seconds'), '.2f'):>7}  "
            f"{'ok' if r['ok'] else 'FAIL: ' + str(r.get('error'))}")
    return "\n".join(out)


def summary(rows: List[dict]) -> str:
    lines = [f"{len(rows)} configurations, {sum(r['ok'] for r in rows)} ok, {sum(not r['ok'] for r in rows)} failed"]
    for arch in sorted({r["arch"] for r in rows}):
        rs = [r for r in rows if r["arch"] == arch and r.get("shared") is not None]
        if not rs:
            continue
        top = max(rs, key=lambda r: r["shared"])
        line = (f"sm_{arch}: max shared {top['shared']} B of {SMEM_LIMIT[arch]} ({top['kernel']} {top['dtype']} "
                f"D{top['head_dim']} block {top['block']})")
        if arch >= 90:
            exp = [r for r in rs if r["wgmma_expected"]]
            line += (f"; wgmma in {sum(r['wgmma'] for r in exp)}/{len(exp)} configurations where expected, "
                     f"{sum(r['wgmma'] for r in rs if not r['wgmma_expected'])} elsewhere"
                     f"; serialized wgmma in {sum(bool(r.get('serialized')) for r in rs)}")
        spills = [r for r in rs if r.get("spill")]
        line += f"; {len(spills)} with register spills"
        lines.append(line)
    secs = [r["seconds"] for r in rows if r.get("seconds")]
    if secs:
        lines.append(f"compile seconds: total {sum(secs):.1f}, max {max(secs):.1f}")
    return "\n".join(lines)


def header(argv: Sequence[str], archs: Sequence[int]) -> str:
    import torch
    import triton

    from triton.backends.nvidia.compiler import get_ptxas

    tools = []
    for arch in archs:
        try:
            tool = get_ptxas(arch)
            tools.append(f"sm_{arch} {os.path.basename(tool.path)} {tool.version}")
        except Exception as e:
            tools.append(f"sm_{arch} unavailable ({e})")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none: compiled on a CPU-only machine"
    return "\n".join([
        f"$ python eval/aot_check.py {' '.join(argv)}".rstrip(),
        f"# date {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; host {platform.machine()}, "
        f"{os.cpu_count()} CPUs; GPU {gpu}",
        f"# triton {triton.__version__}, torch {torch.__version__}, python {platform.python_version()}; ptxas "
        + ", ".join(tools),
        f"# specialised at B {SHAPE[0]} H {SHAPE[1]} S {SHAPE[2]}; shared-memory limits per block: "
        + ", ".join(f"sm_{a} {v} B" for a, v in SMEM_LIMIT.items()),
    ])


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="80,90", help="comma-separated compute capabilities (80, 90)")
    p.add_argument("--quick", action="store_true", help="CI subset: bf16, D 128, block 128, every kernel")
    p.add_argument("--kernels", default=",".join(KERNELS), help="subset of the grid's kernels")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    p.add_argument("--blocks", default=",".join(map(str, BLOCKS)), help="layout block sizes (square)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    p.add_argument("--out", default=None, help="also write the header, table and summary here")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    archs = [int(x) for x in a.arch.split(",") if x]
    for arch in archs:
        if arch not in SMEM_LIMIT:
            p.error(f"--arch {arch}: known {sorted(SMEM_LIMIT)}")
    why = ptxas_status(archs)
    if why:
        print(f"aot_check: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    grid = dict(kernels=a.kernels.split(","), dtypes=a.dtypes.split(","),
                head_dims=[int(x) for x in a.head_dims.split(",")], blocks=[int(x) for x in a.blocks.split(",")])
    for k in grid["kernels"]:
        if k not in KERNELS:
            p.error(f"--kernels {k}: known {KERNELS}")
    for d in grid["dtypes"]:
        if d not in DTYPES:
            p.error(f"--dtypes {d}: known {DTYPES}")
    rows = run_checks(archs, a.quick, a.jobs, grid)
    text = "\n".join([header(argv, archs), table(rows), "", summary(rows),
                      f"wall {time.perf_counter() - t0:.1f} s"])
    print(text, flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
