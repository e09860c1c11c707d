"""diffsparse: sparse attention for Diffusers video and image diffusion transformers.

    handle = diffsparse.enable_sparse_attention(pipe, method="radial")
    video = pipe(...).frames[0]
    handle.stats()["density"]
    diffsparse.disable_sparse_attention(pipe)
"""

from .api import (
    disable_sparse_attention,
    enable_sparse_attention,
    get_handle,
    preview_layout,
    sparse_attention,
    token_grid,
)
from .calibration import calibrate
from .block_diffusion import block_attention
from .geometry import Grid
from .preview import BlockLayout, block_layout
from .handle import SparseHandle
from .kernels import BlockIndex, block_scores, block_sparse_attention, build_block_index, merge_attention
from .methods import list_methods
from .methods.paro_plan import ParoPlan, load_plan
from .parallel import context_parallel_plan

__version__ = "0.1.0"

__all__ = [
    "BlockIndex",
    "BlockLayout",
    "Grid",
    "ParoPlan",
    "SparseHandle",
    "block_attention",
    "block_layout",
    "block_scores",
    "block_sparse_attention",
    "build_block_index",
    "calibrate",
    "context_parallel_plan",
    "disable_sparse_attention",
    "enable_sparse_attention",
    "get_handle",
    "list_methods",
    "load_plan",
    "merge_attention",
    "preview_layout",
    "sparse_attention",
    "token_grid",
]
