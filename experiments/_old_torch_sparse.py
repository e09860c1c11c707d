"""Block-sparse attention in plain PyTorch that skips the work of dropped blocks (the CPU path).

Each (batch, head, query block) is a *row*. Rows are bucketed by how many key blocks they keep
(and whether they keep the partial last block); inside a bucket every row reads the same number
of key tokens, so the kept keys are gathered into a dense `(rows, L, D)` tensor and one fused
attention call (PyTorch's CPU flash kernel, which also returns the LSE) handles the whole bucket.
Rows that read every key skip the gather: their queries are concatenated per head instead.
Work and memory scale with the kept blocks; nothing is masked token by token.

The backward walks the same buckets with the fused kernel's backward and scatters the key/value
gradients of the gathered blocks back with `index_add_`. Short sequences (at most `MASKED_LIMIT`
score elements) instead run one fused call with an additive token mask: the same result, without
the per-bucket call overhead that dominates there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

from diffsparse.kernels.index import BlockIndex, num_blocks

# Bound on the gathered K+V elements per fused call (~16 MB in fp32): keeps memory flat at
# high density, where every query block would otherwise copy all keys.
_GATHER_BUDGET = 1 << 22
# Up to this many score elements (B*H*Sq*Sk) on CPU, one fused call with an additive token mask
# is cheaper than many small gathered calls (per-call overhead dominates short sequences).
MASKED_LIMIT = 1 << 22


def _use_masked(q: torch.Tensor, Sk: int) -> bool:
    B, H, Sq, _ = q.shape
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float16, torch.bfloat16) and B * H * Sq * Sk <= MASKED_LIMIT


def _token_mask(q: torch.Tensor, index: BlockIndex, Sq: int, Sk: int):
    """Additive mask `(Bm, Hm, Sq, Sk)` in q's dtype (0 kept, -inf dropped) and the empty rows `(Bm, Hm, Sq)`."""
    bq, bk = index.block_q, index.block_k
    keep = index.mask.repeat_interleave(bq, dim=-2)[..., :Sq, :].repeat_interleave(bk, dim=-1)[..., :Sk]
    add = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))
    empty = (index.counts == 0).repeat_interleave(bq, dim=-1)[..., :Sq]
    return add, empty


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense attention `(n, 1, Lq, D) x (n, 1, Lk, D)` -> out, lse `(n, 1, Lq)` float32."""
    if q.dtype in (torch.float32, torch.float16, torch.bfloat16) and q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v), lse.float()


def _fused_backward(do, q, k, v, out, lse, scale):
    """Gradients of `_fused`: (dq, dk, dv)."""
    if q.dtype in (torch.float32, torch.float16, torch.bfloat16) and q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            do, q, k, v, out, lse, 0.0, False, scale=scale)
    p = torch.exp(torch.matmul(q, k.transpose(-1, -2)) * scale - lse.unsqueeze(-1).to(q.dtype))
    dp = torch.matmul(do, v.transpose(-1, -2))
    ds = p * (dp - (do * out).sum(-1, keepdim=True))
    return torch.matmul(ds, k) * scale, torch.matmul(ds.transpose(-1, -2), q) * scale, torch.matmul(p.transpose(-1, -2), do)


@dataclass
class _Chunk:
    rows: torch.Tensor  # row ids (flat over B*H*nq)
    head: Optional[int]  # set for "reads every key" chunks: the (b*H + h) they share
    blocks: Optional[torch.Tensor]  # (n, c) flat key-block ids into (B*H*nk) for gathered chunks
    n_keys: int  # key tokens each row reads


class _Rows:
    """The row view of a layout for given q/k shapes, and its buckets of equal-work rows."""

    def __init__(self, index: BlockIndex, B: int, H: int, Sq: int, Sk: int, D: int, Dv: int, dev) -> None:
        bq, bk = index.block_q, index.block_k
        self.nq, self.nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
        self.n_rows = B * H * self.nq
        self.counts = index.counts.expand(B, H, self.nq).reshape(self.n_rows).long()
        width = index.indices.shape[-1]
        self.indices = index.indices.expand(B, H, self.nq, width).reshape(self.n_rows, width).long()
        self.head = torch.arange(B * H, device=dev).repeat_interleave(self.nq)
        self.tail = self.nk * bk - Sk  # padding tokens in the last key block
        live = torch.arange(width, device=dev) < self.counts.unsqueeze(1)
        if self.tail:
            self.reads_last = ((self.indices == self.nk - 1) & live).any(1)
        else:
            self.reads_last = torch.zeros_like(self.counts, dtype=torch.bool)
        self.bk, self.D, self.Dv = bk, D, Dv

    def chunks(self) -> Iterator[_Chunk]:
        bucket = self.counts * 2 + self.reads_last.long()
        for key in torch.unique(bucket[self.counts > 0]).tolist():
            c, has_tail = key // 2, bool(key % 2)
            rows = torch.nonzero(bucket == key).flatten()
            if c == self.nk:  # rows reading every key: no gather, one call per head over its rows
                for h in torch.unique(self.head[rows]).tolist():
                    yield _Chunk(rows[self.head[rows] == h], h, None, self.nk * self.bk - self.tail)
                continue
            n_keys = c * self.bk - (self.tail if has_tail else 0)
            blocks = self.head[rows].unsqueeze(1) * self.nk + self.indices[rows, :c]
            step = max(1, _GATHER_BUDGET // max(1, c * self.bk * (self.D + self.Dv)))
            for s in range(0, rows.numel(), step):
                yield _Chunk(rows[s : s + step], None, blocks[s : s + step], n_keys)

    def empty_rows(self) -> torch.Tensor:
        return torch.nonzero(self.counts == 0).flatten()


def _block_view(x: torch.Tensor, nk: int, bk: int) -> torch.Tensor:
    """`(B, H, S, D)` -> `(B*H*nk, bk, D)` key blocks (zero-padded)."""
    B, H, S, D = x.shape
    return torch.nn.functional.pad(x, (0, 0, 0, nk * bk - S)).reshape(B * H * nk, bk, D)


def _gather(blocks_t: torch.Tensor, ch: _Chunk, flat_t: torch.Tensor) -> torch.Tensor:
    """Keys/values a chunk reads: `(n, 1, n_keys, D)`."""
    n, D = ch.rows.numel(), blocks_t.shape[-1]
    if ch.head is not None:
        return flat_t[ch.head][None, None]
    # Kept blocks are ascending, so the partial last block is last: trimming drops its padding.
    c = ch.blocks.shape[1]
    # index_select on the 2-D (blocks, bk*D) view takes PyTorch's row-copy fast path (~6x faster
    # on CPU than on the 3-D view).
    rows = blocks_t.view(blocks_t.shape[0], -1).index_select(0, ch.blocks.reshape(-1))
    return rows.view(n, 1, c * blocks_t.shape[1], D)[:, :, : ch.n_keys]


def _chunk_q(x_rows: torch.Tensor, ch: _Chunk) -> torch.Tensor:
    """Query-side rows of a chunk: `(n, 1, bq, D)`, or `(1, 1, n*bq, D)` for a shared-head chunk."""
    x = x_rows[ch.rows]
    return x.reshape(1, 1, -1, x.shape[-1]) if ch.head is not None else x


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
    bq = index.block_q
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    dev = q.device
    if _use_masked(q, Sk):
        add, empty = _token_mask(q, index, Sq, Sk)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=add, scale=scale)
        out = torch.where(empty.unsqueeze(-1), torch.zeros((), dtype=out.dtype), out)
        lse = torch.where(empty, float("-inf"), lse.float())
        return (out, lse) if return_lse else out
    R = _Rows(index, B, H, Sq, Sk, D, Dv, dev)
    q_rows = torch.nn.functional.pad(q, (0, 0, 0, R.nq * bq - Sq)).reshape(R.n_rows, 1, bq, D)
    k_flat, v_flat = k.reshape(B * H, Sk, D), v.reshape(B * H, Sk, Dv)
    k_blocks, v_blocks = _block_view(k, R.nk, R.bk), _block_view(v, R.nk, R.bk)

    outs: List[torch.Tensor] = []
    lses: List[torch.Tensor] = []
    order: List[torch.Tensor] = []
    for ch in R.chunks():
        o, lse = _fused(_chunk_q(q_rows, ch), _gather(k_blocks, ch, k_flat), _gather(v_blocks, ch, v_flat), scale)
        n = ch.rows.numel()
        outs.append(o.reshape(n, 1, bq, Dv))
        lses.append(lse.reshape(n, 1, bq))
        order.append(ch.rows)
    empty = R.empty_rows()
    if empty.numel():
        outs.append(q_rows.new_zeros(empty.numel(), 1, bq, Dv))
        lses.append(torch.full((empty.numel(), 1, bq), float("-inf"), device=dev))
        order.append(empty)

    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(R.n_rows, device=dev)
    out = torch.cat(outs)[inverse].reshape(B, H, R.nq * bq, Dv)[:, :, :Sq].to(q.dtype)
    if not return_lse:
        return out
    lse = torch.cat(lses)[inverse].reshape(B, H, R.nq * bq)[:, :, :Sq].float()
    return out, lse


def torch_block_sparse_backward(q, k, v, out, lse, dout, index: BlockIndex, scale: float):
    """(dq, dk, dv) of `torch_block_sparse_attention` given its out and lse `(B, H, Sq)`."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    bq = index.block_q
    dev = q.device
    if _use_masked(q, Sk):
        add, _ = _token_mask(q, index, Sq, Sk)
        # Empty rows: out 0 and a finite lse make their probabilities exp(-inf - 0) = 0.
        lse0 = torch.where(torch.isfinite(lse), lse.float(), 0.0)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype).contiguous(), q, k, v, out.to(q.dtype), lse0, 0.0, False, attn_mask=add, scale=scale)
    R = _Rows(index, B, H, Sq, Sk, D, Dv, dev)

    def rows_of(x):
        return torch.nn.functional.pad(x, (0, 0, 0, R.nq * bq - Sq)).reshape(R.n_rows, 1, bq, x.shape[-1])

    q_rows, o_rows, do_rows = rows_of(q), rows_of(out.to(q.dtype)), rows_of(dout.to(q.dtype))
    # Padded query rows get lse 0: their dout is 0, so they contribute nothing.
    lse_rows = torch.nn.functional.pad(lse.float(), (0, R.nq * bq - Sq)).reshape(R.n_rows, 1, bq)
    lse_rows = torch.where(torch.isfinite(lse_rows), lse_rows, torch.zeros_like(lse_rows))
    k_flat, v_flat = k.reshape(B * H, Sk, D), v.reshape(B * H, Sk, Dv)
    k_blocks, v_blocks = _block_view(k, R.nk, R.bk), _block_view(v, R.nk, R.bk)

    dq_rows = torch.zeros_like(q_rows)
    dk_blocks = torch.zeros(B * H * R.nk, R.bk, D, dtype=torch.float32, device=dev)
    dv_blocks = torch.zeros(B * H * R.nk, R.bk, Dv, dtype=torch.float32, device=dev)
    for ch in R.chunks():
        n = ch.rows.numel()
        lse_c = lse_rows[ch.rows]
        lse_c = lse_c.reshape(1, 1, -1) if ch.head is not None else lse_c
        dq, dk, dv = _fused_backward(_chunk_q(do_rows, ch), _chunk_q(q_rows, ch), _gather(k_blocks, ch, k_flat),
                                     _gather(v_blocks, ch, v_flat), _chunk_q(o_rows, ch), lse_c, scale)
        dq_rows[ch.rows] = dq.reshape(n, 1, bq, D)
        if ch.head is not None:
            seg = slice(ch.head * R.nk, (ch.head + 1) * R.nk)
            dk_blocks[seg].view(-1, D)[: ch.n_keys] += dk[0, 0].float()
            dv_blocks[seg].view(-1, Dv)[: ch.n_keys] += dv[0, 0].float()
            continue
        c = ch.blocks.shape[1]
        pad = (0, 0, 0, c * R.bk - ch.n_keys)
        flat = ch.blocks.reshape(-1)
        dk_blocks.index_add_(0, flat, torch.nn.functional.pad(dk[:, 0].float(), pad).reshape(n * c, R.bk, D))
        dv_blocks.index_add_(0, flat, torch.nn.functional.pad(dv[:, 0].float(), pad).reshape(n * c, R.bk, Dv))
    dq = dq_rows.reshape(B, H, R.nq * bq, D)[:, :, :Sq]
    dk = dk_blocks.reshape(B, H, R.nk * R.bk, D)[:, :, :Sk].to(k.dtype)
    dv = dv_blocks.reshape(B, H, R.nk * R.bk, Dv)[:, :, :Sk].to(v.dtype)
    return dq, dk, dv
