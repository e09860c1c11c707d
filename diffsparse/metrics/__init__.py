"""Offline video quality: VBench-style scores and fidelity against a reference (e.g. dense).

    from diffsparse.metrics import evaluate, format_table
    result = evaluate([("radial.mp4", "dense.mp4")])        # or arrays (T, H, W, 3), or (video, None)
    result["metrics"]["psnr"]                               # {"value", "impl", "reason", "better", ...}
    print(format_table(result))

Every metric carries `impl`: "exact" (VBench's definition with its model or formula), "proxy"
(VBench's formula on an offline stand-in: DIS optical flow, SSIM) or "skipped", and a `reason`
(the stand-in and the missing weight file, or why it was skipped). See docs/metrics.md.

Modules: video (loading, uint8), fidelity (PSNR, SSIM), temporal (flicker, flow-based proxies),
models + exact (learned metrics from local weights), suite (the JSON result and the table).
"""

from .exact import ExactMetrics, weights_root
from .fidelity import psnr, ssim
from .suite import METRICS, evaluate, evaluate_pair, format_table, plan
from .temporal import (
    background_consistency_proxy,
    dynamic_degree,
    motion_smoothness,
    subject_consistency_proxy,
    temporal_flickering,
)
from .video import load_video, to_uint8

__all__ = ["METRICS", "ExactMetrics", "evaluate", "evaluate_pair", "format_table", "plan", "load_video", "psnr",
           "ssim", "temporal_flickering", "dynamic_degree", "motion_smoothness", "subject_consistency_proxy",
           "background_consistency_proxy", "to_uint8", "weights_root"]
