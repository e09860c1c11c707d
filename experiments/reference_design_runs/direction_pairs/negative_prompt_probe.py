import numpy as np, torch, json, sys
from diffsparse.reference import load_video_pipeline, VIDEO_WEIGHTS
from diffsparse.reference import data as D, checker
from diffsparse.reference.diagnostics import _displacement
torch.set_num_threads(1)
pipe = load_video_pipeline(sys.argv[1] if len(sys.argv) > 1 else VIDEO_WEIGHTS)
def start(v):
    pts = []
    for f in v[:3]:
        m = checker.shape_mask(f)
        if m.sum() >= 5:
            ys, xs = np.nonzero(m); pts.append((xs.mean(), ys.mean()))
    return np.mean(pts, 0) / 64 if pts else np.array([np.nan, np.nan])
out = {}
for d in ["left", "right", "up", "down"]:
    disp, st, preds = [], [], []
    for i, (c, s) in enumerate([(c, s) for c in ["red", "blue", "green", "yellow"] for s in ["square", "circle"]]):
        cap = f"a {c} {s} moving {d} on a plain background"
        v = pipe(prompt=cap, num_frames=17, height=64, width=64, num_inference_steps=20, guidance_scale=float(sys.argv[2]), negative_prompt=cap.replace(d, {"left":"right","right":"left","up":"down","down":"up"}[d]),
                 generator=torch.Generator().manual_seed(500 + i), output_type="np").frames[0]
        v = (np.clip(v, 0, 1) * 255).round().astype(np.uint8)
        disp.append(_displacement(v) / 64); st.append(start(v)); preds.append(checker.predict_motion(v))
    out[d] = {"mean_displacement_xy": np.round(np.mean(disp, 0), 3).tolist(), "mean_start_xy": np.round(np.nanmean(st, 0), 3).tolist(),
              "checker": {p: preds.count(p) for p in set(preds)}}
    print(d, json.dumps(out[d]), flush=True)
