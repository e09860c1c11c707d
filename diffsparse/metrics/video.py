"""Video arrays for the metrics: loading files and normalising to uint8 `(T, H, W, 3)`."""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")


def to_uint8(video) -> np.ndarray:
    """Frames as uint8 `(T, H, W, 3)`: accepts uint8/integer (0..255), float in [0, 1], torch tensors, gray `(T, H, W)`."""
    if hasattr(video, "detach"):
        video = video.detach().cpu().numpy()
    v = np.asarray(video)
    if v.ndim == 3:
        v = np.repeat(v[..., None], 3, axis=-1)
    if v.ndim != 4 or v.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected a video (T, H, W, 3), got shape {v.shape}")
    if v.shape[-1] == 1:
        v = np.repeat(v, 3, axis=-1)
    v = v[..., :3]
    if np.issubdtype(v.dtype, np.integer):
        v = np.clip(v, 0, 255).astype(np.uint8)  # integer frames are already on the 8-bit scale
    elif v.dtype != np.uint8:
        v = np.clip(np.rint(v.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(v)


#: ffmpeg's start-up banner (version, build, configuration, library versions), which imageio-ffmpeg puts into its
#: error messages ahead of ffmpeg's actual complaint
_FFMPEG_BANNER = ("ffmpeg version", "built with", "configuration:", "libav", "libsw", "libpostproc")


def reader_error(err: BaseException) -> str:
    """One line for a failed video read: imageio's message, and for an ffmpeg failure (imageio-ffmpeg appends the
    subprocess's whole stderr after `=== stderr ===`) ffmpeg's last line without its banner."""
    head, _, stderr = str(err).partition("=== stderr ===")
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    message = lines[0] if lines else type(err).__name__
    said = [line for line in (raw.strip() for raw in stderr.splitlines()) if line and not line.startswith(_FFMPEG_BANNER)]
    if said:
        message += f" (ffmpeg: {said[-1]})"
    return message


def load_video(path: str) -> Tuple[np.ndarray, float]:
    """(uint8 frames `(T, H, W, 3)`, fps) of a video file; clear errors for missing/unreadable files."""
    import imageio.v3 as iio

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path!r}")
    try:
        frames = iio.imread(path, index=None)
        meta = iio.immeta(path)
    except Exception as e:  # imageio raises many types; name the file
        raise ValueError(f"cannot read video {path!r}: {reader_error(e)}") from e
    fps = float(meta.get("fps") or (1000.0 / meta["duration"] if meta.get("duration") else 8.0))
    frames = to_uint8(frames)
    if frames.shape[0] < 2:
        raise ValueError(f"video {path!r} has {frames.shape[0]} frame(s); the metrics need at least 2")
    return frames, fps


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB frames, float64 `(T, H, W)` in [0, 255]."""
    f = frames.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def gray_u8(frame: np.ndarray) -> np.ndarray:
    """One RGB uint8 frame -> gray uint8 (for OpenCV optical flow)."""
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
