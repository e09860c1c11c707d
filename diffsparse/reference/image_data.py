"""Procedural captioned still images for the reference image model (FLUX architecture).

One coloured shape at one of five places on a plain or striped background, with a caption::

    a red square in the top left on a striped background
    a white triangle in the centre on a plain background

Colours, shapes and backgrounds are those of the video grammar (`data.py`), drawn the same way, so the
two models share a vocabulary and the OpenCV checker. The place is what makes an image prompt spatial:
the model has to put the object in the named quarter, which the checker measures from its centroid.
About 1 in 8 (colour, shape, place) combinations are held out of training (compositional test set).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from . import data as D

# place -> centre in fractions of (width, height); the object stays inside its quarter of the frame
PLACES: Dict[str, Tuple[float, float]] = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "centre": (0.5, 0.5),
}


@dataclass(frozen=True)
class ImageSpec:
    color: str
    shape: str
    place: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} in the {self.place} on a {self.background} background"

    def to_dict(self) -> dict:
        return asdict(self)


def all_specs() -> List[ImageSpec]:
    return [ImageSpec(c, s, p, b) for c in D.COLORS for s in D.SHAPES for p in PLACES for b in D.BACKGROUNDS]


def is_held_out(spec: ImageSpec) -> bool:
    return zlib.crc32(f"{spec.color}|{spec.shape}|{spec.place}".encode()) % 8 == 0


def train_specs() -> List[ImageSpec]:
    return [s for s in all_specs() if not is_held_out(s)]


def held_out_specs() -> List[ImageSpec]:
    return [s for s in all_specs() if is_held_out(s)]


def parse_caption(caption: str) -> ImageSpec:
    """Inverse of `ImageSpec.caption` (raises ValueError for text outside the grammar)."""
    text = caption.strip().lower()
    for spec in all_specs():
        if spec.caption == text:
            return spec
    raise ValueError(f"caption not in the image grammar: {caption!r}")


def render_image(spec: ImageSpec, seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """`(height, width, 3)` uint8 RGB image for `spec`, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    size = min(height, width)
    r = rng.uniform(0.12, 0.17) * size
    fx, fy = PLACES[spec.place]
    cx = (fx + rng.uniform(-0.05, 0.05)) * width
    cy = (fy + rng.uniform(-0.05, 0.05)) * height
    angle = rng.uniform(0, 2 * math.pi)
    period = rng.uniform(0.14, 0.22) * width
    color = np.clip(np.array(D.COLORS[spec.color], np.float64) * rng.uniform(0.9, 1.05), 0, 255)
    img = np.empty((height, width, 3), np.uint8)
    D.draw_background(img, spec.background, rng.uniform(0, period), period)
    D.draw_shape(img, spec.shape, cx, cy, r, angle, color)
    return img


def sample(index: int, seed: int = 0, held_out: bool = False, **kwargs) -> Tuple[np.ndarray, str, ImageSpec]:
    """The `index`-th sample of the stream with base `seed`: (image, caption, spec)."""
    pool = held_out_specs() if held_out else train_specs()
    rng = np.random.default_rng([seed, index, 1])
    spec = pool[int(rng.integers(len(pool)))]
    return render_image(spec, int(rng.integers(2**31)), **kwargs), spec.caption, spec


def vocabulary() -> List[str]:
    words = set(D.vocabulary()) | {"in", "the"}
    for place in PLACES:
        words.update(place.split())
    return sorted(words)
