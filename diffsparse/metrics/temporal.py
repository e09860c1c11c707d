"""No-reference temporal metrics in VBench's definitions; the flow-based ones take any flow.

- temporal_flickering (exact formula): mean over adjacent frame pairs of (255 - mean|F_t - F_t+1|) / 255.
- dynamic_degree (VBench's DynamicDegree rule): frames sampled every max(1, round(fps / 8)); per sampled pair
  the mean of the top 5 % flow magnitudes; dynamic if at least round(4 * n_sampled / 16) pairs exceed
  6 * min(H, W) / 256 px. Exact with RAFT (exact.py), proxy with OpenCV DIS flow (`dis_magnitude`).
- static_filter (VBench's StaticFilter, which selects the videos of its temporal_flickering prompts): every
  adjacent pair plus first->last and last->first; top 2 % mean magnitude; static unless more than
  round(2 * T / 16) adjacent pairs exceed 3 * min(H, W) / 256 px, or a loop pair exceeds that threshold times
  2 * round(2 * T / 16).
- motion_smoothness (proxy of VBench's AMT-S rule): the odd frames are rebuilt from their even neighbours by
  bidirectional flow splatting (`interpolate_midpoint`); score (255 - mean|F_odd - F_hat|) / 255.
- subject_consistency / background_consistency (proxies: low-level features instead of DINO /
  CLIP): VBench's formula s_i = (max(0, sim(f_i-1, f_i)) + max(0, sim(f_0, f_i))) / 2 averaged
  over i >= 1, with sim = luma SSIM (subject) and coarse-scale luma SSIM (background).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np

from .fidelity import ssim_frame
from .video import gray_u8, luma

Magnitude = Callable[[np.ndarray, np.ndarray], np.ndarray]


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal flickering of uint8 frames `(T, H, W, 3)`: 1.0 for a static video."""
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).reshape(frames.shape[0] - 1, -1).mean(1)
    return float(np.mean((255.0 - diffs) / 255.0))


#: OpenCV's DIS crashes (segfault) on images with a side under 16 px: smaller frames are padded up to this size
DIS_MIN_SIDE = 32


def _dis(a: np.ndarray, b: np.ndarray, init: np.ndarray = None) -> np.ndarray:
    """DIS optical flow (OpenCV, medium preset) from gray uint8 a to b, optionally starting from `init`."""
    import cv2

    h, w = a.shape
    ph, pw = max(0, DIS_MIN_SIDE - h), max(0, DIS_MIN_SIDE - w)
    if ph or pw:  # replicate-pad tiny frames, then crop the flow back
        a, b = (cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REPLICATE) for x in (a, b))
        if init is not None:
            init = cv2.copyMakeBorder(np.array(init, np.float32), 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(a, b, None if init is None else np.array(init, np.float32, order="C"))
    return flow[:h, :w]


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS optical flow (OpenCV, medium preset) from RGB uint8 frame a to b: `(H, W, 2)` float32 pixels."""
    return _dis(gray_u8(a), gray_u8(b))


def dis_magnitude(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|DIS flow| from RGB uint8 frame a to b, float32 `(H, W)` (the proxy for RAFT's)."""
    f = dis_flow(a, b)
    return np.sqrt(np.square(f[..., 0]) + np.square(f[..., 1]))


def top_mean(rad: np.ndarray, fraction: float) -> float:
    """VBench's score of a flow magnitude map: mean of the int(h * w * fraction) largest values (at least one)."""
    h, w = rad.shape
    k = max(1, int(h * w * fraction))
    return float(np.mean(np.abs(np.sort(-rad.ravel()))[:k]))


class PairFlows:
    """Top-5 % and top-2 % flow scores of frame pairs (i, j) of one video; each pair's flow is computed once, so
    the dynamic-degree rule and the static filter share their common pairs."""

    def __init__(self, frames: np.ndarray, magnitude: Magnitude = dis_magnitude) -> None:
        self.frames, self.magnitude = frames, magnitude
        self._cache: Dict[Tuple[int, int], Tuple[float, float]] = {}

    def scores(self, i: int, j: int) -> Tuple[float, float]:
        if (i, j) not in self._cache:
            rad = self.magnitude(self.frames[i], self.frames[j])
            self._cache[(i, j)] = (top_mean(rad, 0.05), top_mean(rad, 0.02))
        return self._cache[(i, j)]


def dynamic_degree(frames: np.ndarray, fps: float, flows: PairFlows = None) -> Dict[str, float]:
    """VBench's dynamic-degree rule on uint8 frames `(T, H, W, 3)` at `fps` (flow: `flows`, DIS by default).

    Returns {"dynamic": 0/1, "flow_score": mean top-5 % magnitude over the sampled pairs, "pairs_over",
    "needed", "threshold", "interval"}. Like VBench, `needed` = round(4 * n_sampled / 16) is 0 for fewer than
    3 sampled frames, and then any video with a pair counts as dynamic.
    """
    flows = flows or PairFlows(frames)
    interval = max(1, int(round(fps / 8.0)))  # VBench: max(1, round(fps / 8)), Python's round (half to even)
    idx = list(range(0, frames.shape[0], interval))
    h, w = frames.shape[1:3]
    thres = 6.0 * min(h, w) / 256.0
    needed = int(round(4 * (len(idx) / 16.0)))
    tops = [flows.scores(i, j)[0] for i, j in zip(idx[:-1], idx[1:])]
    over = int(sum(t > thres for t in tops))
    dynamic = bool(tops) and over >= needed  # VBench returns True as soon as the count reaches `needed`
    return {"dynamic": float(dynamic), "flow_score": float(np.mean(tops)) if tops else 0.0,
            "pairs_over": float(over), "needed": float(needed), "threshold": thres, "interval": float(interval)}


def static_filter(frames: np.ndarray, flows: PairFlows = None) -> Dict[str, float]:
    """VBench's StaticFilter decision on uint8 frames `(T, H, W, 3)` (every frame, no fps sampling).

    Returns {"static": 0/1, "pairs_over": adjacent pairs over `threshold`, "allowed", "threshold",
    "loop_scores": [first->last, last->first], "loop_threshold"}.
    """
    flows = flows or PairFlows(frames)
    n = frames.shape[0]
    h, w = frames.shape[1:3]
    thres = 3.0 * min(h, w) / 256.0
    allowed = int(round(2 * (n / 16.0)))
    adjacent = [flows.scores(i, i + 1)[1] for i in range(n - 1)]
    loop = [flows.scores(0, n - 1)[1], flows.scores(n - 1, 0)[1]]
    over = int(sum(s > thres for s in adjacent))
    static = over <= allowed and all(s <= thres * allowed * 2 for s in loop)
    return {"static": float(static), "pairs_over": float(over), "allowed": float(allowed), "threshold": thres,
            "loop_scores": [float(s) for s in loop], "loop_threshold": thres * allowed * 2}


# ----------------------------------------------------------------------------- motion smoothness proxy
def _grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def phase_translations(a: np.ndarray, b: np.ndarray, k: int = 3) -> List[Tuple[float, float]]:
    """The k strongest global translations (dx, dy) with b(x) ~ a(x - d): peaks of the phase correlation of
    gray frames (Hann window), each refined to sub-pixel by a 3x3 centroid."""
    import cv2

    h, w = a.shape
    win = cv2.createHanningWindow((w, h), cv2.CV_64F)
    fa, fb = np.fft.fft2(a.astype(np.float64) * win), np.fft.fft2(b.astype(np.float64) * win)
    cross = fb * np.conj(fa)
    surface = np.fft.fftshift(np.real(np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12))))
    peak = (surface == cv2.dilate(surface, np.ones((5, 5), np.uint8))) & (surface > 0)
    ys, xs = np.nonzero(peak)
    out = []
    for i in np.argsort(-surface[ys, xs])[:k]:
        y, x = ys[i], xs[i]
        y0, y1, x0, x1 = max(y - 1, 0), min(y + 2, h), max(x - 1, 0), min(x + 2, w)
        p = np.clip(surface[y0:y1, x0:x1], 0, None)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out.append((float((p * xx).sum() / p.sum() - w // 2), float((p * yy).sum() / p.sum() - h // 2)))
    return out


def _best_flow(src: np.ndarray, dst: np.ndarray, candidates: List[np.ndarray], win: int = 7):
    """Per pixel of `src`, the candidate flow with the lowest local colour error |src(p) - dst(p + f(p))|
    (box window `win`, counting only samples inside `dst`; where none is, the candidate's mean error over the
    frame). Returns (flow `(H, W, 2)`, error `(H, W)`)."""
    import cv2

    h, w = src.shape[:2]
    gx, gy = _grid(h, w)
    s, d = src.astype(np.float32), dst.astype(np.float32)
    best_e = np.full((h, w), np.inf, np.float32)
    best_f = np.zeros((h, w, 2), np.float32)
    for f in candidates:
        x, y = gx + f[..., 0], gy + f[..., 1]
        inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).astype(np.float32)
        warped = cv2.remap(d, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        e = np.abs(s - warped).mean(-1) * inside
        num = cv2.boxFilter(e, -1, (win, win), normalize=False, borderType=cv2.BORDER_CONSTANT)
        den = cv2.boxFilter(inside, -1, (win, win), normalize=False, borderType=cv2.BORDER_CONSTANT)
        mean_err = e.sum() / inside.sum() if inside.any() else np.inf
        cost = np.where(den > 0.5, num / np.maximum(den, 1e-6), mean_err)
        better = cost < best_e
        best_e = np.where(better, cost, best_e)
        best_f = np.where(better[..., None], f, best_f)
    return best_f, best_e


def _splat(img: np.ndarray, flow: np.ndarray, weight: np.ndarray, acc: np.ndarray) -> None:
    """Forward-splat `img` (H, W, C) by `flow` with bilinear kernels times `weight` into acc (H*W, C+1)."""
    h, w = img.shape[:2]
    gx, gy = _grid(h, w)
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    vals = np.concatenate([img.reshape(h * w, -1).astype(np.float64), np.ones((h * w, 1))], 1)
    for dx, dy, bw in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        keep = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (bw > 0)).ravel()
        idx = (yi * w + xi).ravel()[keep]
        wt = (bw * weight).ravel()[keep]
        for c in range(vals.shape[1]):
            acc[:, c] += np.bincount(idx, wt * vals[keep, c], minlength=h * w)


def interpolate_midpoint(prev: np.ndarray, nxt: np.ndarray, tau: float = 4.0) -> np.ndarray:
    """The frame halfway between RGB uint8 frames `prev` and `nxt`, float64 `(H, W, 3)`.

    1. Candidate flows per direction: zero, the three strongest global translations (phase correlation), DIS
       from zero and DIS started from the strongest translation (so large pans are found on any frame size).
    2. Per source pixel the candidate that best maps it onto the other frame (`_best_flow`), and its error.
    3. Both frames are forward-splatted half-way along their flows, each pixel weighted 1 / (1 + (err / tau)^2):
       a pixel that has no match in the other frame (about to be covered) gives way to one that has, and
       pixels that leave through the border or appear from behind an object come from the one frame that has
       them. Holes (nothing lands) are filled by normalised Gaussian blur of the splats.
    """
    import cv2

    ga, gb = gray_u8(prev), gray_u8(nxt)
    h, w = ga.shape
    zero = np.zeros((h, w, 2), np.float32)
    shifts = [np.broadcast_to(np.array(t, np.float32), (h, w, 2)) for t in phase_translations(ga, gb)]
    fwd = [zero, *shifts, _dis(ga, gb)] + ([_dis(ga, gb, shifts[0])] if shifts else [])
    bwd = [zero, *[-s for s in shifts], _dis(gb, ga)] + ([_dis(gb, ga, -shifts[0])] if shifts else [])
    f01, e01 = _best_flow(prev, nxt, fwd)
    f10, e10 = _best_flow(nxt, prev, bwd)
    acc = np.zeros((h * w, 4))
    _splat(prev, 0.5 * f01, 1.0 / (1.0 + (e01 / tau) ** 2), acc)
    _splat(nxt, 0.5 * f10, 1.0 / (1.0 + (e10 / tau) ** 2), acc)
    num, den = acc[:, :3].reshape(h, w, 3), acc[:, 3].reshape(h, w)
    hole = den < 1e-3
    if hole.any():
        for k in (3, 7, 15, 31, 63):
            n2, d2 = cv2.GaussianBlur(num, (k, k), 0), cv2.GaussianBlur(den, (k, k), 0)
            if (d2[hole] > 1e-6).all():
                break
        num, den = np.where(hole[..., None], n2, num), np.where(hole, d2, den)
    average = 0.5 * (prev.astype(np.float64) + nxt.astype(np.float64))
    return np.where((den > 1e-9)[..., None], num / np.maximum(den, 1e-9)[..., None], average)


def motion_smoothness(frames: np.ndarray) -> float:
    """Proxy of VBench's motion smoothness: rebuild each odd frame from its even neighbours
    (`interpolate_midpoint`, rounded to 8 bits) and score (255 - mean |F_odd - F_hat|) / 255."""
    errs = []
    for i in range(1, frames.shape[0] - 1, 2):
        mid = interpolate_midpoint(frames[i - 1], frames[i + 1])
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
