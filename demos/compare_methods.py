"""Same prompt and seed through dense and every method: one labelled grid video and a table.

    python demos/compare_methods.py --out compare.mp4
"""

import argparse

import numpy as np
import torch
from diffusers.utils import export_to_video

import diffsparse
from diffsparse.render import pipeline_for, psnr, render
from diffsparse.viz import label

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="local Diffusers pipeline folder (default: embedded model)")
parser.add_argument("--methods", default=",".join(m for m in diffsparse.list_methods() if m != "dense"))
parser.add_argument("--frames", type=int, default=17)
parser.add_argument("--height", type=int, default=128)
parser.add_argument("--width", type=int, default=128)
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--out", default="compare.mp4")
args = parser.parse_args()

pipe = pipeline_for(args.model, "cuda" if torch.cuda.is_available() else "cpu")
size = dict(frames=args.frames, height=args.height, width=args.width, steps=args.steps)

dense = render(pipe, None, **size)
rows, tiles = [("dense", dense.dit_seconds, 1.0, None)], [label(dense.frames, "dense")]
for method in args.methods.split(","):
    res = render(pipe, method, **size)
    rows.append((method, res.dit_seconds, res.stats["density"], psnr(dense.frames, res.frames)))
    tiles.append(label(res.frames, method))

export_to_video(list(np.concatenate(tiles, axis=2)), args.out, fps=8)
print(f"wrote {args.out}")
print(f"{'method':<16}{'DiT s':>8}{'speed-up':>10}{'density':>9}{'PSNR dB':>9}")
for name, t, density, p in rows:
    d = "n/a" if density is None else f"{density:.3f}"
    print(f"{name:<16}{t:>8.2f}{dense.dit_seconds / t:>10.2f}{d:>9}{'-' if p is None else f'{p:.2f}':>9}")
