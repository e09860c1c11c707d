"""Dynamic methods: layouts decided at run time from the attention itself or from a calibration file.

Static methods map (grid, block size) to one layout. A `DynamicMethod` instead gets, for every
sparse call, a `DynamicContext`: the layer, the denoising step, the geometry, lazy access to the
call's q/k/v in the internal order `[video tokens in raster order ; usable text tokens]`, and a
per-layer cache dict owned by the handle. It returns a `DynamicLayout`: a video block mask (per
head allowed), an optional token order (per head allowed), or an output it already computed.

`DynamicEngine` (one per handle) runs that protocol:
- caches live in the engine, keyed by (layer, call slot, geometry, video) and cleared at the end of
  every pipeline call; the call slot tells apart the several transformer calls of one step (CFG's
  conditional and unconditional passes: the pipeline's cache-context name where it gives one), and
  a batch is decided video by video, so no video's layout depends on its batch mates;
- a call repeated with the same `forward_id` (gradient checkpointing recomputes a block in
  backward) gets the layout decided the first time, without asking the method again, so no
  cache is mutated twice and the recompute does the same arithmetic as the forward;
- plans built from a layout are cached by the layout's `key` (per call for AdaSpa, across calls
  for PARO, whose layouts come from a file).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Optional, Tuple

import torch

from .geometry import Grid, TokenSpans
from .kernels import block_sparse_attention
from .kernels.index import num_blocks
from .plan import Plan, PlanCache, PlanKey, build_plan

if TYPE_CHECKING:  # Ulysses' head shard lives with the rest of context parallelism
    from .parallel import HeadShard


@dataclass
class DynamicLayout:
    """What a dynamic method decided for one call.

    mask: bool `(Hm, nqv, nkv)` over the video tokens in `order` (Hm in {1, H}).
    order: None (raster), `(Nv,)`, or `(H, Nv)` raster index per internal video position.
    key: identity of (order, mask) for plan caching; equal keys must mean equal layouts.
    persistent: the plan may be kept across pipeline calls (layouts from a file).
    output: an output the method already computed, `(B, H, S, D)` in the context's internal order
        (AdaSpa's first search runs full attention to get the LSE); no plan is executed then.
    full: run full attention for this call (what a recompute of an `output` call does).
    quantize: "int8" for INT8 QK^T, or None.
    info: per-call facts for `handle.stats()` (e.g. per-head recall at a search).
    """

    mask: Optional[torch.Tensor] = None
    order: Optional[torch.Tensor] = None
    key: Hashable = None
    persistent: bool = False
    output: Optional[torch.Tensor] = None
    full: bool = False
    quantize: Optional[str] = None
    info: Optional[Dict[str, Any]] = None


@dataclass
class DynamicContext:
    """One sparse attention call as a dynamic method sees it."""

    layer: int
    step: int
    num_steps: Optional[int]  # the pipeline's step count (None for a bare transformer)
    forward_id: int
    slot: Hashable  # which transformer call of the step: the pipeline's branch name ("cond"/"uncond") or index
    spans: TokenSpans
    block_q: int
    block_k: int
    backend: str
    cache: Dict[str, Any]  # per (layer, slot, geometry); cleared per pipeline call
    base: Plan  # identity layout: internal order = [video raster ; usable text], every block kept
    shard: Optional[HeadShard] = None  # under Ulysses: which of the model's heads this call holds
    _qkv: Tuple[torch.Tensor, torch.Tensor, torch.Tensor] = field(repr=False, default=None)  # model order
    _internal: Optional[Tuple[torch.Tensor, ...]] = field(repr=False, default=None)

    @property
    def grid(self) -> Grid:
        return self.spans.grid

    @property
    def video_len(self) -> int:
        return self.spans.video_len

    @property
    def heads(self) -> int:
        """Heads in this call (a rank's share under Ulysses)."""
        return self._qkv[0].shape[2]

    @property
    def model_heads(self) -> int:
        """Heads of the attention layer (all ranks together)."""
        return self.heads if self.shard is None else self.shard.total

    def local_heads(self, x: torch.Tensor) -> torch.Tensor:
        """This call's rows of a per-head tensor over all the model's heads."""
        return x if self.shard is None else self.shard.local(x, self.heads)

    def gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head values of this call `(H, ...)` -> over all the model's heads (all ranks)."""
        return x if self.shard is None else self.shard.gather(x)

    def qkv(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v `(B, H, S, D)` in internal order `[video raster ; usable text]` (computed once)."""
        if self._internal is None:
            self._internal = self.base.gather(*self._qkv)
        return self._internal

    def full_attention(self, return_lse: bool = True):
        """Full attention over the internal order (every block): out `(B,H,S,D)` [, lse `(B,H,S)`]."""
        q, k, v = self.qkv()
        return block_sparse_attention(q, k, v, self.base.index, backend=self.backend, return_lse=return_lse)


class DynamicMethod:
    """Mixin for a method whose layout is decided per call: `class M(DynamicMethod, SparseMethod)`.

    Subclasses implement `dynamic_layout`; the other hooks are optional. (A mixin, not a
    `SparseMethod` subclass, so this module does not import the method registry.)
    """

    dynamic = True

    def dynamic_layout(self, ctx: DynamicContext) -> DynamicLayout:
        raise NotImplementedError

    def video_layout(self, grid, block_q, block_k):
        raise ValueError(
            f"method {self.name!r} decides its layout at run time from the attention itself; "
            "it has no static layout to preview"
        )

    def check_call(self, grid: Optional[Grid]) -> None:
        """Called on every attention call, dense or not: raise to refuse a geometry early."""

    def forced_settings(self) -> Dict[str, Any]:
        """Shared settings the method's options fix (e.g. the block size of a calibration plan)."""
        return {}

    def check_model(self, family: str, transformers: List[torch.nn.Module]) -> None:
        """Raise if the method's options (a calibration plan) do not fit these transformers."""

    def stats_extra(self, layer_info: Dict[str, Any]) -> Dict[str, Any]:
        """Per-layer stats from the latest `info` the layer reported (default: as is)."""
        return layer_info


class DynamicEngine:
    """Per-handle driver of a `DynamicMethod` (see the module docstring)."""

    def __init__(self, method: DynamicMethod) -> None:
        self.method = method
        self._caches: Dict[Tuple, Dict[str, Any]] = {}
        self._call_plans: Dict[Tuple, Tuple[Hashable, Plan]] = {}
        self._persistent_plans = PlanCache()  # plans of layouts that outlive a pipeline call (PARO's files)
        self._base_plans = PlanCache()
        self.layer_info: Dict[int, Dict[str, Any]] = {}
        self.searches: Dict[int, int] = {}
        self.layouts: Dict[int, torch.Tensor] = {}  # latest video block mask per layer (for pictures)

    def reset(self) -> None:
        """End of a pipeline call: per-call caches go, plans from files stay."""
        self._caches.clear()
        self._call_plans.clear()

    def base_plan(self, spans: TokenSpans, key_text: Optional[torch.Tensor], bq: int, bk: int, device) -> Plan:
        def build() -> Plan:
            full = torch.ones(1, num_blocks(spans.video_len, bq), num_blocks(spans.video_len, bk), dtype=torch.bool)
            return build_plan(None, full, spans, key_text, bq, bk)

        return self._base_plans.get(PlanKey.of("base", spans, key_text, bq, bk, device), build)

    @torch.compiler.disable  # Python-side decisions (and searches): keep them out of compiled graphs
    def decide(
        self,
        handle: Any,
        layer: int,
        slot: int,
        spans: TokenSpans,
        key_text: Optional[torch.Tensor],
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        shard: Optional[HeadShard] = None,
        sample: Optional[int] = None,
    ) -> Tuple[Plan, Optional[torch.Tensor], Optional[str]]:
        """(plan to execute or account for, output already computed in model order or None, quantize).
        `sample`: the batch index of a one-video call (caches are kept per video)."""
        bq, bk = handle.settings.block_size
        kt = None if key_text is None else tuple(key_text.tolist())
        geometry = (spans, kt, q.shape[0], str(q.device), sample)
        entry_key = (layer, slot) + geometry
        cache = self._caches.setdefault(entry_key, {})
        base = self.base_plan(spans, key_text, bq, bk, q.device)
        fid = handle.state.forward_id
        if cache.get("_forward_id") == fid:  # gradient-checkpointing recompute: same decision
            layout = cache["_layout"]
        else:
            ctx = DynamicContext(
                layer=layer, step=handle.state.step, num_steps=handle.pipeline_steps(), forward_id=fid, slot=slot,
                spans=spans, block_q=bq, block_k=bk, backend=handle.settings.backend, cache=cache, base=base,
                shard=shard, _qkv=(q, k, v),
            )
            layout = self.method.dynamic_layout(ctx)
            if layout.mask is not None:
                self.layouts[layer] = layout.mask.detach().to("cpu", torch.bool)
            if layout.info is not None:
                self.layer_info[layer] = layout.info
                if layout.info.get("searched"):
                    self.searches[layer] = self.searches.get(layer, 0) + 1
            cache["_forward_id"] = fid
            cache["_layout"] = replace(layout, output=None, full=layout.full or layout.output is not None, info=None)
        if layout.output is not None:
            return base, base.scatter(layout.output), None
        if layout.full:
            return base, base.scatter(_full_attention(base, q, k, v, handle.settings.backend)), None
        return self._plan(entry_key, layout, spans, key_text, bq, bk, q.device), None, layout.quantize

    def _plan(self, entry_key, layout: DynamicLayout, spans, key_text, bq, bk, device) -> Plan:
        if layout.persistent:
            return self._persistent_plans.get(PlanKey.of(layout.key, spans, key_text, bq, bk, device),
                                              lambda: build_plan(layout.order, layout.mask, spans, key_text, bq, bk))
        held = self._call_plans.get(entry_key)
        if held is None or held[0] != layout.key:
            held = (layout.key, build_plan(layout.order, layout.mask, spans, key_text, bq, bk).to(device))
            self._call_plans[entry_key] = held
        return held[1]

    def stats(self, layer: int) -> Dict[str, Any]:
        out = dict(self.method.stats_extra(self.layer_info[layer])) if layer in self.layer_info else {}
        if layer in self.searches:
            out["searches"] = self.searches[layer]
        return out


def _full_attention(base: Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Full attention in internal order (the recompute of a call whose output the method computed)."""
    qi, ki, vi = base.gather(q, k, v)
    return block_sparse_attention(qi, ki, vi, base.index, backend=backend)
