"""Quality vs density vs speed for every method's main knob on the reference model: the frontier.

For each length (the render default and a longer one, where sparse attention pays) and each fixed
prompt and seed, the dense video is rendered before and after the sweep (its faster time is the
reference), then every point: a method with options. Per point: density (blocks computed in sparse
calls), DiT seconds and speed-up vs dense in the same run, PSNR and SSIM vs dense, and the
no-reference temporal flickering and motion-smoothness (proxy) scores. Means over the prompts.

    python eval/frontier.py                               # 97 and 161 frames, 2 prompts (~1.5 h on 2 cores)
    python eval/frontier.py --lengths 97 --prompts 1 --points radial,adaspa
    python eval/frontier.py --out eval/results/frontier   # results.json, results.md, two plots

Writes `results.json` (a list of points with `method`, `options`, `frames`, `density`, `speedup`,
`psnr`, `ssim`, ...), `results.md` and `psnr_vs_density.png`, `psnr_vs_speedup.png` (one line per
method and length; needs matplotlib: `pip install -e .[eval]`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64  # the render default's block: a quarter of a 16x16-token frame

#: AdaSpa as the paper runs it: its warm-up (the preset took the static presets' one, dense_layers 1 and
#: dense_steps 0.25) and its LSE-cached search without renormalization (the preset renormalizes)
PAPER_WARMUP = {"dense_layers": 0, "dense_steps": 0.2, "renormalize": False}
#: (method, options) per point; the family preset fills what is left out. The first point of each
#: method is its preset; presets also run with FlashBlock reuse and with INT8 QK^T.
POINTS: List[Tuple[str, Dict[str, Any]]] = [
    ("radial", {}),
    ("radial", {"decay_factor": 0.5}),
    ("radial", {"decay_factor": 1.0}),
    ("radial", {"dense_steps": 0.1}),
    ("radial", {"band": "paper", "block_select": "any"}),
    ("sliding_window", {}),
    ("sliding_window", {"window_tiles": (2, 3, 3)}),
    ("sliding_window", {"tile": (2, 8, 8), "window_tiles": (4, 3, 3)}),
    ("sliding_window", {"tile": (2, 8, 8), "window_tiles": (8, 3, 3)}),
    ("grat", {}),
    ("grat", {"variant": "block", "radius": 1}),
    ("grat", {"group_size": (4, 8, 8)}),
    ("adaspa", {}),
    # with renormalized LSE-cached searches (the preset) more searches help, at the cost of their passes
    ("adaspa", {"search_steps": (0.2, 0.4, 0.6, 0.8)}),
    ("adaspa", {"search_steps": (0.2, 0.4, 0.6, 0.8), "sparsity": 0.7}),
    # the paper's search rule (no renormalization) with the preset's warm-up
    ("adaspa", {"renormalize": False}),
    ("adaspa", {"row_wise": True, "search_steps": (0.25,), "renormalize": False}),
    # the paper's search rule with its own warm-up (no dense layer, a fifth of the steps): the preset before
    # the frontier, and the knobs swept from it
    ("adaspa", dict(PAPER_WARMUP)),
    ("adaspa", {"cache": "flashblock", **PAPER_WARMUP}),
    ("adaspa", {"quantize": "int8", **PAPER_WARMUP}),
    ("adaspa", {"sparsity": 0.5, **PAPER_WARMUP}),
    ("adaspa", {"sparsity": 0.7, **PAPER_WARMUP}),
    ("adaspa", {"sparsity": 0.9, **PAPER_WARMUP}),
    ("adaspa", {"search_steps": (0.2,), **PAPER_WARMUP}),
    ("adaspa", {"search_steps": (0.2, 0.4, 0.6, 0.8), **PAPER_WARMUP}),
    ("adaspa", {"row_wise": True, **PAPER_WARMUP}),
    ("paro", {"density": 0.3}),
    ("paro", {"density": 0.5}),
    ("paro", {"density": 0.3, "dense_steps": 0}),  # no warm-up: the preset before the frontier
    ("paro", {"density": 0.5, "dense_steps": 0}),
]
VARIANTS = {"flashblock": {"cache": "flashblock"}, "int8": {"quantize": "int8"}}


def points(methods: Optional[List[str]] = None, variants: bool = True) -> List[Tuple[str, Dict[str, Any]]]:
    """The sweep: every point of the chosen methods, plus FlashBlock and INT8 rows on each preset."""
    chosen = [(m, o) for m, o in POINTS if methods is None or m in methods]
    out = []
    for method, opts in chosen:
        out.append((method, opts))
        if variants and not opts and method != "paro":
            out += [(method, dict(v)) for v in VARIANTS.values()]
    return out


def label(method: str, opts: Dict[str, Any]) -> str:
    return method + "".join(f" {k}={v}" for k, v in opts.items())


def render(pipe, prompt: str, seed: int, frames: int, method: Optional[str], opts: Dict[str, Any], plan=None):
    from diffsparse import render as R

    options = dict(opts)
    if method == "paro":  # the plan fixes the density and block size; shared options (warm-up) still apply
        options = {"plan": plan, **{k: v for k, v in opts.items() if k != "density"}}
    elif method is not None:
        options.setdefault("block_size", BLOCK)
    return R.render(pipe, method, prompt=prompt, frames=frames, height=128, width=128, steps=16, seed=seed, **options)


def calibrate(pipe, prompt: str, seed: int, frames: int, density: float):
    """A PARO plan made on another prompt and seed than the ones it is scored on."""
    import diffsparse

    with torch.inference_mode():
        return diffsparse.calibrate(pipe, method="paro", density=density, block_size=BLOCK, prompt=prompt,
                                    height=128, width=128, num_frames=frames, num_inference_steps=16,
                                    generator=torch.Generator().manual_seed(seed), output_type="np")


def run(args, on_length=None, done=frozenset()) -> List[Dict[str, Any]]:
    """Every point at every length but the (label, frames) in `done`; `on_length(results)` after each length
    (partial results survive a kill)."""
    from diffsparse import render as R
    from diffsparse.metrics import motion_smoothness, temporal_flickering, to_uint8
    from diffsparse.reference.data import held_out_specs

    specs = held_out_specs()
    prompts = [specs[i * max(1, len(specs) // args.prompts)].caption for i in range(args.prompts)]
    calibration_prompt = specs[len(specs) // 2 + 1].caption
    pipe = R.pipeline_for(None, "cpu")
    pipe.set_progress_bar_config(disable=True)
    sweep = points(args.points.split(",") if args.points else None, not args.no_variants)
    results = []
    for frames in args.lengths:
        todo = [(m, o) for m, o in sweep if (label(m, o), frames) not in done]
        if not todo:
            continue
        plans = {o["density"]: calibrate(pipe, calibration_prompt, 1000, frames, o["density"])
                 for m, o in todo if m == "paro"}
        dense = [render(pipe, p, i, frames, None, {}) for i, p in enumerate(prompts)]
        rows = []
        for method, opts in todo:
            per = []
            for i, prompt in enumerate(prompts):
                res = render(pipe, prompt, i, frames, method, opts, plans.get(opts.get("density")))
                s = res.stats or {}
                eff = (s.get("cache") or {}).get("effective_density")
                per.append(dict(density=s.get("density"), effective=eff, dit=res.dit_seconds,
                                psnr=R.psnr(dense[i].frames, res.frames), ssim=R.ssim(dense[i].frames, res.frames),
                                flicker=temporal_flickering(to_uint8(res.frames)),
                                smooth=motion_smoothness(to_uint8(res.frames))))
            rows.append((method, opts, per))
            print(f"[{frames} frames] {label(method, opts)}: PSNR {np.mean([p['psnr'] for p in per]):.2f}",
                  file=sys.stderr, flush=True)
        again = [render(pipe, p, i, frames, None, {}) for i, p in enumerate(prompts)]
        dense_s = [min(a.dit_seconds, b.dit_seconds) for a, b in zip(dense, again)]
        for method, opts, per in rows:
            def mean(key):  # over prompts; PSNR is None where a video equals dense exactly
                vals = [p[key] for p in per if p[key] is not None]
                return float(np.mean(vals)) if vals else None

            eff = [p["effective"] for p in per if p["effective"] is not None]
            results.append({
                "method": method, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
                "label": label(method, opts), "frames": frames, "density": mean("density"),
                "effective_density": float(np.mean(eff)) if eff else None, "dit_seconds": mean("dit"),
                "speedup": float(np.mean([d / p["dit"] for d, p in zip(dense_s, per)])), "psnr": mean("psnr"),
                "ssim": mean("ssim"), "temporal_flickering": mean("flicker"), "motion_smoothness": mean("smooth"),
                "dense_seconds": float(np.mean(dense_s)), "prompts": prompts,
            })
        if on_length is not None:
            on_length(results)
    return results


def markdown(results: List[Dict[str, Any]], header: List[str]) -> str:
    lines = header + ["", "| frames | point | density | effective | DiT s | speed-up | PSNR dB | SSIM | flickering | "
                          "smoothness* |", "|---" * 10 + "|"]
    for r in results:
        eff = "-" if r["effective_density"] is None else f"{r['effective_density']:.3f}"
        psnr = "identical" if r["psnr"] is None else f"{r['psnr']:.2f}"
        lines.append(f"| {r['frames']} | {r['label']} | {r['density']:.3f} | {eff} | {r['dit_seconds']:.2f} | "
                     f"{r['speedup']:.2f} | {psnr} | {r['ssim']:.4f} | {r['temporal_flickering']:.4f} | "
                     f"{r['motion_smoothness']:.4f} |")
    lines += ["", "density: blocks computed in sparse calls; effective: with FlashBlock's refreshes; speed-up: dense "
              "DiT time / this point's, same prompts and run; PSNR/SSIM vs the dense video (mean over prompts); "
              "`*` a proxy (docs/metrics.md)."]
    return "\n".join(lines)


def _front(pts: List[Tuple[float, float]], lower_x_is_better: bool) -> List[Tuple[float, float]]:
    """The points no other point beats on both x and PSNR, sorted along x."""
    def beats(a, b):
        better_x = a[0] <= b[0] if lower_x_is_better else a[0] >= b[0]
        return better_x and a[1] >= b[1] and a != b
    return sorted(p for p in pts if not any(beats(q, p) for q in pts))


def plots(results: List[Dict[str, Any]], out_dir: str) -> List[str]:
    """PSNR vs density and PSNR vs speed-up: per method and length every point, and a line along its frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shortest = min((r["frames"] for r in results), default=None)
    for x_key, name, xlabel in (("density", "psnr_vs_density.png", "density (blocks computed)"),
                                ("speedup", "psnr_vs_speedup.png", "DiT speed-up vs dense (x)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
        for (method, frames) in sorted({(r["method"], r["frames"]) for r in results}):
            pts = sorted((r[x_key], r["psnr"]) for r in results if r["method"] == method and r["frames"] == frames
                         and "cache" not in r["options"] and "quantize" not in r["options"] and r["psnr"] is not None)
            if pts:  # every point as a marker; the line joins the method's best trade-offs (its frontier)
                best = _front(pts, lower_x_is_better=x_key == "density")
                line = ax.plot([p[0] for p in best], [p[1] for p in best], marker="o", label=f"{method}, {frames} frames",
                               ls="-" if frames == shortest else "--")[0]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=line.get_color(), alpha=0.5)
        if x_key == "speedup":
            ax.axvline(1.0, color="0.7", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR vs dense (dB)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[97, 161], help="frames (4k+1)")
    p.add_argument("--prompts", type=int, default=2, help="held-out captions, seeds 0..N-1")
    p.add_argument("--points", default=None, help="comma list of methods to sweep (default: all)")
    p.add_argument("--no-variants", action="store_true", help="skip the FlashBlock and INT8 rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(ROOT, "eval", "results", "frontier"))
    p.add_argument("--missing", action="store_true",
                   help="measure only the points (and lengths) that --out's results.json lacks; implies --update")
    p.add_argument("--update", action="store_true",
                   help="keep the points of --out's results.json that this run does not measure (each point's "
                        "speed-up stays relative to the dense time of the run that measured it)")
    args = p.parse_args(argv)
    args.update = args.update or args.missing
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    command = measured_by = " ".join(argv if argv is not None else sys.argv[1:])

    kept: List[Dict[str, Any]] = []
    if args.update and os.path.exists(os.path.join(args.out, "results.json")):
        with open(os.path.join(args.out, "results.json")) as f:
            kept = json.load(f)
        for r in kept:  # points of a run before `command` was recorded come from the default sweep
            r.setdefault("command", "python eval/frontier.py")
        command += " (with --update: points of earlier runs kept; each point's `command` in results.json)"

    def write(measured: List[Dict[str, Any]]) -> str:
        for r in measured:
            r.setdefault("command", f"python eval/frontier.py {measured_by}".rstrip())
        new = {(r["label"], r["frames"]) for r in measured}
        order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in POINTS))}
        results = sorted([r for r in kept if (r["label"], r["frames"]) not in new] + measured,
                         key=lambda r: (r["frames"], order.get(r["method"], 99)))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        done = sorted({r["frames"] for r in results})
        header = [f"# Frontier: `python eval/frontier.py {command}`".rstrip(),
                  "", f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
                  f"embedded reference model, 128x128, 16 steps, blocks of {BLOCK}; lengths {done} of {args.lengths} "
                  f"frames; {args.prompts} held-out prompts; wall {time.time() - start:.0f} s; "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
        text = markdown(results, header)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text + "\n")
        try:
            print("wrote", ", ".join(plots(results, args.out)), file=sys.stderr)
        except ImportError:
            print("matplotlib is not installed (pip install -e .[eval]): no plots", file=sys.stderr)
        return text

    done = {(r["label"], r["frames"]) for r in kept} if args.missing else frozenset()
    print(write(run(args, on_length=write, done=done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
