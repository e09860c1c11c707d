"""Running a plan: one block-sparse call in model order, or through FlashBlock's residual cache.

The handle decides *what* to compute (dense or sparse, which plan); a `PlanExecutor` runs it with
the handle's backend and INT8 setting, holds the kernels `backend="auto"` builds on first use (our
C++ CPU kernel, `kernels.cpu_native.NativeCpuKernel`; the compiled FlexAttention,
`kernels.flex.CompiledFlex`) and, with `cache="flashblock"`, the `FlashBlockCache`.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Optional

import torch

from .flashblock import FlashBlockCache
from .kernels import block_sparse_attention
from .plan import Plan


def run_plan(
    plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto", quantize: Optional[str] = None,
    flex_fn: Any = None, native_fn: Any = None,
) -> torch.Tensor:
    """Execute a plan on q/k/v `(B, S, H, D)` in model order; returns `(B, S, H, D)` in model order."""
    qh, kh, vh = plan.gather(q, k, v)
    out = block_sparse_attention(qh, kh, vh, plan.index, backend=backend, quantize=quantize, flex_fn=flex_fn,
                                 native_fn=native_fn)
    return plan.scatter(out)


class PlanExecutor:
    """Executes plans for one handle: its backend, its INT8 setting, its Flex callable and FlashBlock cache."""

    def __init__(self, backend: str = "auto", quantize: Optional[str] = None, cache: Optional[str] = None,
                 cache_interval: int = 5, cache_threshold: float = 0.85) -> None:
        self.backend, self.quantize = backend, quantize
        self.flashblock = FlashBlockCache(cache_interval, cache_threshold) if cache == "flashblock" else None
        self._flex = None
        self._native = None

    def flex_fn(self) -> Any:
        """The compiled FlexAttention run with `backend="flex"`, and with "auto" where it pays (large CPU
        inference calls, `kernels.api.cpu_flex_pays`): made once, held here; else None."""
        if self.backend not in ("flex", "auto"):
            return None
        if self._flex is None:
            from .kernels.flex import compiled_flex_attention

            self._flex = compiled_flex_attention()
        return self._flex

    def native_fn(self) -> Any:
        """Our C++ CPU kernel, run with `backend="auto"` where it pays (`kernels.api.cpu_native_pays`):
        made once (built at its first call), held here; None for other backends."""
        if self.backend != "auto":
            return None
        if self._native is None:
            from .kernels.cpu_native import NativeCpuKernel

            self._native = NativeCpuKernel()
        return self._native

    def execute(self, layer: int, entry: Hashable, plan: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                forward_id: int, quantize: Optional[str] = None) -> torch.Tensor:
        """q/k/v `(B, S, H, D)` in model order -> `(B, S, H, D)`. `entry`: the call's FlashBlock cache key
        (layer, branch, geometry); `quantize`: a per-call override of the handle's setting."""
        quantize = quantize or self.quantize
        if self.flashblock is None:
            return run_plan(plan, q, k, v, self.backend, quantize, self.flex_fn(), self.native_fn())
        return self.flashblock.run(layer, entry, plan, q, k, v, forward_id=forward_id, backend=self.backend,
                                   quantize=quantize, native_fn=self.native_fn())

    # ---------------------------------------------------------------- per call / stats
    def reset(self) -> None:
        """End of a pipeline call: FlashBlock's residuals go."""
        if self.flashblock is not None:
            self.flashblock.reset()

    def layer_stats(self, layer: int) -> Optional[Dict[str, Any]]:
        return None if self.flashblock is None else self.flashblock.stats(layer)

    def cache_totals(self) -> Optional[Dict[str, int]]:
        """FlashBlock's reused / refreshed head-calls and residual blocks computed, over every layer."""
        if self.flashblock is None:
            return None
        counters = list(self.flashblock.counters.values())
        return {"reused": sum(c.reused for c in counters), "refreshed": sum(c.refreshed for c in counters),
                "residual": sum(c.residual_blocks for c in counters)}

    def reset_stats(self) -> None:
        if self.flashblock is not None:
            self.flashblock.reset_stats()
