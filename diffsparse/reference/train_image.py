"""Training of the reference image model: a small `FluxTransformer2DModel` with tiny CLIP and T5 text
encoders and the linear `SpaceToDepthImageVAE`, on the captioned stills of `image_data.py`.

    python -m diffsparse.reference.train --config configs/reference_image.json [--threads 2] [--resume]

The loop (EMA, schedule, checkpoints, loss log) is `train.Trainer`'s; this file says what differs from the
video model. Prompts are encoded by `FluxPipeline.encode_prompt` itself (CLIP pooled output + T5 states,
T5 run without an attention mask over `text_len` positions, as the pipeline does at inference), latents
are packed 2 x 2 by the pipeline's own `_pack_latents`, so training sees exactly what sampling feeds the
transformer. No guidance embedding: classifier-free guidance is FLUX's `true_cfg_scale` with a
`negative_prompt` (captions are dropped to "" with probability `caption_dropout`).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Dict

import numpy as np
import torch

from . import image_data as I
from .image_vae import SpaceToDepthImageVAE
from .text import build_clip_text_encoder, build_text_encoder, build_tokenizer
from .trainer import DEFAULTS, Trainer, batch

IMAGE_DEFAULTS: Dict[str, Any] = {
    **deepcopy(DEFAULTS),
    "kind": "image",
    "height": 128,
    "width": 128,
    "shift": 2.0,
    "vae": {"scale_factor_spatial": 4, "latent_channels": 8},
    "clip": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128},
    "transformer": {"num_attention_heads": 4, "attention_head_dim": 32, "num_layers": 2, "num_single_layers": 2,
                    "axes_dims_rope": [8, 12, 12]},
    "out": "runs/reference_image",
}
IMAGE_DEFAULTS.pop("frames")


def build_image_vae(cfg: Dict[str, Any]) -> SpaceToDepthImageVAE:
    """The PCA image autoencoder fitted on fixed training-distribution images, one scale for all components."""
    imgs = [I.sample(i, seed=10_000 + cfg["seed"], height=cfg["height"], width=cfg["width"])[0]
            for i in range(cfg["stats_samples"])]
    x = torch.from_numpy(np.stack(imgs)).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    vae = SpaceToDepthImageVAE(**cfg["vae"])
    std = vae.fit_pca(x)
    rms = float(np.sqrt(np.mean(np.square(std))))  # not whitened: see train.build_vae
    out = SpaceToDepthImageVAE(**cfg["vae"], scaling_factor=1.0 / rms, shift_factor=0.0)
    out.load_state_dict(vae.state_dict())
    return out


def build_flux_transformer(cfg: Dict[str, Any], latent_channels: int):
    from diffusers import FluxTransformer2DModel

    t = cfg["transformer"]
    torch.manual_seed(cfg["seed"])
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=t["num_layers"],
        num_single_layers=t["num_single_layers"], attention_head_dim=t["attention_head_dim"],
        num_attention_heads=t["num_attention_heads"], joint_attention_dim=cfg["text_encoder"]["d_model"],
        pooled_projection_dim=cfg["clip"]["hidden_size"], guidance_embeds=False,
        axes_dims_rope=tuple(t["axes_dims_rope"]),
    )


class ImageTrainer(Trainer):
    def build(self) -> Dict[str, torch.nn.Module]:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        cfg = self.cfg
        words = I.vocabulary()
        self.tokenizer = build_tokenizer(words, model_max_length=77)
        self.tokenizer_2 = build_tokenizer(words, model_max_length=512)
        self.tokenizers = {"tokenizer": self.tokenizer, "tokenizer_2": self.tokenizer_2}
        self.vae = build_image_vae(cfg)
        models = {
            "transformer": build_flux_transformer(cfg, self.vae.config.latent_channels),
            "text_encoder": build_clip_text_encoder(len(self.tokenizer), seed=cfg["seed"], **cfg["clip"]),
            "text_encoder_2": build_text_encoder(len(self.tokenizer_2), seed=cfg["seed"] + 1, **cfg["text_encoder"]),
        }
        # the pipeline object is only used for its prompt encoding and latent packing
        self.pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg["shift"]), vae=self.vae,
                                 tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, **models)
        return models

    def prepare(self, step: int):
        x, caps = batch(self.cfg, step, self.np_rng, sample=I.sample)
        with torch.no_grad():
            z = self.vae.normalize(self.vae.encode(x.to(self.device)).latent_dist.mode())
        b, c, h, w = z.shape
        x0 = self.pipe._pack_latents(z, b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, z.dtype)
        emb, pooled, txt_ids = self.pipe.encode_prompt(prompt=caps, prompt_2=None, device=self.device,
                                                       max_sequence_length=self.cfg["text_len"])
        return x0, {"encoder_hidden_states": emb, "pooled_projections": pooled, "txt_ids": txt_ids,
                    "img_ids": img_ids}

    def predict(self, xt: torch.Tensor, sigma: torch.Tensor, inputs: Dict[str, Any]) -> torch.Tensor:
        # FluxPipeline passes timestep / 1000, i.e. sigma; the transformer scales by 1000 itself
        return self.modules["transformer"](hidden_states=xt, timestep=sigma, guidance=None, return_dict=False,
                                           **inputs)[0]
