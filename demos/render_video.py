"""Render one video with a sparse-attention method and print its density and time.

    python demos/render_video.py --method radial --out radial.mp4
    python demos/render_video.py --model /path/to/Wan2.1-T2V-1.3B-Diffusers --height 480 --width 832 --frames 81
"""

import argparse

import torch
from diffusers.utils import export_to_video

import diffsparse
from diffsparse.render import EMBEDDED_DEFAULTS, MODEL_DEFAULTS, pipeline_for, render

parser = argparse.ArgumentParser()
parser.add_argument("--method", default="radial", choices=diffsparse.list_methods())
parser.add_argument("--model", help="local Diffusers Wan/HunyuanVideo pipeline folder (default: embedded model)")
parser.add_argument("--prompt", default="a red square moving left on a striped background")
parser.add_argument("--frames", type=int)
parser.add_argument("--height", type=int)
parser.add_argument("--width", type=int)
parser.add_argument("--steps", type=int)
parser.add_argument("--out", default="video.mp4")
args = parser.parse_args()

defaults = MODEL_DEFAULTS if args.model else EMBEDDED_DEFAULTS  # sizes left unset
size = {k: getattr(args, k) or defaults[k] for k in ("frames", "height", "width", "steps")}
opts = {"block_size": defaults["block_size"]} if defaults["block_size"] else {}
pipe = pipeline_for(args.model, "cuda" if torch.cuda.is_available() else "cpu")

result = render(pipe, args.method, prompt=args.prompt, **size, **opts)
export_to_video(list(result.frames), args.out, fps=8)
density = result.stats["density"]
print(f"{args.out}: density {density if density is None else round(density, 3)}, "
      f"DiT {result.dit_seconds:.2f} s of {result.total_seconds:.2f} s total")
