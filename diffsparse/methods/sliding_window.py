"""Sliding-window attention (static, local) over the 3D video grid or the 2D image grid.

Tokens are reordered tile by tile (STA: tiles are the unit the kernel skips). The window is
given either in tokens (`window`, a NATTEN kernel size per axis: a query at x sees
[x - k//2, x - k//2 + k - 1], odd or even k) or in tiles (`window_tiles`, STA: a query tile
attends the key tiles within the tile window). With `inward` (default; NATTEN, STA, FreeSwim) a
window at a border is shifted inside so it keeps its size; `inward=True` with a token window is
NATTEN's neighbourhood attention (dilation 1).
Tile-unit windows are exact per block; token windows are evaluated on each segment's coordinate
box, exact for whole tiles and conservative (a superset) for partial ones.
"""

from __future__ import annotations

from ..geometry import clamp_tile, raster_coords, tile_coords, tile_major_order
from ..layout import video_block_mask, window_reaches
from .base import SparseMethod, boolean, extent, optional

# Video presets: FastVideo STA's setting (tiles of 6x8x8 tokens, a 3x3x3-tile window), which it ships for
# HunyuanVideo (30x48x80) and Wan (18x48x80). Images: no anchor; 1x8x16 tiles, a 3x3-tile window.
_VIDEO = {"tile": (6, 8, 8), "window_tiles": (3, 3, 3), "inward": True, "dense_layers": 1, "dense_steps": 0.25}


class SlidingWindow(SparseMethod):
    name = "sliding_window"
    options = {"window": optional(extent), "window_tiles": optional(extent), "tile": extent, "inward": boolean}
    presets = {
        "wan": dict(_VIDEO),
        "hunyuan": dict(_VIDEO, dense_layers=0),
        "flux": {"tile": (1, 8, 16), "window_tiles": (1, 3, 3), "inward": True, "dense_layers": 1, "dense_steps": 0.25},
    }

    def __init__(self, family, **opts):
        # A user-given window in tokens replaces the preset's window in tiles (and vice versa).
        if "window" in opts and "window_tiles" not in opts:
            opts["window_tiles"] = None
        if "window_tiles" in opts and "window" not in opts:
            opts["window"] = None
        super().__init__(family, **opts)

    def check(self):
        if (self.window is None) == (self.window_tiles is None):
            raise ValueError("sliding_window needs exactly one of 'window' (tokens) or 'window_tiles' (tiles)")
        if "tile" not in self.values:
            self.values["tile"] = _VIDEO["tile"]
        if "inward" not in self.values:
            self.values["inward"] = True

    def video_layout(self, grid, block_q, block_k):
        tile = clamp_tile(grid, self.tile)
        order = tile_major_order(grid, tile)
        tiles = [c[order] for c in tile_coords(grid, tile)]
        coords = [c[order] for c in raster_coords(grid)]
        cell = (tiles[0] * grid.h + tiles[1]) * grid.w + tiles[2]
        if self.window_tiles is not None:
            names, lengths = ("tt", "th", "tw"), [-(-g // s) for g, s in zip(grid.dims, tile)]
            sizes, feats = self.window_tiles, dict(zip(names, tiles))
        else:
            names, lengths = ("t", "h", "w"), list(grid.dims)
            sizes, feats = self.window, dict(zip(names, coords))
        inward = self.inward

        def rule(qmin, qmax, kmin, kmax):
            keep = None
            for name, length, size in zip(names, lengths, sizes):
                axis = window_reaches(qmin[name], qmax[name], kmin[name], kmax[name], length, size, inward)
                keep = axis if keep is None else keep & axis
            return keep

        return order, video_block_mask(cell, feats, rule, block_q, block_k).unsqueeze(0)
