"""Merging partial attentions by their log-sum-exp.

Attention over a key set split into disjoint parts A and B can be computed per part and merged:
with `lse = log(exp(lse_A) + exp(lse_B))`, `out = exp(lse_A - lse) * out_A + exp(lse_B - lse) * out_B`.
FlashBlock reuse merges a cached block-external part with freshly computed in-block attention;
joint text/video attention merges the text-key part with the video-key part.
"""

from __future__ import annotations

from typing import Tuple

import torch


def merge_attention(
    o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge two attentions over disjoint keys: o `(..., S, D)`, lse `(..., S)` -> (o in o1's dtype, lse fp32).

    A side with lse = -inf (no keys) contributes nothing; rows empty on both sides give o = 0, lse = -inf.
    """
    if o1.shape != o2.shape or l1.shape != l2.shape or o1.shape[:-1] != l1.shape:
        raise ValueError(f"merge_attention needs o (..., S, D) and lse (..., S) of equal shapes, got "
                         f"{tuple(o1.shape)}/{tuple(l1.shape)} and {tuple(o2.shape)}/{tuple(l2.shape)}")
    l1, l2 = l1.float(), l2.float()
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    total = w1 + w2
    lse = torch.where(total > 0, m + torch.log(total), torch.full_like(total, float("-inf")))
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = (w1 / safe).unsqueeze(-1) * o1.float() + (w2 / safe).unsqueeze(-1) * o2.float()
    return out.to(o1.dtype), lse
