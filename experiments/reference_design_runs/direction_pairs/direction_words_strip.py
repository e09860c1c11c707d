"""Renders six direction-word captions and prints the checker's motion reading.

    python experiments/reference_design_runs/direction_pairs/direction_words_strip.py [WEIGHTS] [OUT.png]
"""
import sys, numpy as np, torch, json
from diffsparse.reference import load_video_pipeline, VIDEO_WEIGHTS
from diffsparse.reference import data as D, checker
from diffsparse.reference.evaluate import strip
torch.set_num_threads(2)
pipe = load_video_pipeline(sys.argv[1] if len(sys.argv) > 1 else VIDEO_WEIGHTS)
caps = ["a red square moving down on a plain background", "a blue circle moving down on a plain background",
        "a green triangle moving left on a plain background", "a yellow square moving left on a plain background",
        "a red circle bouncing on a plain background", "a white square moving up on a plain background"]
vids = []
for i, c in enumerate(caps):
    v = pipe(prompt=c, num_frames=17, height=64, width=64, num_inference_steps=20, guidance_scale=4.0,
             generator=torch.Generator().manual_seed(7 + i), output_type="np").frames[0]
    v = (np.clip(v, 0, 1) * 255).round().astype(np.uint8); vids.append(v)
    print(c, checker.check(v, c)["pred_motion"])
strip(vids, caps, every=4, path=sys.argv[2] if len(sys.argv) > 2 else "eval/results/reference/design_runs/direction_pairs/v4_direction_words_strip.png")
