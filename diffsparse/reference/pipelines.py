"""The reference pipelines: Diffusers' `WanPipeline` / `FluxPipeline` whose calls default to the model's trained
settings.

Diffusers' defaults are the released models' (Wan: 480x832, 81 frames, 50 steps); the reference models were
trained at 64x64, 17 frames (video) and 128x128 (image), so a call that leaves the size, length, steps or guidance
out takes the reference model's own (`call_defaults`: the weights folder's `training.json`, then
`VIDEO_DEFAULTS` / `IMAGE_DEFAULTS`). Anything passed explicitly wins. Apart from that they are the stock
pipelines (same components, processors and progress bar), so `enable_sparse_attention` treats them as such.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Dict, Tuple

from diffusers import FluxPipeline, WanPipeline

#: a default left out when the caller passes the argument it conflicts with (FLUX refuses both)
_CONFLICTS = {"negative_prompt": "negative_prompt_embeds"}


def call_defaults(path: str, base: Dict[str, Any]) -> Dict[str, Any]:
    """`base` with height / width / num_frames replaced by the ones the weights in `path` were trained at
    (`training.json` written by `train.py`; the first size of a mixed-size fine-tune)."""
    out = dict(base)
    try:
        with open(os.path.join(path, "training.json")) as fh:
            cfg = json.load(fh)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return out
    for key, trained in (("height", "height"), ("width", "width"), ("num_frames", "frames")):
        value = cfg.get(trained)
        if key in out and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = value
    return out


def _fill(call: Callable, defaults: Dict[str, Any], args: Tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """`kwargs` plus each default whose parameter the call leaves out (by name or by position)."""
    given = inspect.signature(call).bind_partial(*args, **kwargs).arguments
    out = dict(kwargs)
    for key, value in defaults.items():
        if key not in given and given.get(_CONFLICTS.get(key, "")) is None:
            out[key] = value
    return out


class ReferenceWanPipeline(WanPipeline):
    """`WanPipeline` of the reference video model; a call without sizes, length, steps or guidance uses the model's
    trained settings (`call_defaults`) instead of Wan 2.1's 480x832, 81 frames, 50 steps."""

    #: what a call leaves out takes; set per pipeline by `load_video_pipeline`
    call_defaults: Dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any):
        return super().__call__(*args, **_fill(super().__call__, self.call_defaults, args, kwargs))


class ReferenceFluxPipeline(FluxPipeline):
    """`FluxPipeline` of the reference image model; a call without sizes, steps or true-CFG settings uses the
    model's trained settings (`call_defaults`) instead of FLUX.1's 1024x1024, 28 steps, no CFG."""

    #: what a call leaves out takes; set per pipeline by `load_image_pipeline`
    call_defaults: Dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any):
        return super().__call__(*args, **_fill(super().__call__, self.call_defaults, args, kwargs))
