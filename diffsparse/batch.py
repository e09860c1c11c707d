"""Data-parallel batch rendering: a prompt list split across processes (one GPU each, or CPU).

Rank r renders prompts r, r+N, r+2N, ... and writes `<index>_<slug>.mp4`; every prompt is
rendered exactly once. Each process builds its own pipeline (the embedded default, or a local
folder) so nothing is shared between them.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional


def output_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48] or "video"
    return f"{index:04d}_{slug}.mp4"


def _worker(rank: int, world: int, prompts: List[str], out_dir: str, method: Optional[str], model: Optional[str],
            options: Dict[str, Any], method_options: Dict[str, Any], fps: int = 8) -> None:
    import torch
    from diffusers.utils import export_to_video

    from . import render as R

    if torch.cuda.is_available():
        device = f"cuda:{rank % torch.cuda.device_count()}"
    else:
        device = "cpu"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    pipe = R.load_pipeline(model, device) if model else R.default_video_pipeline(device)
    done = []
    for index in range(rank, len(prompts), world):
        result = R.render(pipe, method, prompt=prompts[index], **options, **method_options)
        path = os.path.join(out_dir, output_name(index, prompts[index]))
        export_to_video(list(result.frames), path, fps=fps)
        density = result.stats["density"] if result.stats else None
        done.append({"index": index, "prompt": prompts[index], "file": os.path.basename(path),
                     "dit_seconds": result.dit_seconds, "density": density})
    with open(os.path.join(out_dir, f".rank{rank}.json"), "w") as f:
        json.dump(done, f)


def render_batch(
    prompts: List[str],
    out_dir: str,
    method: Optional[str],
    num_processes: int = 1,
    model: Optional[str] = None,
    method_options: Optional[Dict[str, Any]] = None,
    fps: int = 8,
    **options: Any,
) -> List[Dict[str, Any]]:
    """Render every prompt once across `num_processes` processes, videos written at `fps`; returns the manifest
    (also `manifest.json`)."""
    if not prompts:
        raise ValueError("no prompts to render")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    os.makedirs(out_dir, exist_ok=True)
    world = min(num_processes, len(prompts))
    args = (world, prompts, out_dir, method, model, options, method_options or {}, fps)
    if world == 1:
        _worker(0, *args)
    else:
        import torch.multiprocessing as mp

        mp.spawn(_worker, args=args, nprocs=world)
    manifest = []
    for rank in range(world):
        part = os.path.join(out_dir, f".rank{rank}.json")
        with open(part) as f:
            manifest.extend(json.load(f))
        os.remove(part)
    manifest.sort(key=lambda row: row["index"])
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
