"""Estimate GPU memory of `train_length_extension.py` on a Wan checkpoint, before renting the GPU.

    python loras/estimate_memory.py --preset wan2.1-1.3b --frames 161 --height 480 --width 832
    python loras/estimate_memory.py --config /path/to/Wan2.1-T2V-14B-Diffusers/transformer/config.json ...

An estimate, not a measurement (no GPU has run this recipe for us yet): parameters are counted exactly by
building the transformer from its config on the meta device; activations assume what the trainer does
(latents and text embeddings cached, so no VAE or T5 in memory; gradient checkpointing per block; a fused
attention kernel that never materialises the S x S scores). Terms, all in the training dtype:

- frozen weights: every transformer parameter;
- LoRA weights + grads + AdamW state (fp32): rank r on q/k/v/o of each self-attention;
- checkpointed block inputs: one (S, dim) hidden state per block, kept for the backward;
- one block recomputed in the backward: ~`work` (S, dim) tensors (q, k, v, attention out, norms,
  residuals) plus two (S, ffn_dim) FFN intermediates, and as much again for their gradients.

Allocator fragmentation, CUDA context (~0.5-1 GiB) and kernel workspaces come on top.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Dict

import torch

PRESETS = {  # the public Diffusers configs' transformer sizes
    "wan2.1-1.3b": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30,
                    "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256},
    "wan2.1-14b": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40,
                   "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256},
}


def estimate(config: Dict, frames: int, height: int, width: int, rank: int, bytes_per: int = 2,
             work: int = 12) -> Dict[str, float]:
    """Bytes per term for batch size 1 (see the module docstring)."""
    from diffusers import WanTransformer3DModel

    from diffsparse import token_grid

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    n_params = sum(p.numel() for p in model.parameters())
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    layers, ffn = cfg["num_layers"], cfg["ffn_dim"]
    s = math.prod(token_grid("wan", frames, height, width).dims)  # the same latent grid the methods plan on
    lora = layers * 4 * rank * (dim + dim)  # A (r x dim) and B (dim x r) for q, k, v, o
    terms = {
        "frozen weights": n_params * bytes_per,
        "LoRA weights+grads+AdamW (fp32)": lora * 4 * 4,
        "checkpointed block inputs": layers * s * dim * bytes_per,
        "one block recomputed (fwd+bwd)": 2 * (work * s * dim + 2 * s * ffn) * bytes_per,
    }
    terms["total"] = sum(terms.values())
    return {"video_tokens": s, "parameters": n_params, "lora_parameters": lora, **terms}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS))
    src.add_argument("--config", help="a local transformer/config.json")
    ap.add_argument("--frames", type=int, default=161)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--rank", type=int, default=32)
    args = ap.parse_args(argv)
    if args.frames < 1 or args.height < 16 or args.width < 16:
        raise SystemExit(f"impossible geometry {args.frames}x{args.height}x{args.width}: need >= 1 frame, >= 16 px")
    config = PRESETS[args.preset] if args.preset else json.load(open(args.config))
    est = estimate(config, args.frames, args.height, args.width, args.rank)
    gib = 2**30
    print(f"{args.preset or args.config}: {args.frames}x{args.height}x{args.width}, {est['video_tokens']} video tokens, "
          f"{est['parameters'] / 1e9:.2f} B params, LoRA rank {args.rank} ({est['lora_parameters'] / 1e6:.1f} M), "
          "bf16, batch 1, gradient checkpointing")
    for k, v in est.items():
        if k not in ("video_tokens", "parameters", "lora_parameters"):
            print(f"  {k:34s} {v / gib:7.2f} GiB")


if __name__ == "__main__":
    main()
