"""Block-sparse FlashAttention in Triton: forward (O and LSE) and backward (dQ, dK, dV).

The layout arrives as CSR lists (`BlockIndex`): for every (batch, head, query block) the number of
kept key blocks and their ids. The forward program of one query tile walks that list with an
online softmax (FlashAttention-2), so its work is proportional to the kept blocks. The backward
splits like FlashAttention-2: one kernel accumulates dQ walking the same list, one accumulates
dK/dV per key tile walking the *transposed* list (the query blocks that read the key block).

Any layout block size works: a layout block of `bq` query rows is covered by tiles of
`BLOCK_M = min(next_pow2(bq), cap)` rows (several tiles if bq > cap, masked rows if bq is not a
power of two; on GPUs cap 128, or 64 for wide heads and the backward, 32 for fp32, except where
`SM90_MEASURED` sets a Hopper launch from measurements); key blocks
likewise. Head dims are padded to a power of two (any width). Sequence ends are masked, so lengths
need not be block multiples. `kernel_config` is the whole launch choice (tiles, warps, stages) as a
pure function; `eval/aot_check.py` compiles every choice for sm_80 and sm_90 without a GPU.

Math is in base 2 (`exp2`, scale folded with log2(e)) like the Triton fused-attention tutorial;
the LSE handed back is in natural log. Rows that keep no block return out = 0 and lse = -inf.
With `TRITON_INTERPRET=1` the same kernels run on the CPU (tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .index import num_blocks

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(x: int, lo: int = 16, hi: int = 128) -> int:
    return max(lo, min(hi, triton.next_power_of_2(x)))


def _arch_major(device: torch.device):
    """Compute capability major of the GPU a launch runs on; None under the interpreter or off CUDA."""
    if _interpreting() or device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)[0]


def _launch_opts(block_m: int, arch_major) -> dict:
    """Warps/stages for compute capability major `arch_major` (None: interpreter/CPU, Triton's defaults):
    8 warps for 128-row tiles, else 4, and 3 pipeline stages for 128-wide tiles on Ampere and newer,
    2 otherwise. (4 warps on 128x128 tiles left ptxas ~40 KB of register spills per thread at D 128 on
    sm_80; 8 warps spill nothing there or on sm_90: eval/aot_check.py.)"""
    if arch_major is None:
        return {}
    big = block_m >= 128
    return {"num_warps": 8 if big else 4, "num_stages": 3 if (big and arch_major >= 8) else 2}


# Launches measured on a Hopper GPU (H200, Triton 3.6, bf16, Wan 480p radial and dense layouts, block 128;
# eval/gpu_tune.py -> eval/results/gpu/kernel_tune.txt): (pass, padded head dim) -> tile caps (rows,
# keys), warps, stages. They replace the generic rule above for 16-bit inputs on sm_90 only, for layout
# blocks at least as large as the tiles (smaller blocks were not measured). "bwd" serves both backward
# kernels; a "bwd_dq" or "bwd_dkdv" entry, when present, overrides it for that kernel alone.
#   fwd  D128: 128x128, 8 warps, 3 stages (the generic rule; every other candidate was slower)
#   fwd  D64 : 128x64, 4 warps: 6.4 ms where the generic 128x128 / 8 warps took 7.5
#   bwd  D128: 128x128, 8 warps, 2 stages: dQ 8.8 -> 8.4 ms, dK/dV 14.0 -> 12.5 ms against 64x64 / 4 warps
#              (3 stages do not fit 227 KB of shared memory)
SM90_MEASURED = {
    ("fwd", 128): (128, 128, 8, 3),
    ("fwd", 64): (128, 64, 4, 3),
    ("bwd", 128): (128, 128, 8, 2),
}


@triton.jit
def _mm(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """`tl.dot` with fp32 accumulation; fp32 inputs exactly (no TF32), bf16 upcast in the interpreter."""
    if UPCAST:  # the CPU interpreter multiplies bf16 bit patterns as integers
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, COUNTS, INDICES, QS, KS,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sob, soh, sos, sod,
    slb, slh, sls,
    scb, sch, scq,
    sib, sih, siq, sij,
    sqsb, sqsh, sqsq,
    sksb, sksh, sksk,
    H, SQ, SK, D, DV, scale_log2,
    BQ: tl.constexpr, BK: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    QUANT: tl.constexpr, FP32_IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    qb = pid_m // TILES_M  # layout query block
    sub = pid_m % TILES_M  # tile inside it
    in_block = sub * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = qb * BQ + in_block
    row_ok = (in_block < BQ) & (rows < SQ)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqs + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if QUANT:
        q_scale = tl.load(QS + b * sqsb + h * sqsh + qb * sqsq)
    count = tl.load(COUNTS + b * scb + h * sch + qb * scq)
    idx_base = INDICES + b * sib + h * sih + qb * siq

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    for j in range(0, count):
        kb = tl.load(idx_base + j * sij)
        if QUANT:
            k_scale = tl.load(KS + b * sksb + h * sksh + kb * sksk)
        for t in range(0, TILES_N):
            in_kblock = t * BLOCK_N + tl.arange(0, BLOCK_N)
            cols = kb * BK + in_kblock
            col_ok = (in_kblock < BK) & (cols < SK)
            k = tl.load(K + b * skb + h * skh + cols[None, :] * sks + offs_d[:, None] * skd,
                        mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # (D_PAD, BLOCK_N)
            if QUANT:
                s = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32) * (q_scale * k_scale * scale_log2)
            else:
                s = _mm(q, k, FP32_IEEE, UPCAST) * scale_log2
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen only masked columns keeps m = -inf: use 0 as its reference.
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_ref)
            p = tl.exp2(s - m_ref[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + cols[:, None] * svs + offs_dv[None, :] * svd,
                        mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
            acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, FP32_IEEE, UPCAST)
            m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(O + b * sob + h * soh + rows[:, None] * sos + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + b * slb + h * slh + rows * sls, lse, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, COUNTS, INDICES,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdb, sdh, sds, sdd,
    slb, slh, sls,
    scb, sch, scq,
    sib, sih, siq, sij,
    H, SQ, SK, D, DV, scale,
    BQ: tl.constexpr, BK: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    FP32_IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    qb = pid_m // TILES_M
    sub = pid_m % TILES_M
    in_block = sub * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = qb * BQ + in_block
    row_ok = (in_block < BQ) & (rows < SQ)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqs + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sds + offs_dv[None, :] * sdd,
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + b * slb + h * slh + rows * sls, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + b * slb + h * slh + rows * sls, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)  # rows with no kept block have no work anyway
    count = tl.load(COUNTS + b * scb + h * sch + qb * scq)
    idx_base = INDICES + b * sib + h * sih + qb * siq

    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for j in range(0, count):
        kb = tl.load(idx_base + j * sij)
        for t in range(0, TILES_N):
            in_kblock = t * BLOCK_N + tl.arange(0, BLOCK_N)
            cols = kb * BK + in_kblock
            col_ok = (in_kblock < BK) & (cols < SK)
            kT = tl.load(K + b * skb + h * skh + cols[None, :] * sks + offs_d[:, None] * skd,
                         mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
            vT = tl.load(V + b * svb + h * svh + cols[None, :] * svs + offs_dv[:, None] * svd,
                         mask=col_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)
            s = _mm(q, kT, FP32_IEEE, UPCAST)
            dp = _mm(do, vT, FP32_IEEE, UPCAST)
            p = tl.exp(s * scale - lse[:, None])
            p = tl.where(col_ok[None, :] & row_ok[:, None], p, 0.0)
            ds = p * (dp - delta[:, None])
            dq += _mm(ds.to(kT.dtype), tl.trans(kT), FP32_IEEE, UPCAST)
    tl.store(DQ + b * sqb + h * sqh + rows[:, None] * sqs + offs_d[None, :] * sqd, (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_OUT, TCOUNTS, TINDICES,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdb, sdh, sds, sdd,
    slb, slh, sls,
    scb, sch, sck,
    sib, sih, sik, sij,
    H, SQ, SK, D, DV, scale,
    BQ: tl.constexpr, BK: tl.constexpr, TILES_M: tl.constexpr, TILES_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    FP32_IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kb = pid_n // TILES_N
    sub = pid_n % TILES_N
    in_kblock = sub * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = kb * BK + in_kblock
    col_ok = (in_kblock < BK) & (cols < SK)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)

    k = tl.load(K + b * skb + h * skh + cols[:, None] * sks + offs_d[None, :] * skd,
                mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # (BLOCK_N, D_PAD)
    v = tl.load(V + b * svb + h * svh + cols[:, None] * svs + offs_dv[None, :] * svd,
                mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    count = tl.load(TCOUNTS + b * scb + h * sch + kb * sck)
    idx_base = TINDICES + b * sib + h * sih + kb * sik

    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)
    for j in range(0, count):
        qb = tl.load(idx_base + j * sij)
        for t in range(0, TILES_M):
            in_block = t * BLOCK_M + tl.arange(0, BLOCK_M)
            rows = qb * BQ + in_block
            row_ok = (in_block < BQ) & (rows < SQ)
            qT = tl.load(Q + b * sqb + h * sqh + rows[None, :] * sqs + offs_d[:, None] * sqd,
                         mask=row_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # (D_PAD, BLOCK_M)
            do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sds + offs_dv[None, :] * sdd,
                         mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)  # (BLOCK_M, DV_PAD)
            lse = tl.load(LSE + b * slb + h * slh + rows * sls, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + b * slb + h * slh + rows * sls, mask=row_ok, other=0.0)
            sT = _mm(k, qT, FP32_IEEE, UPCAST)
            dpT = _mm(v, tl.trans(do), FP32_IEEE, UPCAST)
            pT = tl.exp(sT * scale - lse[None, :])
            pT = tl.where(col_ok[:, None] & row_ok[None, :], pT, 0.0)
            dsT = pT * (dpT - delta[None, :])
            dv += _mm(pT.to(do.dtype), do, FP32_IEEE, UPCAST)
            dk += _mm(dsT.to(qT.dtype), tl.trans(qT), FP32_IEEE, UPCAST)
    tl.store(DK + b * skb + h * skh + cols[:, None] * sks + offs_d[None, :] * skd, (dk * scale).to(DK.dtype.element_ty),
             mask=col_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_OUT + b * svb + h * svh + cols[:, None] * svs + offs_dv[None, :] * svd, dv.to(DV_OUT.dtype.element_ty),
             mask=col_ok[:, None] & (offs_dv[None, :] < DV))


def _tiles(bq: int, bk: int, cap_m: int = 128, cap_n=None):
    """Tile sides (power of two, at most the caps; `cap_n` defaults to `cap_m`) and tiles per layout block."""
    block_m, block_n = _pow2(bq, hi=cap_m), _pow2(bk, hi=cap_m if cap_n is None else cap_n)
    return block_m, block_n, -(-bq // block_m), -(-bk // block_n)


def _tile_cap(dtype: torch.dtype, d_pad: int, backward: bool, interpret=None) -> int:
    """Largest tile side that keeps the pipelined tiles in shared memory and registers: 128 for 16-bit
    inputs with head dims up to 128 (forward), 64 for wider heads and the backward (more live tiles),
    32 for fp32 (its exact dots run on FMAs with operands in registers: 64-wide tiles spilled tens of
    KB per thread, and 128-wide fp32 tiles at D 64 overflowed the A100's shared memory)."""
    if _interpreting() if interpret is None else interpret:
        return 128
    if dtype == torch.float32:
        return 32
    wide = torch.tensor([], dtype=dtype).element_size() * d_pad > 256
    return 64 if (backward or wide) else 128


def kernel_config(dtype: torch.dtype, head_dim: int, block_q: int, block_k: int, *, backward: bool = False,
                  value_dim=None, quant: bool = False, arch_major=None, interpret=None, kernel=None) -> dict:
    """The constexprs and launch options (num_warps/num_stages) of one launch: the dispatcher's whole choice.

    `dtype`: the inputs' dtype (for INT8 QK, v's dtype; q/k are int8); `arch_major`: the GPU's compute
    capability major (None: the interpreter/CPU, Triton's default warps/stages); `interpret`: default
    from TRITON_INTERPRET. Pure, so `eval/aot_check.py` compiles exactly what `triton_forward` /
    `triton_backward` launch. `backward` covers both backward kernels; `kernel` ("bwd_dq" or "bwd_dkdv")
    names the one launched, for a measured launch of its own (`SM90_MEASURED`).
    """
    interpret = _interpreting() if interpret is None else interpret
    dv = head_dim if value_dim is None else value_dim
    d_pad = _pow2(max(head_dim, dv), hi=1 << 30)
    measured = None
    if not interpret and arch_major == 9 and dtype in (torch.float16, torch.bfloat16) and not quant:
        measured = SM90_MEASURED.get((kernel, d_pad)) if backward and kernel else None
        measured = measured or SM90_MEASURED.get(("bwd" if backward else "fwd", d_pad))
        if measured is not None and (block_q < measured[0] or block_k < measured[1]):
            measured = None  # smaller layout blocks: tiles of their own size, the generic rule
    caps = (_tile_cap(dtype, d_pad, backward, interpret),) if measured is None else measured[:2]
    block_m, block_n, tiles_m, tiles_n = _tiles(block_q, block_k, *caps)
    cfg = dict(BQ=block_q, BK=block_k, TILES_M=tiles_m, TILES_N=tiles_n, BLOCK_M=block_m, BLOCK_N=block_n,
               D_PAD=_pow2(head_dim, hi=1 << 30), DV_PAD=_pow2(dv, hi=1 << 30))
    if not backward:
        cfg["QUANT"] = quant
    cfg.update(FP32_IEEE=dtype == torch.float32, UPCAST=interpret and dtype == torch.bfloat16)
    if measured is None:
        cfg.update(_launch_opts(block_m, None if interpret else arch_major))
    else:
        cfg.update(num_warps=measured[2], num_stages=measured[3])
    return cfg


def _csr_strides(counts: torch.Tensor, indices: torch.Tensor):
    """Strides of counts `(Bm, Hm, n)` / indices `(Bm, Hm, n, w)` with broadcast dims as 0."""
    cs = [0 if counts.shape[i] == 1 else counts.stride(i) for i in range(2)] + [counts.stride(2)]
    ist = [0 if indices.shape[i] == 1 else indices.stride(i) for i in range(2)] + [indices.stride(2), indices.stride(3)]
    return cs, ist


def forward_launch(q, k, v, out, lse, counts, indices, block_q: int, block_k: int, scale: float, quant=None,
                   arch_major=None):
    """`(kernel, grid, args, kwargs)` of the forward launch on these tensors (any device, meta too)."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    cfg = kernel_config(v.dtype, D, block_q, block_k, value_dim=Dv, quant=quant is not None, arch_major=arch_major)
    cs, ist = _csr_strides(counts, indices)
    if quant is None:
        qs = ks = lse  # unused pointers
        qss = kss = (0, 0, 0)
    else:
        qs, ks = quant
        qss, kss = qs.stride(), ks.stride()
    grid = (num_blocks(Sq, block_q) * cfg["TILES_M"], B * H)
    args = (q, k, v, out, lse, counts, indices, qs, ks,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *cs, *ist, *qss, *kss,
            H, Sq, Sk, D, Dv, scale * LOG2E)
    return _fwd_kernel, grid, args, cfg


def triton_forward(q, k, v, counts, indices, block_q: int, block_k: int, scale: float, quant=None, poison: bool = False):
    """Launch the forward kernel: q `(B,H,Sq,D)`, k/v `(B,H,Sk,D|Dv)` -> out `(B,H,Sq,Dv)`, lse fp32 `(B,H,Sq)`.

    `quant`: None, or `(q_scale, k_scale)` fp32 `(B, H, nq|nk)` with q/k already int8 (INT8 QK).
    `poison`: fill the outputs with NaN before the launch (tests: catches elements never written).
    """
    B, H, Sq, D = q.shape
    Dv = v.shape[-1]
    out = torch.empty(B, H, Sq, Dv, dtype=v.dtype if quant is not None else q.dtype, device=q.device)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    if poison:
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
    kernel, grid, args, kwargs = forward_launch(q, k, v, out, lse, counts, indices, block_q, block_k, scale, quant,
                                                _arch_major(q.device))
    kernel[grid](*args, **kwargs)
    return out, lse


def backward_launches(q, k, v, dout, lse, delta, dq, dk, dv, counts, indices, t_counts, t_indices,
                      block_q: int, block_k: int, scale: float, arch_major=None):
    """`[(kernel, grid, args, kwargs)]` of the dQ and dK/dV launches (q/k/v/dout contiguous, lse/delta too)."""
    B, H, Sq, D = q.shape
    Sk, Dv = k.shape[2], v.shape[-1]
    cq, ckv = (kernel_config(q.dtype, D, block_q, block_k, backward=True, value_dim=Dv, arch_major=arch_major,
                             kernel=name) for name in ("bwd_dq", "bwd_dkdv"))
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride())
    cs, ist = _csr_strides(counts, indices)
    tcs, tist = _csr_strides(t_counts, t_indices)
    # dq/dk/dv are empty_like(q/k/v): same strides as the inputs, so the input strides address them.
    return [
        (_bwd_dq_kernel, (num_blocks(Sq, block_q) * cq["TILES_M"], B * H),
         (q, k, v, dout, lse, delta, dq, counts, indices, *strides, *cs, *ist, H, Sq, Sk, D, Dv, scale), cq),
        (_bwd_dkdv_kernel, (num_blocks(Sk, block_k) * ckv["TILES_N"], B * H),
         (q, k, v, dout, lse, delta, dk, dv, t_counts, t_indices, *strides, *tcs, *tist, H, Sq, Sk, D, Dv, scale),
         ckv),
    ]


def triton_backward(q, k, v, out, lse, dout, counts, indices, t_counts, t_indices, block_q: int, block_k: int,
                    scale: float, poison: bool = False):
    """dq, dk, dv for the forward above; `t_counts`/`t_indices` are the transposed layout's CSR."""
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O), FlashAttention-2's D
    lse = lse.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if poison:
        for t in (dq, dk, dv):
            t.fill_(float("nan"))
    for kernel, grid, args, kwargs in backward_launches(q, k, v, dout, lse, delta, dq, dk, dv, counts, indices,
                                                        t_counts, t_indices, block_q, block_k, scale,
                                                        _arch_major(q.device)):
        kernel[grid](*args, **kwargs)
    return dq, dk, dv
