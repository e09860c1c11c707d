"""Conversion of a `BlockIndex` to FlexAttention's `BlockMask`, and a FlexAttention executor.

Used as the CUDA path where our Triton kernel is not available, and by the benchmarks to run
FlexAttention on exactly the same layout as ours.
"""

from __future__ import annotations

import torch

from .index import BlockIndex, needs_grad, num_blocks


def to_flex_block_mask(index: BlockIndex, B: int, H: int, sq: int, sk: int):
    """`BlockMask` computing exactly the kept blocks of `index` for q/k lengths `sq`/`sk`; built once per
    shape and kept on the index (a plan's index serves every layer and step)."""
    return index.derived(("flex", B, H, sq, sk), lambda: _build_flex_block_mask(index, B, H, sq, sk))


def _build_flex_block_mask(index: BlockIndex, B: int, H: int, sq: int, sk: int):
    from torch.nn.attention.flex_attention import BlockMask

    nq, nk = num_blocks(sq, index.block_q), num_blocks(sk, index.block_k)
    kept = index.mask.expand(B, H, nq, nk)
    bq, bk = index.block_q, index.block_k
    # Kept blocks inside the key sequence are "full": flex skips the mask_mod there (its fast path,
    # what a user of FlexAttention would hand it). Only a kept partial tail key block is "partial".
    whole = torch.arange(nk, device=kept.device) < sk // bk
    full, partial = kept & whole, kept & ~whole

    def lists(m):  # (counts, ids of the kept blocks first) in FlexAttention's int32 layout
        order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True)
        return m.sum(-1, dtype=torch.int32), order.to(torch.int32).contiguous()

    # The mask_mod states the full mask: eager flex and partial blocks evaluate it token by token.
    def in_layout(b, h, q_idx, kv_idx):
        return kept[b, h, q_idx // bq, kv_idx // bk] & (kv_idx < sk)

    return BlockMask.from_kv_blocks(
        *lists(partial), *lists(full), BLOCK_SIZE=(bq, bk), mask_mod=in_layout, seq_lengths=(sq, sk)
    )


class CompiledFlex:
    """A `torch.compile`d flex_attention, held by its owner (the handle) with what it learnt: `error`
    is set when compiling or running it failed on this machine (e.g. Inductor's CPU backend finds no
    C++ compiler), so `backend="auto"` stops trying it and stays on our own path."""

    def __init__(self):
        self._fn = None  # compiled at the first call: a handle that never runs Flex never imports the compiler
        self.error: str | None = None

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            from torch.nn.attention.flex_attention import flex_attention

            self._fn = torch.compile(flex_attention, dynamic=False)
        return self._fn(*args, **kwargs)


def compiled_flex_attention() -> CompiledFlex:
    """A compiled flex_attention (eager flex materialises the full score matrix: 16 s where dense
    SDPA takes 1.8 s on CPU at S 16384). The wrapper is cheap to make (~2 ms): compiled code lives in
    torch's own cache, keyed by shapes, so a new wrapper reuses it; hold one (the handle does) to skip
    even that."""
    return CompiledFlex()


def flex_block_sparse_attention(q, k, v, index: BlockIndex, scale=None, return_lse=False, compiled_fn=None):
    """Run compiled FlexAttention over the layout (`compiled_fn`: a held `compiled_flex_attention()`)."""
    if not q.is_cuda and (return_lse or needs_grad(q, k, v)):
        raise NotImplementedError(
            f"backend='flex' on {q.device.type}: torch's compiled FlexAttention runs inference only there, without "
            f"the log-sum-exp ({'gradients' if needs_grad else 'LSE'} requested here; FlashBlock, INT8 and the dynamic "
            "methods need the LSE); use backend='torch', our CPU path, or 'auto'")
    fn = compiled_fn or compiled_flex_attention()
    B, H, sq, _ = q.shape
    bm = to_flex_block_mask(index, B, H, sq, k.shape[2])
    if not return_lse:
        return fn(q, k, v, block_mask=bm, scale=scale)
    from torch.nn.attention.flex_attention import AuxRequest

    out, aux = fn(q, k, v, block_mask=bm, scale=scale, return_aux=AuxRequest(lse=True))
    lse = aux.lse
    # Make fully-masked rows exactly (out 0, lse -inf), the contract of every backend.
    empty = torch.isinf(lse) | (bm.kv_num_blocks.expand(B, H, -1).repeat_interleave(index.block_q, -1)[..., :sq] == 0)
    out = torch.where(empty.unsqueeze(-1), torch.zeros_like(out), out)
    return out, torch.where(empty, float("-inf"), lse.float())
