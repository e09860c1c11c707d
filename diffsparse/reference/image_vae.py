"""A linear space-to-depth image autoencoder with the interface `FluxPipeline` uses (`AutoencoderKL`'s).

The image counterpart of `vae.SpaceToDepthVAE` (read its docstring for why a fixed, linear autoencoder):
each S x S RGB pixel block (3*S*S values) is projected onto `latent_channels` principal components fitted
on training images. FLUX then packs 2 x 2 latent pixels into one token, so with S = 4 a token covers
8 x 8 pixels and carries 4 * latent_channels values.

What `FluxPipeline` reads: `config.block_out_channels` (its length sets `vae_scale_factor = 2**(len - 1)`,
so it is `[latent_channels] * (log2(S) + 1)` here), `config.scaling_factor` and `config.shift_factor`
(the pipeline decodes `latents / scaling_factor + shift_factor`), `encode(x).latent_dist`, `decode(z)`.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .vae import SpaceToDepthDecoderOutput, SpaceToDepthEncoderOutput, _Deterministic, fit_basis


class SpaceToDepthImageVAE(ModelMixin, ConfigMixin):
    """Pixels `(B, 3, H, W)` in [-1, 1] <-> raw latents `(B, latent_channels, H/S, W/S)` (not normalised:
    `normalize` applies `scaling_factor`/`shift_factor` as the pipeline expects)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, in_channels: int = 3, scale_factor_spatial: int = 4, latent_channels: int = 8,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 block_out_channels: Optional[List[int]] = None):
        super().__init__()
        s = scale_factor_spatial
        if s < 1 or s & (s - 1):
            raise ValueError(f"scale_factor_spatial must be a power of two, got {s}")
        full = in_channels * s * s
        if not 1 <= latent_channels <= full:
            raise ValueError(f"latent_channels must be in [1, {full}] for {s}x{s} blocks, got {latent_channels}")
        if block_out_channels is None:
            self.register_to_config(block_out_channels=[latent_channels] * (int(math.log2(s)) + 1))
        self.register_buffer("basis", torch.eye(full)[:, :latent_channels].clone())
        self.register_buffer("center", torch.zeros(full))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` -> `(B, C*S*S, H/S, W/S)`, channel index = (c * S + dy) * S + dx."""
        s = self.config.scale_factor_spatial
        b, c, h, w = x.shape
        if h % s or w % s:
            raise ValueError(f"image {tuple(x.shape)} needs H and W multiples of {s}")
        x = x.reshape(b, c, h // s, s, w // s, s).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * s * s, h // s, w // s)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        s, c = self.config.scale_factor_spatial, self.config.in_channels
        b, _, hh, ww = z.shape
        return z.reshape(b, c, s, s, hh, ww).permute(0, 1, 4, 2, 5, 3).reshape(b, c, hh * s, ww * s)

    @torch.no_grad()
    def fit_pca(self, images: torch.Tensor) -> List[float]:
        """Fit `basis`/`center` on `images` (B, 3, H, W) in [-1, 1]; returns the components' standard deviations."""
        return fit_basis(self, self.pack(images))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.scaling_factor + self.config.shift_factor

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        raw = self.pack(x) - self.center.to(x).view(1, -1, 1, 1)
        dist = _Deterministic(torch.einsum("bchw,ck->bkhw", raw, self.basis.to(x)))
        return SpaceToDepthEncoderOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs):
        raw = torch.einsum("bkhw,ck->bchw", z, self.basis.to(z)) + self.center.to(z).view(1, -1, 1, 1)
        x = self.unpack(raw).clamp(-1.0, 1.0)
        return SpaceToDepthDecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)
