"""Radial attention (static, O(n log n)): compute density decays with temporal distance.

For frames i, j of s tokens at distance d = |i - j| and k = floor(log2(max(d, 1))):
- d <= 1: dense; key frame 0 is an attention sink (dense column) when `attention_sink`.
- 2^k <= s: token (i, a) attends (j, b) iff |a - b| + 1 <= decay_factor * s / 2^k; the
  diagonal (a == b) is always kept.
- 2^k > s: only frame pairs with d mod ceil(2^k / s) == 0, diagonal only.
(Radial Attention, Li et al. 2025.) Tokens stay in raster order; the band is evaluated exactly
on segment intervals, and a block is kept when any of its token pairs is allowed.
"""

from __future__ import annotations

import torch

from ..geometry import raster_coords
from ..layout import interval_gap, video_block_mask
from .base import SparseMethod, boolean, positive_float


class Radial(SparseMethod):
    name = "radial"
    options = {"decay_factor": positive_float, "attention_sink": boolean}
    presets = {
        "wan": {"decay_factor": 0.2, "attention_sink": True, "dense_layers": 1, "dense_steps": 0.25},
        "hunyuan": {"decay_factor": 0.95, "attention_sink": True, "dense_layers": 0, "dense_steps": 0.25},
    }
    unsupported = {"flux": "radial attention decays along time and an image has one frame; use 'sliding_window' or 'grat'"}

    def video_layout(self, grid, block_q, block_k):
        t, h, w = raster_coords(grid)
        frame_size = grid.h * grid.w
        feats = {"f": t, "a": h * grid.w + w}
        decay = self.decay_factor if self.decay_factor is not None else 1.0
        sink = self.attention_sink if self.attention_sink is not None else True

        def rule(qmin, qmax, kmin, kmax):
            d = (qmin["f"] - kmin["f"]).abs()  # frames are constant within a segment
            k = torch.floor(torch.log2(d.clamp(min=1).double())).long()
            span = 2.0 ** k.double()
            gap = interval_gap(qmin["a"], qmax["a"], kmin["a"], kmax["a"])
            within = span <= frame_size
            band = within & (gap.double() + 1 <= torch.clamp(decay * frame_size / span, min=1.0))
            stride = torch.ceil(span / frame_size).long().clamp(min=1)
            thinned = ~within & (d % stride == 0) & (gap == 0)
            keep = (d <= 1) | band | thinned
            if sink:
                keep = keep | (kmin["f"] == 0)
            return keep

        return None, video_block_mask(t, feats, rule, block_q, block_k).unsqueeze(0)
