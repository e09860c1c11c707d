"""FlashBlock reuse: cached attention outputs with their LSE, merged with fresh attention by LSE.

If O1, L1 is attention over key set K1 and O2, L2 over a disjoint K2 (L = row log-sum-exp of the
scaled logits), attention over K1 u K2 is

    m = max(L1, L2);  L = m + log(e^(L1-m) + e^(L2-m));  O = e^(L1-L) O1 + e^(L2-L) O2.

Residual reuse for bidirectional DiTs (`cache="flashblock"`, any method). The method's layout
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

The same identity serves block (chunk-autoregressive) diffusion: `block_diffusion.py`.
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
        native_fn: Any = None,
    ) -> torch.Tensor:
        """Sparse attention of `plan` with residual reuse. q/k/v `(B, S, H, D)` model order -> same.
        `native_fn`: the handle's C++ CPU kernel (`backend="auto"`)."""
        qi, ki, vi = plan.gather(q, k, v)
        out, lse = block_sparse_attention(qi, ki, vi, plan.index, backend=backend, quantize=quantize, return_lse=True,
                                          native_fn=native_fn)
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
                    backend=backend, quantize=quantize, return_lse=True, native_fn=native_fn,
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
