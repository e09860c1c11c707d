"""Dense and each image method on a FLUX pipeline: one labelled PNG grid and a table.

    python demos/flux_image.py --out flux_grid.png                    # tiny random-weight FLUX
    python demos/flux_image.py --model /path/to/FLUX.1-dev --height 1024 --width 1024 --steps 28
"""

import argparse
import time

import numpy as np
import torch

import diffsparse
from diffsparse.render import psnr, ssim
from diffsparse.tiny import example_inputs, tiny_flux_pipeline
from diffsparse.viz import label, save_png

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="local Diffusers FLUX pipeline folder (default: tiny random-weight FLUX)")
parser.add_argument("--prompt", default="a red square on a striped background")
parser.add_argument("--height", type=int, default=256)
parser.add_argument("--width", type=int, default=256)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--out", default="flux_grid.png")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
if args.model:
    from diffsparse.render import load_pipeline

    pipe = load_pipeline(args.model, device, torch.bfloat16 if device == "cuda" else None)
    inputs = {"prompt": args.prompt}
else:
    print("tiny FLUX with RANDOM weights: speed and fidelity-vs-dense only")
    pipe = tiny_flux_pipeline().to(device)
    inputs = example_inputs("flux")


def run(method):
    handle = diffsparse.enable_sparse_attention(pipe, method=method) if method else None
    start = time.perf_counter()
    image = pipe(**inputs, height=args.height, width=args.width, num_inference_steps=args.steps,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    seconds = time.perf_counter() - start
    density = handle.stats()["density"] if handle else 1.0
    diffsparse.disable_sparse_attention(pipe)
    return image, seconds, density


dense, t_dense, _ = run(None)
tiles, rows = [label(dense[None], "dense")[0]], []
for method in ("sliding_window", "grat"):
    image, t, density = run(method)
    tiles.append(label(image[None], method)[0])
    rows.append((method, t, density, psnr(dense[None], image[None]), ssim(dense[None], image[None])))
save_png((np.concatenate(tiles, axis=1) * 255).round().astype(np.uint8), args.out)
print(f"wrote {args.out}")
print(f"{'method':<16}{'time s':>8}{'speed-up':>10}{'density':>9}{'PSNR dB':>9}{'SSIM':>8}")
print(f"{'dense':<16}{t_dense:>8.2f}{1.0:>10.2f}{1.0:>9.3f}{'-':>9}{'-':>8}")
for name, t, density, p, s in rows:
    d = "n/a" if density is None else f"{density:.3f}"
    print(f"{name:<16}{t:>8.2f}{t_dense / t:>10.2f}{d:>9}{'-' if p is None else f'{p:.2f}':>9}{s:>8.4f}")
