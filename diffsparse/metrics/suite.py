"""The metric suite: which implementation each metric gets, per-video scores and the JSON result."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .exact import MIN_SIDE, MODEL_NAMES, ExactMetrics, weights_root
from .fidelity import psnr, ssim
from .temporal import (
    PairFlows,
    background_consistency_proxy,
    dis_magnitude,
    dynamic_degree,
    motion_smoothness,
    static_filter,
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
    "motion_smoothness": "bidirectional flow-splatting interpolation (DIS + phase correlation) instead of AMT-S",
}
#: VBench averages these over all frame pairs of all videos (sum of pair scores / number of pairs)
POOLED = ("subject_consistency", "background_consistency")
STATIC_FILTER_STAND_IN = "VBench's static filter with OpenCV DIS optical flow instead of RAFT"
Video = Union[str, np.ndarray, Any]


def plan(exact: ExactMetrics) -> Dict[str, Tuple[str, Optional[str]]]:
    """name -> (impl, reason) for this weight folder; decided before any video is scored.

    Besides the metrics, "static_filter" says how VBench's static filter (temporal_flickering's video
    selection) runs: with RAFT ("exact") or DIS flow ("proxy")."""
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
    out["static_filter"] = (("exact", None) if out["dynamic_degree"][0] == "exact" else
                            ("proxy", f"{STATIC_FILTER_STAND_IN}; exact: {exact.reason('dynamic_degree')}"))
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
    """Value of every no-reference metric on one uint8 video `(T, H, W, 3)` (None when skipped).

    "fallbacks" lists the exact metrics that this video was too small for (`exact.MIN_SIDE`): they used the proxy.
    """
    fallbacks = [m for m in MIN_SIDE if impl[m][0] == "exact" and not exact.fits(m, frames)]
    raft = impl["dynamic_degree"][0] == "exact" and "dynamic_degree" not in fallbacks
    flows = PairFlows(frames, exact.raft_magnitude if raft else dis_magnitude)
    dyn = dict(dynamic_degree(frames, fps, flows), flow="raft" if raft else "dis")
    static = dict(static_filter(frames, flows), flow="raft" if raft else "dis")
    smooth = None
    if len(frames) >= 3:
        amt = impl["motion_smoothness"][0] == "exact" and "motion_smoothness" not in fallbacks
        smooth = exact.motion_smoothness(frames) if amt else motion_smoothness(frames)
    out: Dict[str, Any] = {
        "fallbacks": fallbacks,
        "temporal_flickering": temporal_flickering(frames),
        "static": static["static"],
        "static_filter_detail": static,
        "dynamic_degree": dyn["dynamic"],
        "dynamic_degree_detail": dyn,
        "motion_smoothness": smooth,
        "imaging_quality": exact.imaging_quality(frames) if impl["imaging_quality"][0] == "exact" else None,
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
    Also "static" (VBench's static filter, 0/1) with "static_filter_detail", and "dynamic_degree_detail".
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


def _pooled(per_video: List[Dict[str, Any]], key: str) -> Optional[float]:
    """VBench's pooling of a first/previous-frame score: sum over all videos' frame pairs / number of pairs
    (each per-video value is the mean over its frames - 1 pairs)."""
    pairs = [(v[key], v["frames"] - 1) for v in per_video if v.get(key) is not None]
    n = sum(c for _, c in pairs)
    return float(sum(s * c for s, c in pairs) / n) if n else None


def _aggregate(per_video: List[Dict[str, Any]], name: str, suffix: str = "") -> Optional[float]:
    return _pooled(per_video, name + suffix) if name in POOLED else _mean(v[name + suffix] for v in per_video)


def _static_only(per_video: List[Dict[str, Any]], suffix: str) -> Tuple[Optional[float], int]:
    kept = [v["temporal_flickering" + suffix] for v in per_video if v["static" + suffix]]
    return _mean(kept), len(kept)


def evaluate(pairs: Sequence[Tuple[Video, Optional[Video]]], *, fps: Optional[float] = None,
             weights_dir: Optional[str] = None, names: Optional[Sequence[str]] = None,
             run: Optional[Dict[str, Any]] = None, device: str = "cpu") -> Dict[str, Any]:
    """Evaluate (candidate, reference or None) pairs; returns the JSON-ready result.

    {"metrics": {name: {"value", "impl", "reason", "better", "reference"?, "identical"?, "weights"?, ...}},
     "per_video": [record per pair], "run": {...}}. No-reference metrics: `value` aggregates the candidates and
    `reference` the references as VBench does: subject/background consistency pooled over all frame pairs of
    all videos, the others the mean of the per-video scores. Fidelity: mean over videos (PSNR over
    non-identical ones). Extra fields: temporal_flickering's "static_only" (mean over the videos that VBench's
    static filter keeps) and "static_filter"; dynamic_degree's "flow_score" (mean top-5 % flow, px) and
    "threshold"; "precision" for the CLIP metrics.
    """
    exact = ExactMetrics(weights_dir, device=device)
    impl = plan(exact)
    per_video = [evaluate_pair(c, r, fps=fps, exact=exact, name=(names[i] if names else f"video{i}"))
                 for i, (c, r) in enumerate(pairs)]
    has_ref = bool(pairs) and all(r is not None for _, r in pairs)
    for name in MIN_SIDE:  # videos too small for RAFT / AMT-S used the proxy: the aggregate is then a proxy too
        small = sum(name in v["fallbacks"] or name in v.get("fallbacks_reference", ()) for v in per_video)
        if small:
            why = (f"{small} video(s) smaller than {MIN_SIDE[name]} px a side used the proxy "
                   f"({MODEL_NAMES[name]}'s correlation pyramid gives NaN there, in VBench too): {STAND_INS[name]}")
            impl[name] = ("proxy", why)
            if name == "dynamic_degree":
                impl["static_filter"] = ("proxy", why.replace(STAND_INS[name], STATIC_FILTER_STAND_IN))
    metrics: Dict[str, Any] = {}
    for name, (better, needs_ref) in METRICS.items():
        kind, reason = impl[name]
        entry: Dict[str, Any] = {"value": None, "impl": kind, "reason": reason, "better": better}
        if needs_ref and not has_ref:
            entry.update(impl="skipped", reason="needs a reference video (--reference)")
        elif kind != "skipped":
            entry["value"] = _aggregate(per_video, name)
            if name == "psnr":
                entry["identical"] = all(v["identical"] for v in per_video)
                entry["convention"] = "MSE pooled over frames, pixels and RGB per video; mean over non-identical videos"
            if not needs_ref and has_ref:
                entry["reference"] = _aggregate(per_video, name, "_reference")
            if name in POOLED:
                entry["pooling"] = "all frame pairs of all videos (VBench)"
            if name in exact.files and exact.available(name):  # also when small videos fell back to the proxy
                entry["weights"] = exact.provenance(name)
            if kind == "exact" and exact.precision(name):
                entry["precision"] = exact.precision(name)
        if name == "temporal_flickering":
            f_kind, f_reason = impl["static_filter"]
            entry["static_filter"] = {"impl": f_kind, "reason": f_reason}
            if exact.available("dynamic_degree"):
                entry["static_filter"]["weights"] = exact.provenance("dynamic_degree")
            entry["static_only"], entry["static_videos"] = _static_only(per_video, "")
            if has_ref:
                entry["static_only_reference"], entry["static_videos_reference"] = _static_only(per_video, "_reference")
        if name == "dynamic_degree":
            details = [v["dynamic_degree_detail"] for v in per_video]
            entry["flow_score"] = _mean(d["flow_score"] for d in details)
            if has_ref:
                entry["flow_score_reference"] = _mean(v["dynamic_degree_detail_reference"]["flow_score"]
                                                      for v in per_video)
            thresholds = sorted({d["threshold"] for d in details})
            entry["threshold"] = thresholds[0] if len(thresholds) == 1 else thresholds
        metrics[name] = entry
    run = dict(run or {}, n_videos=len(per_video), weights_root=str(weights_root(weights_dir)), device=device)
    return {"metrics": metrics, "per_video": per_video, "run": run}


def format_table(result: Dict[str, Any]) -> str:
    """metric | candidate | reference | delta | better-is | impl, proxies marked with `*`.

    Indented sub-rows: dynamic_degree's mean flow score (px) next to its 0/1 decision, and temporal_flickering
    over the videos that VBench's static filter keeps."""
    def num(x: Any, identical: bool = False) -> str:
        return f"{x:.4f}" if isinstance(x, float) else ("identical" if identical else "-")

    def mark(kind: str) -> str:
        return kind + ("*" if kind == "proxy" else "")

    def delta(a: Any, b: Any) -> str:
        return f"{a - b:+.4f}" if isinstance(a, float) and isinstance(b, float) else ""

    rows: List[Tuple[str, ...]] = [("metric", "candidate", "reference", "delta", "better-is", "impl")]
    notes = []
    for name, m in result["metrics"].items():
        value, ref = m.get("value"), m.get("reference")
        rows.append((name, num(value, bool(m.get("identical"))), num(ref), delta(value, ref), m["better"],
                     mark(m["impl"])))
        if name == "dynamic_degree" and m["impl"] != "skipped":
            thr = m.get("threshold")
            label = f"  flow score px (thr {thr:.2f})" if isinstance(thr, float) else "  flow score px"
            a, b = m.get("flow_score"), m.get("flow_score_reference")
            rows.append((label, num(a), num(b), delta(a, b), "info", mark(m["impl"])))
        if name == "temporal_flickering" and "static_filter" in m:
            a, b = m.get("static_only"), m.get("static_only_reference")
            n = result.get("run", {}).get("n_videos", "?")
            kept = f"{m.get('static_videos', 0)}" + (f"|{m['static_videos_reference']}"
                                                      if "static_videos_reference" in m else "")
            rows.append((f"  static videos only ({kept} of {n})", num(a), num(b), delta(a, b), m["better"],
                         mark(m["static_filter"]["impl"])))
        if m["impl"] == "skipped":
            notes.append(f"  {name}: skipped, {m['reason']}")
        if m.get("precision") and "fp32" in m["precision"]:
            notes.append(f"  {name}: {m['precision']}")
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    footer = ["* proxy: VBench's formula on an offline stand-in (see docs/metrics.md); "
              "compare dense vs sparse with it, not with published VBench numbers",
              "  dynamic_degree is 0/1 per video: a flow score near its threshold can flip with lossy encoding"]
    return "\n".join(lines + footer + notes)
