"""Model (not a measurement) of Ulysses context-parallel scaling for Wan 2.1-14B at 720p, 81 frames.

Per layer and rank it counts: tokens per rank, all-to-all bytes (q, k, v in; out back: each
rank sends (N-1)/N of its 4 local (S/N, H, D) tensors), attention FLOPs for dense and for each
method's density (computed from our own layouts on the real grid), and turns them into times with
an assumed attention throughput and an assumed all-to-all bandwidth (flags; defaults are
round numbers for H100 + NVLink, stated in the output). Use it to see where communication starts
to matter, not as a benchmark.

    python eval/simulate_scaling.py > eval/results/scaling_simulation_wan14b_720p.txt
"""

from __future__ import annotations

import argparse
import sys

import diffsparse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--heads", type=int, default=40, help="Wan2.1-14B: 40 heads x 128")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--attn-tflops", type=float, default=400.0, help="ASSUMED sustained attention TFLOP/s per GPU (bf16)")
    p.add_argument("--a2a-gbps", type=float, default=200.0, help="ASSUMED all-to-all bandwidth per GPU, GB/s")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--methods", default="radial,sliding_window,grat")
    args = p.parse_args(argv)

    grid = diffsparse.token_grid("wan", args.frames, args.height, args.width)
    S, H, D = grid.numel, args.heads, args.head_dim
    densities = {"dense": 1.0}
    for m in args.methods.split(","):
        densities[m] = diffsparse.preview_layout(m, grid, "wan", block_size=args.block_size).index.density
    print(f"# {' '.join(sys.argv)}")
    print(f"# MODEL, not a measurement. Wan {args.frames}f {args.height}x{args.width}: grid {grid.dims} = {S} tokens, "
          f"{H} heads x {D}; assumed {args.attn_tflops:.0f} TFLOP/s attention, {args.a2a_gbps:.0f} GB/s all-to-all, bf16")
    print("# densities from diffsparse layouts at block " + str(args.block_size) + ": "
          + ", ".join(f"{k} {v:.3f}" for k, v in densities.items()))
    header = f"{'GPUs':>4}{'tokens/rank':>13}{'a2a MB/layer':>14}{'a2a ms':>8}" + "".join(f"{k + ' ms':>24}" for k in densities)
    print(header)
    for n in (1, 2, 4, 8):
        if H % n:
            continue
        a2a_bytes = 0 if n == 1 else 4 * (S // n) * H * D * 2 * (n - 1) / n
        a2a_ms = a2a_bytes / (args.a2a_gbps * 1e9) * 1e3
        cells = []
        for name, density in densities.items():
            flops = 4 * S * S * D * (H // n) * density  # QK^T and PV, this rank's heads
            attn_ms = flops / (args.attn_tflops * 1e12) * 1e3
            cells.append(f"{attn_ms:>9.1f} +{a2a_ms:>5.1f} ={attn_ms + a2a_ms:>6.1f}")
        print(f"{n:>4}{S // n:>13}{a2a_bytes / 1e6:>14.1f}{a2a_ms:>8.2f}" + "".join(cells))
    print("# cells: attention ms + all-to-all ms = per-layer ms on each rank (forward, one CFG branch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
