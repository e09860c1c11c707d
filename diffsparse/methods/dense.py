"""`dense`: every block computed, through the same plan and kernel path as the sparse methods.

Its output equals the stock attention up to float rounding: the end-to-end check of the machinery.
"""

from __future__ import annotations

import torch

from ..kernels.index import num_blocks
from .base import SparseMethod


class Dense(SparseMethod):
    name = "dense"

    def video_layout(self, grid, block_q, block_k):
        n = grid.numel
        return None, torch.ones(1, num_blocks(n, block_q), num_blocks(n, block_k), dtype=torch.bool)
