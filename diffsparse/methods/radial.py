"""Radial attention (static, O(n log n)): compute density decays with temporal distance.

Radial Attention (Li et al. 2025). Tokens stay in raster order. For query frame i and key frame
j at distance d = |i - j|, with s tokens per frame and in-frame indices a (query) and b (key),
every frame pair is dense, empty, or a band |a - b| <= w(d):

- d <= 1: dense; with `attention_sink` key frame 0 is dense for every query frame.
- `band="reference"` (default; mit-han-lab/radial-attention's mask code): with
  bitlen = int.bit_length and L(d) = 2^bitlen(s) / 2^bitlen(d) (the band before decay), the
  half-width is w = max(decay_factor * L(d), band_floor) tokens; when L(d) < band_floor the
  pair is kept only if d % int(band_floor / L(d)) == 0 ("far-frame thinning"), else it is empty.
- `band="paper"` (the paper's formula, the previous default): with k = floor(log2 d),
  |a - b| + 1 <= decay_factor * s / 2^k while 2^k <= s (the diagonal always kept), and beyond
  that only pairs with d % ceil(2^k / s) == 0, diagonal only.

Blocks are then chosen from the token rule (`block_select`):

- "strict" (default; the reference's `shrinkMaskStrict`): each frame pair is judged on its own
  piece of a block (the block's rows of frame i, columns of frame j); a column is "full" when
  more than a third of the block's `block_q` rows attend it, and the piece keeps the block when
  more than 60 % of its non-empty columns are full. A block is kept when any of its frame pairs
  keeps it. Blocks the band only grazes are dropped, so a few allowed token pairs go uncomputed.
  As in the reference, a frame pair is judged only inside the ceil(s / block_q) (ceil(s /
  block_k)) blocks that start at the block holding the frame's first token: when a frame spills
  into one more block, that tail piece (fewer than s mod block tokens) keeps no block for it.
- "any": a block is kept when any token pair in it is allowed (exact superset of the token rule).

With block 128 the defaults reproduce the reference's block layout; the token rule is defined in
tokens (`band_floor`, 128 = the reference's block size) so it does not change with the block
size, and "strict" applies unchanged to any block size (block 1 gives the token layout). Both
choices are evaluated in closed form on segments (runs inside one block and one frame).
"""

from __future__ import annotations

import torch

from ..geometry import raster_coords
from ..layout import interval_gap, video_block_mask
from .base import SparseMethod, boolean, choice, positive_float, positive_int

# Half-width standing for "the whole frame" (dense pairs); larger than any in-frame distance.
_DENSE = 1 << 40


def _bit_length(x: torch.Tensor) -> torch.Tensor:
    """Python's int.bit_length for a LongTensor of non-negative ints."""
    out = torch.zeros_like(x)
    pos = x > 0
    out[pos] = torch.floor(torch.log2(x[pos].double())).long() + 1
    # log2 rounding near powers of two: correct by one where 2^(out-1) > x or 2^out <= x
    out = torch.where(pos & ((1 << (out - 1).clamp(min=0)) > x), out - 1, out)
    out = torch.where(pos & ((1 << out) <= x), out + 1, out)
    return out


class Radial(SparseMethod):
    name = "radial"
    options = {
        "decay_factor": positive_float,
        "attention_sink": boolean,
        "band": choice("reference", "paper"),
        "block_select": choice("strict", "any"),
        "band_floor": positive_int,
    }
    # The reference adds the frame-0 sink for Wan only (its HunyuanVideo path has none).
    presets = {
        "wan": {"decay_factor": 0.2, "attention_sink": True, "dense_layers": 1, "dense_steps": 0.25},
        "hunyuan": {"decay_factor": 0.95, "attention_sink": False, "dense_layers": 0, "dense_steps": 0.25},
    }
    defaults = {"decay_factor": 1.0, "attention_sink": True, "band": "reference", "block_select": "strict", "band_floor": 128}
    unsupported = {"flux": "radial attention decays along time and an image has one frame; use 'sliding_window' or 'grat'"}

    def check(self):
        for key, value in self.defaults.items():
            self.values.setdefault(key, value)

    def half_width(self, d: torch.Tensor, frame_size: int) -> torch.Tensor:
        """Band half-width in tokens per frame distance `d` (LongTensor): -1 = pair empty, `_DENSE` = dense."""
        decay, floor = self.decay_factor, self.band_floor
        if self.band == "reference":
            undecayed = 2.0 ** (frame_size.bit_length() - _bit_length(d)).double()
            thin = undecayed < floor
            split = torch.floor(floor / undecayed).long().clamp(min=1)
            width = torch.floor(torch.clamp(decay * undecayed, min=float(floor))).long()
            width = torch.where(thin & (d % split != 0), -1, width)
        else:
            span = 2.0 ** torch.floor(torch.log2(d.clamp(min=1).double()))
            within = span <= frame_size
            width = torch.floor(torch.clamp(decay * frame_size / span, min=1.0)).long() - 1
            stride = torch.ceil(span / frame_size).long().clamp(min=1)
            width = torch.where(within, width, torch.where(d % stride == 0, 0, -1))
        return torch.where(d <= 1, _DENSE, width)

    def video_layout(self, grid, block_q, block_k):
        t, h, w = raster_coords(grid)
        frame_size = grid.h * grid.w
        feats = {"f": t, "a": h * grid.w + w}
        if self.block_select == "strict":
            # The reference judges frame pair (i, j) inside ceil(s/B) blocks from the block of the
            # frame's first token; a frame's tail spilling into one more block is not judged.
            pos = torch.arange(grid.numel)
            for side, b in (("q", block_q), ("k", block_k)):
                feats["spill_" + side] = (pos // b >= (t * frame_size) // b + -(-frame_size // b)).long()
        sink, strict = self.attention_sink, self.block_select == "strict"
        full = block_q // 3 + 1  # rows a column needs to be "full" (> 1/3 of the block)

        def rule(qmin, qmax, kmin, kmax):
            d = (qmin["f"] - kmin["f"]).abs()  # frames are constant within a segment
            width = self.half_width(d, frame_size)
            if sink:
                width = torch.where(kmin["f"] == 0, _DENSE, width)
            a0, a1, c0, c1 = qmin["a"], qmax["a"], kmin["a"], kmax["a"]
            if not strict:
                return (width >= 0) & (interval_gap(a0, a1, c0, c1) <= width)
            # Column c is attended by rows [max(a0, c - w), min(a1, c + w)]: non-empty for c in
            # [a0 - w, a1 + w], at least `full` rows for c in [a0 + full-1 - w, a1 - (full-1) + w].
            nonempty = (torch.minimum(c1, a1 + width) - torch.maximum(c0, a0 - width) + 1).clamp(min=0)
            high = (torch.minimum(c1, a1 - (full - 1) + width) - torch.maximum(c0, a0 + (full - 1) - width) + 1).clamp(min=0)
            possible = (a1 - a0 + 1 >= full) & (2 * width + 1 >= full)
            high = torch.where(possible, high, 0)
            judged = (qmin["spill_q"] == 0) & (kmin["spill_k"] == 0)
            return judged & (width >= 0) & (5 * high > 3 * nonempty)

        return None, video_block_mask(t, feats, rule, block_q, block_k).unsqueeze(0)
