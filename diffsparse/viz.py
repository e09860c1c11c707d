"""Pictures of block layouts (for `diffsparse show-mask`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def mask_image(mask: torch.Tensor, title: str, max_side: int = 900, text_blocks: Optional[int] = None) -> np.ndarray:
    """RGB uint8 picture of a bool block mask `(nq, nk)`: kept blocks light, skipped dark, title on top.

    `text_blocks` (if given) tints the first key/query block index of the text span, to show the text sink.
    """
    import cv2

    m = mask.detach().to("cpu", torch.bool).numpy()
    nq, nk = m.shape
    cell = max(1, min(max_side // max(nq, nk), 32))
    img = np.where(m[..., None], np.array([235, 200, 80], np.uint8), np.array([30, 30, 40], np.uint8))
    if text_blocks is not None:
        img[text_blocks:, :][m[text_blocks:, :]] = (120, 200, 255)
        img[:, text_blocks:][m[:, text_blocks:]] = (120, 200, 255)
    img = np.kron(img, np.ones((cell, cell, 1), np.uint8))
    if cell >= 4:  # grid lines between blocks
        img[::cell, :, :] = img[::cell, :, :] // 2
        img[:, ::cell, :] = img[:, ::cell, :] // 2
    header = np.full((48, max(img.shape[1], 640), 3), 255, np.uint8)
    for i, line in enumerate(_wrap(title, header.shape[1] // 9)):
        cv2.putText(header, line, (6, 18 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    body = np.full((img.shape[0], header.shape[1], 3), 255, np.uint8)
    body[:, : img.shape[1]] = img
    return np.concatenate([header, body], axis=0)


def heads_image(masks: torch.Tensor, title: str, max_side: int = 1400) -> np.ndarray:
    """Per-head bool masks `(H, nq, nk)` side by side (a gap between heads), each head's density
    under its tile, one title on top."""
    import cv2

    H = masks.shape[0]
    tile = max(64, max_side // H - 8)
    tiles = []
    for h in range(H):
        nq, nk = masks.shape[1:]
        width = max(1, min(tile // max(nq, nk), 32)) * nk  # mask_image's cell size x blocks
        img = mask_image(masks[h], "", max_side=tile)[48:, :width]  # without the header and padding
        img = np.concatenate([img, np.full((20, img.shape[1], 3), 255, np.uint8)], 0)
        cv2.putText(img, f"h{h} {float(masks[h].float().mean()):.2f}", (2, img.shape[0] - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([img, np.full((img.shape[0], 8, 3), 255, np.uint8)], 1))
    body = np.concatenate(tiles, 1)
    header = np.full((48, max(body.shape[1], 640), 3), 255, np.uint8)
    for i, line in enumerate(_wrap(title, header.shape[1] // 9)):
        cv2.putText(header, line, (6, 18 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out = np.full((body.shape[0], header.shape[1], 3), 255, np.uint8)
    out[:, : body.shape[1]] = body
    return np.concatenate([header, out], 0)


def _wrap(text: str, width: int):
    words, line, lines = text.split(), "", []
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return lines[:2]


def save_png(image: np.ndarray, path: str) -> None:
    import cv2

    if not cv2.imwrite(path, image[..., ::-1]):
        raise OSError(f"could not write {path!r}")


def label(frames: np.ndarray, text: str) -> np.ndarray:
    """Frames `(T, H, W, 3)` in [0, 1] with `text` written in the top-left corner (a copy)."""
    import cv2

    out = np.ascontiguousarray((np.clip(frames, 0, 1) * 255).round().astype(np.uint8))  # putText needs uint8
    scale = max(0.3, out.shape[2] / 400)
    for f in out:
        cv2.putText(f, text, (4, int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0
