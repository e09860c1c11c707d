"""Procedural captioned videos and images for the reference models (no files, deterministic by seed).

Every sample is one coloured shape on a background, moving in one of a few ways, optionally with a
camera pan, and a caption from a small grammar::

    a red square moving left on a striped background
    a blue circle bouncing on a plain background, camera panning right

Frames are uint8 RGB arrays drawn with OpenCV at any size; positions, sizes and speeds are given in
fractions of the frame, so the same spec renders at 64x64 or 128x128 with the same content.
A caption fixes the *kind* of content; the seed picks positions, sizes and speeds.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, asdict
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

COLORS: Dict[str, Tuple[int, int, int]] = {  # RGB
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle")
MOTIONS: Dict[str, str] = {  # motion key -> caption phrase
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "bounce": "bouncing",
    "rotate": "rotating",
    "grow": "growing",
}
BACKGROUNDS = ("plain", "striped")
PANS = ("left", "right")
# direction of image-space motion (dx, dy) per unit, y down
DIRECTIONS: Dict[str, Tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

BG_PLAIN = (30, 30, 34)
STRIPE_A = (60, 60, 66)
STRIPE_B = (110, 110, 118)


@dataclass(frozen=True)
class Spec:
    """Everything that defines one sample."""

    color: str
    shape: str
    motion: str
    background: str
    pan: Optional[str] = None

    @property
    def caption(self) -> str:
        text = f"a {self.color} {self.shape} {MOTIONS[self.motion]} on a {self.background} background"
        if self.pan:
            text += f", camera panning {self.pan}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def all_specs(with_pan: bool = True) -> List[Spec]:
    specs = []
    for c in COLORS:
        for s in SHAPES:
            for m in MOTIONS:
                for b in BACKGROUNDS:
                    specs.append(Spec(c, s, m, b))
                    if with_pan and b == "striped":
                        for p in PANS:
                            specs.append(Spec(c, s, m, b, p))
    return specs


def is_held_out(spec: Spec) -> bool:
    """About 1 in 8 (colour, shape, motion) combinations never appear in training (compositional test set)."""
    key = f"{spec.color}|{spec.shape}|{spec.motion}"
    return zlib.crc32(key.encode()) % 8 == 0


def train_specs() -> List[Spec]:
    return [s for s in all_specs() if not is_held_out(s)]


def held_out_specs() -> List[Spec]:
    return [s for s in all_specs() if is_held_out(s)]


def parse_caption(caption: str) -> Spec:
    """Inverse of `Spec.caption` (for captions from the grammar; raises ValueError otherwise)."""
    text = caption.strip().lower()
    pan = None
    if ", camera panning " in text:
        text, pan = text.split(", camera panning ")
    for c in COLORS:
        for s in SHAPES:
            for m, phrase in MOTIONS.items():
                for b in BACKGROUNDS:
                    if text == f"a {c} {s} {phrase} on a {b} background":
                        return Spec(c, s, m, b, pan)
    raise ValueError(f"caption not in the grammar: {caption!r}")


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == "square":
        angles = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        rr = r * math.sqrt(2) * 0.85
    else:  # triangle
        angles = [angle - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        rr = r * 1.15
    return np.array([[cx + rr * math.cos(a), cy + rr * math.sin(a)] for a in angles])


def draw_background(img: np.ndarray, background: str, offset: float, stripe_period: float) -> None:
    h, w = img.shape[:2]
    if background == "plain":
        img[:] = BG_PLAIN
        return
    xs = np.arange(w, dtype=np.float32) - offset
    # soft-edged vertical stripes (anti-aliased so sub-pixel pans stay smooth)
    phase = (xs / stripe_period) % 1.0
    t = np.clip((np.abs(phase - 0.5) - 0.25) * stripe_period * 0.5 + 0.5, 0.0, 1.0)  # 1 -> A, 0 -> B
    a, b = np.array(STRIPE_A, np.float32), np.array(STRIPE_B, np.float32)
    row = t[:, None] * a + (1 - t[:, None]) * b
    img[:] = np.broadcast_to(row[None], (h, w, 3)).astype(np.uint8)


def draw_shape(img: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, color) -> None:
    """Draw a filled, anti-aliased `shape` of radius `r` (pixels) centred at (cx, cy) into `img` in place."""
    import cv2

    scale = 4  # sub-pixel precision for cv2 drawing (2 fractional bits)
    rgb = tuple(float(v) for v in color)
    if shape == "circle":
        cv2.circle(img, (int(round(cx * scale)), int(round(cy * scale))), int(round(r * scale)), rgb, -1,
                   cv2.LINE_AA, 2)
    else:
        pts = np.round(_shape_points(shape, cx, cy, r, angle) * scale).astype(np.int32)
        cv2.fillPoly(img, [pts], rgb, cv2.LINE_AA, 2)


def render_video(spec: Spec, seed: int, num_frames: int = 17, height: int = 64, width: int = 64,
                 trail: int = 0) -> np.ndarray:
    """`(num_frames, height, width, 3)` uint8 RGB video for `spec`, deterministic in `seed`.

    `trail` > 0 draws that many fading copies of the shape where it was 1.5, 3, ... frames earlier (a motion
    trail, extrapolated before the first frame), so a single frame shows which way the shape is going."""
    rng = np.random.default_rng(seed)
    size = min(height, width)
    r0 = rng.uniform(0.11, 0.16) * size
    # motion over the clip, in pixels; speed such that the whole clip travels ~35-50% of the frame
    travel = rng.uniform(0.35, 0.5) * size
    cx0, cy0 = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    if spec.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[spec.motion]
        # start on the side we move away from
        cx0 = width / 2 - dx * travel / 2 + rng.uniform(-0.08, 0.08) * width
        cy0 = height / 2 - dy * travel / 2 + rng.uniform(-0.08, 0.08) * height
    angle0 = rng.uniform(0, 2 * math.pi)
    spin = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0) * math.pi  # radians over the clip
    bounce_h = rng.uniform(0.25, 0.35) * height
    bounces = rng.choice([1.0, 1.5])
    stripe_period = rng.uniform(0.14, 0.22) * width
    stripe_off = rng.uniform(0, stripe_period)
    pan_px = rng.uniform(0.25, 0.4) * width
    color = np.array(COLORS[spec.color], np.float64)
    color = np.clip(color * rng.uniform(0.9, 1.05), 0, 255)

    def pose(t: float):
        """(image x, image y, radius, angle, camera offset) of the shape at clip time t in [0, 1]."""
        cx, cy, r, ang = cx0, cy0, r0, angle0
        if spec.motion in DIRECTIONS:
            dx, dy = DIRECTIONS[spec.motion]
            cx, cy = cx0 + dx * travel * t, cy0 + dy * travel * t
        elif spec.motion == "bounce":
            cy = height * 0.72 - bounce_h * abs(math.sin(math.pi * bounces * t))
            cx = cx0
        elif spec.motion == "rotate":
            ang = angle0 + spin * t
            r = r0 * 1.25
        elif spec.motion == "grow":
            r = r0 * (0.55 + 1.0 * t)
        cam = 0.0
        if spec.pan:
            # camera moving right => world (background and shape) moves left in the image
            cam = (1 if spec.pan == "right" else -1) * pan_px * (t - 0.5)
        return cx - cam, cy, r, ang, cam

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    dt = 1.0 / max(num_frames - 1, 1)
    for f in range(num_frames):
        x, y, r, ang, cam = pose(f * dt)
        img = np.empty((height, width, 3), np.uint8)
        draw_background(img, spec.background, stripe_off - cam, stripe_period)
        for k in range(trail, 0, -1):  # oldest copy first, each fainter than the one after it
            gx, gy, gr, gang, _ = pose((f - 1.5 * k) * dt)
            if gr < 0.5:  # a growing shape extrapolated back past its start has no size
                continue
            ghost = img.copy()
            draw_shape(ghost, spec.shape, gx, gy, gr, gang, color)
            a = 0.45 * (1 - k / (trail + 1))
            img = np.round(img * (1 - a) + ghost * a).astype(np.uint8)
        draw_shape(img, spec.shape, x, y, r, ang, color)
        frames[f] = img
    return frames


OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}


def time_reversed(spec: Spec) -> Optional[Spec]:
    """The spec whose clips are `spec`'s clips played backwards, or None where that is no caption of the grammar.

    A translation backwards is the opposite translation (it starts on the side the forward clip ends on, as
    `render_video` starts every translation), and a pan backwards is the opposite pan; bouncing, rotating and
    growing have no reversed caption (growing backwards is shrinking)."""
    if spec.motion not in OPPOSITE_DIRECTION:
        return None
    pan = OPPOSITE_DIRECTION[spec.pan] if spec.pan else None  # pans are "left" / "right" too
    return Spec(spec.color, spec.shape, OPPOSITE_DIRECTION[spec.motion], spec.background, pan)


def sample(index: int, seed: int = 0, held_out: bool = False, **kwargs) -> Tuple[np.ndarray, str, Spec]:
    """The `index`-th sample of the stream with base `seed`: (video, caption, spec)."""
    pool = held_out_specs() if held_out else train_specs()
    rng = np.random.default_rng([seed, index])
    spec = pool[int(rng.integers(len(pool)))]
    vid_seed = int(rng.integers(2**31))
    return render_video(spec, vid_seed, **kwargs), spec.caption, spec


def stream(seed: int = 0, start: int = 0, **kwargs) -> Iterator[Tuple[np.ndarray, str, Spec]]:
    i = start
    while True:
        yield sample(i, seed, **kwargs)
        i += 1


def vocabulary() -> List[str]:
    """Every word the grammar can produce (the text encoder's vocabulary, special tokens excluded)."""
    words = {"a", "on", "background", "camera", "panning", ","}
    words.update(COLORS)
    words.update(SHAPES)
    words.update(BACKGROUNDS)
    words.update(PANS)
    for phrase in MOTIONS.values():
        words.update(phrase.split())
    return sorted(words)
