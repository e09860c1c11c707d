"""INT8 QK^T block-sparse attention (SageAttention's recipe), for PARO and as an option everywhere.

K is smoothed first: its mean over tokens is subtracted, which shifts every logit of a query row
by the same amount (softmax unchanged) and removes the channel offsets that would otherwise eat
the int8 range. Q and smoothed K are quantized symmetrically to int8 with one scale per
(batch, head, layout block). The Triton kernel multiplies int8 tiles with int32 accumulation and
rescales; P @ V stays in the input precision. Other backends run the same quantize-dequantize on
the values and the ordinary kernel on them, which gives the same logits (int8 products sum
exactly in fp32 for head dims up to 1024) without the speed.

Inference only: the quantized logits have no useful gradient, so a call that needs one is refused.
The returned LSE is of the *unsmoothed* logits (the smoothing shift is added back), so it is
comparable with other calls (FlashBlock merges them).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .index import BlockIndex, needs_grad, num_blocks

QMAX = 127


def quantize_blocks(x: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per (batch, head, block of `block` tokens): `(B,H,S,D)` -> int8 `(B,H,S,D)`, scale `(B,H,n)`."""
    B, H, S, D = x.shape
    n = num_blocks(S, block)
    xf = torch.nn.functional.pad(x.float(), (0, 0, 0, n * block - S)).view(B, H, n, block, D)
    scale = xf.abs().amax(dim=(-1, -2)).clamp(min=1e-12) / QMAX
    xq = torch.round(xf / scale[..., None, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return xq.view(B, H, n * block, D)[:, :, :S].contiguous(), scale.contiguous()


def dequantize_blocks(xq: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of `quantize_blocks` (fp32)."""
    S = xq.shape[2]
    return xq.float() * scale.repeat_interleave(block, dim=-1)[..., :S, None]


def smooth_and_quantize(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int):
    """(q_int8, q_scale, k_int8, k_scale, k_mean) with K smoothed by its token mean `(B,H,1,D)`."""
    k_mean = k.float().mean(dim=2, keepdim=True)
    qq, qs = quantize_blocks(q, block_q)
    kq, ks = quantize_blocks(k.float() - k_mean, block_k)
    return qq, qs, kq, ks, k_mean


def int8_block_sparse_attention(q, k, v, index: BlockIndex, *, scale: float, impl: str = "torch", run=None):
    """out `(B,H,Sq,Dv)` in v's dtype and lse `(B,H,Sq)` with INT8 QK^T over the kept blocks.

    `impl="triton"` runs the int8 kernel; otherwise the quantize-dequantized q/k go through
    `run(q, k, v) -> (out, lse)` (default: the PyTorch CPU path), which gives the same logits.
    """
    if needs_grad(q, k, v):
        raise ValueError("quantize='int8' is inference-only (no gradient through int8 logits); "
                         "call it under torch.no_grad() or drop quantize for training")
    qq, qs, kq, ks, k_mean = smooth_and_quantize(q, k, index.block_q, index.block_k)
    if impl == "triton":
        from .triton_attention import triton_forward

        out, lse = triton_forward(qq, kq, v, index.counts, index.indices, index.block_q, index.block_k, scale,
                                  quant=(qs, ks))
    else:
        if run is None:
            from .torch_sparse import torch_block_sparse_attention

            def run(qd, kd, vv):
                return torch_block_sparse_attention(qd, kd, vv, index, scale, True)

        qd = dequantize_blocks(qq, qs, index.block_q)
        kd = dequantize_blocks(kq, ks, index.block_k)
        out, lse = run(qd, kd, v.float())
        out = out.to(v.dtype)
    # Undo the smoothing shift: logits of the original K are q.k_mean*scale larger per row.
    shift = torch.matmul(q.float(), k_mean.transpose(-1, -2)).squeeze(-1) * scale
    return out, lse + shift
