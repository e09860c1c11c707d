"""Full-reference fidelity of a video against a reference (e.g. sparse vs dense): PSNR and SSIM."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .video import luma


def psnr(candidate: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """PSNR in dB with the MSE pooled over all frames, pixels and RGB channels (uint8 range).

    Identical videos have infinite PSNR: returns None (reported as `null` with `identical: true`).
    """
    _same_shape(candidate, reference)
    mse = float(np.mean((candidate.astype(np.float64) - reference.astype(np.float64)) ** 2))
    if mse == 0.0:
        return None
    return 10.0 * np.log10(255.0**2 / mse)


def ssim_frame(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two gray images `(H, W)` in [0, 255] (Wang et al. 2004).

    Gaussian window sigma 1.5 truncated at 11x11, K1 = 0.01, K2 = 0.03, L = 255, population
    (co)variances, mean over the pixels where the full window fits (no border padding).
    """
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {a.shape}")
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of the luma SSIM (`ssim_frame`) of uint8 RGB videos `(T, H, W, 3)`."""
    _same_shape(candidate, reference)
    yc, yr = luma(candidate), luma(reference)
    return float(np.mean([ssim_frame(yc[t], yr[t]) for t in range(yc.shape[0])]))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"candidate {a.shape} and reference {b.shape} differ in shape; compare renders of one setting")
