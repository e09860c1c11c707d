"""Execution of block layouts: the public entry point, CSR index, reference and backends."""

from .api import BACKENDS, block_sparse_attention
from .index import BlockIndex, build_block_index, normalize_block_size, num_blocks
from .reference import expand_block_mask, reference_attention

__all__ = [
    "BACKENDS",
    "BlockIndex",
    "block_sparse_attention",
    "build_block_index",
    "expand_block_mask",
    "normalize_block_size",
    "num_blocks",
    "reference_attention",
]
