"""The one execution entry point: `block_sparse_attention(q, k, v, block_mask, ...)`.

Every sparse method ends here. It validates shapes, builds (or reuses) the CSR index of the
block mask and dispatches: CUDA -> our Triton kernels (FlexAttention if triton is missing),
CPU -> the genuinely sparse PyTorch path. `backend=` forces a path (tests, benchmarks).
See docs/kernels.md.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from .index import BlockIndex, BlockSize, build_block_index, needs_grad, normalize_block_size, num_blocks
from .reference import reference_attention
from .ops import block_sparse_op

BACKENDS = ("auto", "triton", "flex", "torch", "reference")
QUANTIZE = (None, "int8")


def _triton_available() -> bool:
    """Whether Triton is installed (Linux); our kernels in triton_attention.py need it."""
    return importlib.util.find_spec("triton") is not None


def _validate(q, k, v, index: BlockIndex) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, S, D), got {getattr(t, 'shape', type(t))}")
    B, H, sq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k.shape[2] != v.shape[2] or k.shape[3] != D:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if len({q.device, k.device, v.device}) != 1:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or q.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"q, k and v must share one floating dtype (float32, float16, bfloat16; float64 on the "
                         f"reference backend), got {q.dtype}, {k.dtype}, {v.dtype}")
    sk = k.shape[2]
    bm, hm, nq, nk = index.mask.shape
    want = (num_blocks(sq, index.block_q), num_blocks(sk, index.block_k))
    if (nq, nk) != want or bm not in (1, B) or hm not in (1, H):
        raise ValueError(
            f"block_mask shape {tuple(index.mask.shape)} does not fit q/k of lengths {sq}/{sk} with blocks "
            f"({index.block_q}, {index.block_k}): expected ({{1,{B}}}, {{1,{H}}}, {want[0]}, {want[1]})"
        )


# backend="auto" on CPU runs float32 inference calls on our C++ kernel (cpu_native.py): on every sparse
# layout measured it was faster than the PyTorch path (radial / sliding_window / GRAT at Wan 480p and
# Hunyuan 720p with blocks of 128, level with or ahead of compiled Flex, eval/results/bench_attention_cpu.txt;
# blocks of 16-128, densities 0.3-0.95, S 256-16384: eval/results/cpu_native_probe.txt). Fully dense layouts stay on
# the PyTorch path (its in-place flash call per head: within 3 % at S 8192, eval/results/cpu_native_probe.txt).
def cpu_native_pays(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex, quantize,
                    native_fn) -> bool:
    """Whether `backend="auto"` runs this CPU call on the held C++ kernel `native_fn`."""
    if native_fn is None or not native_fn.usable() or quantize is not None or q.dtype != torch.float32:
        return False
    if needs_grad(q, k, v) or torch.compiler.is_compiling():
        return False
    return index.density < 1.0


def _native(q, k, v, index: BlockIndex, scale, native_fn):
    """(out, lse) from the C++ kernel, or None when it cannot run here (remembered: not tried again)."""
    try:
        return native_fn(q, k, v, index, q.shape[-1] ** -0.5 if scale is None else scale)
    except Exception as e:  # no C++ compiler, a BLAS without sgemm_, ...: the PyTorch path from now on
        _give_up(native_fn, e, "our C++ CPU kernel could not be built or run here", "the PyTorch CPU path")
        return None


def _give_up(held, err: Exception, what: str, instead: str) -> None:
    """A held kernel (C++, compiled Flex) failed on this machine: remember why (its owner does not try it
    again) and say so once."""
    held.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    warnings.warn(f"diffsparse: {what} ({held.error}); using {instead} for this handle from now on")


# Without the C++ kernel, backend="auto" on CPU hands a call to compiled FlexAttention (Inductor's CPU
# template) when it pays: on layout blocks of >= 128 at S >= 16384 it ran 1.08-1.33x faster than the
# PyTorch path, whose flash kernel is slow on 128-row query blocks
# (eval/results/bench_attention_cpu_torch_path.txt) at densities 0.10-0.74; at blocks of 64 Flex was 7-9 % faster
# (eval/results/bench_attention_cpu_block64_torch_path.txt), which its compile (seconds, once per shape) eats up,
# and with every block kept our path (one in-place flash call per row) was faster (0.97x vs 0.91x of
# stock end to end, eval/results/bench_transformer_cpu*.txt). Flex on CPU is inference only and has no LSE.
CPU_FLEX_MIN_BLOCK = 128
CPU_FLEX_MIN_SCORES = 16384 * 16384
CPU_FLEX_MAX_DENSITY = 0.75


def cpu_flex_pays(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex, return_lse: bool, quantize,
                  flex_fn) -> bool:
    """Whether `backend="auto"` runs this CPU call on the held compiled FlexAttention `flex_fn`."""
    if flex_fn is None or getattr(flex_fn, "error", None) is not None or return_lse or quantize is not None:
        return False
    if needs_grad(q, k, v) or torch.compiler.is_compiling():
        return False
    return (min(index.block_q, index.block_k) >= CPU_FLEX_MIN_BLOCK
            and q.shape[2] * k.shape[2] >= CPU_FLEX_MIN_SCORES and index.density <= CPU_FLEX_MAX_DENSITY)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor | BlockIndex,
    *,
    block_size: BlockSize = 128,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
    quantize: str | None = None,
    flex_fn=None,
    native_fn=None,
):
    """Attention computing only the kept blocks of `block_mask`.

    Args:
        q: `(B, H, Sq, D)`; k, v: `(B, H, Sk, D)`; fp16, bf16 or fp32. Sq, Sk need not be block multiples.
        block_mask: bool `(B or 1, H or 1, ceil(Sq/bq), ceil(Sk/bk))`, or a prebuilt `BlockIndex`
            (reuse it across layers and steps to skip rebuilding the CSR lists).
        block_size: int or `(bq, bk)`; ignored when `block_mask` is a `BlockIndex`.
        scale: softmax scale, default `1/sqrt(D)`.
        return_lse: also return lse `(B, H, Sq)` float32, natural-log softmax denominator of the
            scaled logits. A query row with no kept block gets out = 0 and lse = -inf.
        backend: "auto" | "triton" | "flex" | "torch" | "reference".
        quantize: None or "int8": INT8 QK^T (SageAttention-style smoothing), inference only;
            on the "triton" backend a real int8 kernel, on the others the same numbers emulated.
        flex_fn: a held `kernels.flex.compiled_flex_attention()`: with backend "flex" the one it runs
            (else one is made for the call; FlexAttention always runs compiled); with "auto" on CPU,
            given, it runs the large inference calls where it is faster (`cpu_flex_pays`) if `native_fn`
            does not take them.
        native_fn: a held `kernels.cpu_native.NativeCpuKernel()`: with "auto" on CPU it runs the float32
            inference calls where it is faster than the PyTorch path (`cpu_native_pays`), LSE included.

    Differentiable on the "triton" and "torch" backends (custom ops with explicit backward
    kernels); `torch.compile(fullgraph=True)` traces through a call with a prebuilt `BlockIndex`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize {quantize!r}; choose one of {QUANTIZE}")
    if isinstance(block_mask, BlockIndex):
        index = block_mask
    else:
        normalize_block_size(block_size)
        if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
            raise ValueError(f"block_mask must be a bool tensor, got {getattr(block_mask, 'dtype', type(block_mask))}")
        index = build_block_index(block_mask, block_size)
    _validate(q, k, v, index)
    index = index.to(q.device)
    if q.shape[2] == 0 or k.shape[2] == 0:  # nothing to attend: empty output, or rows that keep no block
        B, H, Sq = q.shape[:3]
        out = q.new_zeros(B, H, Sq, v.shape[-1])
        lse = torch.full((B, H, Sq), float("-inf"), device=q.device)
        return (out, lse) if return_lse else out

    auto_cuda = backend == "auto" and q.is_cuda
    auto_cpu_flex = False
    if backend == "auto":
        if q.is_cuda:
            backend = "triton" if _triton_available() else "flex"
        elif os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("DIFFSPARSE_CPU_TRITON") == "1":
            backend = "triton"
        else:
            pays = cpu_native_pays(q, k, v, index, quantize, native_fn)
            res = _native(q, k, v, index, scale, native_fn) if pays else None
            if res is not None:
                return res if return_lse else res[0]
            if cpu_flex_pays(q, k, v, index, return_lse, quantize, flex_fn):
                backend, auto_cpu_flex = "flex", True
            else:
                backend = "torch"
    if quantize is not None and backend in ("flex", "reference"):  # no int8 path: emulate its numbers
        from .int8 import int8_block_sparse_attention

        def run(qd, kd, vv):
            return block_sparse_attention(qd, kd, vv, index, scale=scale, return_lse=True, backend=backend)

        res = int8_block_sparse_attention(q, k, v, index, scale=q.shape[-1] ** -0.5 if scale is None else scale,
                                          impl=backend, run=run)
        return res if return_lse else res[0]
    if backend == "triton":
        if not _triton_available():
            raise RuntimeError("backend='triton' requested but the triton package is not installed")
        try:
            return block_sparse_op(q, k, v, index, scale=scale, return_lse=return_lse, impl="triton", quantize=quantize)
        except Exception as e:  # a kernel that does not compile for this GPU/shape: say so, stay correct
            if not auto_cuda or type(e).__module__.split(".")[0] != "triton" or quantize is not None:
                raise
            warnings.warn(f"diffsparse: Triton kernel failed on {torch.cuda.get_device_name(q.device)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); using FlexAttention for this call")
            backend = "flex"
    if backend == "flex":
        from .flex import flex_block_sparse_attention

        if not auto_cpu_flex:
            return flex_block_sparse_attention(q, k, v, index, scale=scale, return_lse=return_lse, compiled_fn=flex_fn)
        try:
            return flex_block_sparse_attention(q, k, v, index, scale=scale, compiled_fn=flex_fn)
        except Exception as e:  # Inductor could not build it here (no C++ compiler, ...): our path, from now on
            _give_up(flex_fn, e, "compiled FlexAttention failed on this CPU", "our CPU path (backend='torch')")
            backend = "torch"
    if backend == "reference":
        return reference_attention(
            q, k, v, index.mask, (index.block_q, index.block_k), scale=scale, return_lse=return_lse,
            compute_dtype=torch.float64 if q.device.type == "cpu" else torch.float32,
        )
    return block_sparse_op(q, k, v, index, scale=scale, return_lse=return_lse, impl="torch", quantize=quantize)
