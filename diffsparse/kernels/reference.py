"""Pure-PyTorch block-sparse attention: the definition every kernel is tested against.

Materialises the full token-level mask, so it is only for tests and small problems.
"""

from __future__ import annotations

import math

import torch

from .index import BlockSize, normalize_block_size


def expand_block_mask(block_mask: torch.Tensor, block_size: BlockSize, sq: int, sk: int) -> torch.Tensor:
    """Bool `(Bm, Hm, nq, nk)` block mask -> bool `(Bm, Hm, sq, sk)` token mask."""
    bq, bk = normalize_block_size(block_size)
    m = block_mask.bool().repeat_interleave(bq, dim=-2)[..., :sq, :]
    return m.repeat_interleave(bk, dim=-1)[..., :sk]


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: BlockSize = 128,
    scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
):
    """Masked softmax attention. q `(B,H,Sq,D)`, k/v `(B,H,Sk,D)`, block_mask `(Bm,Hm,nq,nk)`.

    Returns out `(B,H,Sq,D)` in q's dtype (and lse `(B,H,Sq)` float32). Rows with no kept key
    give out = 0 and lse = -inf. Differentiable through autograd.
    """
    sq, sk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = expand_block_mask(block_mask, block_size, sq, sk)
    s = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isinf(lse)
    p = torch.exp(s - torch.where(empty, 0.0, lse).unsqueeze(-1))
    out = torch.matmul(p, v.to(compute_dtype)).to(q.dtype)
    if return_lse:
        return out, lse.float()
    return out
