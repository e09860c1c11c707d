"""Compact (CSR-like) form of a block mask, built once per layout and reused by every kernel.

A block mask says, for every (batch, head, query block), which key blocks are computed.
Kernels do not want to scan a row of `nk` booleans per query block; they want the list of
kept key blocks. `BlockIndex` holds both forms plus the block sizes, so it can be built once
per plan and shared across layers and steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Tuple, Union

import torch

BlockSize = Union[int, Tuple[int, int]]


def normalize_block_size(block_size: BlockSize) -> Tuple[int, int]:
    """`128` or `(128, 64)` -> `(bq, bk)`; raises ValueError on anything else."""
    if isinstance(block_size, bool):
        raise ValueError(f"block_size must be a positive int or a (bq, bk) pair, got {block_size!r}")
    if isinstance(block_size, int):
        pair = (block_size, block_size)
    elif isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        pair = (block_size[0], block_size[1])
    else:
        raise ValueError(f"block_size must be a positive int or a (bq, bk) pair, got {block_size!r}")
    for b in pair:
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"block_size must be a positive int or a (bq, bk) pair of positive ints, got {block_size!r}")
    return pair


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether a call on these tensors records gradients (inference-only paths check it)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def num_blocks(length: int, block: int) -> int:
    """Number of blocks covering `length` tokens; the last one may be partial."""
    return -(-length // block)


@dataclass(frozen=True)
class BlockIndex:
    """A block mask with its per-row list of kept key blocks.

    Attributes:
        mask: bool `(Bm, Hm, nq, nk)`; Bm in {1, B}, Hm in {1, H} broadcast over batch/heads.
        counts: int32 `(Bm, Hm, nq)` number of kept key blocks per query block.
        indices: int32 `(Bm, Hm, nq, max(1, max_count))` kept key-block ids in ascending order;
            entries at positions >= counts are padding (0) and must be ignored.
        block_q, block_k: token sizes of query and key blocks.
    """

    mask: torch.Tensor
    counts: torch.Tensor
    indices: torch.Tensor
    block_q: int
    block_k: int
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_count(self) -> int:
        return int(self.indices.shape[-1]) if bool((self.counts > 0).any()) else 0

    @property
    def density(self) -> float:
        """Fraction of blocks computed (over the broadcast mask); computed once per layout (the CPU
        dispatch reads it on every call)."""
        return self.derived(("density",), lambda: float(self.mask.float().mean()) if self.mask.numel() else 0.0)

    def derived(self, key: tuple, build: Callable[[], Any]) -> Any:
        """Something computed from this layout once and kept with it (copies on other devices, the
        transposed index, a FlexAttention `BlockMask`): the layout serves every layer and step."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def to(self, device: torch.device | str) -> "BlockIndex":
        device = torch.device(device)
        if self.mask.device == device:
            return self
        return self.derived(("to", str(device)), lambda: BlockIndex(
            self.mask.to(device), self.counts.to(device), self.indices.to(device), self.block_q, self.block_k))

    def transposed(self) -> "BlockIndex":
        """Index of the transposed mask (per key block, the query blocks that read it): for dK/dV."""
        flipped = (self.block_k, self.block_q)
        return self.derived(("T",), lambda: build_block_index(self.mask.transpose(-1, -2), flipped))


def build_block_index(block_mask: torch.Tensor, block_size: BlockSize) -> BlockIndex:
    """Build the CSR form of a bool block mask `(Bm, Hm, nq, nk)`."""
    bq, bk = normalize_block_size(block_size)
    if not isinstance(block_mask, torch.Tensor) or block_mask.dim() != 4:
        shape = tuple(block_mask.shape) if isinstance(block_mask, torch.Tensor) else type(block_mask).__name__
        raise ValueError(f"block_mask must be a 4-D bool tensor (B or 1, H or 1, nq, nk), got {shape}")
    mask = block_mask.bool()
    counts = mask.sum(-1, dtype=torch.int32)
    width = max(1, int(counts.max()) if counts.numel() else 1)
    # Stable sort of "not kept" puts kept blocks first, in ascending block order.
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    indices = torch.where(torch.arange(width, device=mask.device) < counts.unsqueeze(-1), order, 0).to(torch.int32)
    return BlockIndex(mask, counts, indices.contiguous(), bq, bk)
