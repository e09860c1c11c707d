"""Token geometry of one attention call: the latent grid, the text span, token orders.

Knows nothing about models or kernels. Video/image tokens are indexed in raster order
`t*H*W + h*W + w` (Wan, HunyuanVideo and FLUX all flatten their latents this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


@dataclass(frozen=True)
class Grid:
    """Latent token grid after patchify: `t` frames of `h` x `w` tokens (images: t = 1)."""

    t: int
    h: int
    w: int

    def __post_init__(self) -> None:
        for name in ("t", "h", "w"):
            val = getattr(self, name)
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"grid {name} must be a positive int, got {val!r}")

    @property
    def numel(self) -> int:
        return self.t * self.h * self.w

    @property
    def dims(self) -> Tuple[int, int, int]:
        return (self.t, self.h, self.w)


def raster_coords(grid: Grid, device: torch.device | str = "cpu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, h, w) coordinates of every token in raster order, each a LongTensor `(N,)`."""
    idx = torch.arange(grid.numel, device=device)
    return idx // (grid.h * grid.w), (idx // grid.w) % grid.h, idx % grid.w


def clamp_tile(grid: Grid, tile: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """A tile never larger than the grid (a 2-frame tile on a 1-frame image is a 1-frame tile)."""
    return tuple(min(a, b) for a, b in zip(tile, grid.dims))  # type: ignore[return-value]


def tile_coords(grid: Grid, tile: Tuple[int, int, int], device: torch.device | str = "cpu") -> Tuple[torch.Tensor, ...]:
    """Tile coordinates `(tt, th, tw)` of every raster token for a tiling with `tile` tokens per side."""
    t, h, w = raster_coords(grid, device)
    return t // tile[0], h // tile[1], w // tile[2]


def tile_major_order(grid: Grid, tile: Tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Permutation `(N,)`: internal position -> raster index, with each tile's tokens contiguous.

    Tiles are visited in raster order of tile coordinates; tokens inside a tile in raster order.
    Edge tiles may be partial (grid not a multiple of the tile): nothing is padded here.
    """
    t, h, w = raster_coords(grid, device)
    nt = [-(-g // s) for g, s in zip(grid.dims, tile)]
    tile_id = ((t // tile[0]) * nt[1] + h // tile[1]) * nt[2] + w // tile[2]
    inner = ((t % tile[0]) * tile[1] + h % tile[1]) * tile[2] + w % tile[2]
    key = tile_id * (tile[0] * tile[1] * tile[2]) + inner
    return torch.argsort(key)


@dataclass(frozen=True)
class TokenSpans:
    """Where video and text tokens sit in one attention call's sequence (model order).

    `text_first`: FLUX puts text before the image; HunyuanVideo after the video; Wan has no text.
    `chunks`: under Ulysses context parallelism the gathered sequence is the ranks' local
    sequences one after another, each `[video_r ; text_r]` (or `[text_r ; video_r]`), with
    video and text split evenly over the ranks; `chunks = 1` is the ordinary layout.
    """

    grid: Grid
    text_len: int = 0
    text_first: bool = False
    chunks: int = 1

    def __post_init__(self) -> None:
        if self.video_len % self.chunks or self.text_len % self.chunks:
            raise ValueError(
                f"{self.video_len} video / {self.text_len} text tokens do not split evenly over {self.chunks} ranks"
            )

    @property
    def video_len(self) -> int:
        return self.grid.numel

    @property
    def total_len(self) -> int:
        return self.video_len + self.text_len

    def _positions(self, length: int, own_first: bool) -> torch.Tensor:
        per_rank_own, per_rank_other = length // self.chunks, (self.total_len - length) // self.chunks
        i = torch.arange(length)
        rank, local = i // per_rank_own, i % per_rank_own
        return rank * (per_rank_own + per_rank_other) + (0 if own_first else per_rank_other) + local

    def video_positions(self) -> torch.Tensor:
        """Model position of each raster video token, `(Nv,)`."""
        return self._positions(self.video_len, not self.text_first)

    def text_positions(self) -> torch.Tensor:
        """Model position of each text token, `(Nt,)`."""
        return self._positions(self.text_len, self.text_first) if self.text_len else torch.zeros(0, dtype=torch.long)
