"""Measure the reference image model (FLUX architecture) on held-out captions with the OpenCV checker.

    python -m diffsparse.reference.evaluate_image [--weights DIR] [--out eval/results/reference_image] [--n 20]
        [--steps 20] [--cfg 4.0] [--size 128] [--threads 1]

Writes `OUT/image_eval.json` (per-sample predictions, colour/shape/place agreement, timings) and
`OUT/samples_heldout.png`; the same checker on ground-truth images of the same captions is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import checker
from . import image_data as I
from .evaluate import strip

KEYS = ("color", "shape", "place")


def main(argv=None) -> None:
    from . import IMAGE_WEIGHTS, load_image_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=IMAGE_WEIGHTS)
    ap.add_argument("--out", default="eval/results/reference_image")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=4.0, help="true_cfg_scale (negative prompt '')")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    pipe = load_image_pipeline(args.weights)
    pipe.set_progress_bar_config(disable=True)  # many renders: the summary is the output
    specs = I.held_out_specs()
    specs = [specs[i] for i in np.random.default_rng(args.seed).permutation(len(specs))][: args.n]
    results, images = [], []
    t0 = time.time()
    for i, spec in enumerate(specs):
        img = pipe(prompt=spec.caption, negative_prompt="", true_cfg_scale=args.cfg, height=args.size,
                   width=args.size, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed + i),
                   output_type="np").images[0]
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        results.append(checker.check_image(img, spec.caption))
        images.append(img)
    sec = (time.time() - t0) / max(len(specs), 1)
    gt = [checker.check_image(I.render_image(s, args.seed + i, args.size, args.size), s.caption)
          for i, s in enumerate(specs)]
    rate = lambda rs, k: float(np.mean([r[f"{k}_ok"] for r in rs]))  # noqa: E731
    strip([im[None] for im in images[:12]], [r["caption"] for r in results[:12]], every=1,
          path=os.path.join(args.out, "samples_heldout.png"))
    report = {
        "command": "python -m diffsparse.reference.evaluate_image " + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": os.path.relpath(args.weights), "device": "cpu", "torch_threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "settings": {"size": args.size, "steps": args.steps, "true_cfg_scale": args.cfg},
        "heldout": {"n": len(results), **{k: rate(results, k) for k in KEYS}, "seconds_per_image": round(sec, 2)},
        "ground_truth": {k: rate(gt, k) for k in KEYS},
        "samples": results,
    }
    with open(os.path.join(args.out, "image_eval.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
