"""`torch.library` custom ops around the block-sparse kernels: autograd and torch.compile support.

`diffsparse::block_sparse_attention` returns (out, lse) and `diffsparse::block_sparse_attention_backward`
(dq, dk, dv). Both take the layout as CSR tensors (counts, indices, and the transposed lists for
dK/dV) and an `impl` string: "triton" (our kernels; CUDA or `TRITON_INTERPRET=1`) or "torch" (the
bucketed CPU path). Fake implementations give shapes only, so `torch.compile(fullgraph=True)` traces
through a call with a prebuilt `BlockIndex` without a graph break.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .index import BlockIndex, needs_grad

IMPLS = ("triton", "torch")


def _index(mask, counts, indices, block_q, block_k) -> BlockIndex:
    return BlockIndex(mask, counts, indices, block_q, block_k)


@torch.library.custom_op("diffsparse::block_sparse_attention", mutates_args=())
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor,
    indices: torch.Tensor, t_counts: torch.Tensor, t_indices: torch.Tensor,
    block_q: int, block_k: int, scale: float, impl: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from .triton_attention import triton_forward

        return triton_forward(q, k, v, counts, indices, block_q, block_k, scale)
    from .torch_sparse import torch_block_sparse_attention

    out, lse = torch_block_sparse_attention(q, k, v, _index(mask, counts, indices, block_q, block_k), scale, True)
    return out.contiguous(), lse.contiguous()


@_attention_op.register_fake
def _(q, k, v, mask, counts, indices, t_counts, t_indices, block_q, block_k, scale, impl):
    B, H, Sq, _ = q.shape
    return q.new_empty(B, H, Sq, v.shape[-1]), q.new_empty(B, H, Sq, dtype=torch.float32)


@torch.library.custom_op("diffsparse::block_sparse_attention_backward", mutates_args=())
def _backward_op(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    mask: torch.Tensor, counts: torch.Tensor, indices: torch.Tensor, t_counts: torch.Tensor, t_indices: torch.Tensor,
    block_q: int, block_k: int, scale: float, impl: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if impl == "triton":
        from .triton_attention import triton_backward

        return triton_backward(q.contiguous(), k.contiguous(), v.contiguous(), out, lse, dout,
                               counts, indices, t_counts, t_indices, block_q, block_k, scale)
    from .torch_sparse import torch_block_sparse_backward

    dq, dk, dv = torch_block_sparse_backward(q, k, v, out, lse, dout, _index(mask, counts, indices, block_q, block_k), scale)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_backward_op.register_fake
def _(dout, q, k, v, out, lse, mask, counts, indices, t_counts, t_indices, block_q, block_k, scale, impl):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, counts, indices, t_counts, t_indices, block_q, block_k, scale, impl = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, counts, indices, t_counts, t_indices)
    ctx.meta = (block_q, block_k, scale, impl)


def _backward(ctx, dout, dlse):
    # lse is an auxiliary output (merging, caching); its gradient is not propagated.
    q, k, v, out, lse, mask, counts, indices, t_counts, t_indices = ctx.saved_tensors
    block_q, block_k, scale, impl = ctx.meta
    dq, dk, dv = _backward_op(dout, q, k, v, out, lse, mask, counts, indices, t_counts, t_indices,
                              block_q, block_k, scale, impl)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: Optional[float] = None,
    return_lse: bool = False,
    impl: str = "torch",
    quantize: Optional[str] = None,
):
    """Run the layout through the custom op (differentiable), or the INT8 QK forward (inference only)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {IMPLS}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if quantize is not None:
        from .int8 import int8_block_sparse_attention

        out, lse = int8_block_sparse_attention(q, k, v, index, scale=scale, impl=impl)
        return (out, lse) if return_lse else out
    # The transposed lists are only read by the backward; skip building them for inference.
    t = index.transposed() if needs_grad(q, k, v) else index
    out, lse = torch.ops.diffsparse.block_sparse_attention(
        q, k, v, index.mask, index.counts, index.indices, t.counts, t.indices,
        index.block_q, index.block_k, scale, impl)
    return (out, lse) if return_lse else out
