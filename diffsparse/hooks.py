"""Step and geometry tracking: one stateful Diffusers hook per patched transformer.

Processors never see the latent grid or the denoising step, so a pre-forward hook on the
transformer reads them and writes them into a `StepState` shared by all processors of a handle
(and by both experts of Wan 2.2). The step advances when the timestep changes, which works for
every pipeline and makes the cond/uncond passes of CFG share a step. The hook is stateful, so
`pipe.maybe_free_model_hooks()` (called at the end of every pipeline call) resets it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .geometry import Grid

HOOK_NAME = "diffsparse_step_tracker"

#: reads (grid, timestep, text length) from a transformer's bound forward args; the last argument
#: is (rank, world) when context parallelism split those args before this hook saw them, else None
ContextReader = Callable[
    [torch.nn.Module, Dict[str, Any], Optional[Tuple[int, int]]], Tuple[Optional[Grid], Optional[torch.Tensor], int]
]


@dataclass
class StepState:
    """What processors read during one transformer forward. Reset per pipeline call."""

    step: int = -1  # denoising step index; -1 before the first forward
    timestep: Optional[float] = None
    forward_id: int = 0  # increments every transformer forward (dedupes checkpoint recomputes)
    grid: Optional[Grid] = None
    text_len: int = 0
    geometry_error: Optional[str] = None  # why the grid could not be read, if it could not

    def reset(self) -> None:
        self.step, self.timestep, self.forward_id = -1, None, 0
        self.grid, self.text_len, self.geometry_error = None, 0, None


class StepTrackerHook(ModelHook):
    """Pre-forward hook writing grid, text length and step into a shared `StepState`."""

    _is_stateful = True

    def __init__(self, state: StepState, reader: ContextReader, on_reset: Callable[[], None]) -> None:
        super().__init__()
        self.state, self.reader, self.on_reset = state, reader, on_reset
        self._signature: Optional[inspect.Signature] = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(type(module).forward)
        return module

    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        bound = self._signature.bind_partial(module, *args, **kwargs).arguments
        try:
            grid, timestep, text_len = self.reader(module, bound, inputs_split_by_context_parallelism(module))
            self.state.geometry_error = None
        except ValueError as err:  # unusual token layout: processors fall back to dense and report it
            grid, timestep, text_len = None, bound.get("timestep"), 0
            self.state.geometry_error = str(err)
        st = self.state
        st.grid, st.text_len = grid, text_len
        st.forward_id += 1
        t = None if timestep is None else float(torch.as_tensor(timestep).float().max())
        if t is None or t != st.timestep:
            st.step += 1
            st.timestep = t
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        self.on_reset()
        return module


def inputs_split_by_context_parallelism(module: torch.nn.Module) -> Optional[Tuple[int, int]]:
    """(rank, world) if a Diffusers context-parallel input hook on `module` runs before ours.

    Hooks registered later run first; a model whose CP plan splits its root inputs (FLUX) and
    that got `enable_parallelism` after `enable_sparse_attention` hands us rank-local inputs.
    """
    registry = getattr(module, "_diffusers_hook", None)
    config = getattr(module, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if registry is None or cp is None or HOOK_NAME not in registry._hook_order:
        return None
    outer = registry._hook_order[registry._hook_order.index(HOOK_NAME) + 1 :]
    if not any(name.startswith("cp_input---") for name in outer):
        return None
    return cp._ulysses_local_rank or 0, cp.ulysses_degree


def install_hook(transformer: torch.nn.Module, hook: StepTrackerHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
    registry.register_hook(hook, HOOK_NAME)


def remove_hook(transformer: torch.nn.Module) -> None:
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
