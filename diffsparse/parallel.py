"""Sparse attention inside Diffusers' Ulysses context parallelism.

Under `transformer.enable_parallelism(ContextParallelConfig(ulysses_degree=N))` each rank holds a
slice of the sequence with all heads. Diffusers' templated CP attention all-to-alls q/k/v so that
its `forward_op` sees the *whole* sequence with H/N heads, then all-to-alls the output back. We
plug our sparse attention in as that forward op: grid layouts stay valid because the gathered
sequence is the ranks' chunks in order (each `[video_r ; text_r]`), which `TokenSpans(chunks=N)`
describes. Per-head layouts of dynamic methods are sliced to the rank's heads (`HeadShard`: the
Ulysses all-to-all gives rank r heads [r*H/N, (r+1)*H/N)). A key-padding mask (HunyuanVideo's text padding) is passed rank-local; Diffusers
all-gathers it into the same gathered order. HunyuanVideo needs a CP plan of its own:
`context_parallel_plan(transformer)` returns it. Ring attention (key chunks rotating between ranks)
would need global block offsets in the kernel and is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class HeadShard:
    """The heads one Ulysses rank attends: `[start, start + local)` of `total`, and its process group."""

    start: int
    total: int
    group: Any = None

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head values `(H_local, ...)` of every rank -> `(H_total, ...)` in head order."""
        import torch.distributed as dist

        y = x.contiguous()
        if dist.get_backend(self.group) == "nccl":  # NCCL moves CUDA tensors only
            y = y.to(f"cuda:{torch.cuda.current_device()}")
        parts = [torch.empty_like(y) for _ in range(self.total // x.shape[0])]
        dist.all_gather(parts, y, group=self.group)
        return torch.cat(parts).to(x.device)

    def local(self, x: torch.Tensor, local: int) -> torch.Tensor:
        """This rank's rows of a per-head tensor `(H_total, ...)`; broadcast `(1, ...)` stays."""
        return x if x.shape[0] == 1 else x[self.start : self.start + local]


def _ulysses(config: Any):
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        raise NotImplementedError("diffsparse runs only under context parallelism, not tensor parallelism")
    if cp.ring_degree > 1:
        raise NotImplementedError(
            f"ring attention (ring_degree={cp.ring_degree}) is not supported with sparse attention; "
            "use ContextParallelConfig(ulysses_degree=N)"
        )
    if getattr(cp, "ulysses_anything", False):
        raise NotImplementedError("ulysses_anything (uneven splits) is not supported with sparse attention")
    return cp


def context_parallel_attention(handle, layer: int, q, k, v, key_mask, config: Any, dense: Callable):
    """Rank-local q/k/v `(B, S/N, H, D)` -> rank-local output, sparse over the gathered sequence."""
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    cp = _ulysses(config)
    world = cp.ulysses_degree
    grid = handle.state.grid
    if grid is None or grid.numel % world:
        return dense()  # the stock CP path handles (or rejects) what we cannot lay out
    local_text = q.shape[1] - grid.numel // world
    if key_mask is not None and key_mask.shape[-1] != q.shape[1]:
        handle.fallback(f"attention mask of {key_mask.shape[-1]} keys is not rank-local ({q.shape[1]} tokens)")
        return dense()

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        if return_lse:
            raise NotImplementedError("sparse Ulysses forward does not return LSE")
        if _save_ctx:
            ctx.save_for_backward(query, key, value)
            ctx.diffsparse_mask = attn_mask

        # attn_mask: the ranks' local key masks all-gathered by Diffusers, i.e. in gathered order.
        def gathered_dense():
            qh, kh, vh = (x.transpose(1, 2) for x in (query, key, value))
            return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask,
                                                                    scale=scale).transpose(1, 2)

        local_heads = query.shape[2]
        shard = HeadShard(cp._ulysses_local_rank * local_heads, local_heads * world, cp._ulysses_mesh.get_group())
        return handle.sparse(
            layer, query, key, value, text_len=local_text * world, key_mask=attn_mask,
            dense=gathered_dense, chunks=world, shard=shard,
        )

    def backward_op(ctx, grad_out, *args, **kwargs):
        query, key, value = (x.detach().requires_grad_(True) for x in ctx.saved_tensors)
        with torch.enable_grad():
            out = forward_op(ctx, query, key, value, ctx.diffsparse_mask, _save_ctx=False)
        return torch.autograd.grad(out, (query, key, value), grad_out)

    return _templated_context_parallel_attention(
        q, k, v, key_mask, 0.0, False, None, False, False,
        forward_op=forward_op, backward_op=backward_op, _parallel_config=config,
    )


def check_parallel_support(config: Optional[Any]) -> None:
    """Raise before enabling when a model's parallel config cannot run sparse attention."""
    if config is not None:
        _ulysses(config)


def context_parallel_plan(model: Any) -> Optional[dict]:
    """The `cp_plan` to pass to `transformer.enable_parallelism(config=..., cp_plan=...)`.

    None for models that ship their own (Wan, FLUX); diffsparse's plan for HunyuanVideo. Accepts a
    pipeline or a transformer.
    """
    from .pipelines import find_adapter

    transformer = getattr(model, "transformer", model)
    return find_adapter(transformer).context_parallel_plan(transformer)
