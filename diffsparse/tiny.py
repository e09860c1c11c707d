"""Tiny random-weight pipelines built from configs, fully offline (no hub, no downloads).

Used by the tests, the benchmarks and as the render default until a trained reference model
ships. Text encoders are left out: pass `prompt_embeds` (see `example_inputs`).
"""

from __future__ import annotations

from typing import Any, Dict

import torch


def tiny_wan_pipeline(num_layers: int = 2, heads: int = 2, head_dim: int = 12, two_experts: bool = False, seed: int = 0):
    """A `WanPipeline` with a small transformer (text_dim 32) and a small Wan VAE (8x spatial, 4x temporal)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    torch.manual_seed(seed)
    t1 = transformer()
    kwargs: Dict[str, Any] = {}
    if two_experts:
        torch.manual_seed(seed + 1)
        kwargs = {"transformer_2": transformer(), "boundary_ratio": 0.5}
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=t1, **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_pipeline(num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    """A `HunyuanVideoPipeline` with a small transformer (patch 1) and a small VAE (8x spatial, 4x temporal)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4, scaling_factor=0.476986,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    pipe = HunyuanVideoPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    """A `FluxPipeline` with a small transformer and an 8x VAE (4 latent channels)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=1, sample_size=32, shift_factor=0.0609, scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def example_inputs(family: str, seed: int = 0, text_len: int = 8, valid_text: int | None = None) -> Dict[str, Any]:
    """Prompt embeddings for the tiny pipelines (CFG for Wan; Hunyuan's padding mask keeps `valid_text`)."""
    g = torch.Generator().manual_seed(seed)
    if family == "wan":
        return {
            "prompt_embeds": torch.randn(1, text_len, 32, generator=g),
            "negative_prompt_embeds": torch.randn(1, text_len, 32, generator=g),
        }
    if family == "hunyuan":
        mask = torch.zeros(1, text_len, dtype=torch.long)
        mask[:, : (text_len if valid_text is None else valid_text)] = 1
        return {
            "prompt_embeds": torch.randn(1, text_len, 16, generator=g),
            "pooled_prompt_embeds": torch.randn(1, 8, generator=g),
            "prompt_attention_mask": mask,
        }
    if family == "flux":
        return {"prompt_embeds": torch.randn(1, text_len, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    raise ValueError(f"unknown family {family!r}; choose 'wan', 'hunyuan' or 'flux'")
