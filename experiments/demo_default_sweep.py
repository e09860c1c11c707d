"""Which default render makes the README's main command show what radial attention buys on a CPU.

Renders the embedded reference model dense and with radial at candidate lengths and block sizes
(same prompt and seed), alternating dense and sparse, and prints DiT seconds, speed-up, density
and PSNR/SSIM vs dense.

    python experiments/demo_default_sweep.py
"""
import sys
import time

import torch

from diffsparse import render as R

candidates = [(33, 64), (65, 64), (97, 64), (97, 128), (129, 64)]
if len(sys.argv) > 1:
    candidates = [tuple(int(x) for x in a.split(",")) for a in sys.argv[1:]]
pipe = R.pipeline_for(None, "cpu")
print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"{'frames':>6} {'block':>5} {'dense s':>8} {'radial s':>8} {'speed-up':>8} {'density':>7} {'PSNR':>6} {'SSIM':>6}")
for frames, block in candidates:
    opts = dict(prompt="a red square moving left on a plain background", frames=frames, height=128, width=128,
                steps=16, seed=0)
    sparse = R.render(pipe, "radial", block_size=block, **opts)
    dense = R.render(pipe, None, **opts)
    sparse2 = R.render(pipe, "radial", block_size=block, **opts)  # sparse on both sides of dense
    t_sparse = min(sparse.dit_seconds, sparse2.dit_seconds)
    p = R.psnr(dense.frames, sparse.frames)
    print(f"{frames:>6} {block:>5} {dense.dit_seconds:>8.2f} {t_sparse:>8.2f} {dense.dit_seconds / t_sparse:>8.2f} "
          f"{sparse.stats['density']:>7.3f} {p if p is None else round(p, 2):>6} {R.ssim(dense.frames, sparse.frames):>6.3f}",
          flush=True)
