"""Offline text side of the reference models: a word-level tokenizer over the caption grammar and a
tiny `T5EncoderModel` (trained jointly with the transformer).

The tokenizer is a `PreTrainedTokenizerFast` built with the `tokenizers` library, so `WanPipeline`
can call it exactly as it calls the real T5 tokenizer (padding to `max_length`, attention mask,
`</s>` appended) and `save_pretrained` / `from_pretrained` round-trip without the hub.
Unknown words map to `<unk>`; punctuation other than ',' is split off and mostly ends up `<unk>`.
"""

from __future__ import annotations

from typing import List, Optional

from .data import vocabulary

SPECIALS = ["<pad>", "</s>", "<unk>"]


def build_tokenizer(words: Optional[List[str]] = None, model_max_length: int = 512):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(words if words is not None else vocabulary())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length, padding_side="right",
    )


def build_text_encoder(vocab_size: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 2, d_ff: int = 128,
                       seed: int = 0):
    """A small `T5EncoderModel` from config (random init; trained by `train.py`)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(cfg)


def encode(tokenizer, text_encoder, prompts: List[str], max_length: int):
    """Prompt embeddings exactly as `WanPipeline._get_t5_prompt_embeds` builds them (zeros past the text)."""
    inputs = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    dev = next(text_encoder.parameters()).device
    ids, mask = inputs.input_ids.to(dev), inputs.attention_mask.to(dev)
    hidden = text_encoder(ids, mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def build_clip_text_encoder(vocab_size: int, hidden_size: int = 64, num_layers: int = 1, num_heads: int = 2,
                            intermediate_size: int = 128, max_positions: int = 77, seed: int = 0):
    """A small `CLIPTextModel` (FLUX's pooled text input) over the word-level tokenizer: pooled at the first
    `</s>` (id 1), which the tokenizer appends to every prompt."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=max_positions,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)
