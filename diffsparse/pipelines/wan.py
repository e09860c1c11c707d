"""Wan 2.1 / 2.2 (T2V, I2V, TI2V): `blocks[i].attn1` is video-only self-attention in raster order."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttnProcessor,
    WanTransformer3DModel,
    _get_qkv_projections,
)

from .base import AttentionHandle, ModelAdapter, route_attention, video_grid


def _rope(x, freqs_cos, freqs_sin):
    """Wan's interleaved rotary embedding on `(B, S, H, D)` (same arithmetic as the stock processor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = x.new_empty(x.shape)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanSparseProcessor(WanAttnProcessor):
    """Stock Wan self-attention with the attention call routed through the handle."""

    def __init__(self, handle: AttentionHandle, layer: int) -> None:
        super().__init__()
        self.handle, self.layer = handle, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = _rope(query, *rotary_emb), _rope(key, *rotary_emb)
        out = route_attention(self.handle, self, self.layer, query, key, value, text_len=0, key_mask=attention_mask)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


# ---- a tiny random-weight pipeline of this family, built from configs offline (tests, benchmarks) ----

def tiny_pipeline(num_layers: int = 2, heads: int = 2, head_dim: int = 12, two_experts: bool = False, seed: int = 0):
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


def tiny_inputs(seed: int = 0, text_len: int = 8, valid_text: Optional[int] = None) -> Dict[str, Any]:
    """Prompt embeddings for `tiny_pipeline` (a negative prompt too: Wan runs CFG as two calls)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(1, text_len, 32, generator=g),
        "negative_prompt_embeds": torch.randn(1, text_len, 32, generator=g),
    }


class WanAdapter(ModelAdapter):
    family = "wan"
    transformer_class = WanTransformer3DModel
    stock_processor = WanAttnProcessor
    pixels_per_token = (4, 16, 16)  # causal 4x8x8 VAE, patch (1, 2, 2)
    tiny_pipeline = staticmethod(tiny_pipeline)
    tiny_inputs = staticmethod(tiny_inputs)

    @staticmethod
    def self_attention_modules(transformer):
        return [block.attn1 for block in transformer.blocks]

    @staticmethod
    def read_context(transformer, args, split=None):
        grid = video_grid(args.get("hidden_states"), tuple(transformer.config.patch_size))
        return grid, args.get("timestep"), 0

    @staticmethod
    def make_processor(handle: AttentionHandle, layer: int):
        return WanSparseProcessor(handle, layer)
