"""Measure the reference video model on held-out captions with the OpenCV checker.

    python -m diffsparse.reference.evaluate [--weights DIR] [--out eval/results/reference] [--n 28]
        [--seeds-per-caption 1] [--steps 20] [--guidance 4.0] [--frames 17] [--long-frames 33] [--threads 1]

Writes `OUT/video_eval.json` (per-sample predictions, agreement rates, adjacent-frame SSIM of samples
and of ground-truth clips, timings) and PNG strips (`OUT/samples_heldout.png`, `OUT/samples_long.png`).
`--captions train` samples training captions instead (under the key "train", strip `samples_train.png`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Dict, List

import numpy as np
import torch

from . import checker
from . import data as D
from .diagnostics import direction_rendering, direction_sensitivity, text_attention_share


def strip(videos: List[np.ndarray], captions: List[str], every: int = 4, path: str = "strip.png") -> None:
    """One row per video (every `every`-th frame), caption above each row."""
    import cv2

    rows = []
    for v, c in zip(videos, captions):
        frames = list(v[::every])
        row = np.concatenate([np.pad(f, ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in frames], 1)
        scale = 2
        row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        bar = np.full((16, row.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, c, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([bar, row], 0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(path, cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def rates_of(results: List[Dict]) -> Dict[str, float]:
    """Agreement rates of checker results for colour, shape and motion."""
    return {k: float(np.mean([r[f"{k}_ok"] for r in results])) for k in ("color", "shape", "motion")}


def wilson_interval(k: int, n: int, z: float = 1.96) -> List[float]:
    """95 % Wilson score interval of a rate of k successes in n samples (honest at small n and near 0 / 1)."""
    if n == 0:
        return [0.0, 1.0]
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(float(mid - half), 0.0), 4), round(min(float(mid + half), 1.0), 4)]


def rates(results: List[Dict]) -> Dict[str, float]:
    out = rates_of(results)
    motions = [D.parse_caption(r["caption"]).motion for r in results]
    trans = [r for r, m in zip(results, motions) if m in D.DIRECTIONS]
    if trans:
        out["motion_direction_only"] = float(np.mean([r["motion_ok"] for r in trans]))
    out["motion_ci95"] = wilson_interval(sum(r["motion_ok"] for r in results), len(results))
    out["motion_by_kind"] = {m: f"{sum(r['motion_ok'] for r, mm in zip(results, motions) if mm == m)}/"
                                f"{motions.count(m)}" for m in D.MOTIONS if m in motions}
    out["adjacent_ssim"] = float(np.mean([r["adjacent_ssim"] for r in results]))
    return out


def run_set(pipe, specs: List[D.Spec], frames: int, height: int, width: int, steps: int, guidance: float,
            seed: int) -> (List[Dict], List[np.ndarray], float):
    results, videos = [], []
    t0 = time.time()
    for i, spec in enumerate(specs):
        v = pipe(prompt=spec.caption, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator().manual_seed(seed + i), output_type="np").frames[0]
        v = (np.clip(v, 0, 1) * 255).round().astype(np.uint8)
        r = checker.check(v, spec.caption)
        r["adjacent_ssim"] = checker.adjacent_ssim(v)
        results.append(r)
        videos.append(v)
    return results, videos, (time.time() - t0) / max(len(specs), 1)


def through_vae(vae, video: np.ndarray) -> np.ndarray:
    """`video` (F, H, W, 3) uint8 encoded and decoded by the model's autoencoder: what the transformer could at
    best produce, so the checker on it is the ceiling the autoencoder sets."""
    x = torch.from_numpy(video).float().permute(3, 0, 1, 2)[None] / 127.5 - 1.0
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].permute(1, 2, 3, 0)
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


SWAP_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up", "bounce": "grow", "grow": "rotate",
               "rotate": "bounce"}
SWAP_COLOR = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "white": "red"}


@torch.no_grad()
def caption_sensitivity(pipe, n: int = 16, sigmas=(0.6, 0.85, 0.95), seed: int = 0) -> Dict[str, Dict[str, float]]:
    """How much the model uses each part of the caption: its flow-matching loss on `n` training clips at each
    noise level with the true caption, with the motion or the colour swapped for another, and with no caption.
    A model that ignores its motion words has `wrong_motion` ~ `true`. Same clips and noise for every variant."""
    from .text import encode

    rng = np.random.default_rng(seed)
    pool = D.train_specs()
    specs = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    x = torch.from_numpy(np.stack([D.render_video(s, int(rng.integers(2**31))) for s in specs])).float()
    x0 = pipe.vae.normalize(pipe.vae.encode(x.movedim(-1, 1) / 127.5 - 1.0).latent_dist.mode())
    variants = {
        "true": [s.caption for s in specs],
        "wrong_motion": [D.Spec(s.color, s.shape, SWAP_MOTION[s.motion], s.background, s.pan).caption for s in specs],
        "wrong_color": [D.Spec(SWAP_COLOR[s.color], s.shape, s.motion, s.background, s.pan).caption for s in specs],
        "empty": [""] * n,
    }
    embs = {k: encode(pipe.tokenizer, pipe.text_encoder, caps, 512) for k, caps in variants.items()}
    out = {}
    for i, sig in enumerate(sigmas):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
        xt = (1 - sig) * x0 + sig * noise
        t = torch.full((n,), sig * 1000.0)
        out[f"sigma_{sig}"] = {k: round(float(((pipe.transformer(hidden_states=xt, timestep=t, encoder_hidden_states=e,
                                                                 return_dict=False)[0] - (noise - x0)) ** 2).mean()), 4)
                               for k, e in embs.items()}
    return out


def main(argv=None) -> None:
    from . import VIDEO_WEIGHTS, load_video_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=VIDEO_WEIGHTS)
    ap.add_argument("--out", default="eval/results/reference")
    ap.add_argument("--n", type=int, default=28)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--long-frames", type=int, default=33)
    ap.add_argument("--n-long", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--seeds-per-caption", type=int, default=1,
                    help="render each of the n captions this many times (seeds seed+i over the whole list): "
                         "the held-out pool is only 28 captions, so repeats narrow the rates' intervals")
    ap.add_argument("--tag", default="")
    ap.add_argument("--captions", choices=("heldout", "train"), default="heldout",
                    help="caption pool: held-out combinations (the acceptance set) or training captions (tells "
                         "a model that has not learned a word from one that does not generalise it)")
    ap.add_argument("--sensitivity-only", action="store_true", help="print caption_sensitivity and exit")
    ap.add_argument("--probes-only", action="store_true",
                    help="print caption_sensitivity, text_attention_share, direction_sensitivity and "
                         "direction_rendering and exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    pipe = load_video_pipeline(args.weights)
    pipe.set_progress_bar_config(disable=True)  # many renders: the summary is the output
    sensitivity = caption_sensitivity(pipe)
    if args.sensitivity_only:
        print(json.dumps(sensitivity, indent=1))
        return
    probes = {"text_attention_share": text_attention_share(pipe), "direction_sensitivity": direction_sensitivity(pipe)}
    if args.probes_only:  # plus what the sampler draws per direction word (32 renders, about a minute)
        probes["direction_rendering"] = direction_rendering(pipe, steps=args.steps, guidance=args.guidance)
        print(json.dumps({"weights": os.path.relpath(args.weights), "caption_sensitivity": sensitivity, **probes},
                         indent=1))
        return
    specs = D.held_out_specs() if args.captions == "heldout" else D.train_specs()
    rng = np.random.default_rng(args.seed)
    specs = [specs[i] for i in rng.permutation(len(specs))][: args.n] * args.seeds_per_caption
    res, vids, sec = run_set(pipe, specs, args.frames, args.size, args.size, args.steps, args.guidance, args.seed)
    strip(vids[:12], [r["caption"] for r in res[:12]], path=os.path.join(args.out, f"samples_{args.captions}{args.tag}.png"))
    gt = [D.render_video(s, args.seed + i, num_frames=args.frames, height=args.size, width=args.size)
          for i, s in enumerate(specs)]
    report = {
        "command": "python -m diffsparse.reference.evaluate " + " ".join(argv or __import__("sys").argv[1:]),
        "weights": os.path.relpath(args.weights), "device": "cpu", "torch_threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "settings": {"frames": args.frames, "size": args.size, "steps": args.steps, "guidance": args.guidance,
                     "captions": args.captions, "seeds_per_caption": args.seeds_per_caption},
        args.captions: {"n": len(res), **rates(res), "seconds_per_video": round(sec, 2)},
        "caption_sensitivity": sensitivity,
        **probes,
        "ground_truth_adjacent_ssim": float(np.mean([checker.adjacent_ssim(v) for v in gt])),
        "ground_truth_through_vae": rates_of([checker.check(through_vae(pipe.vae, v), s.caption)
                                              for v, s in zip(gt, specs)]),
        "samples": res,
    }
    if args.n_long:
        lres, lvids, lsec = run_set(pipe, specs[: args.n_long], args.long_frames, args.size, args.size, args.steps,
                                    args.guidance, args.seed)
        strip(lvids[:6], [r["caption"] for r in lres[:6]], every=8,
              path=os.path.join(args.out, f"samples_long{args.tag}.png"))
        report["long"] = {"frames": args.long_frames, "n": len(lres), **rates(lres),
                          "seconds_per_video": round(lsec, 2), "samples": lres}
    with open(os.path.join(args.out, f"video_eval{args.tag}.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples",)} | {
        "long": {k: v for k, v in report.get("long", {}).items() if k != "samples"}}, indent=1))


if __name__ == "__main__":
    main()
