"""Design-run probe: can the model learn its direction words when nothing else competes?

Fine-tunes the v4a weights (the `reference_video_continue2_a.json` start point) on translations only
("moving left/right/up/down", plain background, no pan), at sigma uniform in [0.85, 0.98] (where the
caption's direction could change the denoiser's estimate), without caption dropout; then export.
Measure with `python -m diffsparse.reference.evaluate --probes-only --weights OUT/export`.

    python experiments/reference_design_runs/direction_words/focused_probe.py OUT STEPS
"""

import sys

import numpy as np
import torch

from diffsparse.reference import data as D
from diffsparse.reference import train as T

SPECS = [s for s in D.train_specs() if s.motion in D.DIRECTIONS and s.background == "plain"]


def translation_sample(index, seed=0, held_out=False, **kw):
    rng = np.random.default_rng([seed, index])
    spec = SPECS[int(rng.integers(len(SPECS)))]
    return D.render_video(spec, int(rng.integers(2**31)), **kw), spec.caption, spec


def high_sigmas(n, cfg, gen):
    return 0.85 + 0.13 * torch.rand(n, generator=gen)


if __name__ == "__main__":
    torch.set_num_threads(1)
    T.batch.__defaults__ = (translation_sample,)  # the trainer's batches draw from translations only
    T.sample_sigmas = high_sigmas
    out, steps = sys.argv[1], int(sys.argv[2])
    cfg = T.load_config("experiments/reference_configs/reference_video_continue2_a.json", {"out": out, "steps": 15100 + steps})
    cfg.update(sizes=None, stats_samples=16, caption_dropout=0.0, ckpt_every=100, warmup=20)
    tr = T.trainer_for(cfg)
    tr.init_from(cfg["init_from"])
    tr.run()
    print("exported", tr.export())
