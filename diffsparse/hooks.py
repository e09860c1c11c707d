"""Step and geometry tracking: one stateful Diffusers hook per patched transformer.

Processors never see the latent grid or the denoising step, so a pre-forward hook on the
transformer reads them and writes them into a `StepState` shared by all processors of a handle
(and by both experts of Wan 2.2). The step advances when the timestep changes, which works for
every pipeline and makes the cond/uncond passes of CFG share a step.

Each pipeline call starts fresh, also after a call that was stopped by an exception:
- Diffusers pipelines wrap every denoiser call in `transformer.cache_context(name, ...)`; the hook
  holds a `StateManager` that receives that context, so the CFG branch is its *name* ("cond",
  "uncond"), not a guess from call order, and a step index going back (or, without one, the
  timestep going up: timesteps fall during a call) means a new call began: the state resets;
- `pipe.maybe_free_model_hooks()` (called at the end of every successful pipeline call) resets it
  too, since the hook is stateful;
- the step count for `dense_steps` fractions is the *calling* pipeline's (the context's
  `num_inference_steps`, else the pipeline object found on the call stack), so two pipelines
  sharing one transformer each get their own.
A bare transformer called without a cache context keeps counting until `handle.reset()`.
Inside a compiled forward the same work (`track`) runs in an opaque op at run time (compile_ops.py).
"""

from __future__ import annotations

import inspect
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from . import compile_ops
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
    forward_id: int = 0  # increments every transformer forward, never reset (dedupes checkpoint recomputes)
    grid: Optional[Grid] = None
    text_len: int = 0
    geometry_error: Optional[str] = None  # why the grid could not be read, if it could not
    #: which call of its step this forward is: the pipeline's cache-context name ("cond"/"uncond"),
    #: else its index within the step (pipelines that set no context)
    branch: Optional[Hashable] = None
    slot: int = 0  # index of this forward within its step
    num_steps: Optional[int] = None  # denoising steps of the calling pipeline call (0: none found), once looked up
    context: Any = None  # the Diffusers CacheContext set around the current call, if any
    #: inside a compiled forward: the step op's output, which every attend op of that forward takes
    #: (orders them after it; compile_ops.py); None when the hook ran eagerly
    compile_token: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.step, self.timestep = -1, None
        self.grid, self.text_len, self.geometry_error = None, 0, None
        self.branch, self.slot, self.num_steps = None, 0, None


class _ContextTap(StateManager):
    """Receives the `CacheContext` Diffusers sets on stateful hooks around each denoiser call."""

    def __init__(self, state: StepState) -> None:
        super().__init__(BaseState)
        self.step_state = state

    def set_context(self, context: Any) -> None:
        super().set_context(context)
        self.step_state.context = context


def calling_pipeline_steps(module: torch.nn.Module, max_depth: int = 40) -> Optional[int]:
    """Denoising steps of the pipeline call that is running `module` (found on the call stack), or None."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if owner is not None and hasattr(owner, "scheduler") and module in (
                getattr(owner, "transformer", None), getattr(owner, "transformer_2", None)):
            steps = getattr(owner, "_num_timesteps", None)  # set by Diffusers pipelines before their loop
            if steps is None:
                timesteps = getattr(owner.scheduler, "timesteps", None)
                steps = None if timesteps is None else len(timesteps)
            return steps
        frame = frame.f_back
    return None


class StepTrackerHook(ModelHook):
    """Pre-forward hook writing grid, text length and step into a shared `StepState`."""

    _is_stateful = True

    def __init__(self, state: StepState, reader: ContextReader, on_reset: Callable[[], None]) -> None:
        super().__init__()
        self.state, self.reader, self.on_reset = state, reader, on_reset
        self.context_tap = _ContextTap(state)  # found by Diffusers' cache_context among our attributes
        self._signature: Optional[inspect.Signature] = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(type(module).forward)
        self._names = list(self._signature.parameters)[1:]
        self._module = weakref.ref(module)
        self.opaque = compile_ops.Opaque(self)  # how a compiled forward reaches `track` (compile_ops.py)
        return module

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        if torch.compiler.is_compiling() and compile_ops.AVAILABLE:  # read at run time, in an opaque op
            arguments = dict(zip(self._names, args), **kwargs)
            self.state.compile_token = compile_ops.track_step_in_graph(self.opaque, arguments)
        else:
            self._track_eagerly(module, args, kwargs)
        return args, kwargs

    @torch.compiler.disable  # a graph break where the ops are not available
    def _track_eagerly(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        self.state.compile_token = None
        self.track(self._signature.bind_partial(module, *args, **kwargs).arguments)

    def track(self, arguments: Dict[str, Any]) -> None:
        """Read grid, text length and step from a transformer forward's (bound) arguments."""
        module = self._module()
        try:
            grid, timestep, text_len = self.reader(module, arguments, inputs_split_by_context_parallelism(module))
            self.state.geometry_error = None
        except ValueError as err:  # unusual token layout: processors fall back to dense and report it
            grid, timestep, text_len = None, arguments.get("timestep"), 0
            self.state.geometry_error = str(err)
        st = self.state
        t = None if timestep is None else float(torch.as_tensor(timestep).float().max())
        ctx = st.context
        if ctx is not None and st.step >= 0:
            index = getattr(ctx, "step_index", None)
            went_back = index < st.step if index is not None else (t is not None and st.timestep is not None
                                                                    and t > st.timestep)
            if went_back:  # a new pipeline call after one that did not finish
                st.reset()
                self.on_reset()
        st.grid, st.text_len = grid, text_len
        st.forward_id += 1
        index = None if ctx is None else getattr(ctx, "step_index", None)
        new_step = index != st.step if index is not None else (t is None or t != st.timestep)
        if new_step:
            st.step, st.timestep = (index if index is not None else st.step + 1), t
        st.slot = 0 if new_step else st.slot + 1
        st.branch = st.slot if ctx is None else ctx.name
        if st.num_steps is None:  # once per call; 0: no pipeline found (a bare transformer)
            st.num_steps = getattr(ctx, "num_inference_steps", None) or calling_pipeline_steps(module) or 0

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
