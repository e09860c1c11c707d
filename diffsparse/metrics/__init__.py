"""Offline video quality: VBench-style scores and fidelity against a reference (e.g. dense).

    from diffsparse.metrics import evaluate, format_table
    result = evaluate([("radial.mp4", "dense.mp4")])        # or arrays (T, H, W, 3), or (video, None)
    result["metrics"]["psnr"]                               # {"value", "impl", "reason", "better", ...}
    print(format_table(result))

Every metric carries `impl`: "exact" (VBench's definition with its model or formula), "proxy"
(VBench's formula on an offline stand-in: DIS optical flow, flow-splatting interpolation, SSIM) or
"skipped", and a `reason` (the stand-in and why the exact path is unavailable: a missing, refused or
unloadable weight file, or a missing optional package). See docs/metrics.md.

Modules: video (loading, uint8), fidelity (PSNR, SSIM), temporal (flicker, VBench's flow rules, proxies),
models + exact (learned metrics from verified local weights), thirdparty (VBench's RAFT / AMT-S and
pyiqa's MUSIQ from the optional packages), suite (the JSON result and the table).
"""

from .exact import KNOWN_SHA256, ExactMetrics, WeightsRefused, weights_root
from .fidelity import psnr, ssim
from .suite import METRICS, evaluate, evaluate_pair, format_table, plan
from .temporal import (
    background_consistency_proxy,
    dynamic_degree,
    interpolate_midpoint,
    motion_smoothness,
    static_filter,
    subject_consistency_proxy,
    temporal_flickering,
)
from .video import load_video, to_uint8

__all__ = ["METRICS", "KNOWN_SHA256", "ExactMetrics", "WeightsRefused", "evaluate", "evaluate_pair", "format_table",
           "plan", "load_video", "psnr", "ssim", "temporal_flickering", "dynamic_degree", "static_filter",
           "motion_smoothness", "interpolate_midpoint", "subject_consistency_proxy", "background_consistency_proxy",
           "to_uint8", "weights_root"]
