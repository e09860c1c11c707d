"""Why AdaSpa loses quality with more searches: is the cached LSE the cause?

AdaSpa's later searches score blocks with exp(q.k - LSE) using the LSE cached at the first search
("LSE-cached search"). Ranking inside one query row does not depend on that row's LSE, so a stale
LSE cannot change a row-wise selection; the default global selection ranks blocks of all rows of a
head together, where a row whose true LSE has moved gets all its masses scaled by exp(stale - true).
This probe renders the reference model at the render default (97 frames 128x128, 16 steps, blocks
of 64, sparsity 0.8) with 1, 2 (preset) and 4 searches, global and row-wise, and with the LSE
recomputed at every search (`fresh`: a full attention pass there, whose output that call uses),
and prints PSNR/SSIM vs dense. Quality only (deterministic), so it may share the machine.

    python experiments/adaspa_search_probe.py [--prompts N]
"""
import argparse
import time

import numpy as np
import torch

from diffsparse import render as R
from diffsparse.methods.adaspa import AdaSpa
from diffsparse.reference.data import held_out_specs

p = argparse.ArgumentParser()
p.add_argument("--prompts", type=int, default=1)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--only", nargs="+", default=None, help="run only the points whose names contain one of these")
args = p.parse_args()
torch.set_num_threads(args.threads)

ORIGINAL = AdaSpa.dynamic_layout


def fresh_lse(self, ctx):
    c = ctx.cache
    if "mask" not in c or (ctx.step in self.search_step_set(ctx.num_steps) and c["step"] != ctx.step):
        c.pop("lse", None)  # this search runs the full pass again: exact LSE of this step
    return ORIGINAL(self, ctx)


POINTS = [
    ("1 search, global", dict(search_steps=(0.2,)), False),
    ("2 searches (preset), global", {}, False),
    ("2 searches, global, fresh LSE", {}, True),
    ("4 searches, global", dict(search_steps=(0.2, 0.4, 0.6, 0.8)), False),
    ("4 searches, global, fresh LSE", dict(search_steps=(0.2, 0.4, 0.6, 0.8)), True),
    ("1 search, row-wise", dict(search_steps=(0.2,), row_wise=True), False),
    ("2 searches, row-wise", dict(row_wise=True), False),
    ("4 searches, row-wise", dict(search_steps=(0.2, 0.4, 0.6, 0.8), row_wise=True), False),
    ("2 searches, global, renormalized", dict(renormalize=True), False),
    ("4 searches, global, renormalized", dict(search_steps=(0.2, 0.4, 0.6, 0.8), renormalize=True), False),
]
if args.only:
    POINTS = [pt for pt in POINTS if any(s in pt[0] for s in args.only)]

specs = held_out_specs()
prompts = [specs[i * max(1, len(specs) // 2)].caption for i in range(args.prompts)]
pipe = R.pipeline_for(None, "cpu")
pipe.set_progress_bar_config(disable=True)
common = dict(frames=97, height=128, width=128, steps=16)
dense = [R.render(pipe, None, prompt=pr, seed=i, **common) for i, pr in enumerate(prompts)]
print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, {args.threads} threads, "
      f"{args.prompts} prompt(s), same prompts/seeds as eval/frontier.py")
print(f"{'point':<34} {'density':>7} {'PSNR':>6} {'SSIM':>6}  recall at the last search (mean over heads, layers)")
for name, opts, fresh in POINTS:
    AdaSpa.dynamic_layout = fresh_lse if fresh else ORIGINAL
    try:
        ps, ss, dens, recs = [], [], [], []
        for i, pr in enumerate(prompts):
            res = R.render(pipe, "adaspa", prompt=pr, seed=i, block_size=64, **opts, **common)
            ps.append(R.psnr(dense[i].frames, res.frames))
            ss.append(R.ssim(dense[i].frames, res.frames))
            dens.append(res.stats["density"])
            recs += [float(np.mean(layer["recall"])) for layer in res.stats["layers"].values() if layer.get("recall")]
    finally:
        AdaSpa.dynamic_layout = ORIGINAL
    rec = f"{np.mean(recs):.3f}" if recs else "-"
    print(f"{name:<34} {np.mean(dens):>7.3f} {np.mean(ps):>6.2f} {np.mean(ss):>6.3f}  {rec}", flush=True)
