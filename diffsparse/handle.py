"""The handle returned by `enable_sparse_attention`: settings, caches, stats, and the attend step.

Every patched processor calls `handle.attend(...)` with q/k/v `(B, S, H, D)`; the handle decides
dense or sparse for this layer and step, builds (once, cached on the handle) the plan for the
call's geometry (`plan.PlanCache`) and has its `PlanExecutor` (executor.py: plain, or through
FlashBlock's residual cache) run it. Dynamic methods (AdaSpa, PARO) get their plan from a
`DynamicEngine` (dynamic.py) instead; calls are counted in `CallStats` (call_stats.py). All state
lives here and in those parts - nothing in module or class globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .call_stats import CallStats
from .compile_ops import Opaque
from .dynamic import DynamicEngine, DynamicMethod
from .executor import PlanExecutor
from .geometry import Grid, TokenSpans
from .hooks import StepState
from .methods.base import SparseMethod
from .pipelines import adapter_for_family
from .plan import Plan, PlanCache, PlanKey, build_plan

@dataclass
class Settings:
    """Options shared by every method (validated by the API)."""

    dense_steps: int | float = 0  # int: leading steps; float in [0, 1): fraction of the pipeline's steps
    dense_layers: int = 0
    block_size: Tuple[int, int] = (128, 128)
    backend: str = "auto"
    quantize: Optional[str] = None  # "int8": INT8 QK^T (SageAttention-style) in every sparse call
    cache: Optional[str] = None  # "flashblock": residual reuse of the skipped blocks (flashblock.py)
    cache_interval: int = 5  # FlashBlock: every head refreshes its residual every N sparse calls of a layer
    cache_threshold: float = 0.85  # FlashBlock: a head refreshes early when its cosine drift falls below


@dataclass
class SparseHandle:
    """Live sparse-attention configuration of one pipeline or transformer."""

    method: SparseMethod
    settings: Settings
    family: str
    transformers: List[torch.nn.Module]
    pipe: Any = None
    state: StepState = field(default_factory=StepState)
    originals: List[Tuple[torch.nn.Module, Any]] = field(default_factory=list)
    num_layers: int = 0
    active: bool = True
    adapter: Any = None  # the model family's adapter class (pipelines/); from `family` when not given
    _layouts: Dict[Tuple, Tuple[Optional[torch.Tensor], torch.Tensor]] = field(default_factory=dict, repr=False)
    _plans: PlanCache = field(default_factory=PlanCache, repr=False)
    calls: CallStats = field(default_factory=CallStats, repr=False)  # what stats() reports
    _engine: Optional[DynamicEngine] = field(default=None, repr=False)
    executor: PlanExecutor = field(default=None, repr=False)  # runs plans (made from settings when not given)
    opaque: Opaque = field(default=None, repr=False, compare=False)  # this handle inside compiled graphs


    def __post_init__(self) -> None:
        if self.adapter is None:
            self.adapter = adapter_for_family(self.family)
        self.opaque = Opaque(self)
        if self.executor is None:
            st = self.settings
            self.executor = PlanExecutor(st.backend, st.quantize, st.cache, st.cache_interval, st.cache_threshold)

    @property
    def dynamic(self) -> Optional[DynamicEngine]:
        """The engine driving a dynamic method (AdaSpa, PARO), None for static methods."""
        if not isinstance(self.method, DynamicMethod):
            return None
        if self._engine is None or self._engine.method is not self.method:
            self._engine = DynamicEngine(self.method)
        return self._engine

    # ---------------------------------------------------------------- decisions
    def dense_step_count(self) -> int:
        ds = self.settings.dense_steps
        if isinstance(ds, int):
            return ds
        steps = self.pipeline_steps()
        return int(round(ds * steps)) if steps else 0

    def pipeline_steps(self) -> Optional[int]:
        """Denoising steps of the running pipeline call: the calling pipeline's (read by the step hook),
        else the enabled pipeline's scheduler; None for a bare transformer."""
        if self.state.num_steps:
            return self.state.num_steps
        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        return None if timesteps is None else len(timesteps)

    def branch(self) -> Any:
        """Which call of the step this is (`StepState.branch`: the pipeline's cache-context name, else
        the call's index within the step)."""
        return self.state.branch

    @torch.compiler.disable
    def runs_dense(self, layer: int) -> bool:
        return layer < self.settings.dense_layers or self.state.step < self.dense_step_count()

    # ---------------------------------------------------------------- plans
    def video_layout(self, grid: Grid) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        bq, bk = self.settings.block_size
        key = (self.method.key, grid, bq, bk)
        if key not in self._layouts:
            self._layouts[key] = self.method.video_layout(grid, bq, bk)
        return self._layouts[key]

    @torch.compiler.disable  # Python-side planning: keep it out of compiled graphs
    def plan(self, spans: TokenSpans, key_text: Optional[torch.Tensor], device: torch.device) -> Plan:
        """Plan for one call geometry; cached per (method, grid, text, key text, blocks, device)."""
        bq, bk = self.settings.block_size

        def build() -> Plan:
            order, vmask = self.video_layout(spans.grid)
            return build_plan(order, vmask, spans, key_text, bq, bk)

        return self._plans.get(PlanKey.of(self.method.key, spans, key_text, bq, bk, device), build)

    def flex_fn(self) -> Any:
        """The compiled FlexAttention this handle's executor holds (see `PlanExecutor.flex_fn`)."""
        return self.executor.flex_fn()

    # ---------------------------------------------------------------- execution
    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        text_len: Optional[int],
        key_mask: Optional[torch.Tensor],
        dense: Callable[[], torch.Tensor],
        parallel_config: Any = None,
    ) -> torch.Tensor:
        """Attention for one self-attention call. q/k/v `(B, S, H, D)` in model order -> `(B, S, H, D)`.

        `text_len` None: the text length the step hook read (blocks whose forward does not get the
        text). `dense` runs the stock attention (dense layers/steps and fallbacks). With a Diffusers
        `parallel_config` the sequence is rank-local and the sparse attention runs inside
        Ulysses context parallelism (see `parallel.py`).
        """
        if text_len is None:
            text_len = self.state.text_len
        if self.dynamic is not None:
            self.method.check_call(self.state.grid)  # e.g. PARO refuses a grid it was not calibrated for
        if self.runs_dense(layer):
            self._record(layer, dense=True)
            return dense()
        if parallel_config is not None:
            from .parallel import context_parallel_attention

            return context_parallel_attention(self, layer, q, k, v, key_mask, parallel_config, dense)
        return self.sparse(layer, q, k, v, text_len=text_len, key_mask=key_mask, dense=dense)

    def sparse(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        text_len: int,
        key_mask: Optional[torch.Tensor],
        dense: Callable[[], torch.Tensor],
        chunks: int = 1,
        shard: Any = None,
    ) -> torch.Tensor:
        """Sparse attention over a whole sequence (`chunks` > 1: gathered Ulysses layout, `shard`:
        the `parallel.HeadShard` of the heads this rank holds)."""
        groups, reason = self._geometry(q, text_len, key_mask, chunks)
        if reason is not None:
            self.fallback(reason)
            self._record(layer, dense=True)
            return dense()
        dynamic = self.dynamic
        if dynamic is not None and q.shape[0] > 1:
            # Dynamic layouts are searched per video: one sample's layout never depends on its batch mates.
            groups = [(torch.tensor([b]) if rows is None else rows[i : i + 1], spans, key_text)
                      for rows, spans, key_text in groups
                      for i, b in enumerate(range(q.shape[0]) if rows is None else rows.tolist())]
        out = q.new_empty(q.shape[:3] + (v.shape[-1],)) if len(groups) > 1 else None
        kept = total = 0
        head_kept = None if dynamic is None else torch.zeros(q.shape[2], dtype=torch.float64)  # per-head stats
        slot = self.branch()
        for rows, spans, key_text in groups:
            qg, kg, vg = (x if rows is None else x[rows] for x in (q, k, v))
            og, quantize = None, None
            if dynamic is not None:
                sample = None if rows is None else int(rows[0])
                plan, og, quantize = dynamic.decide(self, layer, slot, spans, key_text, qg, kg, vg, shard, sample)
            else:
                plan = self.plan(spans, key_text, q.device)
            if og is None:
                og = self._execute(layer, slot, spans, key_text, plan, qg, kg, vg, quantize)
            heads_factor = q.shape[2] // plan.index.mask.shape[1]
            kept += plan.kept_blocks * heads_factor * qg.shape[0]
            total += plan.total_blocks * heads_factor * qg.shape[0]
            if head_kept is not None:
                head_kept += plan.index.counts[0].sum(-1).double().cpu().repeat_interleave(heads_factor) * qg.shape[0]
            if out is None:
                out = og
            else:
                out[rows] = og
        self._record(layer, dense=False, kept=kept, total=total, head_kept=head_kept)
        return out

    def _execute(self, layer, slot, spans, key_text, plan: Plan, q, k, v, quantize: Optional[str]) -> torch.Tensor:
        kt = None if key_text is None else tuple(key_text.tolist())
        return self.executor.execute(layer, (layer, slot, spans, kt, q.shape[0]), plan, q, k, v,
                                     self.state.forward_id, quantize)

    @torch.compiler.disable
    def _geometry(self, q, text_len, key_mask, chunks=1):
        """Split the batch by usable text keys. Returns ([(rows, spans, key_text)], fallback reason)."""
        grid = self.state.grid
        if grid is None:
            return [], self.state.geometry_error or "latent grid unknown (transformer called without the hook?)"
        if q.shape[1] != grid.numel + text_len:
            return [], f"sequence of {q.shape[1]} tokens does not match grid {grid.dims} + {text_len} text tokens"
        try:
            spans = TokenSpans(grid, text_len, self.adapter.text_first, chunks)  # where the family puts text
        except ValueError as err:
            return [], str(err)
        if key_mask is None:
            return [(None, spans, None)], None
        if key_mask.dtype != torch.bool or key_mask.numel() != q.shape[0] * q.shape[1]:
            return [], f"attention mask of shape {tuple(key_mask.shape)} / {key_mask.dtype} is not a bool key mask"
        keys = key_mask.reshape(q.shape[0], q.shape[1])
        if not bool(keys[:, spans.video_positions().to(keys.device)].all()):
            return [], "attention mask hides video tokens"
        text = keys[:, spans.text_positions().to(keys.device)]
        if bool(text.all()):
            return [(None, spans, None)], None
        groups = []
        patterns, inverse = torch.unique(text, dim=0, return_inverse=True)
        for i in range(patterns.shape[0]):
            rows = torch.nonzero(inverse == i).flatten()
            key_text = torch.nonzero(patterns[i]).flatten().cpu()
            groups.append((None if patterns.shape[0] == 1 else rows, spans, key_text))
        return groups, None

    # ---------------------------------------------------------------- bookkeeping
    @torch.compiler.disable
    def _record(self, layer: int, dense: bool, kept: int = 0, total: int = 0, head_kept=None) -> None:
        self.calls.record(layer, self.state.forward_id, dense, kept, total, head_kept)

    def fallback(self, reason: str) -> None:
        """Record that a call ran dense because of `reason` (reported in `stats()["fallbacks"]`)."""
        self.calls.fallback(reason)

    def on_pipeline_reset(self) -> None:
        """Called by the hook at the end of each pipeline call: per-call caches go."""
        if self._engine is not None:
            self._engine.reset()
        self.executor.reset()

    def reset(self) -> None:
        """Start a new generation by hand (bare transformers): step counter and per-call caches."""
        self.state.reset()
        self.on_pipeline_reset()

    def recorded_layouts(self) -> Dict[int, torch.Tensor]:
        """Dynamic methods: the latest per-head video block mask `(H, nq, nk)` of every layer, in each
        head's token order (for `diffsparse show-mask --layouts`); empty for static methods."""
        return dict(self._engine.layouts) if self._engine is not None else {}

    def stats(self) -> Dict[str, Any]:
        """Achieved density (fraction of attention blocks computed in sparse calls) overall and per layer.

        Counts accumulate over calls until `reset_stats()`. `density` is None before any sparse call.
        With a dynamic method a layer also reports `head_density` (per head) and what the method
        found at its last decision (AdaSpa: per-head `recall` and `sparsity` at the last search,
        `searches`); with `cache="flashblock"` a layer reports `cache` (reuse counts per head-call)
        and the top level `cache` with the overall reuse rate.
        """
        sums = self.calls.totals()
        kept, total = sums["kept"], sums["total"]
        layers = {}
        for i, s in sorted(self.calls.layers.items()):
            layers[i] = s.as_dict()
            if self._engine is not None:
                layers[i].update(self._engine.stats(i))
            if self.executor.layer_stats(i) is not None:
                layers[i]["cache"] = self.executor.layer_stats(i)
        out = {
            **self.method.describe(),
            "family": self.family,
            "dense_steps": self.settings.dense_steps,
            "dense_layers": self.settings.dense_layers,
            "block_size": self.settings.block_size,
            "quantize": self.settings.quantize,
            "density": kept / total if total else None,
            "sparse_calls": sums["sparse_calls"],
            "dense_calls": sums["dense_calls"],
            "layers": layers,
            "fallbacks": dict(self.calls.fallbacks),
        }
        cache = self.executor.cache_totals()
        if cache is not None:
            reused, refreshed = cache["reused"], cache["refreshed"]
            out["cache"] = {
                "method": "flashblock", "interval": self.settings.cache_interval,
                "threshold": self.settings.cache_threshold, "reused": reused, "refreshed": refreshed,
                "reuse_rate": reused / (reused + refreshed) if reused + refreshed else None,
                # blocks actually computed in sparse calls, refreshes of the skipped blocks included
                "effective_density": (kept + cache["residual"]) / total if total else None,
            }
        return out

    def reset_stats(self) -> None:
        self.calls.reset()
        self.executor.reset_stats()
        if self._engine is not None:
            self._engine.layer_info.clear()
            self._engine.searches.clear()

