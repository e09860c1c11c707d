"""What a model adapter knows: which modules are self-attention, how to read the grid, which processor to use.

Adapters know models and nothing about sparsity; their processors hand q/k/v to `handle.attend`
(`AttentionHandle`: all a processor may use of the handle).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch

from .. import compile_ops
from ..geometry import Grid
from ..kernels.index import needs_grad


@runtime_checkable
class AttentionHandle(Protocol):
    """What a patched processor uses of the handle (`handle.SparseHandle` implements it)."""

    #: the step state the transformer's hook fills (`text_len`: the call's text tokens, for blocks
    #: whose forward does not receive the text, such as FLUX's single-stream blocks)
    state: Any
    #: the handle as one opaque value for the `diffsparse::attend` op (compile_ops.py)
    opaque: Any

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_len: Optional[int],
               key_mask: Optional[torch.Tensor], dense: Callable[[], torch.Tensor],
               parallel_config: Any = None) -> torch.Tensor:
        """q/k/v `(B, S, H, D)` in model order -> `(B, S, H, D)`; `dense()` runs the stock attention;
        `text_len` None: the step's (`state.text_len`)."""
        ...


def route_attention(handle: AttentionHandle, processor: Any, layer: int, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, *, text_len: Optional[int], key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """What a patched processor calls with its q/k/v `(B, S, H, D)`: `handle.attend`, with the stock
    attention on the processor's backend and parallel config as the dense path; inside a compiled
    graph the same as one opaque op, so that per-step decisions neither break the graph nor
    recompile it (compile_ops.py). Calls that need gradients, context-parallel calls and a torch
    without opaque objects in custom ops stay traced Python (graph breaks).
    """
    backend, config = processor._attention_backend, processor._parallel_config
    if (torch.compiler.is_compiling() and compile_ops.AVAILABLE and config is None
            and not needs_grad(q, k, v)):
        return compile_ops.attend_in_graph(handle.opaque, handle.state.compile_token, layer, q, k, v, text_len,
                                           key_mask, backend)

    def dense() -> torch.Tensor:
        return compile_ops.stock_attention(q, k, v, key_mask, backend, config)

    return handle.attend(layer, q, k, v, text_len=text_len, key_mask=key_mask, dense=dense, parallel_config=config)


class ModelAdapter:
    """One model family. Subclasses fill the class attributes and the three methods."""

    family: ClassVar[str]
    #: the transformer class this adapter handles
    transformer_class: ClassVar[type]
    #: the stock processor class a patched module must currently use
    stock_processor: ClassVar[type]
    #: pixels per latent token of the family's released models, (frames, height, width): VAE x patch
    pixels_per_token: ClassVar[Tuple[int, int, int]]
    #: text tokens come before the image/video tokens in the joint sequence (FLUX), else after (HunyuanVideo)
    text_first: ClassVar[bool] = False
    #: the family draws images: one frame, no time axis
    single_frame: ClassVar[bool] = False
    #: method name -> default options and shared settings on this family, for methods whose own
    #: `presets` have none for it: a new family brings its presets here, in its one file (a method
    #: with presets and none from either place refuses the family)
    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def matches(cls, transformer: torch.nn.Module) -> bool:
        return isinstance(transformer, cls.transformer_class)

    @staticmethod
    def self_attention_modules(transformer: torch.nn.Module) -> List[torch.nn.Module]:
        """Self-attention modules in execution order (their position is the layer index)."""
        raise NotImplementedError

    @staticmethod
    def read_context(
        transformer: torch.nn.Module, args: Dict[str, Any], split: Optional[Tuple[int, int]] = None
    ) -> Tuple[Optional[Grid], Any, int]:
        """(grid, timestep, global text length) from the transformer's bound forward arguments.

        `split` = (rank, world) when context parallelism already split the arguments into rank chunks.
        """
        raise NotImplementedError

    @staticmethod
    def make_processor(handle: AttentionHandle, layer: int) -> Any:
        raise NotImplementedError

    @staticmethod
    def tiny_pipeline(**kwargs: Any) -> Any:
        """A small random-weight pipeline of this family built from configs offline (tests, benchmarks)."""
        raise NotImplementedError

    @staticmethod
    def tiny_inputs(seed: int = 0, text_len: int = 8, valid_text: Optional[int] = None) -> Dict[str, Any]:
        """Prompt embeddings (and masks) for `tiny_pipeline`: its text encoders are left out."""
        raise NotImplementedError

    @staticmethod
    def context_parallel_plan(transformer: torch.nn.Module) -> Optional[Dict[str, Any]]:
        """A Diffusers CP plan for `enable_parallelism(cp_plan=...)`; None: the model ships its own."""
        return None


def video_grid(hidden_states: torch.Tensor, patch: Tuple[int, int, int]) -> Grid:
    """Grid of a `(B, C, F, H, W)` latent after a `(pt, ph, pw)` patchify."""
    if hidden_states is None or hidden_states.dim() != 5:
        raise ValueError(f"expected video latents (B, C, F, H, W), got {getattr(hidden_states, 'shape', None)}")
    _, _, f, h, w = hidden_states.shape
    return Grid(f // patch[0], h // patch[1], w // patch[2])


def dual_and_single_stream_attention(transformer: torch.nn.Module) -> List[torch.nn.Module]:
    """`transformer_blocks[i].attn` then `single_transformer_blocks[j].attn` (FLUX, HunyuanVideo)."""
    return [b.attn for b in transformer.transformer_blocks] + [b.attn for b in transformer.single_transformer_blocks]
