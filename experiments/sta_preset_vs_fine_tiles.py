"""sliding_window's preset (FastVideo STA: tiles 6x8x8, a 3x3x3-tile window) against the previous
preset's finer 2x8x8 tiles with the window widened to the same density, on the reference model at
the render default (97 frames, 128x128, blocks of 64): PSNR / SSIM vs dense, same prompts and seeds.

    python experiments/sta_preset_vs_fine_tiles.py
"""
import numpy as np
import torch

import diffsparse
from diffsparse import render as R

GRID, BLOCK = (25, 16, 16), 64
PROMPTS = ["a red circle moving up on a plain background", "a green circle growing on a striped background",
           "a blue triangle bouncing on a striped background, camera panning left"]
sta = diffsparse.block_layout("sliding_window", GRID, block_size=BLOCK).density
windows = {w: diffsparse.block_layout("sliding_window", GRID, block_size=BLOCK, tile=(2, 8, 8),
                                      window_tiles=(w, 3, 3)).density for w in range(3, 26)}
w_best = min(windows, key=lambda w: abs(windows[w] - sta))
configs = {"STA preset tile (6,8,8) window (3,3,3)": {},
           f"tile (2,8,8) window ({w_best},3,3)": {"tile": (2, 8, 8), "window_tiles": (w_best, 3, 3)}}
print(f"grid {GRID}, block {BLOCK}: STA preset density {sta:.3f}; 2x8x8 tiles: "
      + ", ".join(f"w{w} {d:.3f}" for w, d in windows.items()))
pipe = R.pipeline_for(None, "cpu")
pipe.set_progress_bar_config(disable=True)
rows = {name: [] for name in configs}
for i, prompt in enumerate(PROMPTS):
    opts = dict(prompt=prompt, frames=97, height=128, width=128, steps=16, seed=i)
    dense = R.render(pipe, None, **opts)
    for name, extra in configs.items():
        res = R.render(pipe, "sliding_window", block_size=BLOCK, **extra, **opts)
        rows[name].append((res.stats["density"], R.psnr(dense.frames, res.frames), R.ssim(dense.frames, res.frames)))
print(f"{'configuration':<42}{'density':>9}{'PSNR dB':>9}{'SSIM':>8}")
for name, vals in rows.items():
    d, p, s = (float(np.mean([v[j] for v in vals])) for j in range(3))
    print(f"{name:<42}{d:>9.3f}{p:>9.2f}{s:>8.4f}")
