"""Public API: enable / disable / scoped sparse attention on a pipeline or a bare transformer."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, List, Tuple

import torch

from .geometry import Grid
from .handle import Settings, SparseHandle
from .hooks import StepTrackerHook, install_hook, remove_hook
from .kernels import BACKENDS, normalize_block_size
from .kernels.api import QUANTIZE
from .methods import get_method
from .parallel import check_parallel_support
from .pipelines import adapter_for_family, find_adapter, supported_models
from .plan import Plan
from .preview import method_instance, plan_for

logger = logging.getLogger("diffsparse")

_HANDLE_ATTR = "_diffsparse_handle"
_SHARED = ("dense_steps", "dense_layers", "block_size", "backend", "quantize")
_CACHE = ("cache", "cache_interval", "cache_threshold")
CACHES = ("flashblock",)


def _uncompiled(module: torch.nn.Module) -> torch.nn.Module:
    """The module a `torch.compile` wrapper holds (patched in place: the wrapper recompiles for it)."""
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        module = module._orig_mod
    return module


def _transformers(pipe: Any) -> List[torch.nn.Module]:
    """The denoisers to patch: a bare transformer, or `pipe.transformer` (+ `transformer_2`, Wan 2.2);
    a `torch.compile`d one is patched through to the module it wraps."""
    if isinstance(pipe, torch.nn.Module):
        return [_uncompiled(pipe)]
    found = [getattr(pipe, name, None) for name in ("transformer", "transformer_2")]
    found = [_uncompiled(t) for t in found if isinstance(t, torch.nn.Module)]
    if not found:
        raise TypeError(
            f"unsupported pipeline {type(pipe).__name__}: it has no `transformer`; diffsparse supports pipelines "
            f"built on {supported_models()} and those transformers themselves"
        )
    return found


def _validate_shared(opts: dict, has_scheduler: bool) -> Settings:
    ds = opts["dense_steps"]
    if isinstance(ds, bool) or not isinstance(ds, (int, float)) or ds < 0:
        raise ValueError(f"dense_steps must be an int >= 0 or a fraction in [0, 1), got {ds!r}")
    if isinstance(ds, float):
        if ds >= 1.0:
            raise ValueError(f"dense_steps as a fraction must be in [0, 1), got {ds!r}; pass an int for a step count")
        if not has_scheduler and ds > 0:
            raise ValueError(
                f"dense_steps={ds!r} is a fraction of the pipeline's steps, but a bare transformer has no scheduler; "
                "pass an int number of steps"
            )
    dl = opts["dense_layers"]
    if isinstance(dl, bool) or not isinstance(dl, int) or dl < 0:
        raise ValueError(f"dense_layers must be an int >= 0, got {dl!r}")
    if opts["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {opts['backend']!r}")
    if opts["quantize"] not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE} (\"int8\": SageAttention-style INT8 QK^T), "
                         f"got {opts['quantize']!r}")
    return Settings(ds, dl, normalize_block_size(opts["block_size"]), opts["backend"], quantize=opts["quantize"])


def _check_backend(settings: Settings, method: Any, transformers: List[torch.nn.Module]) -> None:
    """Refuse a backend this machine or this configuration cannot run, before the model is touched."""
    from .dynamic import DynamicMethod

    if settings.backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs a CUDA GPU (our Triton kernels compile for NVIDIA GPUs) and this "
                         "machine has none; use backend='auto' (our CPU path here) or 'torch'")
    on_cpu = all(p.device.type == "cpu" for t in transformers for p in t.parameters())
    needs_lse = settings.cache is not None or isinstance(method, DynamicMethod)
    if settings.backend == "flex" and on_cpu and needs_lse and not torch.cuda.is_available():
        what = f"cache={settings.cache!r}" if settings.cache else f"method {method.name!r}"
        raise ValueError(f"backend='flex' on CPU cannot run {what}: torch's compiled FlexAttention has no log-sum-exp "
                         "on CPU; use backend='auto' or 'torch'")


def _validate_cache(options: dict, settings: Settings) -> None:
    """`cache=` ("flashblock" or None) and its `cache_interval` / `cache_threshold`, into `settings`."""
    cache = options.get("cache")
    if cache is not None and cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES} or None, got {cache!r}")
    if cache is None and any(k in options for k in _CACHE[1:]):
        raise ValueError(f"{[k for k in _CACHE[1:] if k in options]} only apply with cache='flashblock'")
    interval = options.get("cache_interval", settings.cache_interval)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"cache_interval must be an int >= 1 (1 = refresh at every step), got {interval!r}")
    threshold = options.get("cache_threshold", settings.cache_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 2.0:
        raise ValueError(f"cache_threshold must be a cosine in [-1, 1] (above 1: always refresh), got {threshold!r}")
    settings.cache, settings.cache_interval, settings.cache_threshold = cache, interval, float(threshold)


def enable_sparse_attention(pipe: Any, method: str = "radial", **options: Any) -> SparseHandle:
    """Replace dense self-attention by `method` in a Diffusers pipeline or transformer.

    Args:
        pipe: a Wan / Wan 2.2 / HunyuanVideo / FLUX pipeline, or a `WanTransformer3DModel`,
            `HunyuanVideoTransformer3DModel` or `FluxTransformer2DModel`.
        method: one of `list_methods()`.
        **options: shared - `dense_steps` (leading denoising steps run dense; int, or a fraction
            of the pipeline's steps), `dense_layers` (leading blocks run dense), `block_size`
            (int or (bq, bk)), `backend` (kernel path), `quantize` (None or "int8": INT8 QK^T for
            every sparse call, inference only); `cache="flashblock"` (residual reuse of the
            skipped blocks, any method) with `cache_interval` (refresh every N sparse steps of a
            layer, default 5) and `cache_threshold` (per-head cosine refresh, default 0.85); plus
            the method's own options (PARO: `plan=` a file from `calibrate`). Omitted options
            take the model family's preset.

    Returns the handle (`stats()`, `reset()`). Enabling again replaces the previous configuration.
    Everything is validated before the model is touched; on failure the model is left as it was.
    """
    get_method(method)  # an unknown method is refused before the model is looked at
    transformers = _transformers(pipe)
    adapters = {find_adapter(t) for t in transformers}
    if len(adapters) != 1:
        raise TypeError(f"pipeline mixes transformer kinds {[type(t).__name__ for t in transformers]}")
    adapter = adapters.pop()
    family = adapter.family
    method_opts = {k: v for k, v in options.items() if k not in _SHARED + _CACHE}
    instance = method_instance(method, family, **method_opts)  # raises on unknown/invalid options
    preset = instance.preset
    shared = {"dense_steps": 0, "dense_layers": 0, "block_size": 128, "backend": "auto", "quantize": None}
    shared.update({k: preset[k] for k in _SHARED if k in preset})
    explicit = {k: options[k] for k in _SHARED if k in options}
    # A calibration plan (PARO) fixes settings of its own (the block size it was made with) and
    # must have been made for this model.
    for key, value in getattr(instance, "forced_settings", dict)().items():
        norm = normalize_block_size if key == "block_size" else (lambda x: x)
        if key in explicit and norm(explicit[key]) != norm(value):
            raise ValueError(f"{key}={explicit[key]!r} conflicts with the {method!r} plan, made with {key}={value!r}")
        shared[key] = value
        explicit.pop(key, None)
    if hasattr(instance, "check_model"):
        instance.check_model(family, transformers)
    has_scheduler = getattr(getattr(pipe, "scheduler", None), "set_timesteps", None) is not None
    if not has_scheduler and isinstance(shared["dense_steps"], float) and "dense_steps" not in explicit:
        logger.warning("diffsparse: bare transformer, preset dense_steps fraction ignored; pass dense_steps=N")
        shared["dense_steps"] = 0
    shared.update(explicit)
    settings = _validate_shared(shared, has_scheduler)
    _validate_cache({k: options[k] for k in _CACHE if k in options}, settings)
    _check_backend(settings, instance, transformers)

    modules: List[Tuple[torch.nn.Module, Any]] = []
    for t in transformers:
        for module in adapter.self_attention_modules(t):
            proc = module.get_processor() if hasattr(module, "get_processor") else module.processor
            if _owner(proc) is not None:
                proc = None  # ours, from a previous enable: the stock one is restored below
            elif type(proc) is not adapter.stock_processor:
                raise TypeError(
                    f"{type(module).__name__} uses processor {type(proc).__name__}; diffsparse patches only the stock "
                    f"{adapter.stock_processor.__name__} (disable other attention plug-ins first)"
                )
            check_parallel_support(getattr(proc, "_parallel_config", None))
            modules.append((module, proc))

    disable_sparse_attention(pipe)  # replace any previous configuration
    modules = [(m, p if p is not None else _current_processor(m)) for m, p in modules]

    n_layers = len(modules) // len(transformers)
    handle = SparseHandle(instance, settings, family, transformers, pipe=None if pipe in transformers else pipe)
    handle.num_layers = n_layers
    handle.adapter = adapter
    _install(handle, modules)
    return handle


def _install(handle: SparseHandle, modules: List[Tuple[torch.nn.Module, Any]]) -> None:
    """Hooks and processors of `handle` on its transformers; `modules` pairs each self-attention module
    with its stock processor. On failure everything installed so far is undone."""
    adapter = handle.adapter
    try:
        for t in handle.transformers:
            hook = StepTrackerHook(handle.state, adapter.read_context, handle.on_pipeline_reset)
            install_hook(t, hook)
        for i, (module, original) in enumerate(modules):
            handle.originals.append((module, original))
            proc = adapter.make_processor(handle, i % handle.num_layers)
            proc._attention_backend = getattr(original, "_attention_backend", None)
            proc._parallel_config = getattr(original, "_parallel_config", None)
            module.set_processor(proc)
        for t in handle.transformers:
            setattr(t, _HANDLE_ATTR, handle)
        handle.active = True
    except Exception:
        _restore(handle)
        raise


def _current_processor(module: torch.nn.Module) -> Any:
    return module.get_processor() if hasattr(module, "get_processor") else module.processor


def _owner(processor: Any) -> Any:
    return getattr(processor, "handle", None) if hasattr(processor, "layer") else None


def _restore(handle: SparseHandle) -> None:
    for module, original in reversed(handle.originals):
        current = _current_processor(module)
        if _owner(current) is handle and hasattr(original, "_attention_backend"):
            # `set_attention_backend` while sparse attention was on set it on our processor: keep it
            original._attention_backend = getattr(current, "_attention_backend", None)
        module.set_processor(original)
    handle.originals.clear()
    for t in handle.transformers:
        remove_hook(t)
        if getattr(t, _HANDLE_ATTR, None) is handle:
            delattr(t, _HANDLE_ATTR)
    handle.active = False


def disable_sparse_attention(pipe: Any) -> None:
    """Restore the original processors and remove the hooks; a no-op if sparse attention is not enabled."""
    for t in _transformers(pipe):
        handle = getattr(t, _HANDLE_ATTR, None)
        if handle is not None:
            _restore(handle)


def get_handle(pipe: Any) -> SparseHandle | None:
    """The active handle of a pipeline or transformer, if any."""
    for t in _transformers(pipe):
        handle = getattr(t, _HANDLE_ATTR, None)
        if handle is not None:
            return handle
    return None


@contextlib.contextmanager
def sparse_attention(pipe: Any, method: str = "radial", **options: Any) -> Iterator[SparseHandle]:
    """`with sparse_attention(pipe, method="grat") as handle: ...` - enabled inside; on exit the
    configuration active before (none, or an earlier handle, which becomes active again) is restored."""
    previous = get_handle(pipe)
    handle = enable_sparse_attention(pipe, method, **options)
    try:
        yield handle
    finally:
        disable_sparse_attention(pipe)
        if previous is not None:
            previous.reset()
            _install(previous, [(m, _current_processor(m)) for t in previous.transformers
                                for m in previous.adapter.self_attention_modules(t)])


def token_grid(family: str, frames: int, height: int, width: int) -> Grid:
    """Latent token grid of the released models of a family (VAE x patch factors)."""
    adapter = adapter_for_family(family)
    ft, fh, fw = adapter.pixels_per_token
    if min(frames, height, width) <= 0 or height < fh or width < fw:
        raise ValueError(f"impossible video size {frames}x{height}x{width} for {family} (tokens are {fh}x{fw} px)")
    t = 1 if adapter.single_frame else (frames - 1) // ft + 1
    return Grid(t, height // fh, width // fw)


def preview_layout(
    method: str, grid: Grid, family: str = "wan", text_len: int = 0, block_size: Any = 128, **options: Any
) -> Plan:
    """The plan `method` would run for one call on `grid` (+ `text_len` text tokens), without a model.
    `diffsparse.block_layout` gives the same layout as a mask and token order."""
    return plan_for(method, grid, family, text_len, block_size, **options)
