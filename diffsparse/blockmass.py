"""Exact attention mass per block and top-mass block selection (AdaSpa search, PARO calibration).

The attention mass of a block is the sum of the softmax weights `exp(q.k * scale - lse_row)` of
its token pairs. Given each query row's log-sum-exp (one attention pass that returns LSE), one
more QK^T pass gives the exact mass of every block; with a cached LSE from an earlier step it is
the one-pass estimate AdaSpa calls "LSE-cached search". Block sums are taken per query row
(mass divided by the number of query rows in the block), so a partial last block is not
penalised and a row's masses add up to the share of its attention that falls on video keys.

The masses come from `kernels.block_scores` (the Triton block-score kernel on CUDA, a cache-sized
chunked PyTorch pass elsewhere), one pass per token order over the permuted tokens.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .kernels.block_score import block_scores


def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    block_q: int,
    block_k: int,
    orders: Sequence[Optional[torch.Tensor]] = (None,),
    scale: Optional[float] = None,
) -> List[torch.Tensor]:
    """Per-row attention mass of every block, summed over the batch, for one or more token orders.

    Args:
        q: `(B, H, N, D)` queries; k: `(B, H, N, D)` keys over the same N tokens (only these keys
            are scored; other keys, such as text, count through `lse`).
        lse: `(B, H, N)` row log-sum-exp over *all* keys the rows attend.
        orders: per result, the token order the blocks are cut from: None (the given order) or
            `(Hb, N)` token index per internal position, Hb in {1, H} (per-head orders).
    Returns one `(H, ceil(N / block_q), ceil(N / block_k))` fp32 tensor per order: the mass of each
    block divided by the number of query rows in it.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return [_kernel_mass(q, k, lse, block_q, block_k, order, scale) for order in orders]


def _kernel_mass(q, k, lse, block_q, block_k, order, scale, backend: str = "auto") -> torch.Tensor:
    B, H, n, D = q.shape
    if order is not None:
        idx = order.to(q.device).long()[None, :, :].expand(B, H, n)
        q = torch.gather(q, 2, idx[..., None].expand(B, H, n, D))
        k = torch.gather(k, 2, idx[..., None].expand(B, H, n, D))
        lse = torch.gather(lse, 2, idx)
    mass = block_scores(q, k, lse, (block_q, block_k), scale=scale, backend=backend).sum(0)
    rows = torch.clamp(n - torch.arange(mass.shape[1], device=q.device) * block_q, max=block_q).float()
    return mass / rows[None, :, None]


def select_blocks(mass: torch.Tensor, density: torch.Tensor | float, row_wise: bool = False) -> torch.Tensor:
    """Keep the blocks of largest mass: bool `(H, nq, nk)`.

    density: kept fraction per head `(H,)` (or one float). Global selection keeps
    `round(density * nq * nk)` blocks per head, at least one per query row: each row's best block
    is always kept, the rest of the budget goes to the largest masses. `row_wise` keeps
    `round(density * nk)` (at least 1) blocks in every query row. Ties go to the lower block index.
    """
    H, nq, nk = mass.shape
    density = torch.as_tensor(density, dtype=torch.float64).expand(H).clone().clamp(0.0, 1.0)
    if row_wise:
        keep_row = torch.round(density * nk).long().clamp(1, nk)
        rank = _rank(mass)  # (H, nq, nk): 0 = largest in its row
        return rank < keep_row[:, None, None]
    budget = torch.round(density * nq * nk).long().clamp(nq, nq * nk)
    score = mass.clone().float()
    best = score.argmax(-1, keepdim=True)
    score.scatter_(-1, best, float("inf"))
    rank = _rank(score.reshape(H, 1, nq * nk)).reshape(H, nq, nk)
    return rank < budget[:, None, None]


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Descending rank of every element along the last axis (stable: ties by index)."""
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order).contiguous())


def recall(mass: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Share of each head's mass inside the kept blocks: `(H,)`."""
    total = mass.sum((-1, -2)).clamp(min=1e-30)
    return (mass * keep).sum((-1, -2)) / total


def head_adaptive_sparsity(mass: torch.Tensor, sparsity: float, threshold: float = 0.8, row_wise: bool = False) -> torch.Tensor:
    """AdaSpa's per-head sparsity `(H,)`: with n heads whose recall at `sparsity` exceeds `threshold`,
    the n best heads get (1+s)/2, the n worst (3s-1)/2 (n capped at H // 2 so the sets are
    disjoint; the mean stays s whenever s >= 1/3, below that the dense side is clamped at 0)."""
    rec = recall(mass, select_blocks(mass, 1.0 - float(sparsity), row_wise))
    return sparsity_from_recall(rec, sparsity, threshold)


def sparsity_from_recall(rec: torch.Tensor, sparsity: float, threshold: float = 0.8) -> torch.Tensor:
    """The head-adaptive rule given each head's recall `(H,)` at the target sparsity (see above)."""
    H = rec.shape[0]
    s = float(sparsity)
    n = min(int((rec > threshold).sum()), H // 2)
    out = torch.full((H,), s, dtype=torch.float64)
    if n:
        order = torch.sort(rec, descending=True, stable=True).indices
        out[order[:n]] = (1.0 + s) / 2.0
        out[order[H - n :]] = max((3.0 * s - 1.0) / 2.0, 0.0)
    return out


def blocks_to_cover(mass: torch.Tensor, coverage: float) -> torch.Tensor:
    """Fraction of blocks needed (largest first) to hold `coverage` of each head's mass: `(H,)`."""
    H = mass.shape[0]
    flat = mass.reshape(H, -1)
    sorted_mass = torch.sort(flat, dim=-1, descending=True).values
    cum = torch.cumsum(sorted_mass, -1) / sorted_mass.sum(-1, keepdim=True).clamp(min=1e-30)
    needed = (cum < coverage - 1e-9).sum(-1) + 1
    return needed.clamp(max=flat.shape[1]).float() / flat.shape[1]
