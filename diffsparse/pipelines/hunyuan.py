"""HunyuanVideo: attention over `[video ; text]` with a bool key-padding mask; RoPE on video only.

Dual-stream blocks (`transformer_blocks[i].attn`) get video and text separately and project text
with `add_*_proj`; single-stream blocks (`single_transformer_blocks[j].attn`) get them split too.
The text refiner's attention is not patched.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoAttnProcessor2_0,
    HunyuanVideoTransformer3DModel,
)

from .base import AttentionHandle, ModelAdapter, dual_and_single_stream_attention, route_attention, video_grid


def _heads(x, heads):
    return x.unflatten(2, (heads, -1))


def _rank_local_mask(mask, hidden_states, encoder_hidden_states, single, config):
    """The model builds one key mask `(B, 1, 1, Nv + Nt)` over the *whole* sequence; under Ulysses this
    rank holds `[video_r ; text_r]`, so keep those columns. Diffusers' Ulysses attention all-gathers
    the local masks, which puts them in the gathered sequence's order `[video_0 ; text_0 ; video_1 ; ...]`."""
    n_txt = encoder_hidden_states.shape[1]
    n_vid = hidden_states.shape[1] - (n_txt if single else 0)
    if mask.shape[-1] == n_vid + n_txt:
        return mask  # already local
    cp = config.context_parallel_config
    world, rank = cp.ulysses_degree, cp._ulysses_local_rank
    total_vid = mask.shape[-1] - n_txt * world
    if total_vid != n_vid * world:
        raise ValueError(f"attention mask of {mask.shape[-1]} keys does not match {world} ranks of "
                         f"{n_vid} video + {n_txt} text tokens")
    video = mask[..., rank * n_vid : (rank + 1) * n_vid]
    text = mask[..., total_vid + rank * n_txt : total_vid + (rank + 1) * n_txt]
    return torch.cat([video, text], dim=-1)


def hunyuan_cp_plan(transformer) -> dict:
    """Ulysses plan for `HunyuanVideoTransformer3DModel` (Diffusers ships none).

    Video and text are both split over the ranks at the first block (each rank: `[video_r ; text_r]`),
    RoPE tables are split with the video, the output is gathered at `proj_out`. The key-padding mask
    is built by the model over the whole sequence and made rank-local by our processor.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    first = "transformer_blocks.0" if len(transformer.transformer_blocks) else "single_transformer_blocks.0"
    split = ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)
    rope = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {
        "rope": {0: rope, 1: rope},
        first: {"hidden_states": split, "encoder_hidden_states": split},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


class HunyuanVideoSparseProcessor(HunyuanVideoAttnProcessor2_0):
    """Stock HunyuanVideo attention with the attention call routed through the handle."""

    def __init__(self, handle: AttentionHandle, layer: int) -> None:
        super().__init__()
        self.handle, self.layer = handle, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        single = attn.add_q_proj is None and encoder_hidden_states is not None
        if single:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = (_heads(p(hidden_states), attn.heads) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single:
                n_txt = encoder_hidden_states.shape[1]
                query = torch.cat([apply_rotary_emb(query[:, :-n_txt], image_rotary_emb, sequence_dim=1), query[:, -n_txt:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-n_txt], image_rotary_emb, sequence_dim=1), key[:, -n_txt:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq, ek, ev = (_heads(p(encoder_hidden_states), attn.heads) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], 1), torch.cat([key, ek], 1), torch.cat([value, ev], 1)

        if self._parallel_config is not None and attention_mask is not None:
            attention_mask = _rank_local_mask(attention_mask, hidden_states, encoder_hidden_states, single,
                                              self._parallel_config)

        n_txt = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        out = route_attention(self.handle, self, self.layer, query, key, value, text_len=n_txt, key_mask=attention_mask)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            out, encoder_hidden_states = out[:, :-n_txt], out[:, -n_txt:]
            if getattr(attn, "to_out", None) is not None:
                out = attn.to_out[1](attn.to_out[0](out))
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return out, encoder_hidden_states


# ---- a tiny random-weight pipeline of this family, built from configs offline (tests, benchmarks) ----

def tiny_pipeline(num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
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


def tiny_inputs(seed: int = 0, text_len: int = 8, valid_text: Optional[int] = None) -> Dict[str, Any]:
    """Prompt embeddings for `tiny_pipeline`; the padding mask keeps the first `valid_text` tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, text_len, dtype=torch.long)
    mask[:, : (text_len if valid_text is None else valid_text)] = 1
    return {
        "prompt_embeds": torch.randn(1, text_len, 16, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 8, generator=g),
        "prompt_attention_mask": mask,
    }


class HunyuanVideoAdapter(ModelAdapter):
    family = "hunyuan"
    transformer_class = HunyuanVideoTransformer3DModel
    stock_processor = HunyuanVideoAttnProcessor2_0
    pixels_per_token = (4, 16, 16)  # causal 4x8x8 VAE, patch (1, 2, 2)
    tiny_pipeline = staticmethod(tiny_pipeline)
    tiny_inputs = staticmethod(tiny_inputs)

    self_attention_modules = staticmethod(dual_and_single_stream_attention)

    @staticmethod
    def read_context(transformer, args, split=None):
        cfg = transformer.config
        grid = video_grid(args.get("hidden_states"), (cfg.patch_size_t, cfg.patch_size, cfg.patch_size))
        return grid, args.get("timestep"), 0

    @staticmethod
    def make_processor(handle: AttentionHandle, layer: int):
        return HunyuanVideoSparseProcessor(handle, layer)

    @staticmethod
    def context_parallel_plan(transformer):
        return hunyuan_cp_plan(transformer)
