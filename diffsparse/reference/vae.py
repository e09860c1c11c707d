"""A lossless space-to-depth "VAE" with the interface `WanPipeline` uses.

Why not a trained `AutoencoderKLWan`: on one CPU thread we cannot afford to train a convolutional
video autoencoder well enough that its reconstructions are sharper than what the transformer
learns, and its decoder would dominate render time at tiny transformer sizes. A fixed pixel
rearrangement is exact (decode(encode(x)) == x up to float error), has no weights to ship, and
keeps Wan's geometry: 4x temporal compression with a causal first frame (latent frames =
(F - 1) / 4 + 1) and 4x spatial compression, so with the transformer's (1, 2, 2) patch one token
covers 4 frames x 8 x 8 pixels. The transformer then does the generative work in a normalised pixel
space, which for flat-coloured synthetic shapes trains quickly.

With `latent_channels=k` the packed vector (192 values for 4x4x4 RGB) is projected onto k fixed
principal components fitted on training clips (`fit_pca`): a linear, near-lossless autoencoder
(k=32: ~34 dB PSNR on held-out clips). This matters: Wan's transformer has no input-to-output skip, so
its output per token lies in a `dim`-sized subspace; with 4*192 = 768 values per token and dim 128 the
noise outside that subspace can never be removed and samples stay noisy (measured: pure s2d gave
noise-covered samples). With k=32 a token carries 4*32 = 128 values = the model width.
`latents_std` is one scale for all components (set by `train.py`), not per-component whitening, so
coarse components keep a higher SNR than fine detail under noise.

Packed layout: channel index = ((c * T + dt) * S + dy) * S + dx for colour c, frame offset dt, and
pixel offsets dy, dx. The first latent frame holds frame 0 repeated T times (Wan's causal layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput


@dataclass
class SpaceToDepthEncoderOutput(BaseOutput):
    latent_dist: "_Deterministic"


@dataclass
class SpaceToDepthDecoderOutput(BaseOutput):
    sample: torch.Tensor


def principal_components(rows: torch.Tensor, k: int):
    """Top-`k` principal components of `rows` (N, C): (basis (C, k) orthonormal, centre (C,), their standard
    deviations as a list), computed in float64, signs fixed so that each basis vector sums to >= 0."""
    m = rows.double()
    mu = m.mean(0)
    cov = (m - mu).T @ (m - mu) / m.shape[0]
    ev, vecs = torch.linalg.eigh(cov)
    ev, vecs = ev.flip(0)[:k], vecs.flip(1)[:, :k]
    vecs = vecs * torch.where(vecs.sum(0) < 0, -1.0, 1.0).to(vecs)  # deterministic signs
    return vecs, mu, ev.clamp_min(1e-8).sqrt().tolist()


@torch.no_grad()
def fit_basis(vae, raw: torch.Tensor) -> List[float]:
    """Set `vae.basis`/`vae.center` to the top `vae.config.latent_channels` principal components of packed
    pixels `raw` (B, C, ...); returns their standard deviations."""
    basis, center, std = principal_components(raw.movedim(1, -1).reshape(-1, raw.shape[1]), vae.config.latent_channels)
    vae.basis.copy_(basis.to(vae.basis))
    vae.center.copy_(center.to(vae.center))
    return std


class _Deterministic:
    """Stands in for a diagonal Gaussian with zero variance (`sample()` == `mode()`)."""

    def __init__(self, z: torch.Tensor):
        self.mean = z

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class SpaceToDepthVAE(ModelMixin, ConfigMixin):
    """Pixels `(B, 3, F, H, W)` in [-1, 1] <-> raw latents `(B, 3*T*S*S, (F-1)/T+1, H/S, W/S)`.

    Raw latents are *not* normalised (as with `AutoencoderKLWan`): the pipeline applies
    `latents_mean`/`latents_std` from the config before `decode`, and training does the inverse.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        scale_factor_spatial: int = 4,
        scale_factor_temporal: int = 4,
        z_dim: Optional[int] = None,
        latents_mean: Optional[List[float]] = None,
        latents_std: Optional[List[float]] = None,
        temperal_downsample: Optional[List[bool]] = None,
        latent_channels: Optional[int] = None,
    ):
        super().__init__()
        full = in_channels * scale_factor_temporal * scale_factor_spatial**2
        z = full if latent_channels is None else latent_channels
        if z_dim is not None and z_dim != z:
            raise ValueError(f"z_dim must be {z} for these factors, got {z_dim}")
        if z_dim is None or latents_mean is None or latents_std is None or temperal_downsample is None:
            n_t = {1: 0, 2: 1, 4: 2, 8: 3}[scale_factor_temporal]
            self.register_to_config(
                z_dim=z,
                latents_mean=list(latents_mean or [0.0] * z),
                latents_std=list(latents_std or [1.0] * z),
                temperal_downsample=list(temperal_downsample or ([False] * (3 - n_t) + [True] * n_t)),
            )
        # a buffer so ModelMixin.dtype / .device and pipeline device placement work
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        if latent_channels is not None:
            # linear projection of the packed pixels onto a fixed orthonormal basis (PCA of the training data)
            self.register_buffer("basis", torch.eye(full)[:, :latent_channels].clone())
            self.register_buffer("center", torch.zeros(full))

    @torch.no_grad()
    def fit_pca(self, videos: torch.Tensor) -> List[float]:
        """Set `basis`/`center` to the top principal components of packed `videos` (B,3,F,H,W) in [-1, 1];
        returns the per-component standard deviations (use them as `latents_std`)."""
        return fit_basis(self, self.pack(videos))

    def project(self, raw: torch.Tensor) -> torch.Tensor:
        if self.config.latent_channels is None:
            return raw
        c = self.center.to(raw).view(1, -1, 1, 1, 1)
        return torch.einsum("bclhw,ck->bklhw", raw - c, self.basis.to(raw))

    def unproject(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.latent_channels is None:
            return z
        c = self.center.to(z).view(1, -1, 1, 1, 1)
        return torch.einsum("bklhw,ck->bclhw", z, self.basis.to(z)) + c

    # -- raw transforms ------------------------------------------------------------------------
    def pack(self, x: torch.Tensor) -> torch.Tensor:
        T, S = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        b, c, f, h, w = x.shape
        if (f - 1) % T or h % S or w % S:
            raise ValueError(f"video {tuple(x.shape)} needs (F-1) % {T} == 0 and H, W multiples of {S}")
        x = torch.cat([x[:, :, :1].expand(b, c, T, h, w), x[:, :, 1:]], dim=2)  # (b, c, T*L, h, w)
        L = x.shape[2] // T
        x = x.reshape(b, c, L, T, h // S, S, w // S, S)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # b, c, T, Sy, Sx, L, h', w'
        return x.reshape(b, c * T * S * S, L, h // S, w // S)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        T, S = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        c = self.config.in_channels
        b, _, L, hh, ww = z.shape
        x = z.reshape(b, c, T, S, S, L, hh, ww).permute(0, 1, 5, 2, 6, 3, 7, 4)  # b, c, L, T, h', Sy, w', Sx
        x = x.reshape(b, c, L * T, hh * S, ww * S)
        first = x[:, :, :T].mean(dim=2, keepdim=True)
        return torch.cat([first, x[:, :, T:]], dim=2)

    # -- normalisation (what the pipeline does around decode) ------------------------------------
    def _stats(self, z: torch.Tensor):
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, dtype=z.dtype, device=z.device).view(shape)
        std = torch.tensor(self.config.latents_std, dtype=z.dtype, device=z.device).view(shape)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    # -- Diffusers autoencoder interface ----------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        dist = _Deterministic(self.project(self.pack(x)))
        return SpaceToDepthEncoderOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, **kwargs):
        x = self.unpack(self.unproject(z)).clamp(-1.0, 1.0)
        return SpaceToDepthDecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)

    # no-ops some callers expect on video autoencoders
    def enable_tiling(self, *args, **kwargs):
        pass

    def disable_tiling(self):
        pass

    def enable_slicing(self):
        pass

    def disable_slicing(self):
        pass
