"""Train a reference model: `python -m diffsparse.reference.train --config FILE` (video or image, by the file's `kind`).

    python -m diffsparse.reference.train --config configs/reference_video.json [--device cuda] [--out DIR]
        [--steps N] [--resume] [--threads 1]
    python -m diffsparse.reference.train --config ... --export-only   # write safetensors from the last checkpoint

The trainers live in `trainer.py` (video) and `train_image.py` (image); this module reads the config,
picks the trainer and runs it.
"""

from __future__ import annotations

import argparse
import json
from copy import deepcopy
from typing import Any, Dict, List

import torch

from .train_image import IMAGE_DEFAULTS, ImageTrainer
from .trainer import DEFAULTS, Trainer, batch, batch_geometry, build_transformer, build_vae, sample_sigmas

# The trainer's building blocks stay importable from here, where scripts and tests have found them.
__all__ = ["DEFAULTS", "IMAGE_DEFAULTS", "ImageTrainer", "Trainer", "batch", "batch_geometry", "build_transformer",
           "build_vae", "load_config", "main", "sample_sigmas", "trainer_for"]

def load_config(path: str | None, overrides: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """The model family's defaults (`"kind": "video"` or `"image"` in the file) updated by the file and `overrides`."""
    user: Dict[str, Any] = {}
    if path:
        with open(path) as fh:
            user = json.load(fh)
    kind = user.get("kind", "video")
    if kind == "video":
        cfg = deepcopy(DEFAULTS)
    elif kind == "image":
        cfg = deepcopy(IMAGE_DEFAULTS)
    else:
        raise ValueError(f"unknown model kind {kind!r} in {path}; choose 'video' or 'image'")
    for k, v in user.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg[k] = v
    p = cfg.get("frame_sigma_prob") or 0.0
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"frame_sigma_prob must be a fraction in [0, 1], got {p!r}")
    if p and kind != "video":
        raise ValueError(f"frame_sigma_prob={p!r} needs a video model (frames to noise apart); this config is {kind!r}")
    if cfg.get("direction_pairs") and kind != "video":
        raise ValueError(f"direction_pairs needs a video model (clips to play backwards); this config is {kind!r}")
    trail = cfg.get("motion_trail") or 0
    if not (isinstance(trail, int) and trail >= 0):
        raise ValueError(f"motion_trail must be a whole number of trail copies >= 0, got {trail!r}")
    if trail and kind != "video":
        raise ValueError(f"motion_trail={trail!r} needs a video model; this config is {kind!r}")
    if trail and cfg.get("direction_pairs"):
        raise ValueError("motion_trail and direction_pairs cannot be combined: a clip played backwards has its "
                         "trail ahead of the shape")
    return cfg


def trainer_for(cfg: Dict[str, Any], device: str = "cpu") -> "Trainer":
    if cfg.get("kind", "video") == "image":
        return ImageTrainer(cfg, device)
    return Trainer(cfg, device)


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--export-to", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {"out": args.out, "steps": args.steps})
    tr = trainer_for(cfg, args.device)
    resumed = tr.load() if (args.resume or args.export_only) else False
    if not resumed and not args.export_only and cfg.get("init_from"):
        tr.init_from(cfg["init_from"])
        print(f"initialised from {cfg['init_from']} at step {tr.step}", flush=True)
    if args.export_only:
        if not resumed:
            raise SystemExit(f"no checkpoint at {tr.ckpt_path}")
    else:
        sizes = ", ".join(f"{name} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"
                          for name, m in tr.modules.items())
        print(f"{'resuming at step ' + str(tr.step) if resumed else 'starting'}; {sizes} params", flush=True)
        tr.run()
    print("exported to", tr.export(args.export_to), flush=True)


if __name__ == "__main__":
    main()
