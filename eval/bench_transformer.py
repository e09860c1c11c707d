"""End-to-end denoiser timing: dense vs sparse methods on one Wan transformer, ratios from one run.

Random weights (speed does not depend on them). The default configuration is small enough for a
2-core CPU yet attention-dominated (many tokens, narrow model), so it shows what sparsity buys.
Every method runs with dense_steps=0 and dense_layers=0 (steady-state sparse steps); the printed
density is the fraction of attention blocks computed.

    python eval/bench_transformer.py                       # CPU default
    python eval/bench_transformer.py --frames 21 --height 60 --width 104 --heads 12 --head-dim 128 \
        --layers 30 --device cuda --dtype bf16             # Wan2.1-1.3B at 480p, 81 frames
    torchrun --nproc_per_node 8 eval/bench_transformer.py --ulysses 8 --device cuda --dtype bf16 \
        --frames 21 --height 90 --width 160 --heads 40 --head-dim 128 --layers 4   # Wan-14B 720p on 8 GPUs
"""

from __future__ import annotations

import argparse
import platform
import statistics
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
    p.add_argument("--frames", type=int, default=13, help="latent frames")
    p.add_argument("--height", type=int, default=40, help="latent height (tokens = height/2)")
    p.add_argument("--width", type=int, default=64, help="latent width (tokens = width/2)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--methods", default="dense,radial,sliding_window,grat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--ulysses", type=int, default=1, help="context-parallel degree (launch with torchrun)")
    args = p.parse_args(argv)
    rank = setup_parallel(args)

    model, dtype = build(args)
    if args.ulysses > 1:
        from diffusers import ContextParallelConfig

        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=args.ulysses))
    timer = AttentionTimer(model, args.device)
    x = torch.randn(1, 16, args.frames, args.height, args.width, device=args.device, dtype=dtype)
    ehs = torch.randn(1, 16, 64, device=args.device, dtype=dtype)
    grid = (args.frames, args.height // 2, args.width // 2)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"# {' '.join(sys.argv)}")
    say(f"# device: {device_name(args.device)}; torch {torch.__version__}; {args.dtype}; ulysses {args.ulysses}")
    say(f"# Wan transformer: {args.layers} layers, {args.heads} heads x {args.head_dim}, ffn {args.ffn}; "
          f"grid {grid} = {grid[0] * grid[1] * grid[2]} tokens; block {args.block_size}")

    def run():
        with torch.inference_mode():
            return model(x, torch.tensor([500], device=args.device), ehs, return_dict=False)[0]

    rows, ref, base = [], None, None
    for name in ["stock"] + args.methods.split(","):
        if name == "stock":
            diffsparse.disable_sparse_attention(model)
            handle = None
        else:
            handle = diffsparse.enable_sparse_attention(model, method=name, dense_steps=0, dense_layers=0, block_size=args.block_size)
        out = run()  # warm-up (plans are built and cached here)
        times, attn = [], []
        for _ in range(args.repeats):
            timer.total = 0.0
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            attn.append(timer.total)
        t = statistics.median(times)
        if ref is None:
            ref, base = out.float(), t
        density = handle.stats()["density"] if handle else 1.0
        err = (out.float() - ref).abs().max().item()
        rows.append((name, density, t, base / t, statistics.median(attn) / t, err))
        if handle:
            handle.reset_stats()
    diffsparse.disable_sparse_attention(model)

    say(f"{'method':<16}{'density':>9}{'DiT s':>9}{'speed-up':>10}{'attn share':>12}{'max|d| vs stock':>17}")
    for name, density, t, speed, share, err in rows:
        say(f"{name:<16}{density:>9.3f}{t:>9.3f}{speed:>10.2f}{share:>12.2f}{err:>17.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
