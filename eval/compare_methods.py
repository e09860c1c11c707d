"""Every method against dense on one small model: density, denoiser time and PSNR, same seed.

    python eval/compare_methods.py --model reference        # the shipped trained reference Wan
    python eval/compare_methods.py                          # tiny random-weight Wan, all methods
    python eval/compare_methods.py --family flux --steps 12
    python eval/compare_methods.py --out eval/results/compare_methods_cpu.txt

Every method runs with its family preset (warm-up `dense_steps`, `dense_layers`, options) except
the block size, which is `--block-size` for all so densities compare. PARO is calibrated first on
another prompt and noise seed (`--seed + 1`) at the same resolution; its calibration time is
reported apart. Each method also runs with `cache="flashblock"` (residual reuse; `effective`
density counts the refresh work) and with `quantize="int8"` (INT8 QK^T; on CPU its numbers are
emulated, so it shows the error, not a speed-up). Time is wall time inside the transformer; PSNR is over the
decoded frames against the dense render with the same prompt and noise. The tiny models have
RANDOM weights (mechanics only); `--model reference` is diffsparse's small trained Wan
(diffsparse.reference), prompted with text.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

import diffsparse
from diffsparse.render import DenoiserTimer, psnr
from diffsparse.tiny import example_inputs, tiny_flux_pipeline, tiny_hunyuan_pipeline, tiny_wan_pipeline

METHODS = {"wan": ["radial", "sliding_window", "grat", "adaspa", "paro"],
           "hunyuan": ["radial", "sliding_window", "grat", "adaspa", "paro"],
           "flux": ["sliding_window", "grat", "adaspa", "paro"]}


VARIANTS = {"plain": {}, "flashblock": {"cache": "flashblock"}, "int8": {"quantize": "int8"}}


def build(args):
    if args.model == "reference":
        from diffsparse.reference import load_pipeline

        return load_pipeline("video")
    if args.family == "wan":
        return tiny_wan_pipeline(num_layers=args.layers, heads=args.heads, head_dim=args.head_dim)
    if args.family == "hunyuan":
        return tiny_hunyuan_pipeline(num_layers=args.layers // 2, num_single_layers=args.layers - args.layers // 2)
    return tiny_flux_pipeline(num_layers=args.layers // 2, num_single_layers=args.layers - args.layers // 2)


def call_kwargs(args, seed, calibration=False):
    if args.model == "reference":
        text = {"prompt": args.calibration_prompt if calibration else args.prompt, "negative_prompt": ""}
    else:
        text = example_inputs(args.family, seed=seed, text_len=16)
    kw = dict(text, height=args.height, width=args.width,
              num_inference_steps=args.steps, output_type="np", generator=torch.Generator().manual_seed(seed))
    if args.family != "flux":
        kw["num_frames"] = args.frames
    if args.family == "wan":
        kw["guidance_scale"] = 4.0 if args.model == "reference" else 5.0
    return kw


def render(pipe, args, repeats=1, grid=None):
    """Frames and the fastest of `repeats` denoiser times (the machine may be shared)."""
    best = None
    if grid is not None:  # record the latent token grid the transformer sees
        def read(module, a, kw):
            x = kw.get("hidden_states", a[0] if a else None)
            pt, ph, pw = module.config.patch_size if args.family == "wan" else (1, 1, 1)
            grid["dims"] = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw) if x.dim() == 5 else tuple(x.shape)
        hook = pipe.transformer.register_forward_pre_hook(read, with_kwargs=True)
    for _ in range(repeats):
        timer = DenoiserTimer([pipe.transformer])
        try:
            with torch.inference_mode():
                out = pipe(**call_kwargs(args, args.seed))
        finally:
            timer.close()
        best = timer.seconds if best is None else min(best, timer.seconds)
    if grid is not None:
        hook.remove()
    frames = out.images if args.family == "flux" else out.frames
    return np.asarray(frames[0], dtype=np.float64), best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "reference"), default="tiny",
                   help="tiny: random-weight pipeline of --family; reference: the shipped trained Wan")
    p.add_argument("--prompt", default="a red square moving left on a striped background", help="reference model")
    p.add_argument("--calibration-prompt", default="a blue circle moving right on a plain background",
                   help="reference model: PARO calibration prompt")
    p.add_argument("--family", choices=sorted(METHODS), default="wan")
    p.add_argument("--methods", help="comma list (default: every sparse method the family supports)")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4, help="Wan only (the other tiny models are fixed)")
    p.add_argument("--head-dim", type=int, default=32, help="Wan only")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--paro-density", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="renders per row; the fastest denoiser time is kept")
    p.add_argument("--variants", default="plain,flashblock,int8",
                   help="rows per method: plain, flashblock (cache='flashblock'), int8 (quantize='int8')")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.model == "reference" and args.family != "wan":
        p.error("the reference model is a Wan model: use --family wan")
    torch.manual_seed(args.seed)

    pipe = build(args)
    pipe.set_progress_bar_config(disable=True)  # the table is the output
    methods = args.methods.split(",") if args.methods else METHODS[args.family]
    lines = [
        f"# python eval/compare_methods.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
        f"# {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        + (f"reference Wan (diffsparse.reference, trained), prompt {args.prompt!r}" if args.model == "reference" else
           f"tiny {args.family} model with RANDOM weights ({args.layers} layers"
           + (f", {args.heads} heads x {args.head_dim}" if args.family == "wan" else "") + ")"),
        f"# {args.frames if args.family != 'flux' else 1} frames {args.height}x{args.width}, {args.steps} steps, seed {args.seed}, "
        f"block {args.block_size}; every method with its family preset (warm-up dense_steps / dense_layers shown); "
        f"DiT s = fastest of {args.repeats} renders "
        f"(dense: of {2 * args.repeats}, before and after the others)",
    ]
    render(pipe, argparse.Namespace(**dict(vars(args), steps=2)))  # warm-up: allocations out of the timings
    grid = {}
    dense, dense_s = render(pipe, args, args.repeats, grid)
    rows = [("dense", "-", "-", 1.0, None, dense_s, None)]
    for method in methods:
        opts = {"block_size": args.block_size}
        if method == "paro":
            start = time.perf_counter()
            seed = args.seed + 1
            with torch.inference_mode():
                plan = diffsparse.calibrate(pipe, method="paro", density=args.paro_density, block_size=args.block_size,
                                            **call_kwargs(args, seed, calibration=True))
            what = f"prompt {args.calibration_prompt!r}, " if args.model == "reference" else ""
            lines.append(f"# paro: calibrated on {what}seed {seed} in {time.perf_counter() - start:.1f} s, density "
                         f"{args.paro_density}, orders per head {plan.summary()['orders']}")
            opts = {"plan": plan}
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                p.error(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
            extra = VARIANTS[variant]
            handle = diffsparse.enable_sparse_attention(pipe, method=method, **opts, **extra)
            frames, seconds = render(pipe, args, args.repeats)
            stats = handle.stats()
            diffsparse.disable_sparse_attention(pipe)
            eff = stats.get("cache", {}).get("effective_density")
            warm = f"{stats['dense_steps']}/{stats['dense_layers']}"
            name = method + ("" if variant == "plain" else "+" + variant)
            rows.append((name, warm, stats["fallbacks"] or "-", stats["density"], eff, seconds, psnr(dense, frames)))
            print(f"[{name}: {seconds:.1f} s]", file=sys.stderr, flush=True)
    # dense again at the end: its time is the fastest of both batches (load from elsewhere comes and goes)
    dense_s = min(dense_s, render(pipe, args, args.repeats)[1])
    rows[0] = rows[0][:5] + (dense_s, None)
    header = f"{'method':<26}{'warm-up':>9}{'density':>9}{'effective':>10}{'DiT s':>8}{'speed-up':>9}{'PSNR dB':>9}"
    lines.append("# warm-up = dense_steps / dense_layers; density = blocks computed in sparse calls (text sink included);")
    lines.append("# effective = with FlashBlock refreshes; PSNR vs the dense render (inf = identical)")
    lines.append(header)
    for name, warm, fallbacks, density, eff, seconds, quality in rows:
        d = "-" if density is None else f"{density:.3f}"
        e = "-" if eff is None else f"{eff:.3f}"
        q = "-" if name == "dense" else ("inf" if quality is None else f"{quality:.2f}")
        lines.append(f"{name:<26}{warm:>9}{d:>9}{e:>10}{seconds:>8.2f}{dense_s / seconds:>9.2f}{q:>9}"
                     + ("" if fallbacks == "-" else f"  fallbacks: {fallbacks}"))
    lines.append(f"# latent token grid {grid.get('dims')}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        mode = "a" if os.path.exists(args.out) and os.environ.get("COMPARE_APPEND") == "1" else "w"
        with open(args.out, mode) as fh:
            fh.write(("\n\n" if mode == "a" else "") + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
