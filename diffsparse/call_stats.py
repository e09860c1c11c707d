"""What a handle counts: dense and sparse calls per layer, the blocks they computed, and why calls fell
back to dense. Owned by the handle (`handle.stats()` reports it, `handle.reset_stats()` clears it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

logger = logging.getLogger("diffsparse")


@dataclass
class LayerStats:
    sparse_calls: int = 0
    dense_calls: int = 0
    kept_blocks: int = 0  # summed over batch x heads
    total_blocks: int = 0
    last_forward: int = -1
    head_kept: Optional[torch.Tensor] = None  # (H,) kept blocks per head, summed over calls and batch
    head_total: int = 0  # blocks per head, summed over calls and batch

    def as_dict(self) -> Dict[str, Any]:
        density = self.kept_blocks / self.total_blocks if self.total_blocks else None
        out = {"density": density, "sparse_calls": self.sparse_calls, "dense_calls": self.dense_calls}
        if self.head_kept is not None and self.head_total:
            out["head_density"] = [round(float(x) / self.head_total, 6) for x in self.head_kept]
        return out


class CallStats:
    """Per-layer call counts and block counts, and the fallback reasons with how often each occurred."""

    def __init__(self) -> None:
        self.layers: Dict[int, LayerStats] = {}
        self.fallbacks: Dict[str, int] = {}

    def record(self, layer: int, forward_id: int, dense: bool, kept: int = 0, total: int = 0,
               head_kept: Optional[torch.Tensor] = None) -> None:
        """Count one attention call of `layer` (once per forward: a gradient-checkpointing recompute
        of the same `forward_id` is not counted again)."""
        st = self.layers.setdefault(layer, LayerStats())
        if st.last_forward == forward_id:
            return
        st.last_forward = forward_id
        if dense:
            st.dense_calls += 1
            return
        st.sparse_calls += 1
        st.kept_blocks += kept
        st.total_blocks += total
        if head_kept is not None:
            same = st.head_kept is not None and st.head_kept.numel() == head_kept.numel()
            st.head_kept = st.head_kept + head_kept if same else head_kept.clone()
            st.head_total = (st.head_total if same else 0) + total // head_kept.numel()

    def fallback(self, reason: str) -> None:
        """A call ran dense because of `reason` (logged once per reason)."""
        if reason not in self.fallbacks:
            logger.warning("diffsparse: running dense attention because %s", reason)
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def totals(self) -> Dict[str, Any]:
        """kept / total blocks and sparse / dense calls over every layer."""
        ls = self.layers.values()
        return {"kept": sum(s.kept_blocks for s in ls), "total": sum(s.total_blocks for s in ls),
                "sparse_calls": sum(s.sparse_calls for s in ls), "dense_calls": sum(s.dense_calls for s in ls)}

    def reset(self) -> None:
        self.layers.clear()
        self.fallbacks.clear()
