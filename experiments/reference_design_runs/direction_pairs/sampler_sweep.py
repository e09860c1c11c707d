"""Sampler-settings sweep on TRAINING captions (selection set, not the acceptance set)."""
import json, sys, time
import numpy as np, torch
from diffsparse.reference import load_video_pipeline, VIDEO_WEIGHTS
from diffsparse.reference import data as D
from diffsparse.reference.evaluate import run_set, rates
torch.set_num_threads(1)
pool = sys.argv[1]; settings = json.loads(sys.argv[2])
pipe = load_video_pipeline(VIDEO_WEIGHTS)
from diffusers import FlowMatchEulerDiscreteScheduler
base_cfg = dict(pipe.scheduler.config)
specs = D.held_out_specs() if pool == "heldout" else D.train_specs()
rng = np.random.default_rng(2000 if pool == "train" else 1000)
specs = [specs[i] for i in rng.permutation(len(specs))][:28] * 3
for s in settings:
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config({**base_cfg, "shift": s.get("shift", base_cfg["shift"])})
    t0 = time.time()
    res, _, sec = run_set(pipe, specs, 17, 64, 64, s["steps"], s["guidance"], 2000 if pool == "train" else 1000)
    r = rates(res)
    print(json.dumps({"pool": pool, **s, "motion": round(r["motion"], 3), "by_kind": r["motion_by_kind"],
                      "color": r["color"], "ssim": round(r["adjacent_ssim"], 3), "s": round(time.time() - t0)}), flush=True)
