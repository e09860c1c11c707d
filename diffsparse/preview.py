"""Static block layouts without a model: `block_layout(method, grid, ...)` (and `show-mask`).

The layout is the one the handle would run for one attention call on `grid` (+ text tokens):
the method's video layout in its token order, text rows and columns dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch

from .dynamic import DynamicMethod
from .geometry import Grid, TokenSpans
from .kernels import normalize_block_size
from .methods import SparseMethod, get_method
from .pipelines import ADAPTERS, adapter_for_family
from .plan import Plan, build_plan

# Options the handle takes for every method; they do not change a static layout.
SHARED_OPTIONS = ("dense_steps", "dense_layers", "block_size", "backend", "quantize", "cache", "cache_interval",
                  "cache_threshold")


def method_instance(method: str, family: str, **options: Any) -> SparseMethod:
    """`method` configured for `family` with `options` (shared settings among them are skipped): omitted
    options come from the method's preset for the family, else from the family adapter's presets."""
    cls = get_method(method)
    own = {k: v for k, v in options.items() if k not in SHARED_OPTIONS}
    return cls(family, preset=adapter_for_family(family).presets.get(cls.name), **own)


def families() -> Tuple[str, ...]:
    """Model families with an adapter (the `family` values presets are keyed by)."""
    return tuple(a.family for a in ADAPTERS)


@dataclass(frozen=True)
class BlockLayout:
    """A static method's layout for one call geometry.

    mask: bool `(nq, nk)` (head-independent) or `(H, nq, nk)`, over the sequence in the method's
        order `[video tokens in method order ; text]`; `block_size=1` gives the token layout.
    order: LongTensor `(S,)`: model token index at each position of that order, or None when it is
        the model's own order (raster video, then text; FLUX puts text first in the model).
    """

    mask: torch.Tensor
    order: Optional[torch.Tensor]
    grid: Grid
    text_len: int
    block_size: Tuple[int, int]

    @property
    def density(self) -> float:
        """Fraction of blocks computed."""
        return float(self.mask.float().mean())

    @property
    def kept_blocks(self) -> int:
        return int(self.mask.sum())


def _grid(grid: Any) -> Grid:
    if isinstance(grid, Grid):
        return grid
    if not isinstance(grid, Sequence) or len(grid) != 3:
        raise ValueError(f"grid must be (T, H, W) latent tokens, got {grid!r}")
    for name, val in zip("THW", grid):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ValueError(f"grid {name} must be a positive int, got {val!r} in grid {tuple(grid)!r}")
    return Grid(*grid)


def plan_for(method: str, grid: Any, family: str = "wan", text_len: int = 0, block_size: Any = 128, **options: Any) -> Plan:
    """The plan a static `method` runs for one call on `grid` (+ `text_len` text tokens), without a model."""
    if family not in families():
        raise ValueError(f"unknown model family {family!r}; choose one of {list(families())}")
    grid = _grid(grid)
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 0:
        raise ValueError(f"text_len must be an int >= 0, got {text_len!r}")
    method_cls = get_method(method)
    bq, bk = normalize_block_size(block_size)
    if issubclass(method_cls, DynamicMethod):
        raise ValueError(
            f"method {method!r} decides its layout per head at run time from the attention itself; record it with "
            f"`diffsparse render --method {method} --save-layouts run.pt` (or handle.recorded_layouts()) and draw it "
            "with `diffsparse show-mask --layouts run.pt`"
        )
    instance = method_instance(method, family, **options)
    order, vmask = instance.video_layout(grid, bq, bk)
    spans = TokenSpans(grid, text_len, text_first=adapter_for_family(family).text_first)
    return build_plan(order, vmask, spans, None, bq, bk)


def block_layout(
    method: str, grid: Any, *, family: str = "wan", block_size: Any = 128, text_len: int = 0, **options: Any
) -> BlockLayout:
    """The block layout a static method computes on a latent grid `(T, H, W)`.

    Args:
        method: a static method (`dense`, `radial`, `sliding_window`, `grat`); AdaSpa and PARO decide
            per head at run time and raise, pointing to `render --save-layouts`.
        grid: `(T, H, W)` latent tokens after patchify (`diffsparse.token_grid` converts pixels).
        family: "wan", "hunyuan" or "flux": which preset fills the options left out.
        block_size: int or `(bq, bk)`; 1 gives the token-level layout.
        text_len: text tokens in the sequence (dense rows and columns).
        **options: the method's options (as for `enable_sparse_attention`).
    """
    plan = plan_for(method, grid, family, text_len, block_size, **options)
    mask = plan.index.mask[0]
    return BlockLayout(
        mask=mask[0] if mask.shape[0] == 1 else mask,
        order=plan.q_order,
        grid=_grid(grid),
        text_len=text_len,
        block_size=(plan.index.block_q, plan.index.block_k),
    )
