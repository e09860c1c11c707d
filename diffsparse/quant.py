"""Executing a block layout with an optional INT8 QK^T (PARO's `quantize="int8"`, any method).

The quantization itself (SageAttention-style K smoothing, per-block int8 scales) lives in
`kernels/int8.py`: the Triton backend runs a real int8 kernel, the PyTorch backend the same
numbers emulated. The FlexAttention and reference backends have no int8 path, so here they get
the quantize-dequantized values and the shift of the LSE undone, which gives the same result.
"""

from __future__ import annotations

from typing import Optional

import torch

from .kernels import BlockIndex, block_sparse_attention
from .kernels.int8 import dequantize_blocks, smooth_and_quantize

QUANTIZE = ("int8",)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    backend: str = "auto",
    quantize: Optional[str] = None,
    return_lse: bool = False,
):
    """`block_sparse_attention` on `(B, H, S, D)` internal-order tensors, optionally with INT8 QK."""
    if quantize is None:
        return block_sparse_attention(q, k, v, index, backend=backend, return_lse=return_lse)
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE} or None, got {quantize!r}")
    if backend in ("auto", "triton", "torch"):
        return block_sparse_attention(q, k, v, index, backend=backend, return_lse=return_lse, quantize=quantize)
    qq, qs, kq, ks, k_mean = smooth_and_quantize(q, k, index.block_q, index.block_k)
    qd = dequantize_blocks(qq, qs, index.block_q).to(q.dtype)
    kd = dequantize_blocks(kq, ks, index.block_k).to(k.dtype)
    res = block_sparse_attention(qd, kd, v, index, backend=backend, return_lse=return_lse)
    if not return_lse:
        return res
    out, lse = res
    shift = torch.matmul(q.float(), k_mean.transpose(-1, -2)).squeeze(-1) / q.shape[-1] ** 0.5
    return out, lse + shift
