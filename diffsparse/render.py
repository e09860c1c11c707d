"""Render a video with a given method and time the denoiser: the library side of `diffsparse render`."""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .api import disable_sparse_attention, enable_sparse_attention

DEFAULT_MODEL_NOTE = (
    "default model: diffsparse's shipped reference Wan (1.2 M-param transformer + tiny T5, trained on procedural "
    "shapes at 64x64, 17 frames, then at mixed 64x64 / 128x128; 264 CPU-minutes); it draws one object in the "
    "prompt's colour on the prompt's background, follows the prompt's motion in 74 % of samples at 64x64, 17 "
    "frames (growing, rotating; left/right/up/down rarely), less at this longer, larger render size, and shape "
    "hardly (eval/results/reference/)"
)
RANDOM_MODEL_NOTE = "default model: a tiny Wan transformer with RANDOM weights (reference weights not found)"

#: render settings for the embedded model: its larger trained resolution at 97 frames (25 latent frames, 6400
#: video tokens), blocks of 64 (a quarter of a 16x16-token frame). Radial attention pays on long videos (its
#: paper's argument): at 33 frames (2304 tokens) radial was slower than dense on a 2-core CPU (0.89x), at 97
#: frames 1.24x (experiments/demo_default_sweep.py, experiments/README.md)
EMBEDDED_DEFAULTS = {"frames": 97, "height": 128, "width": 128, "steps": 16, "block_size": 64}
#: render settings for a user's local checkpoint (Wan 480p)
MODEL_DEFAULTS = {"frames": 33, "height": 480, "width": 832, "steps": 30, "block_size": None}

#: file types `diffusers.utils.export_to_video` writes here (imageio: ffmpeg with libx264 by extension, Pillow for
#: .gif); .webm fails (WebM needs a VP8/VP9/AV1 codec, export_to_video asks for libx264)
VIDEO_OUT_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".gif")
#: `WanPipeline.check_inputs` refuses a height or width that is not a multiple of 16 px, whatever the model's token
#: size (Diffusers hard-codes it; the embedded model's own token is 8 px)
WAN_PIPELINE_MULTIPLE = 16
#: pipeline class name fragment -> diffsparse model family (`api.token_grid`'s families)
_FAMILY_OF_PIPELINE = (("HunyuanVideo", "hunyuan"), ("Wan", "wan"), ("Flux", "flux"))


def check_pipeline_folder(path: str) -> None:
    """Raise FileNotFoundError unless `path` is a local Diffusers pipeline folder (one with model_index.json)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a local Diffusers pipeline folder: no such directory (diffsparse "
                                "never downloads; pass a folder from `huggingface-cli download` or "
                                "pipe.save_pretrained)")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"{path!r} is not a local Diffusers pipeline folder: it has no model_index.json "
                                "(pipe.save_pretrained writes one)")


def pipeline_class_name(path: str) -> str:
    """The pipeline class a local pipeline folder names in its model_index.json ("" when unreadable)."""
    try:
        with open(os.path.join(path, "model_index.json")) as f:
            return str(json.load(f).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def model_family(model: Optional[str]) -> Optional[str]:
    """The model family ("wan", "hunyuan", "flux") of a local pipeline folder's class, "wan" for the embedded model
    (`model=None`), None when unknown."""
    if not model:
        return "wan"
    name = pipeline_class_name(model)
    return next((family for fragment, family in _FAMILY_OF_PIPELINE if fragment in name), None)


def _json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def size_strides(model: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """(frames, height px, width px) a render size must step by: frames = 1 + k * frames stride, height and width
    multiples of theirs. The embedded model's come from its VAE and patch configs (and the Wan pipeline's multiple
    of 16), a local folder's from its family's released models (`api.token_grid`); None when unknown."""
    from .pipelines import adapter_for_family

    family = model_family(model)
    if family is None:
        return None
    ft, fh, fw = adapter_for_family(family).pixels_per_token
    if not model:
        from .reference import VIDEO_WEIGHTS, available

        if available("video"):  # else the random tiny Wan: 8x VAE x patch 2, the released Wan token
            vae = _json(os.path.join(VIDEO_WEIGHTS, "vae", "config.json"))
            pt, ph, pw = _json(os.path.join(VIDEO_WEIGHTS, "transformer", "config.json"))["patch_size"]
            ft = vae["scale_factor_temporal"] * pt
            fh, fw = vae["scale_factor_spatial"] * ph, vae["scale_factor_spatial"] * pw
    if family == "wan":
        fh, fw = math.lcm(fh, WAN_PIPELINE_MULTIPLE), math.lcm(fw, WAN_PIPELINE_MULTIPLE)
    return ft, fh, fw


@dataclass
class RenderResult:
    frames: np.ndarray  # (T, H, W, 3) float in [0, 1]
    dit_seconds: float  # time spent inside the transformer(s)
    total_seconds: float
    stats: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)
    layouts: Dict[int, torch.Tensor] = field(default_factory=dict)  # dynamic methods: per-layer (H, nq, nk)


class DenoiserTimer:
    """Wall time spent inside the transformer forwards (synchronising CUDA around each)."""

    def __init__(self, modules: List[torch.nn.Module]) -> None:
        self.seconds, self._start, self._handles = 0.0, 0.0, []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def default_video_pipeline(device: str = "cpu"):
    """The embedded default video model: the shipped reference model, else a random tiny Wan (says which)."""
    from .reference import available, load_pipeline as load_reference

    if available("video"):
        print(DEFAULT_MODEL_NOTE)
        return load_reference("video", device=device)
    from .tiny import tiny_wan_pipeline

    print(RANDOM_MODEL_NOTE)
    return tiny_wan_pipeline(num_layers=4, heads=4, head_dim=32).to(device)


def load_pipeline(path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """A Diffusers pipeline from a local folder only; never downloads."""
    check_pipeline_folder(path)
    from diffusers import DiffusionPipeline

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    return DiffusionPipeline.from_pretrained(path, **kwargs).to(device)


def pipeline_for(model: Optional[str], device: str):
    """The pipeline in the local folder `model`, or the embedded default (saying what it is)."""
    if model:
        return load_pipeline(model, device, torch.bfloat16 if device.startswith("cuda") else None)
    return default_video_pipeline(device)


def check_method_options(method: str, family: Optional[str], options: Dict[str, Any]) -> None:
    """Validate a method's own options for a model family without a model (raises the method's ValueError/TypeError:
    unknown option, bad value, PARO without or with an unreadable plan). Shared options are checked on enable."""
    from .methods import get_method
    from .preview import method_instance

    get_method(method)  # an unknown method is refused without a family too
    if family is not None:
        method_instance(method, family, **options)


def check_method(pipe: Any, method: str, **method_options: Any) -> None:
    """Raise what `enable_sparse_attention(pipe, method, **method_options)` raises, leaving `pipe` as it was: every
    option checked against the loaded model (shared settings, backend, a PARO plan's model) before a render."""
    enable_sparse_attention(pipe, method, **method_options)
    disable_sparse_attention(pipe)


def prompt_inputs(pipe: Any, prompt: str, seed: int) -> Dict[str, Any]:
    """Pipeline text inputs: the prompt when the pipeline has a text encoder, else embeddings derived from it."""
    if getattr(pipe, "text_encoder", None) is not None:
        return {"prompt": prompt}
    dim = pipe.transformer.config.text_dim
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()) ^ seed)
    dev = pipe.transformer.device
    return {
        "prompt_embeds": torch.randn(1, 16, dim, generator=g).to(dev),
        "negative_prompt_embeds": torch.randn(1, 16, dim, generator=g).to(dev),
    }


def render(
    pipe: Any,
    method: Optional[str],
    *,
    prompt: str = "a red square moving left on a plain background",
    frames: int = 17,
    height: int = 128,
    width: int = 128,
    steps: int = 8,
    seed: int = 0,
    guidance_scale: float = 5.0,
    **method_options: Any,
) -> RenderResult:
    """Render one video; `method=None` renders with the pipeline as it is (dense)."""
    transformers = [t for t in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if t is not None]
    handle = enable_sparse_attention(pipe, method, **method_options) if method else None
    timer = DenoiserTimer(transformers)
    try:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = pipe(
                **prompt_inputs(pipe, prompt, seed), height=height, width=width, num_frames=frames,
                num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen, output_type="np",
            )
        total = time.perf_counter() - start
    finally:
        timer.close()
        stats = handle.stats() if handle else None
        layouts = handle.recorded_layouts() if handle else {}
        if handle:
            disable_sparse_attention(pipe)
    return RenderResult(np.asarray(out.frames[0]), timer.seconds, total, stats, layouts=layouts)


def side_by_side(dense: np.ndarray, sparse: np.ndarray, gain: float = 8.0) -> np.ndarray:
    """Frames `(T, H, 3W, 3)`: dense | sparse | |dense - sparse| x gain (clipped)."""
    diff = np.clip(np.abs(dense - sparse) * gain, 0.0, 1.0)
    return np.concatenate([dense, sparse, diff], axis=2)


def psnr(reference: np.ndarray, candidate: np.ndarray) -> Optional[float]:
    """PSNR in dB of float frames in [0, 1] on 8-bit values, MSE pooled over the video (None: identical)."""
    from .metrics import fidelity, to_uint8

    return fidelity.psnr(to_uint8(candidate), to_uint8(reference))


def ssim(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean per-frame luma SSIM (Wang et al.) of float frames in [0, 1] on 8-bit values."""
    from .metrics import fidelity, to_uint8

    return fidelity.ssim(to_uint8(candidate), to_uint8(reference))
