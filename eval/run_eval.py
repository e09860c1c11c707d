"""Evaluation harness: prompts x methods (same seeds) -> quality vs dense and speed, in one folder.

For every prompt it renders dense and each method with the same seed, scores every sparse video
against its dense twin with `diffsparse.metrics` (fidelity: PSNR/SSIM[/LPIPS]; no-reference
VBench-style scores for both), and writes into `eval/results/<run>/`:
`results.json` (everything, per video), `results.md` (the table), `quality_vs_speed.png`
(PSNR vs speed-up, one point per method) and, with `--save-videos`, the mp4s.

    python eval/run_eval.py --run eval_default                     # embedded reference model
    python eval/run_eval.py --model /ckpt/Wan2.1-T2V-1.3B-Diffusers --prompts prompts.txt --run wan13b
    torchrun --nproc_per_node 8 eval/run_eval.py --model /ckpt/... --prompts prompts.txt --run-name wan13b [--ulysses 2]

Under a launcher (torchrun / accelerate launch, any number of nodes) the render jobs, every (prompt, method)
pair including each prompt's dense reference, are split over the ranks exactly as `diffsparse render --prompts`
splits prompts (`diffsparse.batch`: groups of `--ulysses` ranks, job j to group j mod groups); every rank sends
its jobs' frames to rank 0, which scores each sparse video against its prompt's dense one and writes the files,
the same as one process does. DiT times are then measured on different ranks: compare speed-ups from runs
whose ranks have equal hardware and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from typing import Dict, List

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_METHODS = ["radial", "sliding_window", "grat", "adaspa"]
SUMMARY = ["psnr", "ssim", "lpips", "subject_consistency", "background_consistency", "temporal_flickering",
           "motion_smoothness", "dynamic_degree"]


def default_prompts(n: int) -> List[str]:
    """Held-out captions of the reference model's grammar (never seen in training), spread over the set."""
    from diffsparse.reference.data import held_out_specs

    specs = held_out_specs()
    step = max(1, len(specs) // n)
    return [specs[i * step].caption for i in range(n)]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def quality_vs_speed_png(rows: List[Dict], path: str) -> bool:
    """PSNR vs dense (y) against DiT speed-up (x), one labelled point per method (matplotlib: the `eval`
    extra); returns False, writing nothing, when matplotlib is not installed."""
    pts = [(r["method"], r["speedup"], r["psnr"]) for r in rows if r["psnr"] is not None]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.axvline(1.0, color="0.7", lw=1)  # speed-up 1 = dense
    for name, x, y in pts:
        ax.scatter([x], [y], color="tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("DiT speed-up vs dense (x)")
    ax.set_ylabel("PSNR vs dense (dB)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def markdown(rows: List[Dict], metrics: Dict[str, Dict], header: List[str]) -> str:
    lines = header + ["", "| method | density | DiT s | speed-up | " + " | ".join(
        f"{k}{'*' if any(metrics[r['method']][k]['impl'] == 'proxy' for r in rows if r['method'] in metrics) else ''}"
        for k in SUMMARY) + " |", "|---" * (4 + len(SUMMARY)) + "|"]
    for r in rows:
        vals = []
        for k in SUMMARY:
            if r["method"] == "dense":
                ref = next((metrics[m][k].get("reference") for m in metrics), None)
                vals.append("-" if k in ("psnr", "ssim") else (f"{ref:.4f}" if isinstance(ref, float) else "-"))
            else:
                e = metrics[r["method"]][k]
                v = e["value"]
                text = f"{v:.2f}" if k == "psnr" and v is not None else (
                    f"{v:.4f}" if isinstance(v, float) else ("identical" if e.get("identical") else "-"))
                if k == "dynamic_degree" and e.get("flow_score") is not None:  # the 0/1 decision's margin
                    thr = e.get("threshold")
                    text += f" (flow {e['flow_score']:.2f} px, thr {thr:.2f})" if isinstance(thr, float) else \
                        f" (flow {e['flow_score']:.2f} px)"
                vals.append(text)
        d = "-" if r["density"] is None else f"{r['density']:.3f}"
        lines.append(f"| {r['method']} | {d} | {r['dit_s']:.2f} | {r['speedup']:.2f} | " + " | ".join(vals) + " |")
    lines += ["", "PSNR/SSIM/LPIPS: sparse vs the dense render of the same prompt and seed (PSNR: MSE pooled per "
              "video, mean over prompts). No-reference scores: mean over prompts; the dense row is the dense videos' "
              "score. `*` = proxy (VBench's formula on an offline stand-in, see docs/metrics.md), `-` = skipped.", "",
              "How each metric was computed here:", ""]
    first = next(iter(metrics.values()), {})
    for k in SUMMARY:
        if k in first:
            lines.append(f"- `{k}`: {first[k]['impl']}" + (f" ({first[k]['reason']})" if first[k]["reason"] else ""))
    return "\n".join(lines) + "\n"


def render_jobs(ranks, pipe, prompts: List[str], methods: List[str], seed: int, size: Dict, opts: Dict) -> List[Dict]:
    """This rank's share of the (prompt, method) jobs, dense first for each prompt: frames, DiT seconds, density
    (the group's first rank returns them; the other ranks of a Ulysses group return nothing)."""
    from diffsparse.render import render

    jobs = [(i, prompt, method) for i, prompt in enumerate(prompts) for method in ["dense"] + methods]
    done = []
    where = f" (rank {ranks.rank})" if ranks.world > 1 else ""
    for _, (i, prompt, method) in ranks.share(jobs):
        res = render(pipe, None if method == "dense" else method, prompt=prompt, seed=seed + i, **size,
                     **({} if method == "dense" else opts))
        if ranks.leader:
            done.append({"i": i, "method": method, "frames": res.frames, "dit_seconds": res.dit_seconds,
                         "density": None if method == "dense" else res.stats["density"]})
            print(f"[{i + 1}/{len(prompts)}] {method:<15} DiT {res.dit_seconds:6.2f} s  {prompt}{where}", flush=True)
    return done


def main(argv=None) -> int:
    from diffsparse import batch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local Diffusers pipeline folder (default: embedded reference model)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: held-out captions)")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", "--run-name", dest="run", default="eval_run",
                   help="output folder name under eval/results/ (under torchrun spell it --run-name: torchrun reads "
                        "--run as its own --run-path)")
    p.add_argument("--out-root", default=os.path.join(ROOT, "eval", "results"))
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--save-videos", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; under a launcher on CPU, cores / ranks on this machine)")
    p.add_argument("--ulysses", type=int, default=1,
                   help="under a launcher: Ulysses degree K, the ranks rendering in world/K groups of K")
    p.add_argument("--note", default=None, help="context to record with the run (e.g. machine load)")
    args = p.parse_args(argv)
    try:
        ranks = batch.ranks_from_env(args.ulysses)
    except ValueError as err:
        p.error(str(err))
    device = batch.rank_device(ranks)
    with batch.process_group(ranks, device, threads=args.threads):
        return _evaluate(args, argv, ranks, device)


def _evaluate(args, argv, ranks, device: str) -> int:
    from diffsparse import batch
    from diffsparse.metrics import evaluate
    from diffsparse.render import EMBEDDED_DEFAULTS, MODEL_DEFAULTS

    defaults = MODEL_DEFAULTS if args.model else EMBEDDED_DEFAULTS
    size = {k: getattr(args, k) if getattr(args, k) is not None else defaults[k] for k in ("frames", "height", "width", "steps")}
    block = args.block_size or defaults["block_size"]
    opts = {} if block is None else {"block_size": block}
    if args.prompts:
        with open(args.prompts) as f:
            prompts = [line.strip() for line in f if line.strip()]
    else:
        prompts = default_prompts(args.num_prompts)
    methods = [m for m in args.methods.split(",") if m]
    out_dir = os.path.join(args.out_root, args.run)
    if ranks.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    pipe = batch.rank_pipeline(ranks, args.model, device)
    pipe.set_progress_bar_config(disable=True)  # the harness prints its own progress

    t0 = time.time()
    parts = batch.gather_to_root(ranks, render_jobs(ranks, pipe, prompts, methods, args.seed, size, opts))
    if ranks.rank != 0:
        return 0  # rank 0 scores and writes
    done = sorted((job for part in parts for job in part), key=lambda job: (job["i"], (["dense"] + methods).index(job["method"])))
    videos: Dict[str, List[np.ndarray]] = {m: [] for m in ["dense"] + methods}
    timing: Dict[str, List[float]] = {m: [] for m in ["dense"] + methods}
    density: Dict[str, List[float]] = {m: [] for m in methods}
    for job in done:
        method = job["method"]
        videos[method].append(job["frames"])
        timing[method].append(job["dit_seconds"])
        if method != "dense":
            density[method].append(job["density"])
        if args.save_videos:
            from diffusers.utils import export_to_video

            os.makedirs(os.path.join(out_dir, "videos", method), exist_ok=True)
            export_to_video(list(job["frames"]), os.path.join(out_dir, "videos", method, f"p{job['i']:02d}.mp4"), fps=8)
    missing = [m for m in videos if len(videos[m]) != len(prompts)]
    if missing:
        raise RuntimeError(f"jobs missing after the gather for {missing}")

    names = [f"p{i:02d}" for i in range(len(prompts))]
    metrics, per_video = {}, {}
    for method in methods:
        r = evaluate(list(zip(videos[method], videos["dense"])), fps=8.0, weights_dir=args.weights_dir, names=names)
        metrics[method], per_video[method] = r["metrics"], r["per_video"]
    dense_t = float(np.mean(timing["dense"]))
    rows = [{"method": "dense", "density": 1.0, "dit_s": dense_t, "speedup": 1.0, "psnr": None}]
    for m in methods:
        t = float(np.mean(timing[m]))
        rows.append({"method": m, "density": float(np.mean(density[m])) if density[m] else None, "dit_s": t,
                     "speedup": dense_t / t, "psnr": metrics[m]["psnr"]["value"]})

    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
    launcher = "" if ranks.world == 1 else f"torchrun --nproc_per_node {ranks.local_world} ... "  # the launch's own flags are not ours to see
    cmd = env + launcher + "python eval/run_eval.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    where = (torch.cuda.get_device_name() if device.startswith("cuda")
             else f"{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} torch threads")
    if ranks.world > 1:
        where += (f" per rank, {ranks.world} ranks" + (f" ({ranks.groups} Ulysses groups of {ranks.ulysses})"
                                                        if ranks.ulysses > 1 else ""))
    run = {"command": cmd.strip(), "device": where, "torch_threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
           "model": args.model or "embedded reference",
           "size": size, "block_size": block, "prompts": prompts, "seeds": [args.seed + i for i in range(len(prompts))],
           "wall_seconds": round(time.time() - t0, 1), "note": args.note}
    if ranks.world > 1:
        run["ranks"] = {"world_size": ranks.world, "ulysses": ranks.ulysses, "groups": ranks.groups}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"run": run, "rows": rows, "metrics": metrics, "per_video": per_video}, f, indent=1)
    header = [f"# Evaluation run `{args.run}`", "", f"`{run['command']}`", "",
              f"{where}, torch {torch.__version__}; model: {run['model']}; {size['frames']} frames "
              f"{size['height']}x{size['width']}, {size['steps']} steps, block {block}; {len(prompts)} prompts "
              f"(seeds {args.seed}..{args.seed + len(prompts) - 1}); DiT s = mean transformer time per video; "
              f"wall time {run['wall_seconds']} s."] + (["", f"Note: {args.note}"] if args.note else [])
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(rows, metrics, header))
    plotted = quality_vs_speed_png(rows, os.path.join(out_dir, "quality_vs_speed.png"))
    print(open(os.path.join(out_dir, "results.md")).read())
    print(f"wrote {out_dir}/results.json, results.md" + (", quality_vs_speed.png" if plotted else
                                                         " (no plot: pip install -e .[eval] for matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
