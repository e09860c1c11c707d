"""Training-time shortcut for Wan's padded text: the same cross-attention, computed over far fewer keys.

`WanPipeline` pads every prompt to 512 positions and zeroes the embeddings past the text, so in every
cross-attention (`attn2`) all padded positions have one and the same key and value. n identical keys
act exactly like one of them with `log(n)` added to its logit. The trainer therefore encodes only
`max text length + 1` positions and gives the padded ones of each prompt a logit bias
`log(pads in the full layout / pads kept)`: the softmax, and so the model's output and gradients, are
those of the full 512-position layout (up to float rounding) at a fraction of the cost. The T5 encoder
masks padded keys, so its outputs on the text do not depend on the padded length either.

Only training uses this; the exported model has the stock processors and the pipeline pads to 512.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


class PaddedTextBias:
    """Holder of the current batch's additive cross-attention bias, `(B, 1, 1, L)` or None (shared by the
    processors of one transformer; the trainer sets it before each forward)."""

    def __init__(self) -> None:
        self.bias: torch.Tensor | None = None


class CompactTextCrossAttnProcessor(WanAttnProcessor):
    """`WanAttnProcessor` for `attn2` that adds the holder's bias to the text logits."""

    def __init__(self, holder: PaddedTextBias):
        super().__init__()
        self.holder = holder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is None and self.holder.bias is not None:
            attention_mask = self.holder.bias.to(hidden_states.dtype)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def install(transformer) -> PaddedTextBias:
    """Put the compact-text processor on every cross-attention of a `WanTransformer3DModel`; returns the holder."""
    holder = PaddedTextBias()
    for block in transformer.blocks:
        block.attn2.set_processor(CompactTextCrossAttnProcessor(holder))
    return holder


def compact_prompt_embeds(tokenizer, text_encoder, prompts: List[str], full_len: int
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings over `L = min(longest prompt + 1, full_len)` positions (zeros past each text, as
    `WanPipeline` builds them) and the logit bias `(B, 1, 1, L)` that makes attention over them equal
    attention over `full_len` positions: 0 on text, `log((full_len - n) / (L - n))` on the padding of a
    prompt of n tokens."""
    inputs = tokenizer(prompts, padding="longest", max_length=full_len, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    lengths = inputs.attention_mask.sum(1).tolist()
    width = min(max(lengths) + 1, full_len)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # pad id 0, mask 0 past the text
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    bias = torch.zeros(len(prompts), 1, 1, width)
    for i, n in enumerate(lengths):
        ids[i, :n] = inputs.input_ids[i, :n]
        mask[i, :n] = 1
        if n < width:
            bias[i, ..., n:] = math.log((full_len - n) / (width - n))
    dev = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(dev), mask.to(dev)).last_hidden_state
    return hidden * mask.to(dev).unsqueeze(-1).to(hidden.dtype), bias.to(dev)
