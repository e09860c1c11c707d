"""Block layouts from token rules: the bridge between methods (token geometry) and kernels (blocks).

A method describes its sparsity on tokens: it orders the video tokens (an optional permutation),
cuts them into *cells* (a frame, a tile, a group) and gives a rule saying whether a query piece
may attend a key piece. Here the ordered sequence is cut into *segments* - maximal runs inside one
kernel block and one cell - and the rule is evaluated on every pair of segments; a block is kept
when any of its segment pairs is. The rule sees, per segment, the min and max of per-token
features (frame index, in-frame index, coordinates, ...), so it can be exact for box-shaped pieces
and conservative (never drops an allowed pair) otherwise. Work is O(#segments^2), chunked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from .kernels.index import num_blocks

Features = Dict[str, torch.Tensor]
SegmentRule = Callable[[Features, Features, Features, Features], torch.Tensor]

# Pairs of segments evaluated per chunk; bounds peak memory of the rule's temporaries.
_PAIR_BUDGET = 1 << 24


@dataclass(frozen=True)
class Segments:
    """Runs of the ordered sequence inside one block and one cell; features reduced per run."""

    block: torch.Tensor  # (n,) block id of each segment
    fmin: Features  # name -> (n,) min of the feature over the segment
    fmax: Features  # name -> (n,) max


def make_segments(cell: torch.Tensor, features: Features, block: int) -> Segments:
    """Cut an ordered token sequence into segments.

    Args:
        cell: `(N,)` cell id of each token, in the internal (already permuted) order.
        features: name -> `(N,)` integer feature of each token, same order.
        block: kernel block size along this side.
    """
    n = cell.shape[0]
    blk = torch.arange(n, device=cell.device) // block
    starts = torch.ones(n, dtype=torch.bool, device=cell.device)
    starts[1:] = (cell[1:] != cell[:-1]) | (blk[1:] != blk[:-1])
    seg_id = torch.cumsum(starts.long(), 0) - 1
    count = int(seg_id[-1]) + 1 if n else 0
    fmin, fmax = {}, {}
    for name, f in features.items():
        f = f.long()
        fmin[name] = torch.full((count,), torch.iinfo(torch.long).max, dtype=torch.long, device=cell.device).scatter_reduce(
            0, seg_id, f, "amin"
        )
        fmax[name] = torch.full((count,), torch.iinfo(torch.long).min, dtype=torch.long, device=cell.device).scatter_reduce(
            0, seg_id, f, "amax"
        )
    return Segments(blk[starts], fmin, fmax)


def block_mask_from_rule(qs: Segments, ks: Segments, rule: SegmentRule, nq: int, nk: int) -> torch.Tensor:
    """Bool `(nq, nk)`: block (i, j) kept iff `rule` allows any (query segment in i, key segment in j)."""
    flat = torch.zeros(nq * nk, dtype=torch.bool, device=qs.block.device)
    m = ks.block.shape[0]
    rows = max(1, _PAIR_BUDGET // max(1, m))
    kmin = {k: v.unsqueeze(0) for k, v in ks.fmin.items()}
    kmax = {k: v.unsqueeze(0) for k, v in ks.fmax.items()}
    for s in range(0, qs.block.shape[0], rows):
        qmin = {k: v[s : s + rows].unsqueeze(1) for k, v in qs.fmin.items()}
        qmax = {k: v[s : s + rows].unsqueeze(1) for k, v in qs.fmax.items()}
        allowed = rule(qmin, qmax, kmin, kmax)
        pair = qs.block[s : s + rows].unsqueeze(1) * nk + ks.block.unsqueeze(0)
        flat[pair[allowed.expand_as(pair)]] = True
    return flat.view(nq, nk)


def interval_gap(a0: torch.Tensor, a1: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """Smallest |a - b| for a in [a0, a1], b in [b0, b1] (0 when the intervals overlap)."""
    return torch.clamp(torch.maximum(b0 - a1, a0 - b1), min=0)


def window_reaches(q0, q1, k0, k1, length: int, size: int, inward: bool) -> torch.Tensor:
    """Whether a query interval's windows reach a key interval along one axis.

    A query at x sees keys `[x - size//2, x - size//2 + size - 1]` (NATTEN's neighbourhood; for
    even sizes one more key before x than after), clipped to [0, length). With `inward` the window
    is shifted inside the axis at the borders so it keeps its full size (NATTEN, FreeSwim, STA):
    start = clamp(x - size//2, 0, length - size). Window starts grow by at most 1 per step of
    x, so the union over [q0, q1] is one interval [start(q0), start(q1) + size - 1].
    """
    if size >= length:
        return torch.ones(torch.broadcast_shapes(q0.shape, k0.shape), dtype=torch.bool, device=q0.device)
    lo, hi = q0 - size // 2, q1 - size // 2
    if inward:
        lo, hi = lo.clamp(0, length - size), hi.clamp(0, length - size)
    return (k1 >= lo) & (k0 <= hi + size - 1)


def video_block_mask(
    cell: torch.Tensor, features: Features, rule: SegmentRule, block_q: int, block_k: int
) -> torch.Tensor:
    """Bool `(nq, nk)` block mask over the ordered video tokens for a segment rule."""
    n = cell.shape[0]
    qs = make_segments(cell, features, block_q)
    ks = qs if block_k == block_q else make_segments(cell, features, block_k)
    return block_mask_from_rule(qs, ks, rule, num_blocks(n, block_q), num_blocks(n, block_k))
