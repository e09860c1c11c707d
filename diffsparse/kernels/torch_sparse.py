"""Block-sparse attention in plain PyTorch that skips the work of dropped blocks (the CPU path).

Each (batch, head, query block) is a *row*. Rows are bucketed by how many key blocks they keep
(and whether they keep the partial last block); inside a bucket every row reads the same number
of key tokens, so the kept keys are gathered into a dense `(rows, L, D)` tensor and one fused
attention call (PyTorch's CPU flash kernel, which also returns the LSE) handles the whole bucket.
Rows that read every key skip the gather: their queries are concatenated per head instead.
Work and memory scale with the kept blocks; nothing is masked token by token. Autograd flows
through the gather and the fused op, so LoRA training works on this path too.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from .index import BlockIndex, num_blocks

# Bound on the gathered K+V elements per fused call (~256 MB in fp32): keeps memory flat at
# high density, where every query block would otherwise copy all keys.
_GATHER_BUDGET = 1 << 26


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense attention `(n, 1, Lq, D) x (n, 1, Lk, D)` -> out, lse `(n, 1, Lq)` float32."""
    if q.dtype in (torch.float32, torch.float16, torch.bfloat16) and q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v), lse.float()


def torch_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    scale: float | None = None,
    return_lse: bool = False,
):
    """q `(B,H,Sq,D)`, k/v `(B,H,Sk,D)`, index over `(Bm,Hm,nq,nk)` -> out `(B,H,Sq,Dv)` [, lse `(B,H,Sq)`]."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    bq, bk = index.block_q, index.block_k
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device

    n_rows = B * H * nq
    counts = index.counts.expand(B, H, nq).reshape(n_rows).long()
    width = index.indices.shape[-1]
    indices = index.indices.expand(B, H, nq, width).reshape(n_rows, width).long()
    head = torch.arange(B * H, device=dev).repeat_interleave(nq)
    tail = nk * bk - Sk  # padding tokens in the last key block
    live = torch.arange(width, device=dev) < counts.unsqueeze(1)
    reads_last = ((indices == nk - 1) & live).any(1) if tail else torch.zeros_like(counts, dtype=torch.bool)

    q_rows = torch.nn.functional.pad(q, (0, 0, 0, nq * bq - Sq)).reshape(n_rows, 1, bq, D)
    k_flat, v_flat = k.reshape(B * H, Sk, D), v.reshape(B * H, Sk, Dv)
    # Whole key blocks are gathered with one index each (contiguous bk x D copies).
    pad = (0, 0, 0, nk * bk - Sk)
    k_blocks = torch.nn.functional.pad(k, pad).reshape(B * H * nk, bk, D)
    v_blocks = torch.nn.functional.pad(v, pad).reshape(B * H * nk, bk, Dv)

    outs: List[torch.Tensor] = []
    lses: List[torch.Tensor] = []
    order: List[torch.Tensor] = []
    bucket = counts * 2 + reads_last.long()
    for key in torch.unique(bucket[counts > 0]).tolist():
        c, has_tail = key // 2, bool(key % 2)
        rows = torch.nonzero(bucket == key).flatten()
        if c == nk:  # rows reading every key: no gather, one call per head over its rows
            for h in torch.unique(head[rows]).tolist():
                r = rows[head[rows] == h]
                o, lse = _fused(q_rows[r].reshape(1, 1, -1, D), k_flat[h][None, None], v_flat[h][None, None], scale)
                outs.append(o.reshape(r.numel(), 1, bq, Dv))
                lses.append(lse.reshape(r.numel(), 1, bq))
                order.append(r)
            continue
        n_keys = c * bk - (tail if has_tail else 0)
        blocks = head[rows].unsqueeze(1) * nk + indices[rows, :c]  # (n, c) rows of k_blocks
        step = max(1, _GATHER_BUDGET // max(1, c * bk * (D + Dv)))
        for s in range(0, rows.numel(), step):
            r, flat = rows[s : s + step], blocks[s : s + step].reshape(-1)
            # Kept blocks are ascending, so the partial last block is last: trimming drops its padding.
            kk = k_blocks.index_select(0, flat).view(r.numel(), 1, c * bk, D)[:, :, :n_keys]
            vv = v_blocks.index_select(0, flat).view(r.numel(), 1, c * bk, Dv)[:, :, :n_keys]
            o, lse = _fused(q_rows[r], kk, vv, scale)
            outs.append(o)
            lses.append(lse)
            order.append(r)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        outs.append(q_rows.new_zeros(empty.numel(), 1, bq, Dv))
        lses.append(torch.full((empty.numel(), 1, bq), float("-inf"), device=dev))
        order.append(empty)

    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n_rows, device=dev)
    out = torch.cat(outs)[inverse].reshape(B, H, nq * bq, Dv)[:, :, :Sq].to(q.dtype)
    if not return_lse:
        return out
    lse = torch.cat(lses)[inverse].reshape(B, H, nq * bq)[:, :, :Sq].float()
    return out, lse
