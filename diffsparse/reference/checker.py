"""An OpenCV prompt checker for the synthetic domain of `data.py`.

Given a video (F, H, W, 3) uint8 RGB it finds the shape (pixels that are not background grey),
and predicts:

- colour: nearest palette colour (in RGB) of the median shape pixel;
- shape: vertex count of the polygon approximation of the largest blob in the middle frame;
- motion: from the track of the blob (centroid and area over frames), with the horizontal
  background motion (registration of column profiles between frames) subtracted, so a camera
  pan does not read as object motion; "moving X" when net displacement is large, "growing" when the
  area grows, "bouncing" when the vertical position goes down-up without net displacement,
  "rotating" otherwise (present, roughly static).

Run on ground-truth data it should agree with the captions almost always (see `selftest`).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from . import data as D
from . import image_data as I


def shape_mask(frame: np.ndarray) -> np.ndarray:
    """Bool mask of non-background pixels: saturated colours, or bright near-white."""
    import cv2

    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    s, v = hsv[..., 1].astype(np.int32), hsv[..., 2].astype(np.int32)
    return ((s > 90) & (v > 90)) | ((v > 185) & (s < 60))


def _largest_blob(mask: np.ndarray):
    import cv2

    m = mask.astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == i, float(stats[i, cv2.CC_STAT_AREA]), cents[i]


def predict_color(video: np.ndarray) -> Optional[str]:
    pix = [f[shape_mask(f)] for f in video]
    pix = np.concatenate([p for p in pix if len(p)], 0) if any(len(p) for p in pix) else np.zeros((0, 3))
    if len(pix) < 4:
        return None
    med = np.median(pix.astype(np.float64), axis=0)
    names = list(D.COLORS)
    ref = np.array([D.COLORS[n] for n in names], np.float64)
    return names[int(np.argmin(((ref - med) ** 2).sum(1)))]


def predict_shape(video: np.ndarray) -> Optional[str]:
    import cv2

    votes: Dict[str, int] = {}
    for f in video[len(video) // 4: 3 * len(video) // 4 + 1]:
        blob = _largest_blob(shape_mask(f))
        if blob is None or blob[1] < 12:
            continue
        m = blob[0].astype(np.uint8)
        # upsample for a smoother contour
        m = cv2.resize(m * 255, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
        cnts, _ = cv2.findContours((m > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not cnts:
            continue
        c = max(cnts, key=cv2.contourArea)
        area, per = cv2.contourArea(c), cv2.arcLength(c, True)
        if per <= 0:
            continue
        hull = cv2.convexHull(c)
        # fill ratio of the minimum enclosing triangle / rectangle / circle separates the three shapes
        _, tri = cv2.minEnclosingTriangle(hull)
        rect = cv2.minAreaRect(hull)
        (_, _), rad = cv2.minEnclosingCircle(hull)
        fills = {
            "triangle": area / max(cv2.contourArea(tri), 1e-6),
            "square": area / max(rect[1][0] * rect[1][1], 1e-6),
            "circle": area / max(np.pi * rad * rad, 1e-6),
        }
        # a circle also fills its bounding square well (pi/4): prefer circle when its own fill is high
        if fills["circle"] > 0.86:
            best = "circle"
        else:
            best = max(fills, key=fills.get)
        votes[best] = votes.get(best, 0) + 1
    return max(votes, key=votes.get) if votes else None


def _profile(frame: np.ndarray) -> np.ndarray:
    import cv2

    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)
    m = ~shape_mask(frame)
    cnt = m.sum(0)
    prof = (g * m).sum(0) / np.maximum(cnt, 1)
    prof[cnt < 3] = np.nan
    return prof


def _background_dx(video: np.ndarray, max_shift: int = 4) -> float:
    """Total horizontal background motion (pixels) over the clip: registration of consecutive frames'
    column profiles (shape pixels excluded), sub-pixel by a parabola through the best shift."""
    total = 0.0
    profs = [_profile(f) for f in video]
    for p, q in zip(profs[:-1], profs[1:]):
        if np.nanstd(p) < 5:  # plain background: no pan measurable (and none in the data)
            return 0.0
        errs = []
        for d in range(-max_shift, max_shift + 1):
            a = p[max_shift: len(p) - max_shift]
            b = q[max_shift + d: len(q) - max_shift + d]
            ok = ~(np.isnan(a) | np.isnan(b))
            errs.append(np.mean((a[ok] - b[ok]) ** 2) if ok.sum() > 8 else np.inf)
        errs = np.array(errs)
        i = int(np.argmin(errs))
        off = 0.0
        if 0 < i < len(errs) - 1 and np.isfinite(errs[i - 1]) and np.isfinite(errs[i + 1]):
            den = errs[i - 1] - 2 * errs[i] + errs[i + 1]
            off = 0.5 * (errs[i - 1] - errs[i + 1]) / den if den > 0 else 0.0
        total += (i - max_shift) + off
    return total


def predict_motion(video: np.ndarray) -> Optional[str]:
    f_, h, w = video.shape[:3]
    track = []
    for f in video:
        blob = _largest_blob(shape_mask(f))
        track.append(None if blob is None or blob[1] < 6 else (blob[2][0], blob[2][1], blob[1]))
    pts = [p for p in track if p is not None]
    if len(pts) < max(3, f_ // 2):
        return None
    xs, ys, areas = (np.array([p[k] for p in pts]) for k in range(3))
    n = max(1, len(pts) // 4)
    a0, a1 = areas[:n].mean(), areas[-n:].mean()
    dx = xs[-n:].mean() - xs[:n].mean() - _background_dx(video)
    dy = ys[-n:].mean() - ys[:n].mean()
    if a1 > 1.8 * a0:
        return "grow"
    path_y = float(np.abs(np.diff(ys)).sum())
    if abs(dx) < 0.15 * w and ys.max() - ys.min() > 0.12 * h and path_y > 1.5 * abs(dy) + 0.05 * h:
        return "bounce"
    if max(abs(dx), abs(dy)) > 0.15 * min(h, w):
        if abs(dx) > abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"
    return "rotate"


def check(video: np.ndarray, caption: str) -> Dict[str, object]:
    """Predictions and agreement with `caption` (a caption from the grammar)."""
    spec = D.parse_caption(caption)
    pred = {"color": predict_color(video), "shape": predict_shape(video), "motion": predict_motion(video)}
    return {
        "caption": caption, **{f"pred_{k}": v for k, v in pred.items()},
        "color_ok": pred["color"] == spec.color, "shape_ok": pred["shape"] == spec.shape,
        "motion_ok": pred["motion"] == spec.motion,
    }


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 RGB frames (Gaussian window 7, sigma 1.5), computed here with OpenCV."""
    import cv2

    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda t: cv2.GaussianBlur(t, (7, 7), 1.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def adjacent_ssim(video: np.ndarray) -> float:
    return float(np.mean([ssim(a, b) for a, b in zip(video[:-1], video[1:])]))


def selftest(n: int = 200, seed: int = 123, kind: str = "video", **kwargs) -> Dict[str, float]:
    """Agreement of the checker with ground-truth samples of `kind` ("video" or "image"), held-out specs included;
    `kwargs` go to the renderer (num_frames / height / width)."""
    specs, render, check_fn, keys = {
        "video": (D.all_specs(), D.render_video, check, ("color", "shape", "motion")),
        "image": (I.all_specs(), I.render_image, check_image, ("color", "shape", "place")),
    }[kind]
    rng = np.random.default_rng(seed)
    res = dict.fromkeys(keys, 0)
    for _ in range(n):
        spec = specs[int(rng.integers(len(specs)))]
        r = check_fn(render(spec, int(rng.integers(2**31)), **kwargs), spec.caption)
        for k in keys:
            res[k] += int(r[f"{k}_ok"])
    return {k: v / n for k, v in res.items()}


def predict_place(image: np.ndarray) -> Optional[str]:
    """Which of the image grammar's places (`image_data.PLACES`) the largest blob's centroid is nearest to."""
    blob = _largest_blob(shape_mask(image))
    if blob is None or blob[1] < 6:
        return None
    h, w = image.shape[:2]
    x, y = blob[2][0] / w, blob[2][1] / h
    return min(I.PLACES, key=lambda p: (I.PLACES[p][0] - x) ** 2 + (I.PLACES[p][1] - y) ** 2)


def check_image(image: np.ndarray, caption: str) -> Dict[str, object]:
    """Predictions for an `(H, W, 3)` uint8 RGB image and agreement with `caption` (image grammar)."""
    spec = I.parse_caption(caption)
    pred = {"color": predict_color(image[None]), "shape": predict_shape(image[None]), "place": predict_place(image)}
    return {"caption": caption, **{f"pred_{k}": v for k, v in pred.items()},
            **{f"{k}_ok": pred[k] == getattr(spec, k) for k in pred}}
