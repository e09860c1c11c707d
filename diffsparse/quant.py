"""Executing a block layout with an optional INT8 QK^T (PARO's `quantize="int8"`).

INT8 QK follows SageAttention's recipe: K is smoothed (its mean over tokens is subtracted, which
leaves softmax unchanged because it shifts every logit of a row by the same amount), then Q and K
are quantized symmetrically to int8 with one scale per (batch, head, block). When the kernel
entry point accepts `quantize=` (the Triton INT8 kernel), it does this on the GPU; otherwise the
values are quantized and dequantized here and the ordinary kernel runs on them, which gives the
same numbers as an int8 GEMM with fp32 accumulation (products of int8 values sum exactly in fp32
for head dims up to 1024) but no speed-up.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Optional

import torch

from .kernels import BlockIndex, block_sparse_attention
from .kernels.index import num_blocks

QUANTIZE = ("int8",)


@lru_cache(maxsize=1)
def _kernel_quantizes() -> bool:
    return "quantize" in inspect.signature(block_sparse_attention).parameters


def fake_quantize_blocks(x: torch.Tensor, block: int, bits: int = 8) -> torch.Tensor:
    """Symmetric per-(batch, head, block) quantize-dequantize of `(B, H, S, D)` along S blocks."""
    B, H, S, D = x.shape
    n = num_blocks(S, block)
    xf = torch.nn.functional.pad(x.float(), (0, 0, 0, n * block - S)).view(B, H, n, block, D)
    qmax = 2 ** (bits - 1) - 1
    scale = xf.abs().amax(dim=(-1, -2), keepdim=True).clamp(min=1e-12) / qmax
    out = torch.round(xf / scale).clamp(-qmax, qmax) * scale
    return out.view(B, H, n * block, D)[:, :, :S].to(x.dtype)


def int8_qk(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int):
    """(q, k, k_mean) `(B, H, S, D)`: Q and smoothed K after INT8 quantize-dequantize per block."""
    k_mean = k.mean(dim=2, keepdim=True)
    return fake_quantize_blocks(q, block_q), fake_quantize_blocks(k - k_mean, block_k), k_mean


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
    if _kernel_quantizes():
        return block_sparse_attention(q, k, v, index, backend=backend, return_lse=return_lse, quantize=quantize)
    qq, kq, k_mean = int8_qk(q, k, index.block_q, index.block_k)
    res = block_sparse_attention(qq, kq, v, index, backend=backend, return_lse=return_lse)
    if not return_lse:
        return res
    out, lse = res
    # Undo the smoothing shift so the LSE is comparable across calls (FlashBlock merges them).
    shift = torch.matmul(q.float(), k_mean.float().transpose(-1, -2)).squeeze(-1) / q.shape[-1] ** 0.5
    return out, lse + shift
