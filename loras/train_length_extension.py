"""LoRA length extension: fine-tune q/k/v/o of self-attention with sparse attention on, so a video
model renders clips longer than it was trained on (Radial Attention's recipe, on any method).

    # a local Diffusers Wan checkpoint and a folder of clips with captions:
    accelerate launch loras/train_length_extension.py --model /ckpt/Wan2.1-T2V-1.3B-Diffusers \\
        --data clips/ --frames 161 --height 480 --width 832 --method radial --rank 32 --steps 2000 \\
        --mixed-precision bf16 --output-dir lora-2x
    # then: pipe.load_lora_weights("lora-2x"); diffsparse.enable_sparse_attention(pipe, method="radial")

Latents and text embeddings are computed once and cached (`--cache-dir`); checkpoints every
`--save-every` steps make runs resumable (`--resume`). See loras/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from video_data import list_clips, load_clip  # noqa: E402

import diffsparse  # noqa: E402

SELF_ATTENTION_LORA = r"blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local Diffusers Wan pipeline folder")
    src.add_argument("--tiny", action="store_true", help="tiny random-weight Wan (tests and smoke runs)")
    src.add_argument("--reference", action="store_true", help="diffsparse's shipped reference video model")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="folder of videos with captions (captions.json or <name>.txt)")
    data.add_argument("--procedural", type=int, metavar="N",
                      help="N clips from the reference model's procedural generator (training captions only)")
    p.add_argument("--caption-dropout", type=float, default=0.0,
                   help="fraction of steps trained on the empty caption (keeps classifier-free guidance's unconditional branch)")
    p.add_argument("--frames", type=int, required=True, help="training length in frames (4k+1)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--method", default="radial", help="sparse method used while training ('dense' for a baseline)")
    p.add_argument("--dense-layers", type=int, default=1, help="leading blocks kept dense (Radial trains with 1)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable), e.g. --opt decay_factor=0.5 --opt band='paper'")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--shift", type=float, default=3.0, help="flow-matching timestep shift for sampling sigmas")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--cache-dir", default=None, help="latent cache (default: <output-dir>/cache)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.frames < 1 or (args.frames - 1) % 4:
        p.error(f"--frames must be 4k+1 (Wan's VAE packs 4 frames per latent frame), got {args.frames}")
    return args


def load_pipeline(args):
    if args.tiny:
        from diffsparse.tiny import tiny_wan_pipeline

        return tiny_wan_pipeline()
    if args.reference:
        from diffsparse.reference import load_video_pipeline

        return load_video_pipeline()
    from diffsparse.render import load_pipeline as load_local

    return load_local(args.model, "cpu")


@torch.no_grad()
def encode_video(pipe, video) -> torch.Tensor:
    """`(T, H, W, 3)` in [-1, 1] -> normalised latents `(C, T', H', W')` as the pipeline denoises them."""
    vae = pipe.vae
    x = torch.from_numpy(video).permute(3, 0, 1, 2).unsqueeze(0).to(vae.device, vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return ((z - mean) * inv_std)[0].float().cpu()


@torch.no_grad()
def encode_text(pipe, caption: str) -> torch.Tensor:
    if getattr(pipe, "text_encoder", None) is not None:
        # 512 tokens as WanPipeline.__call__ pads them (encode_prompt alone defaults to 226, and the
        # zero padding tokens take part in cross-attention, so the count must match inference).
        embeds, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, device=pipe.text_encoder.device,
                                       max_sequence_length=512)
        return embeds[0].float().cpu()
    from diffsparse.render import prompt_inputs  # pipelines without a text encoder: caption-seeded embeddings

    return prompt_inputs(pipe, caption, 0)["prompt_embeds"][0].float().cpu()


def _sources(args):
    """(name, cache key, caption, loader of the clip in [-1, 1]) for every training clip."""
    size = f"{args.frames}x{args.height}x{args.width}"
    if args.procedural:
        from diffsparse.reference import data as D

        for i in range(args.procedural):  # D.sample draws from the training captions only
            def load(i=i):
                video, _, _ = D.sample(i, seed=args.seed + 1, num_frames=args.frames, height=args.height, width=args.width)
                return video.astype("float32") / 127.5 - 1.0

            caption = D.sample(i, seed=args.seed + 1, num_frames=1, height=8, width=8)[1]
            yield f"proc{i:05d}", f"procedural|{args.seed + 1}|{i}|{caption}|{size}", caption, load
        return
    for clip in list_clips(args.data):
        stat = os.stat(clip.path)
        yield (os.path.splitext(os.path.basename(clip.path))[0], f"{clip.path}|{stat.st_size}|{stat.st_mtime}|{clip.caption}|{size}",
               clip.caption, lambda clip=clip: load_clip(clip, args.frames, args.height, args.width))


def build_cache(pipe, args, cache_dir: str):
    """Encode every clip once; returns the list of cached file paths."""
    os.makedirs(cache_dir, exist_ok=True)
    paths = []
    for name, key, caption, load in _sources(args):
        path = os.path.join(cache_dir, f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt")
        if not os.path.exists(path):
            torch.save({"latents": encode_video(pipe, load()), "embeds": encode_text(pipe, caption)}, path)
        paths.append(path)
    return paths


def sample_sigmas(n: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal sigmas, shifted like FlowMatchEulerDiscreteScheduler(shift=...)."""
    s = torch.sigmoid(torch.randn(n, generator=generator))
    return shift * s / (1 + (shift - 1) * s)


def latest_checkpoint(output_dir: str):
    steps = [int(d.split("-")[1]) for d in os.listdir(output_dir) if d.startswith("checkpoint-")] if os.path.isdir(output_dir) else []
    return (max(steps), os.path.join(output_dir, f"checkpoint-{max(steps)}")) if steps else (0, None)


def method_options(pairs):
    """`["decay_factor=0.5", "band='paper'"]` -> options (values read as Python literals, else text)."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --opt expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def main(argv=None) -> int:
    from accelerate import Accelerator
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from tqdm.auto import tqdm

    args = parse_args(argv)
    acc = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args)
    cache = build_cache(pipe, args, args.cache_dir or os.path.join(args.output_dir, "cache"))
    empty = encode_text(pipe, "").to(acc.device) if args.caption_dropout > 0 else None

    transformer = pipe.transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.alpha or args.rank, init_lora_weights="gaussian",
                                       target_modules=SELF_ATTENTION_LORA))
    if not args.no_gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    handle = diffsparse.enable_sparse_attention(transformer, method=args.method, dense_steps=0,
                                                dense_layers=args.dense_layers, block_size=args.block_size,
                                                **method_options(args.opt))
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    transformer, optimizer = acc.prepare(transformer, optimizer)
    transformer.train()

    start, ckpt = latest_checkpoint(args.output_dir) if args.resume else (0, None)
    if ckpt:
        acc.load_state(ckpt)
        acc.print(f"resumed from {ckpt}")
    gen = torch.Generator().manual_seed(args.seed + start)
    log_path = os.path.join(args.output_dir, "loss.jsonl")
    os.makedirs(args.output_dir, exist_ok=True)
    if acc.is_main_process:
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump({"command": "python loras/train_length_extension.py " + " ".join(argv or sys.argv[1:]),
                       **vars(args)}, f, indent=1)
    n_params = sum(p.numel() for p in params)
    acc.print(f"{len(cache)} clips, {n_params} LoRA parameters, method {args.method}, {args.frames} frames")
    bar = tqdm(range(start, args.steps), disable=not acc.is_local_main_process, desc="train")
    began = time.perf_counter()
    for step in bar:
        items = [torch.load(cache[int(i)]) for i in torch.randint(len(cache), (args.batch_size,), generator=gen)]
        x0 = torch.stack([it["latents"] for it in items]).to(acc.device)
        embeds = torch.stack([it["embeds"] for it in items]).to(acc.device)
        if args.caption_dropout > 0:
            drop = torch.rand(len(items), generator=gen) < args.caption_dropout
            embeds[drop.to(acc.device)] = empty.to(embeds.dtype)
        sigma = sample_sigmas(x0.shape[0], args.shift, gen).to(acc.device)
        noise = torch.randn(x0.shape, generator=gen).to(acc.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        with acc.autocast():
            pred = transformer(xt, sigma * 1000, embeds, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if acc.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": loss.item(), "elapsed_s": time.perf_counter() - began}) + "\n")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            acc.save_state(os.path.join(args.output_dir, f"checkpoint-{step + 1}"))
    acc.wait_for_everyone()
    if acc.is_main_process:
        model = acc.unwrap_model(transformer)
        WanPipeline.save_lora_weights(args.output_dir, transformer_lora_layers=get_peft_model_state_dict(model))
        density = handle.stats()["density"]
        acc.print(f"saved LoRA to {args.output_dir}; training density {density if density is None else round(density, 3)}; "
                  f"{(time.perf_counter() - began) / max(1, args.steps - start):.3f} s/step")
    diffsparse.disable_sparse_attention(acc.unwrap_model(transformer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
