"""FlashBlock reuse: cached attention outputs with their LSE, merged with fresh attention by LSE.

Two uses of one identity. If O1, L1 is attention over key set K1 and O2, L2 over a disjoint K2
(L = row log-sum-exp of the scaled logits), attention over K1 u K2 is

    m = max(L1, L2);  L = m + log(e^(L1-m) + e^(L2-m));  O = e^(L1-L) O1 + e^(L2-L) O2.

1. Residual reuse for bidirectional DiTs (`cache="flashblock"`, any method). The method's layout
   splits every call's attention into the kept blocks (computed each step) and the skipped blocks.
   At a refresh the skipped blocks are computed too and their (O, L) is kept; at the steps after,
   the kept output is merged with that cached residual, so the layer sees an estimate of full
   attention at the cost of the sparse one. Per head, the fresh kept output is compared with the
   kept output at the time of the refresh; a head whose cosine falls under `threshold` refreshes
   its residual at once. Conventions (so that the cache never changes a refresh call):
   - a residual is used only at steps *after* it was taken: a call that refreshes a head returns
     the method's own output for that head. So refreshing at every step (`cache_interval=1`) is
     exactly the method without caching;
   - all heads refresh every `interval` sparse calls of a layer, and whenever the layout changed
     (an AdaSpa search, a PARO timestep bucket) or the geometry did;
   - a gradient-checkpointing recompute (same forward id) reuses the decision of the forward and
     mutates nothing.
   Cost: one cached output per layer and call slot (CFG branch), in the model's dtype.

2. Block (chunk-autoregressive) diffusion (`block_attention`, `BlockExternalCache`). The queries
   of the chunk being denoised attend their own chunk (fresh every step) and all earlier chunks
   (block-external, stable across the chunk's denoising steps): the external (O, L) is computed
   once per chunk and reused. See demos/block_diffusion.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional, Tuple

import torch
import torch.nn.functional as F

from .kernels import BlockIndex, block_sparse_attention, build_block_index
from .kernels.merge import merge_attention
from .plan import Plan

def head_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per head of two `(B, H, S, D)` tensors: `(H,)`."""
    h = a.shape[1]
    return F.cosine_similarity(a.transpose(0, 1).reshape(h, -1).float(), b.transpose(0, 1).reshape(h, -1).float(), dim=-1)


# ---------------------------------------------------------------------------- residual reuse


@dataclass
class _Residual:
    index: BlockIndex  # the layout whose skipped blocks `out`/`lse` cover
    out: torch.Tensor  # (B, H, S, D) skipped-block attention, internal order
    lse: torch.Tensor  # (B, H, S) fp32; -inf where nothing is skipped (text rows)
    ref: torch.Tensor  # (B, H, S, D) kept-block output when the residual was taken (drift check)
    age: int  # sparse calls since the last full refresh, this one included
    forward_id: int
    used: torch.Tensor  # (H,) bool: heads whose output merged the residual in call `forward_id`


@dataclass
class CacheCounters:
    calls: int = 0
    reused: int = 0  # head-calls that merged a cached residual
    refreshed: int = 0  # head-calls that computed a fresh residual
    residual_blocks: int = 0  # skipped blocks computed for refreshes, summed over batch x heads

    def as_dict(self) -> Dict[str, Any]:
        n = self.reused + self.refreshed
        return {"calls": self.calls, "reused": self.reused, "refreshed": self.refreshed,
                "reuse_rate": self.reused / n if n else None, "residual_blocks": self.residual_blocks}


class FlashBlockCache:
    """Residual reuse on a handle: per (layer, call slot, geometry) cached skipped-block attention."""

    def __init__(self, interval: int = 5, threshold: float = 0.85) -> None:
        self.interval, self.threshold = interval, threshold
        self._entries: Dict[Hashable, _Residual] = {}
        self._complements: Dict[int, Tuple[BlockIndex, Optional[torch.Tensor]]] = {}
        self.counters: Dict[int, CacheCounters] = {}

    def reset(self) -> None:
        """End of a pipeline call: cached outputs go (they belong to that call's trajectory)."""
        self._entries.clear()
        self._complements.clear()

    def _complement(self, index: BlockIndex) -> Optional[torch.Tensor]:
        """The skipped blocks of a layout `(1, Hm, nq, nk)`, or None when nothing is skipped."""
        held = self._complements.get(id(index))
        if held is None or held[0] is not index:
            comp = ~index.mask
            held = (index, comp if bool(comp.any()) else None)
            self._complements[id(index)] = held
        return held[1]

    @torch.compiler.disable  # per-head refresh decisions are data-dependent Python control flow
    def run(
        self,
        layer: int,
        key: Hashable,
        plan: Plan,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        forward_id: int,
        backend: str = "auto",
        quantize: Optional[str] = None,
    ) -> torch.Tensor:
        """Sparse attention of `plan` with residual reuse. q/k/v `(B, S, H, D)` model order -> same."""
        qi, ki, vi = plan.gather(q, k, v)
        out, lse = block_sparse_attention(qi, ki, vi, plan.index, backend=backend, quantize=quantize, return_lse=True)
        comp = self._complement(plan.index)
        if comp is None:
            return plan.scatter(out)
        heads = q.shape[2]
        entry = self._entries.get(key)
        if entry is not None and entry.forward_id == forward_id:  # checkpoint recompute: no mutation
            return plan.scatter(self._merge(out, lse, entry, entry.used))
        counters = self.counters.setdefault(layer, CacheCounters())
        counters.calls += 1
        usable = entry is not None and entry.index is plan.index and entry.out.shape == out.shape
        if not usable or entry.age >= self.interval:
            refresh = torch.ones(heads, dtype=torch.bool, device=q.device)
        else:
            refresh = head_cosine(out.detach(), entry.ref) < self.threshold
            entry.age += 1
        use = ~refresh
        merged = self._merge(out, lse, entry, use) if bool(use.any()) else out
        if bool(refresh.any()):
            mask = comp.expand(1, heads, *comp.shape[2:]) & refresh.view(1, heads, 1, 1).to(comp.device)
            counters.residual_blocks += int(mask.sum()) * q.shape[0]
            with torch.no_grad():  # the residual is a cached constant: no gradient flows into it
                r_out, r_lse = block_sparse_attention(
                    qi, ki, vi, build_block_index(mask, (plan.index.block_q, plan.index.block_k)),
                    backend=backend, quantize=quantize, return_lse=True,
                )
            if not usable or bool(refresh.all()):
                entry = _Residual(plan.index, r_out, r_lse, out.detach(), 1, forward_id, use)
                self._entries[key] = entry
            else:
                h = refresh.nonzero().flatten()
                entry.out[:, h], entry.lse[:, h], entry.ref[:, h] = r_out[:, h], r_lse[:, h], out.detach()[:, h]
        entry.forward_id, entry.used = forward_id, use
        counters.reused += int(use.sum())
        counters.refreshed += int(refresh.sum())
        return plan.scatter(merged)

    @staticmethod
    def _merge(out: torch.Tensor, lse: torch.Tensor, entry: Optional[_Residual], use: torch.Tensor) -> torch.Tensor:
        if entry is None or not bool(use.any()):
            return out
        merged, _ = merge_attention(out, lse, entry.out.to(out.dtype), entry.lse)
        return torch.where(use.view(1, -1, 1, 1), merged, out)

    def stats(self, layer: int) -> Optional[Dict[str, Any]]:
        c = self.counters.get(layer)
        return None if c is None else c.as_dict()

    def reset_stats(self) -> None:
        self.counters.clear()


# ---------------------------------------------------------------------------- block diffusion


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
