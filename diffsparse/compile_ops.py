"""The two custom ops through which a `torch.compile`d transformer reaches the handle.

Everything diffsparse decides per call (the denoising step, dense or sparse for this layer and
step, the plan for the grid, the CFG branch) depends on values that change while the compiled
graph must not: the timestep, the pipeline's cache context, FLUX's `img_ids`. Traced as Python,
each of those is a graph break or a guard that recompiles every step. Inside a compiled region
the step hook and the processors therefore call two opaque ops instead, whose bodies run eagerly
at every call with the real values:

- `diffsparse::track_step(hook, names, tensors)` (names comma-joined): the step hook's work (grid,
  text length, step, branch) on the transformer's tensor arguments; returns an empty *token* tensor;
- `diffsparse::attend(handle, token, layer, q, k, v, text_len, key_mask, backend)`: `handle.attend`
  with the stock dense attention (`dispatch_attention_fn` on the processor's backend) as fallback.
  Taking the token makes every attend op of a forward run after that forward's step op.

The hook and the handle cross into the graph as opaque reference objects (`Opaque`): Dynamo
guards on their identity only. Both ops are inference-only (calls that need gradients take the
traced Python path) and `cudagraph_unsafe`, so CUDA-graph modes replay around them, never
over a stale decision.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import torch

try:  # opaque objects in custom ops: recent PyTorch only (2.13 has them)
    from torch._library.opaque_object import register_opaque_type
    from torch._opaque_base import OpaqueBase
except ImportError:  # older torch: compiled forwards take the traced Python path (graph breaks)
    register_opaque_type, OpaqueBase = None, object


class Opaque(OpaqueBase):
    """A Python object (the step hook, the handle) passed into a custom op as one opaque value."""

    def __init__(self, target: Any) -> None:
        self.target = target
        # The dispatcher state of eager code where this is made (enable time). Compiled code calls
        # ops with most dispatch keys excluded; the op bodies run eager PyTorch that needs them
        # (vmap and a nested torch.compile when FlexAttention runs, autograd-aware custom ops).
        self._eager_dispatch = (torch._C._dispatch_tls_local_include_set(),
                                torch._C._dispatch_tls_local_exclude_set())

    def eager(self) -> contextlib.ExitStack:
        """Context for an op body: eager dispatch, inference mode kept as the caller had it."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch._C._ForceDispatchKeyGuard(*self._eager_dispatch))
        stack.enter_context(torch.inference_mode(torch.is_inference_mode_enabled()))
        return stack

    def __reduce__(self):
        # Inductor pickles graph inputs into its cache key; the compiled graph does not depend on
        # which object this is (it is a run-time input), so its type name stands for it there.
        return (Opaque, (type(self.target).__name__,))


def _define_ops() -> None:
    tags = (torch.Tag.cudagraph_unsafe,)

    @torch.library.custom_op("diffsparse::track_step", mutates_args=(), tags=tags)
    def track_step(hook: Opaque, names: str, tensors: List[torch.Tensor]) -> torch.Tensor:
        with hook.eager():
            hook.target.track(dict(zip(names.split(","), tensors)))
        return torch.empty(0, device=tensors[0].device)

    @track_step.register_fake
    def _(hook, names, tensors):
        return torch.empty(0, device=tensors[0].device)

    @torch.library.custom_op("diffsparse::attend", mutates_args=(), tags=tags)
    def attend(handle: Opaque, token: Optional[torch.Tensor], layer: int, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, text_len: int, key_mask: Optional[torch.Tensor], backend: str) -> torch.Tensor:
        def dense() -> torch.Tensor:
            return stock_attention(q, k, v, key_mask, backend or None)

        with handle.eager():
            out = handle.target.attend(layer, q, k, v, text_len=None if text_len < 0 else text_len,
                                       key_mask=key_mask, dense=dense)
        return out.contiguous()  # a custom op may not return a view of its input

    @attend.register_fake
    def _(handle, token, layer, q, k, v, text_len, key_mask, backend):
        return q.new_empty(q.shape[:3] + (v.shape[-1],))


def _register() -> bool:
    if register_opaque_type is None:
        return False
    try:
        register_opaque_type(Opaque, typ="reference")
        _define_ops()
    except (TypeError, ValueError, RuntimeError, AttributeError):  # an opaque-object API we do not know
        return False
    return True


#: whether compiled forwards use the two ops (a capability of the installed torch, fixed at import)
AVAILABLE = _register()


def stock_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor],
                    backend: Any = None, parallel_config: Any = None) -> torch.Tensor:
    """The attention a stock Diffusers processor runs, `(B, S, H, D)` -> `(B, S, H, D)`: dense layers and
    steps, and fallbacks, call it so they stay bit-identical to the unpatched pipeline."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, attn_mask=key_mask, dropout_p=0.0, is_causal=False, backend=backend,
                                 parallel_config=parallel_config)


def track_step_in_graph(hook: Opaque, arguments: Dict[str, Any]) -> torch.Tensor:
    """The step op on a transformer forward's tensor arguments (a number timestep made a tensor);
    returns the step's token."""
    timestep = arguments.get("timestep")
    if timestep is not None and not isinstance(timestep, torch.Tensor):
        arguments = dict(arguments, timestep=torch.as_tensor(timestep))
    names = [n for n, x in arguments.items() if isinstance(x, torch.Tensor)]
    return torch.ops.diffsparse.track_step(hook, ",".join(names), [arguments[n] for n in names])


def attend_in_graph(opaque: Opaque, token: Optional[torch.Tensor], layer: int, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, text_len: Optional[int], key_mask: Optional[torch.Tensor],
                    backend: Any) -> torch.Tensor:
    """`handle.attend` as one opaque op; `text_len` None: the step's (read at run time); `backend`: the
    processor's Diffusers attention backend (None: Diffusers' default)."""
    name = "" if backend is None else str(getattr(backend, "value", backend))
    return torch.ops.diffsparse.attend(opaque, token, layer, q, k, v, -1 if text_len is None else text_len,
                                       key_mask, name)
