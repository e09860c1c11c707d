"""Block-sparse attention in plain PyTorch that skips the work of dropped blocks.

This is the CPU path (and the fallback wherever Triton is unavailable). Each (batch, head,
query block) is a "row". Rows are sorted by how many key blocks they keep, so the loop over
key-block slots only touches the rows that still have blocks left: the work is proportional
to the kept blocks, not to the full `nq x nk` grid. Softmax is computed online (running max
and sum, as in FlashAttention), in float32, and written without in-place updates so autograd
can differentiate it (LoRA training on CPU).
"""

from __future__ import annotations

import math

import torch

from .index import BlockIndex, num_blocks

# Upper bound on the floats in one slot-chunk's score tensor; bounds peak memory (~128 MB).
_SCORE_BUDGET = 1 << 25


def torch_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    scale: float | None = None,
    return_lse: bool = False,
):
    """q `(B,H,Sq,D)`, k/v `(B,H,Sk,D)`, index over `(Bm,Hm,nq,nk)` -> out `(B,H,Sq,D)` [, lse `(B,H,Sq)`]."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    bq, bk = index.block_q, index.block_k
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype

    rows = B * H * nq
    counts = index.counts.expand(B, H, nq).reshape(rows)
    width = index.indices.shape[-1]
    indices = index.indices.expand(B, H, nq, width).reshape(rows, width).long()
    head_of_row = torch.arange(B * H, device=q.device).repeat_interleave(nq)

    order = torch.argsort(counts, descending=True, stable=True)
    counts_s = counts[order]
    active_per_slot = (counts_s.unsqueeze(0) > torch.arange(width, device=q.device).unsqueeze(1)).sum(1).tolist()

    qr = torch.nn.functional.pad(q.to(cdt), (0, 0, 0, nq * bq - Sq)).reshape(rows, bq, D)[order]
    kb = torch.nn.functional.pad(k.to(cdt), (0, 0, 0, nk * bk - Sk)).reshape(B * H, nk, bk, D)
    vb = torch.nn.functional.pad(v.to(cdt), (0, 0, 0, nk * bk - Sk)).reshape(B * H, nk, bk, Dv)
    idx_s = indices[order]
    head_s = head_of_row[order]
    key_pos = torch.arange(bk, device=q.device)

    m = torch.full((rows, bq), float("-inf"), dtype=cdt, device=q.device)
    l = torch.zeros((rows, bq), dtype=cdt, device=q.device)
    acc = torch.zeros((rows, bq, Dv), dtype=cdt, device=q.device)

    start = 0
    max_count = int(counts_s[0]) if rows else 0
    while start < max_count:
        n = active_per_slot[start]
        chunk = max(1, min(max_count - start, _SCORE_BUDGET // max(1, n * bq * bk)))
        slots = idx_s[:n, start : start + chunk]  # (n, c)
        c = slots.shape[1]
        live = (torch.arange(start, start + c, device=q.device) < counts_s[:n, None])  # (n, c)
        keep = live.unsqueeze(-1) & (slots.unsqueeze(-1) * bk + key_pos < Sk)  # (n, c, bk)
        kk = kb[head_s[:n, None], slots].reshape(n, c * bk, D)
        vv = vb[head_s[:n, None], slots].reshape(n, c * bk, Dv)
        s = torch.matmul(qr[:n], kk.transpose(1, 2)) * scale  # (n, bq, c*bk)
        s = s.masked_fill(~keep.reshape(n, 1, c * bk), float("-inf"))

        m_old = m[:n]
        m_new = torch.maximum(m_old, s.amax(-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(s - m_safe.unsqueeze(-1))
        alpha = torch.exp(m_old - m_safe)
        l = torch.cat([l[:n] * alpha + p.sum(-1), l[n:]])
        acc = torch.cat([acc[:n] * alpha.unsqueeze(-1) + torch.matmul(p, vv), acc[n:]])
        m = torch.cat([m_new, m[n:]])
        start += c

    empty = l == 0
    out_s = acc / torch.where(empty, torch.ones_like(l), l).unsqueeze(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=q.device)
    out = out_s[inverse].reshape(B, H, nq * bq, Dv)[:, :, :Sq].to(q.dtype)
    if not return_lse:
        return out
    lse_s = torch.where(empty, torch.full_like(m, float("-inf")), m + torch.log(torch.where(empty, torch.ones_like(l), l)))
    lse = lse_s[inverse].reshape(B, H, nq * bq)[:, :, :Sq].float()
    return out, lse
