"""Execution of block layouts: the entry point, CSR index, Triton kernels, CPU path, reference, block scores, LSE merge."""

from .api import BACKENDS, block_sparse_attention
from .block_score import block_scores
from .index import BlockIndex, build_block_index, normalize_block_size, num_blocks
from .merge import merge_attention
from .reference import expand_block_mask, reference_attention

__all__ = [
    "BACKENDS",
    "BlockIndex",
    "block_scores",
    "merge_attention",
    "block_sparse_attention",
    "build_block_index",
    "expand_block_mask",
    "normalize_block_size",
    "num_blocks",
    "reference_attention",
]
