"""No-reference temporal metrics in VBench's definitions, computed offline with OpenCV.

- temporal_flickering (exact formula): mean over adjacent frame pairs of (255 - mean|F_t - F_t+1|) / 255.
- dynamic_degree (proxy: DIS optical flow instead of RAFT): frames sampled at ~8 fps
  (interval round(fps / 8)); per pair the mean of the top 5 % flow magnitudes; the video is
  dynamic if at least round(4 * n_sampled / 16) pairs exceed 6 * min(H, W) / 256.
- motion_smoothness (proxy: DIS-flow interpolation instead of AMT-S): the odd frames are dropped
  and rebuilt from their even neighbours; score (255 - mean|F_odd - F_hat|) / 255.
- subject_consistency / background_consistency (proxies: low-level features instead of DINO /
  CLIP): VBench's formula s_i = (max(0, sim(f_i-1, f_i)) + max(0, sim(f_0, f_i))) / 2 averaged
  over i >= 1, with sim = luma SSIM (subject) and coarse-scale luma SSIM (background).
"""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from .fidelity import ssim_frame
from .video import gray_u8, luma


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal flickering of uint8 frames `(T, H, W, 3)`: 1.0 for a static video."""
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(frames.shape[0] - 1, -1).mean(1)
    return float(np.mean((255.0 - diffs) / 255.0))


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS optical flow (OpenCV, medium preset) from RGB uint8 frame a to b: `(H, W, 2)` float32 pixels."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(gray_u8(a), gray_u8(b), None)


def dynamic_degree(frames: np.ndarray, fps: float) -> Dict[str, float]:
    """VBench's dynamic-degree rule with DIS flow on uint8 frames `(T, H, W, 3)` at `fps`.

    Returns {"dynamic": 0/1, "flow_score": mean top-5 % magnitude, "pairs_over", "needed", "threshold",
    "interval"}. Unlike VBench we floor `interval` and `needed` at 1: its round() gives 0 below
    4 fps (a crash) and for fewer than 3 sampled frames (every such video counted dynamic).
    """
    interval = max(1, int(round(fps / 8.0)))
    sampled = frames[::interval]
    h, w = frames.shape[1:3]
    thres = 6.0 * min(h, w) / 256.0
    needed = max(1, int(round(4 * len(sampled) / 16.0)))
    tops: List[float] = []
    for a, b in zip(sampled[:-1], sampled[1:]):
        mag = np.linalg.norm(dis_flow(a, b), axis=-1).ravel()
        k = max(1, int(len(mag) * 0.05))
        tops.append(float(np.mean(np.partition(mag, -k)[-k:])))
    over = int(sum(t > thres for t in tops))
    return {"dynamic": float(over >= needed), "flow_score": float(np.mean(tops)) if tops else 0.0,
            "pairs_over": float(over), "needed": float(needed), "threshold": thres, "interval": float(interval)}


def _warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `frame` at x + flow(x) (bilinear, border replicate)."""
    import cv2

    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(frame, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def motion_smoothness(frames: np.ndarray) -> float:
    """Proxy of VBench's motion smoothness: rebuild each odd frame halfway between its neighbours."""
    errs = []
    for i in range(1, frames.shape[0] - 1, 2):
        prev, nxt = frames[i - 1], frames[i + 1]
        flow = dis_flow(prev, nxt)  # prev -> next; at the midpoint, prev sits half a flow back
        mid = 0.5 * (_warp(prev, -0.5 * flow).astype(np.float64) + _warp(nxt, 0.5 * flow).astype(np.float64))
        errs.append(np.mean(np.abs(np.rint(mid) - frames[i].astype(np.float64))))
    if not errs:
        raise ValueError(f"motion smoothness needs at least 3 frames, got {frames.shape[0]}")
    return float((255.0 - np.mean(errs)) / 255.0)


def _first_and_previous(n: int, sim: Callable[[int, int], float]) -> float:
    return float(np.mean([(max(0.0, sim(i - 1, i)) + max(0.0, sim(0, i))) / 2.0 for i in range(1, n)]))


def subject_consistency_proxy(frames: np.ndarray) -> float:
    """VBench's first/previous-frame formula with luma SSIM as the similarity."""
    y = luma(frames)
    return _first_and_previous(len(y), lambda a, b: ssim_frame(y[a], y[b]))


def background_consistency_proxy(frames: np.ndarray, short_side: int = 32) -> float:
    """VBench's first/previous-frame formula with coarse-scale luma SSIM as the similarity.

    Frames are area-downscaled so the short side is `short_side` px: what survives is the large-scale
    layout, which the background dominates, while small moving subjects are averaged away.
    """
    import cv2

    y = luma(frames)
    h, w = y.shape[1:]
    s = min(1.0, short_side / min(h, w))
    size = (max(11, round(w * s)), max(11, round(h * s)))
    small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in y]
    return _first_and_previous(len(small), lambda a, b: ssim_frame(small[a], small[b]))
