"""PARO calibration: per-head token orders and per-timestep block masks, measured once, kept in a file.

    plan = diffsparse.calibrate(pipe, method="paro", density=0.5, **pipe_call_kwargs)
    plan.save("wan_paro.pt")
    diffsparse.enable_sparse_attention(pipe, method="paro", plan="wan_paro.pt")

How a plan is made (`calibrate`): the pipeline runs with dense attention (its output is
unchanged) while every self-attention call records, from the exact post-softmax attention of its
video tokens:
1. orders (first pass over the calibration inputs): for each head and each of the six axis
   orders FHW, FWH, HWF, HFW, WHF, WFH (first letter outermost; FHW is the models' raster
   order), the fraction of blocks needed to hold `coverage` (default 90%) of the attention mass
   when tokens are laid out in that order. The order needing the fewest blocks, averaged over
   all calls, wins (ties go to the earlier order in the list).
2. masks (second pass, same inputs and noise): the attention mass of every block under each
   head's chosen order, summed per timestep bucket (`timestep_buckets` equal slices of the
   denoising steps); each head keeps the blocks of largest mass up to `density` (at least one
   per query row). A bucket no calibration step fell in takes its nearest neighbour's masks.
Two passes keep the memory at one mass matrix per head and layer (not six).

The plan and its file format live in `methods/paro_plan.py` (the method reads plans; this driver,
which runs pipelines through the API, writes them).

Other resolutions: refused. Block masks are measured attention statistics of one token grid;
nothing in the file says where the mass would fall on another grid, so a plan is used only on
the grid it was made for, and another grid raises a ValueError that says which grid to
calibrate (the orders alone would transfer, the masks would not). Calibrate once per resolution.
Another model raises a ValueError listing the config entries that differ.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .blockmass import block_mass, blocks_to_cover, select_blocks
from .dynamic import DynamicContext, DynamicLayout, DynamicMethod
from .geometry import Grid
from .kernels.index import num_blocks
from .methods.base import SparseMethod
from .methods.paro_plan import ORDERS, ParoPlan, _pack, axis_order, model_config

def order_scores(q, k, lse, grid: Grid, block_q: int, block_k: int, coverage: float = 0.9) -> torch.Tensor:
    """`(H, 6)`: for each head and axis order, the fraction of blocks holding `coverage` of the mass.

    q/k: `(B, H, Nv, D)` video tokens in raster order; lse `(B, H, Nv)` row LSE over all keys.
    """
    orders = [axis_order(grid, name).unsqueeze(0) for name in ORDERS]
    masses = block_mass(q, k, lse, block_q, block_k, orders)
    return torch.stack([blocks_to_cover(m, coverage) for m in masses], dim=-1)


class ParoCalibrator(DynamicMethod, SparseMethod):
    """Runs dense attention and records what a PARO plan needs (see the module docstring)."""

    name = "paro_calibration"

    def __init__(self, family: str, density: float, coverage: float, buckets: int) -> None:
        super().__init__(family)
        self.density, self.coverage, self.buckets = density, coverage, buckets
        self.phase = "orders"
        self.grid: Optional[Grid] = None
        self.block: Optional[Tuple[int, int]] = None
        self.num_steps: Optional[int] = None
        self.heads: Optional[int] = None
        self._scores: Dict[int, torch.Tensor] = {}
        self._calls: Dict[int, int] = {}
        self._mass: Dict[Tuple[int, int], torch.Tensor] = {}
        self.orders: Optional[torch.Tensor] = None  # (L, H) chosen after the first pass
        self.mean_scores: Optional[torch.Tensor] = None  # (L, H, 6)
        self._orders_cache: Dict[int, torch.Tensor] = {}

    def dynamic_layout(self, ctx: DynamicContext) -> DynamicLayout:
        if self.grid is None:
            self.grid, self.block, self.heads = ctx.grid, (ctx.block_q, ctx.block_k), ctx.heads
        elif ctx.grid != self.grid:
            raise ValueError(f"calibration inputs must share one resolution: grids {self.grid.dims} and {ctx.grid.dims}")
        if ctx.num_steps:
            self.num_steps = max(self.num_steps or 0, ctx.num_steps)
        out, lse = ctx.full_attention()
        q, k, _ = ctx.qkv()
        nv = ctx.video_len
        qv, kv, lv = q[:, :, :nv], k[:, :, :nv], lse[:, :, :nv]
        if self.phase == "orders":
            scores = order_scores(qv, kv, lv, ctx.grid, ctx.block_q, ctx.block_k, self.coverage).cpu()
            self._scores[ctx.layer] = self._scores.get(ctx.layer, 0) + scores
            self._calls[ctx.layer] = self._calls.get(ctx.layer, 0) + 1
        else:
            mass = block_mass(qv, kv, lv, ctx.block_q, ctx.block_k, [self._layer_order(ctx.layer, q.device)])[0].cpu()
            n = ctx.num_steps or self.num_steps or 1
            key = (min(self.buckets - 1, max(0, ctx.step) * self.buckets // n), ctx.layer)
            self._mass[key] = self._mass.get(key, 0) + mass
        return DynamicLayout(output=out)

    def _layer_order(self, layer: int, device) -> torch.Tensor:
        """`(H, Nv)` token order of every head of `layer` (the chosen axis orders)."""
        if layer not in self._orders_cache:
            self._orders_cache[layer] = torch.stack([axis_order(self.grid, ORDERS[int(i)]) for i in self.orders[layer]]).to(device)
        return self._orders_cache[layer]

    def choose_orders(self, num_layers: int) -> None:
        missing = [layer for layer in range(num_layers) if layer not in self._scores]
        if missing:
            raise RuntimeError(f"calibration saw no attention call in layers {missing} (the pipeline did not run them)")
        mean = torch.stack([self._scores[layer] / self._calls[layer] for layer in range(num_layers)])  # (L, H, 6)
        self.mean_scores = mean
        # argmin with ties to the earlier order: stable sort ascending, take the first.
        self.orders = torch.sort(mean, dim=-1, stable=True).indices[..., 0]

    def finish(self, transformers: Sequence[torch.nn.Module], num_layers: int, meta: Dict[str, Any]) -> ParoPlan:
        nq, nk = num_blocks(self.grid.numel, self.block[0]), num_blocks(self.grid.numel, self.block[1])
        seen = sorted({b for b, _ in self._mass})
        masks = torch.zeros(self.buckets, num_layers, self.heads, nq, nk, dtype=torch.bool)
        for b in range(self.buckets):
            src = min(seen, key=lambda s: (abs(s - b), s))  # nearest calibrated bucket
            for layer in range(num_layers):
                masks[b, layer] = select_blocks(self._mass[(src, layer)], self.density)
        t = transformers[0]
        return ParoPlan(
            family=self.family, model_class=type(t).__name__, model_config=model_config(t), grid=self.grid,
            block_size=self.block, density=self.density, num_steps=self.num_steps or 1, orders=self.orders.clone(),
            packed_masks=_pack(masks), mask_shape=tuple(masks.shape), scores=self.mean_scores.float(),
            meta=dict(meta, coverage=self.coverage, calibrated_buckets=seen),
        )


def _generator_states(kwargs: Dict[str, Any]):
    gens = kwargs.get("generator")
    gens = gens if isinstance(gens, (list, tuple)) else [gens]
    return [(g, g.get_state()) for g in gens if isinstance(g, torch.Generator)]


def calibrate(
    pipe: Any,
    method: str = "paro",
    *,
    density: float = 0.5,
    block_size: int | Tuple[int, int] = 64,
    timestep_buckets: int = 4,
    coverage: float = 0.9,
    inputs: Optional[Sequence[Dict[str, Any]]] = None,
    **pipe_call_kwargs: Any,
) -> ParoPlan:
    """Calibrate PARO on a pipeline: run it (dense) and return the plan (see the module docstring).

    Args:
        pipe: a Wan / HunyuanVideo / FLUX pipeline (calibration runs whole denoising loops).
        density: kept fraction of the video blocks per head in the masks.
        block_size: kernel block (PARO uses 64); run time uses the same.
        timestep_buckets: masks per this many equal slices of the denoising steps.
        coverage: attention mass an order must hold in the fewest blocks (order choice).
        inputs: several calibration calls, each a dict of pipeline arguments merged over
            `pipe_call_kwargs` (e.g. different prompts); default one call.
        **pipe_call_kwargs: pipeline arguments (prompt or embeddings, size, steps, generator...).
    The pipeline runs twice per input; any sparse attention enabled on it is disabled afterwards.
    """
    from .api import disable_sparse_attention, enable_sparse_attention

    if method != "paro":
        raise ValueError(f"calibrate supports method='paro' only, got {method!r}")
    if isinstance(pipe, torch.nn.Module) or not callable(pipe):
        raise TypeError("calibrate needs a pipeline (it runs whole denoising loops), not a bare transformer")
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if isinstance(timestep_buckets, bool) or not isinstance(timestep_buckets, int) or timestep_buckets < 1:
        raise ValueError(f"timestep_buckets must be an int >= 1, got {timestep_buckets!r}")
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    calls = [dict(pipe_call_kwargs, **extra) for extra in (inputs or [{}])]
    states = [_generator_states(kw) for kw in calls]
    handle = enable_sparse_attention(pipe, method="dense", dense_steps=0, dense_layers=0, block_size=block_size)
    calibrator = ParoCalibrator(handle.family, float(density), float(coverage), timestep_buckets)
    handle.method = calibrator
    try:
        with torch.no_grad():
            for phase in ("orders", "masks"):
                calibrator.phase = phase
                for kwargs, saved in zip(calls, states):
                    for gen, state in saved:
                        gen.set_state(state)
                    pipe(**kwargs)
                if phase == "orders":
                    calibrator.choose_orders(handle.num_layers)
        if handle.calls.fallbacks:
            raise RuntimeError(f"calibration could not lay out the attention calls: {handle.calls.fallbacks}")
    finally:
        disable_sparse_attention(pipe)
    return calibrator.finish(handle.transformers, handle.num_layers, {"calibration_calls": len(calls)})
