"""Offline video quality: VBench-style scores and fidelity against a reference (e.g. dense).

    from diffsparse.metrics import evaluate
    result = evaluate([("radial.mp4", "dense.mp4")])        # or arrays (T, H, W, 3), or (video, None)
    result["metrics"]["psnr"]                               # {"value", "impl", "better", ...}

Every metric carries `impl`: "exact" (VBench's definition with its model or formula), "proxy"
(VBench's formula on an offline stand-in: DIS optical flow, SSIM, colour histograms) or
"skipped" (with the reason, e.g. the missing weight file). See docs/metrics.md.
"""

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
    "dynamic_degree": ("info", False),
    "aesthetic_quality": ("higher", False),
    "imaging_quality": ("higher", False),
}
Video = Union[str, np.ndarray, Any]


def _load(v: Video, fps: Optional[float]) -> Tuple[np.ndarray, float]:
    if isinstance(v, str):
        frames, file_fps = load_video(v)
        return frames, fps or file_fps
    frames = to_uint8(v)
    if frames.shape[0] < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames.shape[0]}")
    return frames, fps or 8.0


def _no_reference(frames: np.ndarray, fps: float, exact: ExactMetrics) -> Dict[str, Tuple[Optional[float], str]]:
    """(value, impl) of every no-reference metric on one video."""
    out = {
        "temporal_flickering": (temporal_flickering(frames), "exact"),
        "dynamic_degree": (dynamic_degree(frames, fps)["dynamic"], "proxy"),
        "motion_smoothness": (motion_smoothness(frames), "proxy") if len(frames) >= 3 else (None, "skipped"),
        "imaging_quality": (None, "skipped"),
    }
    for name, proxy in (("subject_consistency", subject_consistency_proxy),
                        ("background_consistency", background_consistency_proxy)):
        out[name] = (getattr(exact, name)(frames), "exact") if exact.available(name) else (proxy(frames), "proxy")
    out["aesthetic_quality"] = (exact.aesthetic_quality(frames), "exact") if exact.available("aesthetic_quality") else (None, "skipped")
    return out


def evaluate_pair(candidate: Video, reference: Optional[Video] = None, *, fps: Optional[float] = None,
                  exact: Optional[ExactMetrics] = None, name: str = "video") -> Dict[str, Any]:
    """Per-video record: {"id", metric: value, "<metric>_reference": value, "<metric>_impl": impl}."""
    exact = exact or ExactMetrics()
    cand, fps_c = _load(candidate, fps)
    rec: Dict[str, Any] = {"id": name, "frames": int(cand.shape[0]), "size": [int(cand.shape[1]), int(cand.shape[2])],
                           "fps": fps_c}
    for k, (v, impl) in _no_reference(cand, fps_c, exact).items():
        rec[k], rec[k + "_impl"] = v, impl
    if reference is None:
        return rec
    ref, _ = _load(reference, fps)
    if ref.shape != cand.shape:
        raise ValueError(f"{name}: candidate {cand.shape} and reference {ref.shape} differ in shape")
    for k, (v, _) in _no_reference(ref, fps_c, exact).items():
        rec[k + "_reference"] = v
    p = psnr(cand, ref)
    rec["psnr"], rec["psnr_impl"], rec["identical"] = p, "exact", p is None
    rec["ssim"], rec["ssim_impl"] = ssim(cand, ref), "exact"
    rec["lpips"], rec["lpips_impl"] = (exact.lpips(cand, ref), "exact") if exact.available("lpips") else (None, "skipped")
    return rec


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate(pairs: Sequence[Tuple[Video, Optional[Video]]], *, fps: Optional[float] = None,
             weights_dir: Optional[str] = None, names: Optional[Sequence[str]] = None,
             run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Evaluate (candidate, reference or None) pairs; returns the JSON-ready result (see module doc)."""
    exact = ExactMetrics(weights_dir)
    per_video = [evaluate_pair(c, r, fps=fps, exact=exact, name=(names[i] if names else f"video{i}"))
                 for i, (c, r) in enumerate(pairs)]
    has_ref = all(r is not None for _, r in pairs)
    metrics: Dict[str, Any] = {}
    for name, (better, needs_ref) in METRICS.items():
        impls = {v.get(name + "_impl") for v in per_video} - {None}
        entry: Dict[str, Any] = {"better": better}
        if needs_ref and not has_ref:
            entry.update(value=None, impl="skipped", reason="needs --reference")
        elif impls == {"skipped"}:
            entry.update(value=None, impl="skipped", reason=_skip_reason(name, exact))
        else:
            entry.update(value=_mean(v[name] for v in per_video), impl="exact" if impls == {"exact"} else "proxy")
            if name == "psnr" and all(v["identical"] for v in per_video):
                entry["identical"] = True
            if not needs_ref and has_ref:
                entry["reference"] = _mean(v[name + "_reference"] for v in per_video)
            if entry["impl"] == "exact" and name in exact.files:
                entry.update({k: v for k, v in exact.provenance(name).items() if k != "impl"})
        if needs_ref and name == "psnr" and has_ref:
            entry["convention"] = "MSE pooled over frames and RGB per video; mean over non-identical videos"
        metrics[name] = entry
    run = dict(run or {}, n_videos=len(per_video), weights_root=str(weights_root(weights_dir)))
    return {"metrics": metrics, "per_video": per_video, "run": run}


def _skip_reason(name: str, exact: ExactMetrics) -> str:
    if name in exact.files and exact.files[name][1]:
        return exact.files[name][1]
    if name == "imaging_quality":
        return "MUSIQ is not implemented offline; no proxy"
    return "not computed"


def format_table(result: Dict[str, Any]) -> str:
    """metric | candidate | reference | delta | better | impl (proxies marked with *)."""
    rows = [f"{'metric':<24}{'candidate':>11}{'reference':>11}{'delta':>9}  {'better':<7}impl"]
    for name, m in result["metrics"].items():
        def fmt(x):
            return f"{x:11.4f}" if isinstance(x, float) else f"{('identical' if m.get('identical') else '-'):>11}"
        ref = m.get("reference")
        delta = f"{m['value'] - ref:+9.4f}" if isinstance(m.get("value"), float) and isinstance(ref, float) else f"{'':>9}"
        impl = m["impl"] + ("*" if m["impl"] == "proxy" else "")
        rows.append(f"{name:<24}{fmt(m.get('value'))}{fmt(ref) if ref is not None else f'{chr(45):>11}'}{delta}  "
                    f"{m['better']:<7}{impl}" + (f"  ({m['reason']})" if m["impl"] == "skipped" else ""))
    rows.append("* proxy: VBench's formula on an offline stand-in (see docs/metrics.md), not comparable to VBench scores")
    return "\n".join(rows)


__all__ = ["METRICS", "ExactMetrics", "evaluate", "evaluate_pair", "format_table", "load_video", "psnr", "ssim",
           "temporal_flickering", "dynamic_degree", "motion_smoothness", "subject_consistency_proxy",
           "background_consistency_proxy", "to_uint8"]
