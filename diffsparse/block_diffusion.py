"""Block (chunk-autoregressive) diffusion with FlashBlock's LSE identity (`block_attention`,
`BlockExternalCache`).

The queries of the chunk being denoised attend their own chunk (fresh every step) and all earlier
chunks (block-external, stable across the chunk's denoising steps): the external (O, L) is computed
once per chunk and reused, merged with the in-chunk attention by LSE (`kernels.merge`). Used by
demos/block_diffusion.py; the residual reuse inside bidirectional DiTs is `flashblock.py`.
"""

from __future__ import annotations

from typing import Dict, Hashable, Optional, Tuple

import torch

from .flashblock import head_cosine
from .kernels import BlockIndex, block_sparse_attention
from .kernels.merge import merge_attention


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Optional[torch.Tensor | BlockIndex] = None,
    *,
    block_size: int | Tuple[int, int] = 128,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention `(B,H,Sq,D)` x `(B,H,Sk,D)` (dense, or block-sparse with `block_mask`) -> (out, lse)."""
    if block_mask is None:
        bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
        block_mask = torch.ones(1, 1, -(-q.shape[2] // bq), -(-k.shape[2] // bk), dtype=torch.bool)
    return block_sparse_attention(q, k, v, block_mask, block_size=block_size, backend=backend, return_lse=True)


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cached_out: Optional[torch.Tensor] = None,
    cached_lse: Optional[torch.Tensor] = None,
    *,
    block_mask: Optional[torch.Tensor | BlockIndex] = None,
    block_size: int | Tuple[int, int] = 128,
    backend: str = "auto",
    return_lse: bool = False,
):
    """The block-diffusion primitive: in-block attention merged with a cached block-external result.

    Args:
        q: `(B, H, Sq, D)` queries of the block being denoised.
        k, v: `(B, H, Sk, D)` the block's own keys/values (attended fresh; optionally block-sparse
            through `block_mask`, bool `(1|B, 1|H, nq, nk)` or a `BlockIndex`).
        cached_out, cached_lse: `(B, H, Sq, D)` and `(B, H, Sq)`: the same queries' attention over
            the keys outside the block, e.g. from `attention_with_lse` at an earlier step. None =
            no external keys.
    Returns out `(B, H, Sq, D)` (and lse `(B, H, Sq)`): attention over block u external keys.
    """
    out, lse = attention_with_lse(q, k, v, block_mask, block_size=block_size, backend=backend)
    if cached_out is not None:
        if cached_lse is None:
            raise ValueError("cached_out needs its cached_lse")
        out, lse = merge_attention(out, lse, cached_out, cached_lse)
    return (out, lse) if return_lse else out


class BlockExternalCache:
    """Block-external attention of the current chunk's queries, cached across its denoising steps.

    `attend(layer, q, k_in, v_in, k_ext, v_ext, step)`: at step 0 of a chunk the external part is
    computed and cached; at `check_steps` it is computed again and every head whose cosine to the
    cache is under `threshold` is marked live (recomputed at each later step of the chunk, as
    FlashBlock does), the others keep reusing the cache. `new_chunk()` clears it.
    """

    def __init__(self, threshold: float = 0.85, check_steps: Tuple[int, ...] = (1,), block_size=128, backend="auto"):
        self.threshold, self.check_steps = threshold, tuple(check_steps)
        self.block_size, self.backend = block_size, backend
        self._ext: Dict[Hashable, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._live: Dict[Hashable, torch.Tensor] = {}
        self.external_head_calls = 0  # external attentions computed (per head)
        self.reused_head_calls = 0

    def new_chunk(self) -> None:
        self._ext.clear()
        self._live.clear()

    def attend(self, layer: Hashable, q, k_in, v_in, k_ext, v_ext, step: int, in_mask=None) -> torch.Tensor:
        heads = q.shape[1]
        if k_ext is None or k_ext.shape[2] == 0:
            return block_attention(q, k_in, v_in, block_mask=in_mask, block_size=self.block_size, backend=self.backend)
        held = self._ext.get(layer)
        if held is None or step in self.check_steps:
            fresh = attention_with_lse(q, k_ext, v_ext, block_size=self.block_size, backend=self.backend)
            if held is not None:
                self._live[layer] = head_cosine(fresh[0], held[0]) < self.threshold
            self._ext[layer] = fresh
            self.external_head_calls += heads
            ext_out, ext_lse = fresh
        else:
            ext_out, ext_lse = held
            live = self._live.get(layer)
            if live is not None and bool(live.any()):
                h = live.nonzero().flatten()
                o, l = attention_with_lse(q[:, h], k_ext[:, h], v_ext[:, h], block_size=self.block_size, backend=self.backend)
                ext_out, ext_lse = ext_out.clone(), ext_lse.clone()
                ext_out[:, h], ext_lse[:, h] = o, l
                self.external_head_calls += int(h.numel())
            self.reused_head_calls += heads - (0 if live is None else int(live.sum()))
        return block_attention(q, k_in, v_in, ext_out, ext_lse, block_mask=in_mask, block_size=self.block_size, backend=self.backend)
