"""Per-block attention mass: exact (given each row's LSE, one QK^T pass) or pooled (cheap estimate).

`block_scores(q, k, lse, block_size)` -> `(B, H, nq, nk)` fp32, the sum over the block's token
pairs of the softmax weight `exp(q.k * scale - lse_row)`. With the LSE of a full attention pass
(or one cached from an earlier step, AdaSpa's "LSE-cached search"), every row's masses add up to
the share of its attention that falls on these keys, so picking the blocks of largest mass is
picking the exact top-attention blocks. `mode="pooled"` instead scores blocks from mean-pooled q
and k (one small matmul, no LSE needed): softmax over key blocks of `mean_q . mean_k * scale` plus
log(tokens in the key block), times the query rows in the block - a cheap estimate on the same scale.

The exact mode runs a Triton kernel on CUDA (or under `TRITON_INTERPRET=1` when asked) and a
chunked PyTorch pass elsewhere; both give the same numbers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .index import BlockSize, normalize_block_size, num_blocks

MODES = ("exact", "pooled")
# Probability elements per PyTorch chunk (4 MB fp32): written, exponentiated and summed while in cache.
# (B 1, H 4, S 6400, blocks of 64 on 2 cores: 143 ms at 1M-4M elements, 342 ms at 16M; dense SDPA 143 ms.)
_CHUNK = 1 << 20


def _exact_torch(q, k, lse, bq, bk, scale):
    """Chunks of whole query blocks: P = exp(q.k * scale - lse) written once by `baddbmm` and
    exponentiated in place, then summed over key blocks and query rows by views (no padded copies,
    no scatter). Chunks of `_CHUNK` probability elements stay in cache across the three passes."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
    out = torch.zeros(B, H, nq, nk, dtype=torch.float32, device=q.device)
    if Sq == 0 or Sk == 0:
        return out
    neg_lse = -torch.where(torch.isinf(lse), float("inf"), lse.float()).reshape(B * H, Sq, 1)  # empty rows: exp(-inf)
    qf, kT = q.float().reshape(B * H, Sq, D), k.float().reshape(B * H, Sk, D).transpose(1, 2)
    full = (Sk // bk) * bk
    blocks = max(1, _CHUNK // (B * H * Sk * bq))  # query blocks per chunk
    for b0 in range(0, nq, blocks):
        s, e = b0 * bq, min(Sq, (b0 + blocks) * bq)
        p = torch.baddbmm(neg_lse[:, s:e].expand(-1, -1, Sk), qf[:, s:e], kT, alpha=scale).exp_()
        cols = p[..., :full].unflatten(-1, (full // bk, bk)).sum(-1)  # (BH, rows, whole key blocks)
        if full < Sk:
            cols = torch.cat([cols, p[..., full:].sum(-1, keepdim=True)], -1)
        rows = e - s
        nb = -(-rows // bq)
        if rows % bq:
            cols = torch.nn.functional.pad(cols, (0, 0, 0, nb * bq - rows))
        out[:, :, b0 : b0 + nb] = cols.view(B, H, nb, bq, nk).sum(3)
    return out


def _pooled(q, k, bq, bk, scale):
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)

    def pool(x, block, n):
        S = x.shape[2]
        xs = torch.nn.functional.pad(x.float(), (0, 0, 0, n * block - S)).view(B, H, n, block, D).sum(-2)
        sizes = torch.clamp(S - torch.arange(n, device=x.device) * block, max=block).float()
        return xs / sizes[:, None], sizes

    qm, q_rows = pool(q, bq, nq)
    km, k_sizes = pool(k, bk, nk)
    logits = torch.matmul(qm, km.transpose(-1, -2)) * scale + torch.log(k_sizes)
    return torch.softmax(logits, dim=-1) * q_rows[:, None]


def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: Optional[torch.Tensor] = None,
    block_size: BlockSize = 128,
    *,
    scale: Optional[float] = None,
    mode: str = "exact",
    backend: str = "auto",
) -> torch.Tensor:
    """Attention mass per block.

    Args:
        q: `(B, H, Sq, D)`; k: `(B, H, Sk, D)`.
        lse: `(B, H, Sq)` natural-log softmax denominators of the rows (required for "exact");
            rows with lse = -inf (no keys) contribute nothing.
        block_size: int or `(bq, bk)`.
        mode: "exact" | "pooled".
        backend: "auto" (Triton on CUDA, PyTorch elsewhere), "triton" or "torch" (exact mode).
    Returns:
        `(B, H, ceil(Sq/bq), ceil(Sk/bk))` fp32 block masses.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown backend {backend!r}; choose one of ('auto', 'triton', 'torch')")
    bq, bk = normalize_block_size(block_size)
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q (B,H,Sq,D) and k (B,H,Sk,D) must agree, got {tuple(q.shape)} and {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if mode == "pooled":
        return _pooled(q, k, bq, bk, scale)
    if lse is None or tuple(lse.shape) != tuple(q.shape[:3]):
        raise ValueError(f"mode='exact' needs lse of shape {tuple(q.shape[:3])}, got "
                         f"{None if lse is None else tuple(lse.shape)}")
    if backend == "triton" or (backend == "auto" and q.is_cuda):
        from .triton_block_score import triton_block_mass

        return triton_block_mass(q, k, lse, bq, bk, scale)
    return _exact_torch(q, k, lse, bq, bk, scale)
