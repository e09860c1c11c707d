"""Same prompt and seed through dense and every method: one labelled grid video and a table.

    python demos/compare_methods.py --out compare.mp4
    python demos/compare_methods.py --model /path/to/Wan2.1-T2V-1.3B-Diffusers --frames 81 --height 480 --width 832

Fidelity is measured against the dense render with `diffsparse.metrics` (PSNR with the MSE pooled
over the video, luma SSIM); for VBench-style scores run `diffsparse eval` or eval/run_eval.py.
"""

import argparse

import numpy as np
import torch
from diffusers.utils import export_to_video

from diffsparse.metrics import psnr, ssim, to_uint8
from diffsparse.render import EMBEDDED_DEFAULTS, MODEL_DEFAULTS, pipeline_for, render
from diffsparse.viz import label

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="local Diffusers pipeline folder (default: embedded model)")
parser.add_argument("--methods", default="radial,sliding_window,grat,adaspa", help="paro needs a plan: see README")
parser.add_argument("--prompt", default="a red square moving left on a striped background")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--frames", type=int)
parser.add_argument("--height", type=int)
parser.add_argument("--width", type=int)
parser.add_argument("--steps", type=int)
parser.add_argument("--out", default="compare.mp4")
args = parser.parse_args()

defaults = MODEL_DEFAULTS if args.model else EMBEDDED_DEFAULTS
size = {k: getattr(args, k) or defaults[k] for k in ("frames", "height", "width", "steps")}
opts = {"block_size": defaults["block_size"]} if defaults["block_size"] else {}
pipe = pipeline_for(args.model, "cuda" if torch.cuda.is_available() else "cpu")

dense = render(pipe, None, prompt=args.prompt, seed=args.seed, **size)
ref = to_uint8(dense.frames)
rows, tiles = [("dense", dense.dit_seconds, 1.0, None, None)], [label(dense.frames, "dense")]
for method in args.methods.split(","):
    res = render(pipe, method, prompt=args.prompt, seed=args.seed, **size, **opts)
    out = to_uint8(res.frames)
    rows.append((method, res.dit_seconds, res.stats["density"], psnr(out, ref), ssim(out, ref)))
    tiles.append(label(res.frames, method))

export_to_video(list(np.concatenate(tiles, axis=2)), args.out, fps=8)
print(f"wrote {args.out}: {' | '.join(r[0] for r in rows)} (prompt {args.prompt!r}, seed {args.seed})")
print(f"{'method':<16}{'DiT s':>8}{'speed-up':>10}{'density':>9}{'PSNR dB':>9}{'SSIM':>8}")
for name, t, density, p, s in rows:
    d = "n/a" if density is None else f"{density:.3f}"
    p_txt = "-" if name == "dense" else ("identical" if p is None else f"{p:.2f}")
    print(f"{name:<16}{t:>8.2f}{dense.dit_seconds / t:>10.2f}{d:>9}{p_txt:>9}{'-' if s is None else f'{s:.4f}':>8}")
