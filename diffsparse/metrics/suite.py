"""The metric suite: which implementation each metric gets, per-video scores and the JSON result."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .exact import ExactMetrics, weights_root
from .fidelity import psnr, ssim
from .temporal import (
    background_consistency_proxy,
    dynamic_degree,
    motion_smoothness,
    subject_consistency_proxy,
    temporal_flickering,
)
from .video import load_video, to_uint8

# name -> (better, needs a reference). Fidelity metrics compare with the reference; the others
# score each video on its own and are reported for candidate and reference.
METRICS: Dict[str, Tuple[str, bool]] = {
    "psnr": ("higher", True),
    "ssim": ("higher", True),
    "lpips": ("lower", True),
    "subject_consistency": ("higher", False),
    "background_consistency": ("higher", False),
    "temporal_flickering": ("higher", False),
    "motion_smoothness": ("higher", False),
    "dynamic_degree": ("info", False),  # more motion is neither better nor worse; compare with dense
    "aesthetic_quality": ("higher", False),
    "imaging_quality": ("higher", False),
}
#: what stands in for VBench's model when a metric runs as a proxy
STAND_INS = {
    "subject_consistency": "luma SSIM instead of DINO ViT-B/16 features",
    "background_consistency": "coarse-scale (short side 32 px) luma SSIM instead of CLIP ViT-B/32 features",
    "dynamic_degree": "OpenCV DIS optical flow instead of RAFT",
    "motion_smoothness": "DIS-flow midpoint interpolation instead of AMT-S",
}
Video = Union[str, np.ndarray, Any]


def plan(exact: ExactMetrics) -> Dict[str, Tuple[str, Optional[str]]]:
    """name -> (impl, reason) for this weight folder; decided before any video is scored."""
    out: Dict[str, Tuple[str, Optional[str]]] = {}
    for name in METRICS:
        if name in ("psnr", "ssim", "temporal_flickering"):
            out[name] = ("exact", None)  # closed-form definitions, no model
        elif exact.available(name):
            out[name] = ("exact", None)
        elif name in STAND_INS:
            out[name] = ("proxy", f"{STAND_INS[name]}; exact: {exact.reason(name)}")
        else:
            out[name] = ("skipped", exact.reason(name))
    return out


def _load(v: Video, fps: Optional[float]) -> Tuple[np.ndarray, float]:
    if isinstance(v, str):
        frames, file_fps = load_video(v)
        return frames, fps or file_fps
    frames = to_uint8(v)
    if frames.shape[0] < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames.shape[0]}")
    return frames, fps or 8.0


def _no_reference(frames: np.ndarray, fps: float, impl: Dict[str, Tuple[str, Optional[str]]],
                  exact: ExactMetrics) -> Dict[str, Any]:
    """Value of every no-reference metric on one uint8 video `(T, H, W, 3)` (None when skipped)."""
    dyn = dynamic_degree(frames, fps)
    out: Dict[str, Any] = {
        "temporal_flickering": temporal_flickering(frames),
        "dynamic_degree": dyn["dynamic"],
        "dynamic_degree_detail": dyn,
        "motion_smoothness": motion_smoothness(frames) if len(frames) >= 3 else None,
        "imaging_quality": None,
        "aesthetic_quality": exact.aesthetic_quality(frames) if impl["aesthetic_quality"][0] == "exact" else None,
    }
    for name, proxy in (("subject_consistency", subject_consistency_proxy),
                        ("background_consistency", background_consistency_proxy)):
        out[name] = getattr(exact, name)(frames) if impl[name][0] == "exact" else proxy(frames)
    return out


def evaluate_pair(candidate: Video, reference: Optional[Video] = None, *, fps: Optional[float] = None,
                  exact: Optional[ExactMetrics] = None, name: str = "video") -> Dict[str, Any]:
    """Per-video record: {"id", "frames", "size", "fps", metric: value, "<metric>_reference": value, ...}.

    `candidate` / `reference`: file paths or frames `(T, H, W, 3)` (uint8, or float in [0, 1]) of equal shape.
    """
    exact = exact or ExactMetrics()
    impl = plan(exact)
    cand, fps_c = _load(candidate, fps)
    rec: Dict[str, Any] = {"id": name, "frames": int(cand.shape[0]), "size": [int(cand.shape[1]), int(cand.shape[2])],
                           "fps": fps_c}
    rec.update(_no_reference(cand, fps_c, impl, exact))
    if reference is None:
        return rec
    ref, _ = _load(reference, fps)
    if ref.shape != cand.shape:
        raise ValueError(f"{name}: candidate {cand.shape} and reference {ref.shape} differ in shape")
    for k, v in _no_reference(ref, fps_c, impl, exact).items():
        rec[k + "_reference"] = v
    p = psnr(cand, ref)
    rec["psnr"], rec["identical"] = p, p is None
    rec["ssim"] = ssim(cand, ref)
    rec["lpips"] = exact.lpips(cand, ref) if impl["lpips"][0] == "exact" else None
    return rec


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate(pairs: Sequence[Tuple[Video, Optional[Video]]], *, fps: Optional[float] = None,
             weights_dir: Optional[str] = None, names: Optional[Sequence[str]] = None,
             run: Optional[Dict[str, Any]] = None, device: str = "cpu") -> Dict[str, Any]:
    """Evaluate (candidate, reference or None) pairs; returns the JSON-ready result.

    {"metrics": {name: {"value", "impl", "reason", "better", "reference"?, "identical"?, "weights"?}},
     "per_video": [record per pair], "run": {...}}. No-reference metrics: `value` is the candidates'
    mean and `reference` the references' mean. Fidelity: mean over videos (PSNR over non-identical ones).
    """
    exact = ExactMetrics(weights_dir, device=device)
    impl = plan(exact)
    per_video = [evaluate_pair(c, r, fps=fps, exact=exact, name=(names[i] if names else f"video{i}"))
                 for i, (c, r) in enumerate(pairs)]
    has_ref = bool(pairs) and all(r is not None for _, r in pairs)
    metrics: Dict[str, Any] = {}
    for name, (better, needs_ref) in METRICS.items():
        kind, reason = impl[name]
        entry: Dict[str, Any] = {"value": None, "impl": kind, "reason": reason, "better": better}
        if needs_ref and not has_ref:
            entry.update(impl="skipped", reason="needs a reference video (--reference)")
        elif kind != "skipped":
            entry["value"] = _mean(v[name] for v in per_video)
            if name == "psnr":
                entry["identical"] = all(v["identical"] for v in per_video)
                entry["convention"] = "MSE pooled over frames, pixels and RGB per video; mean over non-identical videos"
            if not needs_ref and has_ref:
                entry["reference"] = _mean(v[name + "_reference"] for v in per_video)
            if kind == "exact" and name in exact.files:
                entry["weights"] = exact.provenance(name)
        metrics[name] = entry
    run = dict(run or {}, n_videos=len(per_video), weights_root=str(weights_root(weights_dir)))
    return {"metrics": metrics, "per_video": per_video, "run": run}


def format_table(result: Dict[str, Any]) -> str:
    """metric | candidate | reference | delta | better-is | impl, proxies marked with `*`."""
    def num(x: Any, identical: bool = False) -> str:
        return f"{x:.4f}" if isinstance(x, float) else ("identical" if identical else "-")

    rows: List[Tuple[str, ...]] = [("metric", "candidate", "reference", "delta", "better-is", "impl")]
    notes = []
    for name, m in result["metrics"].items():
        value, ref = m.get("value"), m.get("reference")
        delta = f"{value - ref:+.4f}" if isinstance(value, float) and isinstance(ref, float) else ""
        impl = m["impl"] + ("*" if m["impl"] == "proxy" else "")
        rows.append((name, num(value, bool(m.get("identical"))), num(ref), delta, m["better"], impl))
        if m["impl"] == "skipped":
            notes.append(f"  {name}: skipped, {m['reason']}")
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["* proxy: VBench's formula on an offline stand-in (see docs/metrics.md); "
                              "compare dense vs sparse with it, not with published VBench numbers"] + notes)
