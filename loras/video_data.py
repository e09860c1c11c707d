"""Training clips for LoRA length extension: a folder of videos with captions, read and checked up front.

Layout: `DIR/*.mp4` (also .webm, .mov, .gif) with captions either in `DIR/captions.json`
(`{"clip.mp4": "a caption", ...}`) or in a sidecar `DIR/clip.txt`. Every clip must hold at least
`frames` frames; problems are reported all at once, naming the files, before any training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif", ".avi", ".mkv")


@dataclass
class Clip:
    path: str
    caption: str


def _read_frames(path: str) -> np.ndarray:
    """All frames `(T, H, W, 3)` uint8 (imageio, then OpenCV)."""
    try:
        import imageio.v3 as iio

        frames = iio.imread(path, index=None)
        if frames.ndim == 4:
            return frames[..., :3]
    except Exception:  # noqa: BLE001 - fall back to OpenCV on any reader failure
        pass
    import cv2

    cap = cv2.VideoCapture(path)
    out = []
    ok, frame = cap.read()
    while ok:
        out.append(frame[..., ::-1])
        ok, frame = cap.read()
    cap.release()
    if not out:
        raise ValueError(f"cannot read video {path!r} (no frames decoded)")
    return np.stack(out)


def list_clips(folder: str) -> List[Clip]:
    """Clips with their captions; raises ValueError listing every clip without a caption."""
    if not os.path.isdir(folder):
        raise ValueError(f"data folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(VIDEO_EXTENSIONS))
    if not names:
        raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {folder!r}")
    table = {}
    captions_file = os.path.join(folder, "captions.json")
    if os.path.exists(captions_file):
        with open(captions_file) as f:
            table = json.load(f)
    clips, missing = [], []
    for name in names:
        caption = table.get(name)
        sidecar = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
        if caption is None and os.path.exists(sidecar):
            with open(sidecar) as f:
                caption = f.read().strip()
        if not caption:
            missing.append(name)
        clips.append(Clip(os.path.join(folder, name), caption or ""))
    if missing:
        raise ValueError(f"missing captions (captions.json or <name>.txt) for: {', '.join(missing)}")
    return clips


def load_clip(clip: Clip, frames: int, height: int, width: int) -> np.ndarray:
    """The first `frames` frames resized to `height x width`, float32 in [-1, 1], `(T, H, W, 3)`."""
    import cv2

    try:
        video = _read_frames(clip.path)
    except Exception as err:  # noqa: BLE001 - report the file, whatever the decoder said
        raise ValueError(f"cannot read video {clip.path!r}: {err}") from err
    if video.shape[0] < frames:
        raise ValueError(f"{clip.path!r} has {video.shape[0]} frames; training needs at least {frames}")
    out = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in video[:frames]])
    return out.astype(np.float32) / 127.5 - 1.0
