"""End-to-end denoiser timing: dense vs sparse methods on one Wan transformer, ratios from one run.

Random weights (speed does not depend on them). Every method runs with dense_steps=0 and
dense_layers=0 (steady-state sparse steps); the printed density is the fraction of attention
blocks computed. `attn share` f is the share of the stock model's time spent in its
self-attention modules, and `bound` = 1/((1-f) + f*density) the speed-up a kernel whose cost is
exactly proportional to the computed blocks would give; `of bound` is the fraction we reach.
Methods run at their family presets (Wan) for the given grid; all timings interleave the
methods round by round and report the best round (spread = slowest / best).

    python eval/bench_transformer.py                       # CPU: Wan 480p tokens, 2 heads x 128, 1 layer
    python eval/bench_transformer.py --frames 13 --height 40 --width 64 --heads 4 --head-dim 64 \
        --ffn 512 --layers 2                               # a small, fast configuration
    python eval/bench_transformer.py --frames 21 --height 60 --width 104 --heads 12 --head-dim 128 \
        --layers 30 --device cuda --dtype bf16             # Wan2.1-1.3B at 480p, 81 frames
    torchrun --nproc_per_node 8 eval/bench_transformer.py --ulysses 8 --device cuda --dtype bf16 \
        --frames 21 --height 90 --width 160 --heads 40 --head-dim 128 --layers 4   # Wan-14B 720p on 8 GPUs

`--compile inductor` compares what users who compile run: every model (stock too) goes through
`torch.compile(model, fullgraph=True)` before the warm-up (`--regional`: Diffusers'
`compile_repeated_blocks`, one compile for all blocks, much faster to build). The attention share, and so the bound,
is then not measured (timing hooks inside the graph would break it): those columns print `-`.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch

import diffsparse


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def build(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=16,
        out_channels=16, text_dim=64, freq_dim=256, ffn_dim=args.ffn, num_layers=args.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    return model.to(args.device, dtype).eval(), dtype


class AttentionTimer:
    """Time spent in the self-attention modules (attn1), to report the attention share."""

    def __init__(self, model, device):
        self.total, self.device, self._t = 0.0, device, 0.0
        for block in model.blocks:
            block.attn1.register_forward_pre_hook(lambda *_: self._start())
            block.attn1.register_forward_hook(lambda *_: self._stop())

    def _sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _start(self):
        self._sync()
        self._t = time.perf_counter()

    def _stop(self):
        self._sync()
        self.total += time.perf_counter() - self._t


def setup_parallel(args) -> int:
    """Join the torchrun process group when --ulysses > 1; returns this process's rank."""
    if args.ulysses <= 1:
        return 0
    import os

    import torch.distributed as dist

    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(args.device)
    else:
        torch.accelerator.device_count = lambda: 1  # CPU runs: Diffusers asks the accelerator for its mesh
    if dist.get_world_size() != args.ulysses:
        raise SystemExit(f"--ulysses {args.ulysses} but torchrun started {dist.get_world_size()} processes")
    return dist.get_rank()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=21, help="latent frames (21 = 81 video frames)")
    p.add_argument("--height", type=int, default=60, help="latent height (tokens = height/2; 60 = 480 px)")
    p.add_argument("--width", type=int, default=104, help="latent width (tokens = width/2; 104 = 832 px)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn", type=int, default=1536, help="FFN width (Wan 1.3B: 8960 for 12 heads x 128)")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--methods", default="dense,radial,sliding_window,grat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="auto", help="our kernel path for every method (auto, torch, flex, triton)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--ulysses", type=int, default=1, help="context-parallel degree (launch with torchrun)")
    p.add_argument("--compile", default=None, choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile every model (stock too) with fullgraph=True and this backend (default: eager)")
    p.add_argument("--regional", action="store_true",
                   help="with --compile: compile the repeated blocks only (Diffusers' compile_repeated_blocks)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    rank = setup_parallel(args)

    names = ["stock"] + args.methods.split(",")
    # One model per method (same seed, same weights), so the methods' rounds can interleave while
    # each handle keeps its cached plans.
    models, timers, handles = {}, {}, {}
    base, dtype = build(args)  # built once (random init of 1.3B weights takes seconds), copied per method
    for name in names:
        models[name] = copy.deepcopy(base)
        if args.ulysses > 1:
            from diffusers import ContextParallelConfig

            models[name].enable_parallelism(config=ContextParallelConfig(ulysses_degree=args.ulysses))
        if not args.compile:
            timers[name] = AttentionTimer(models[name], args.device)
        if name != "stock":
            handles[name] = diffsparse.enable_sparse_attention(
                models[name], method=name, dense_steps=0, dense_layers=0, block_size=args.block_size,
                backend=args.backend)
        if args.compile and args.regional:
            models[name].compile_repeated_blocks(fullgraph=True, backend=args.compile)
        elif args.compile:
            models[name] = torch.compile(models[name], fullgraph=True, backend=args.compile)
    del base
    x = torch.randn(1, 16, args.frames, args.height, args.width, device=args.device, dtype=dtype)
    ehs = torch.randn(1, 16, 64, device=args.device, dtype=dtype)
    grid = (args.frames, args.height // 2, args.width // 2)
    lines = []

    def say(text=""):
        if rank == 0:
            print(text, flush=True)
            lines.append(text)

    say(f"# {' '.join(sys.argv)}")
    say(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device: {device_name(args.device)}; "
        f"torch {torch.__version__}; {args.dtype}; ulysses {args.ulysses}; backend {args.backend}; "
        f"compiled: {(args.compile + (' (repeated blocks)' if args.regional else '')) if args.compile else 'no'}")
    say(f"# Wan transformer: {args.layers} layers, {args.heads} heads x {args.head_dim}, ffn {args.ffn}; "
        f"grid {grid} = {grid[0] * grid[1] * grid[2]} tokens; block {args.block_size}")

    def run(name):
        with torch.inference_mode():
            return models[name](x, torch.tensor([500], device=args.device), ehs, return_dict=False)[0]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    outs = {name: run(name).float() for name in names}  # warm-up: plans are built and cached
    densities = {name: handles[name].stats()["density"] if name in handles else 1.0 for name in names}
    times = {n: [] for n in names}
    shares = {n: [] for n in names}
    for _ in range(args.repeats):  # interleaved rounds
        for name in names:
            if name in timers:
                timers[name].total = 0.0
            sync()
            t0 = time.perf_counter()
            run(name)
            sync()
            times[name].append(time.perf_counter() - t0)
            shares[name].append(timers[name].total / times[name][-1] if name in timers else None)

    base = min(times["stock"])
    f = shares["stock"][times["stock"].index(base)]  # None when compiled
    say(f"{'method':<16}{'density':>9}{'DiT s':>9}{'spread':>8}{'speed-up':>10}{'bound':>8}{'of bound':>10}"
        f"{'attn share':>12}{'max|d| vs stock':>17}")
    for name in names:
        t = min(times[name])
        d = densities[name]
        err = (outs[name] - outs["stock"]).abs().max().item()
        share = shares[name][times[name].index(t)]
        if f is None:
            bound_cols = f"{'-':>8}{'-':>10}{'-':>12}"
        else:
            bound = 1.0 / ((1 - f) + f * d)
            bound_cols = f"{bound:>8.2f}{base / t / bound:>10.2f}{share:>12.2f}"
        say(f"{name:<16}{d:>9.3f}{t:>9.3f}{max(times[name]) / t:>8.2f}{base / t:>10.2f}{bound_cols}{err:>17.2e}")
    if args.out and rank == 0:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
