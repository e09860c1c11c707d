"""GRAT (static, grouped): tokens are partitioned into groups that share one key set.

Tokens are reordered so each (t, h, w) group of `group_size` tokens is contiguous. A query group
attends key groups that are
- `variant="block"` (GRAT-B): within `radius` groups along every axis (the (2r+1)^3 neighbourhood);
- `variant="criss_cross"` (GRAT-X): in the same time slice, row band or column band (they share
  the t, h or w group index with the query group; axes not split into several groups, such as
  the time axis of an image, are ignored).
Exact at group granularity; a kernel block is kept when any of its group pairs is.
"""

from __future__ import annotations


import torch

from ..geometry import clamp_tile, tile_coords, tile_major_order
from ..layout import video_block_mask
from .base import SparseMethod, choice, extent, non_negative_int


class Grat(SparseMethod):
    name = "grat"
    options = {"group_size": extent, "variant": choice("block", "criss_cross"), "radius": non_negative_int}
    presets = {
        "wan": {"group_size": (2, 8, 8), "variant": "criss_cross", "radius": 1, "dense_layers": 1, "dense_steps": 0.25},
        "hunyuan": {"group_size": (4, 8, 8), "variant": "criss_cross", "radius": 1, "dense_layers": 0, "dense_steps": 0.25},
        "flux": {"group_size": (1, 8, 16), "variant": "criss_cross", "radius": 1, "dense_layers": 1, "dense_steps": 0.25},
    }

    def check(self):
        self.values.setdefault("group_size", (2, 8, 8))
        self.values.setdefault("variant", "criss_cross")
        self.values.setdefault("radius", 1)

    def video_layout(self, grid, block_q, block_k):
        group = clamp_tile(grid, self.group_size)
        order = tile_major_order(grid, group)
        gt, gh, gw = (c[order] for c in tile_coords(grid, group))
        cell = (gt * grid.h + gh) * grid.w + gw
        feats = {"t": gt, "h": gh, "w": gw}
        variant, radius = self.variant, self.radius
        # An axis with a single group (t of an image) says nothing about locality: criss-cross
        # uses only axes that are split, so images get the row/column-band form.
        split = [a for a, g, s in zip("thw", grid.dims, group) if g > s] or list("thw")

        def rule(qmin, qmax, kmin, kmax):
            if variant == "criss_cross":  # group coords are constant within a segment
                same = [qmin[a] == kmin[a] for a in split]
                return same[0] if len(same) == 1 else torch.stack(same).any(0)
            near = [(qmin[a] - kmin[a]).abs() <= radius for a in "thw"]
            return near[0] & near[1] & near[2]

        return order, video_block_mask(cell, feats, rule, block_q, block_k).unsqueeze(0)



