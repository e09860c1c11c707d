"""Triton kernel for exact per-block attention mass (see `block_score.py` for the definition).

One program per (batch*head, query block) walks every key block: for each it recomputes the
logits of the block's token pairs, turns them into softmax weights with the row LSE it is given,
and stores their sum. One pass over QK^T, no normalisation pass, nothing materialised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .index import num_blocks


@triton.jit
def _mass_kernel(
    Q, K, LSE, OUT,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    slb, slh, sls,
    sob, soh, soq, sok,
    H, SQ, SK, D, NK, scale,
    BQ: tl.constexpr, BK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TILES_M: tl.constexpr, TILES_N: tl.constexpr, D_PAD: tl.constexpr, UPCAST: tl.constexpr,
):
    qb = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, D_PAD)
    for kb in range(0, NK):
        total = tl.sum(tl.zeros([BLOCK_M], tl.float32), 0)
        for tm in range(0, TILES_M):
            in_block = tm * BLOCK_M + tl.arange(0, BLOCK_M)
            rows = qb * BQ + in_block
            row_ok = (in_block < BQ) & (rows < SQ)
            q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqs + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            lse = tl.load(LSE + b * slb + h * slh + rows * sls, mask=row_ok, other=0.0)
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # empty rows hold no mass
            for tn in range(0, TILES_N):
                in_kblock = tn * BLOCK_N + tl.arange(0, BLOCK_N)
                cols = kb * BK + in_kblock
                col_ok = (in_kblock < BK) & (cols < SK)
                kT = tl.load(K + b * skb + h * skh + cols[None, :] * sks + offs_d[:, None] * skd,
                             mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
                if UPCAST:
                    s = tl.dot(q.to(tl.float32), kT.to(tl.float32), input_precision="ieee")
                else:
                    s = tl.dot(q, kT)
                p = tl.exp(s * scale - lse[:, None])
                p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
                total += tl.sum(tl.sum(p, 1), 0)
        tl.store(OUT + b * sob + h * soh + qb * soq + kb * sok, total)


def mass_config(dtype: torch.dtype, head_dim: int, bq: int, bk: int, gpu: bool) -> dict:
    """Constexprs of one `_mass_kernel` launch (Triton's default warps/stages); `gpu`: runs compiled on a GPU."""
    block_m = max(16, min(64, triton.next_power_of_2(bq)))
    block_n = max(16, min(64, triton.next_power_of_2(bk)))
    return dict(
        BQ=bq, BK=bk, BLOCK_M=block_m, BLOCK_N=block_n, TILES_M=-(-bq // block_m), TILES_N=-(-bk // block_n),
        D_PAD=max(16, triton.next_power_of_2(head_dim)),
        # fp32 inputs may use TF32 on GPU: masses only rank blocks. The CPU interpreter cannot
        # multiply bf16 (it reads the bit patterns as integers), so upcast there.
        UPCAST=dtype == torch.bfloat16 and not gpu,
    )


def mass_launch(q, k, lse, out, bq: int, bk: int, scale: float, gpu=None):
    """`(kernel, grid, args, kwargs)` of the launch on these tensors (any device, meta too; `gpu` default q.is_cuda)."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
    cfg = mass_config(q.dtype, D, bq, bk, q.is_cuda if gpu is None else gpu)
    args = (q, k, lse, out, *q.stride(), *k.stride(), *lse.stride(), *out.stride(), H, Sq, Sk, D, nk, scale)
    return _mass_kernel, (nq, B * H), args, cfg


def triton_block_mass(q, k, lse, bq: int, bk: int, scale: float) -> torch.Tensor:
    """Exact block masses `(B, H, nq, nk)` fp32 from q `(B,H,Sq,D)`, k `(B,H,Sk,D)` and row lse `(B,H,Sq)`."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    nq, nk = num_blocks(Sq, bq), num_blocks(Sk, bk)
    out = torch.empty(B, H, nq, nk, dtype=torch.float32, device=q.device)
    kernel, grid, args, kwargs = mass_launch(q, k, lse.float(), out, bq, bk, scale)
    kernel[grid](*args, **kwargs)
    return out
