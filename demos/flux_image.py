"""Dense and each image method on a FLUX pipeline, same prompt and seed: one labelled PNG grid and a table.

    python demos/flux_image.py --out flux_grid.png                    # the shipped reference FLUX model
    python demos/flux_image.py --model /path/to/FLUX.1-dev --height 1024 --width 1024 --steps 28

Fidelity against the dense image uses `diffsparse.metrics` (PSNR, luma SSIM on a one-frame video).
"""

import argparse
import time

import numpy as np
import torch

import diffsparse
from diffsparse.metrics import psnr, ssim, to_uint8
from diffsparse.reference import IMAGE_DEFAULTS, available, load_pipeline as load_reference
from diffsparse.tiny import example_inputs, tiny_flux_pipeline
from diffsparse.viz import label, save_png

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="local Diffusers FLUX pipeline folder (default: the shipped reference model)")
parser.add_argument("--methods", default="sliding_window,grat")
parser.add_argument("--prompt", default="a red square in the top left on a striped background")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--height", type=int, default=IMAGE_DEFAULTS["height"])
parser.add_argument("--width", type=int, default=IMAGE_DEFAULTS["width"])
parser.add_argument("--steps", type=int, default=IMAGE_DEFAULTS["num_inference_steps"])
parser.add_argument("--block-size", type=int, default=None, help="kernel block (default: 16 on the reference model)")
parser.add_argument("--out", default="flux_grid.png")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
if args.model:
    from diffsparse.render import load_pipeline

    pipe = load_pipeline(args.model, device, torch.bfloat16 if device == "cuda" else None)
    inputs = {"prompt": args.prompt}
elif available("image"):  # diffsparse's own small trained FLUX (eval/results/reference_image/)
    pipe = load_reference("image", device=device)
    inputs = {"prompt": args.prompt, "negative_prompt": "", "true_cfg_scale": IMAGE_DEFAULTS["true_cfg_scale"]}
    args.block_size = args.block_size or 16
else:
    print("no --model and no shipped reference image model: tiny FLUX with RANDOM weights, so the images are "
          "noise-like; the numbers show speed and fidelity to dense only")
    pipe = tiny_flux_pipeline().to(device)
    inputs = example_inputs("flux")


def run(method):
    """(image `(H, W, 3)` in [0, 1], seconds, density) of one render with `method` (None: dense)."""
    options = {"block_size": args.block_size} if args.block_size else {}
    handle = diffsparse.enable_sparse_attention(pipe, method=method, **options) if method else None
    start = time.perf_counter()
    image = pipe(**inputs, height=args.height, width=args.width, num_inference_steps=args.steps,
                 generator=torch.Generator().manual_seed(args.seed), output_type="np").images[0]
    seconds = time.perf_counter() - start
    density = handle.stats()["density"] if handle else 1.0
    if handle:
        diffsparse.disable_sparse_attention(pipe)
    return image, seconds, density


dense, t_dense, _ = run(None)
ref = to_uint8(dense[None])
tiles, rows = [label(dense[None], "dense")[0]], []
for method in args.methods.split(","):
    image, t, density = run(method)
    tiles.append(label(image[None], method)[0])
    out = to_uint8(image[None])
    rows.append((method, t, density, psnr(out, ref), ssim(out, ref)))
save_png(to_uint8(np.concatenate(tiles, axis=1)[None])[0], args.out)
print(f"wrote {args.out}: dense | {' | '.join(r[0] for r in rows)} (seed {args.seed})")
print(f"{'method':<16}{'time s':>8}{'speed-up':>10}{'density':>9}{'PSNR dB':>10}{'SSIM':>8}")
print(f"{'dense':<16}{t_dense:>8.2f}{1.0:>10.2f}{1.0:>9.3f}{'-':>10}{'-':>8}")
for name, t, density, p, s in rows:
    d = "n/a" if density is None else f"{density:.3f}"
    print(f"{name:<16}{t:>8.2f}{t_dense / t:>10.2f}{d:>9}{'identical' if p is None else f'{p:.2f}':>10}{s:>8.4f}")
