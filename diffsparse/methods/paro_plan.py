"""The PARO plan: per-head token orders and per-timestep block masks of one model and grid, and its file.

`diffsparse.calibrate` (calibration.py) measures a plan; the `paro` method (paro.py) runs one. The
file (`torch.save`, loadable with `weights_only=True`) records the model family, transformer class
and config, the latent grid, block size, density, step count, the orders, the per-head order
scores and the masks (bit-packed). A plan refuses another model (listing the config entries that
differ) and another grid (the masks are attention statistics of that grid).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..geometry import Grid, raster_coords

ORDERS: Tuple[str, ...] = ("FHW", "FWH", "HWF", "HFW", "WHF", "WFH")
FORMAT, VERSION = "diffsparse-paro-plan", 1


def axis_order(grid: Grid, name: str) -> torch.Tensor:
    """Token order `(N,)` (internal position -> raster index) with axes nested as `name`, outermost first."""
    if sorted(name) != ["F", "H", "W"]:
        raise ValueError(f"axis order must be a permutation of 'FHW', got {name!r}")
    t, h, w = raster_coords(grid)
    coords, dims = {"F": t, "H": h, "W": w}, {"F": grid.t, "H": grid.h, "W": grid.w}
    a, b, c = name
    return torch.argsort((coords[a] * dims[b] + coords[b]) * dims[c] + coords[c])


def model_config(transformer: torch.nn.Module) -> Dict[str, Any]:
    """A transformer's public config as plain JSON values (what a plan is checked against)."""
    cfg = {k: v for k, v in dict(getattr(transformer, "config", {})).items() if not k.startswith("_")}
    return json.loads(json.dumps(cfg, default=str))


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).view(-1, 8)
    return (flat << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, start: int, count: int) -> torch.Tensor:
    first, last = start // 8, -(-(start + count) // 8)
    bits = (packed[first:last, None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[start - first * 8 : start - first * 8 + count].bool()


@dataclass(eq=False)
class ParoPlan:
    """A PARO calibration: per (layer, head) axis order and per (bucket, layer, head) block mask."""

    family: str
    model_class: str
    model_config: Dict[str, Any]
    grid: Grid
    block_size: Tuple[int, int]
    density: float
    num_steps: int
    orders: torch.Tensor  # (L, H) int64 index into ORDERS
    packed_masks: torch.Tensor  # uint8 bits of bool (NB, L, H, nq, nk)
    mask_shape: Tuple[int, int, int, int, int]
    scores: torch.Tensor  # (L, H, 6) mean fraction of blocks holding `coverage` of the mass
    meta: Dict[str, Any] = field(default_factory=dict)
    _masks: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _head_orders: Dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_buckets(self) -> int:
        return self.mask_shape[0]

    @property
    def num_layers(self) -> int:
        return self.mask_shape[1]

    @property
    def heads(self) -> int:
        return self.mask_shape[2]

    def bucket(self, step: int, num_steps: Optional[int]) -> int:
        """Timestep bucket of `step` out of `num_steps` (the calibration's count when None)."""
        n = num_steps or self.num_steps
        return min(self.num_buckets - 1, max(0, step) * self.num_buckets // max(1, n))

    def mask(self, bucket: int, layer: int) -> torch.Tensor:
        """Bool `(H, nq, nk)` block mask over the video tokens of each head in its order."""
        if (bucket, layer) not in self._masks:
            nb, nl, h, nq, nk = self.mask_shape
            size = h * nq * nk
            self._masks[(bucket, layer)] = _unpack(self.packed_masks, (bucket * nl + layer) * size, size).view(h, nq, nk)
        return self._masks[(bucket, layer)]

    def order_names(self, layer: int) -> List[str]:
        return [ORDERS[int(i)] for i in self.orders[layer]]

    def head_orders(self, layer: int) -> torch.Tensor:
        """`(H, Nv)` token order of each head of `layer` (internal position -> raster index)."""
        if layer not in self._head_orders:
            cache = {name: axis_order(self.grid, name) for name in set(self.order_names(layer))}
            self._head_orders[layer] = torch.stack([cache[n] for n in self.order_names(layer)])
        return self._head_orders[layer]

    # ------------------------------------------------------------------ checks
    def check_model(self, family: str, transformers: Sequence[torch.nn.Module]) -> None:
        """Raise ValueError if this plan was made for another model."""
        where = f"PARO plan{' ' + repr(self.meta['path']) if self.meta.get('path') else ''}"
        if family != self.family:
            raise ValueError(f"{where} was calibrated for a {self.family} model, not {family}")
        for t in transformers:
            if type(t).__name__ != self.model_class:
                raise ValueError(f"{where} was calibrated for {self.model_class}, not {type(t).__name__}")
            have = model_config(t)
            diff = sorted(k for k in set(have) | set(self.model_config) if have.get(k) != self.model_config.get(k))
            if diff:
                shown = ", ".join(f"{k}: plan {self.model_config.get(k)!r} vs model {have.get(k)!r}" for k in diff[:6])
                raise ValueError(f"{where} was calibrated for another {self.model_class} ({shown}); calibrate this model")

    def check_grid(self, grid: Grid) -> None:
        if grid != self.grid:
            raise ValueError(
                f"PARO plan was calibrated for the latent grid {self.grid.dims} (frames, height, width in tokens); "
                f"this call has {grid.dims}. PARO block masks are attention statistics of one grid: run "
                "diffsparse.calibrate(pipe, method='paro', ...) at this resolution and use that plan"
            )

    def summary(self) -> Dict[str, Any]:
        counts = {name: int((self.orders == i).sum()) for i, name in enumerate(ORDERS) if int((self.orders == i).sum())}
        return {"grid": self.grid.dims, "density": self.density, "block_size": self.block_size,
                "timestep_buckets": self.num_buckets, "orders": counts}

    # ------------------------------------------------------------------ file
    def save(self, path: str | os.PathLike) -> None:
        torch.save({
            "format": FORMAT, "version": VERSION, "family": self.family, "model_class": self.model_class,
            "model_config": json.dumps(self.model_config, sort_keys=True), "grid": list(self.grid.dims),
            "block_size": list(self.block_size), "density": self.density, "num_steps": self.num_steps,
            "orders": self.orders, "order_names": list(ORDERS), "packed_masks": self.packed_masks,
            "mask_shape": list(self.mask_shape), "scores": self.scores,
            "meta": json.dumps({k: v for k, v in self.meta.items() if k != "path"}, default=str),
        }, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ParoPlan":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no PARO plan file at {path!r}; make one with diffsparse.calibrate(pipe, method='paro')")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path!r} is not a diffsparse PARO plan file ({err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a diffsparse PARO plan file")
        if data.get("version") != VERSION or list(data.get("order_names", [])) != list(ORDERS):
            raise ValueError(f"{path!r} is a PARO plan of format version {data.get('version')}; this diffsparse reads {VERSION}")
        meta = json.loads(data["meta"])
        meta["path"] = path
        return cls(
            family=data["family"], model_class=data["model_class"], model_config=json.loads(data["model_config"]),
            grid=Grid(*data["grid"]), block_size=tuple(data["block_size"]), density=float(data["density"]),
            num_steps=int(data["num_steps"]), orders=data["orders"].long(), packed_masks=data["packed_masks"],
            mask_shape=tuple(data["mask_shape"]), scores=data["scores"], meta=meta,
        )


def load_plan(path: str | os.PathLike) -> ParoPlan:
    """Read a plan written by `ParoPlan.save` (for `enable_sparse_attention(..., method="paro", plan=...)`)."""
    return ParoPlan.load(path)


# ---------------------------------------------------------------------------- calibration
