"""Small trained reference models shipped with diffsparse (offline, no downloads).

    from diffsparse.reference import load_pipeline
    pipe = load_pipeline("video")                    # a ready diffusers.WanPipeline (subclass)
    video = pipe(prompt="a red square moving left on a striped background",
                 generator=torch.Generator().manual_seed(0), output_type="np").frames[0]   # 17 x 64 x 64

    image = load_pipeline("image")(prompt="a red square in the top left on a striped background").images[0]

A call that leaves out the size, length, steps or guidance takes the model's trained settings (`VIDEO_DEFAULTS`:
64x64, 17 frames, 20 steps, guidance 4.0; `IMAGE_DEFAULTS`: 128x128, 20 steps, true CFG 4.0 with an empty
negative prompt), not Diffusers' defaults for the released models (Wan: 480x832, 81 frames, 50 steps), which
would run for many minutes on a CPU. Both show Diffusers' progress bar; `pipe.set_progress_bar_config(disable=True)`
turns it off.

The video model is a small `WanTransformer3DModel` with a tiny T5 text encoder and a linear (PCA)
space-to-depth autoencoder (`vae.SpaceToDepthVAE`), trained with `diffsparse.reference.train` on the
procedural captioned videos of `diffsparse.reference.data` at 64x64, 17 frames, then fine-tuned with
batches alternating between 64x64 and 128x128 (`configs/reference_video_finetune.json`). The image model is a
small `FluxTransformer2DModel` with tiny CLIP and T5 encoders and `image_vae.SpaceToDepthImageVAE`,
trained on `image_data` stills at 128x128 (`train_image.py`). See `eval/results/reference/` and
`eval/results/reference_image/` for the recipes and measured quality.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
VIDEO_WEIGHTS = os.path.join(WEIGHTS_DIR, "video")
IMAGE_WEIGHTS = os.path.join(WEIGHTS_DIR, "image")

# what a call leaves out takes: the size and length the model was trained at (it was also fine-tuned at 128x128;
# RoPE lets it render other sizes and lengths, quality degrades away from these) and the sampler settings
# `evaluate.py` / `evaluate_image.py` measure with
VIDEO_DEFAULTS = {"num_frames": 17, "height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 4.0}
IMAGE_DEFAULTS = {"height": 128, "width": 128, "num_inference_steps": 20, "true_cfg_scale": 4.0, "negative_prompt": ""}


def available(kind: str = "video") -> bool:
    path = {"video": VIDEO_WEIGHTS, "image": IMAGE_WEIGHTS}.get(kind)
    return path is not None and os.path.isfile(os.path.join(path, "transformer", "config.json"))


def load_video_pipeline(path: str = VIDEO_WEIGHTS, device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """A `WanPipeline` (`ReferenceWanPipeline`) from a weights folder written by `train.py` (`Trainer.export`); a call
    without sizes, length, steps or guidance uses the ones the weights were trained at (`call_defaults`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    from .pipelines import ReferenceWanPipeline, call_defaults
    from .vae import SpaceToDepthVAE

    if not os.path.isfile(os.path.join(path, "transformer", "config.json")):
        raise FileNotFoundError(f"no reference video weights under {path!r}")
    kw = {"local_files_only": True}
    transformer = WanTransformer3DModel.from_pretrained(os.path.join(path, "transformer"), **kw)
    text_encoder = T5EncoderModel.from_pretrained(os.path.join(path, "text_encoder"), **kw).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(os.path.join(path, "tokenizer"), **kw)
    vae = SpaceToDepthVAE.from_pretrained(os.path.join(path, "vae"), **kw)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(os.path.join(path, "scheduler")))
    pipe = ReferenceWanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                transformer=transformer)
    pipe.call_defaults = call_defaults(path, VIDEO_DEFAULTS)
    pipe = pipe.to(device)
    if dtype is not None:
        pipe.transformer.to(dtype)
    return pipe


def load_image_pipeline(path: str = IMAGE_WEIGHTS, device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """A `FluxPipeline` (`ReferenceFluxPipeline`) from a weights folder written by `train_image.py`
    (`ImageTrainer.export`); a call without sizes, steps or true-CFG settings uses the model's (`call_defaults`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast, T5EncoderModel

    from .image_vae import SpaceToDepthImageVAE
    from .pipelines import ReferenceFluxPipeline, call_defaults

    if not os.path.isfile(os.path.join(path, "transformer", "config.json")):
        raise FileNotFoundError(f"no reference image weights under {path!r}")
    kw = {"local_files_only": True}
    pipe = ReferenceFluxPipeline(
        transformer=FluxTransformer2DModel.from_pretrained(os.path.join(path, "transformer"), **kw),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), **kw).eval(),
        text_encoder_2=T5EncoderModel.from_pretrained(os.path.join(path, "text_encoder_2"), **kw).eval(),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(os.path.join(path, "tokenizer"), **kw),
        tokenizer_2=PreTrainedTokenizerFast.from_pretrained(os.path.join(path, "tokenizer_2"), **kw),
        vae=SpaceToDepthImageVAE.from_pretrained(os.path.join(path, "vae"), **kw),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(
            FlowMatchEulerDiscreteScheduler.load_config(os.path.join(path, "scheduler"))),
    )
    pipe.call_defaults = call_defaults(path, IMAGE_DEFAULTS)
    pipe = pipe.to(device)
    if dtype is not None:
        pipe.transformer.to(dtype)
    return pipe


def load_pipeline(kind: str = "video", device: str = "cpu", dtype: Optional[torch.dtype] = None):
    """The shipped reference pipeline of `kind` ("video": a `WanPipeline`, "image": a `FluxPipeline`), ready to call,
    built offline from package data; calls default to the model's trained settings (see the module docstring)."""
    if kind == "video":
        return load_video_pipeline(VIDEO_WEIGHTS, device=device, dtype=dtype)
    if kind == "image":
        return load_image_pipeline(IMAGE_WEIGHTS, device=device, dtype=dtype)
    raise ValueError(f"unknown kind {kind!r}; choose 'video' or 'image'")


__all__ = ["load_pipeline", "load_video_pipeline", "load_image_pipeline", "available", "VIDEO_DEFAULTS",
           "IMAGE_DEFAULTS", "WEIGHTS_DIR", "VIDEO_WEIGHTS", "IMAGE_WEIGHTS"]
