"""FLUX: joint attention over `[text ; image]`; single-stream blocks cannot see where text ends,
so the hook reads it from `encoder_hidden_states` / `txt_ids` and the processor asks the state."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import (
    FluxAttnProcessor,
    FluxTransformer2DModel,
    _get_qkv_projections,
)

from ..geometry import Grid
from .base import AttentionHandle, ModelAdapter, dual_and_single_stream_attention, route_attention


def image_grid(img_ids: torch.Tensor, split: Optional[Tuple[int, int]] = None) -> Grid:
    """Grid `(1, H', W')` from FLUX `img_ids` `(S, 3)` whose rows/cols (ids[:, 1:]) form a raster.

    With `split` = (rank, world) the ids are rank `rank`'s equal chunk of the raster (context
    parallelism split them first); the whole grid is recovered from the chunk.
    """
    if img_ids is None:
        raise ValueError("FLUX transformer called without img_ids")
    ids = img_ids[0] if img_ids.dim() == 3 else img_ids
    rows, cols = ids[:, 1].long(), ids[:, 2].long()
    rank, world = split or (0, 1)
    n = ids.shape[0]
    wraps = torch.nonzero(cols[1:] < cols[:-1]).flatten()
    if world == 1:
        w = int(cols.max()) + 1
    elif wraps.numel():
        w = int(cols[wraps[0]]) + 1
    else:
        raise ValueError(f"rank {rank}'s {n} image tokens hold less than one row; cannot recover the image grid")
    total = n * world
    h = total // w
    pos = rank * n + torch.arange(n, device=ids.device)
    if h * w != total or not (torch.equal(rows, pos // w) and torch.equal(cols, pos % w)):
        raise ValueError(f"image tokens ({total}) are not one {h}x{w} raster (e.g. extra conditioning images)")
    return Grid(1, h, w)


class FluxSparseProcessor(FluxAttnProcessor):
    """Stock FLUX attention with the attention call routed through the handle."""

    def __init__(self, handle: AttentionHandle, layer: int) -> None:
        super().__init__()
        self.handle, self.layer = handle, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (x.unflatten(-1, (-1, attn.head_dim)) for x in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        n_txt = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else None  # None: the step's
        out = route_attention(self.handle, self, self.layer, query, key, value, text_len=n_txt, key_mask=attention_mask)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(encoder_hidden_states.contiguous())
        return out


# ---- a tiny random-weight pipeline of this family, built from configs offline (tests, benchmarks) ----

def tiny_pipeline(num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
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


def tiny_inputs(seed: int = 0, text_len: int = 8, valid_text: Optional[int] = None) -> Dict[str, Any]:
    """Prompt embeddings for `tiny_pipeline`."""
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": torch.randn(1, text_len, 32, generator=g),
            "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}


class FluxAdapter(ModelAdapter):
    family = "flux"
    transformer_class = FluxTransformer2DModel
    stock_processor = FluxAttnProcessor
    pixels_per_token = (1, 16, 16)  # 8x8 VAE, 2x2 packing
    text_first = True
    single_frame = True
    tiny_pipeline = staticmethod(tiny_pipeline)
    tiny_inputs = staticmethod(tiny_inputs)

    self_attention_modules = staticmethod(dual_and_single_stream_attention)

    @staticmethod
    def read_context(transformer, args, split=None):
        ehs, txt_ids = args.get("encoder_hidden_states"), args.get("txt_ids")
        n_txt = ehs.shape[1] if ehs is not None else (txt_ids.shape[-2] if txt_ids is not None else 0)
        world = split[1] if split else 1
        return image_grid(args.get("img_ids"), split), args.get("timestep"), n_txt * world

    @staticmethod
    def make_processor(handle: AttentionHandle, layer: int):
        return FluxSparseProcessor(handle, layer)
