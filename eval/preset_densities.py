"""Block density of every static method's family preset at the released models' real geometries.

    python eval/preset_densities.py --out eval/results/preset_densities.txt

Blocks of 128 (the kernels' default), video tokens only (text rows/columns are dense on top of
this); the README's method table quotes these numbers.
"""

from __future__ import annotations

import argparse
import sys
import time

import diffsparse

#: (label, family, frames, height, width) in pixels of the released models
GEOMETRIES = [
    ("Wan 480p 81f", "wan", 81, 480, 832),
    ("Wan 720p 81f", "wan", 81, 720, 1280),
    ("Hunyuan 720p 129f", "hunyuan", 129, 720, 1280),
    ("Hunyuan 768x1280 117f", "hunyuan", 117, 768, 1280),
]
STATIC = ("radial", "sliding_window", "grat")
#: documented alternatives to the presets: (label, method, options)
ALTERNATIVES = [
    ("radial band=paper block_select=any (previous default)", "radial", {"band": "paper", "block_select": "any"}),
    ("radial block_select=any", "radial", {"block_select": "any"}),
    ("sliding_window tile=(2,8,8) (previous default)", "sliding_window", {"tile": (2, 8, 8)}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    lines = [f"$ python eval/preset_densities.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip(),
             f"# {time.strftime('%Y-%m-%d')}, diffsparse {diffsparse.__version__}, block {args.block_size}",
             f"{'geometry':<24}{'grid':>14}" + "".join(f"{m:>16}" for m in STATIC)]
    for label, family, frames, height, width in GEOMETRIES:
        grid = diffsparse.token_grid(family, frames, height, width)
        dens = [diffsparse.block_layout(m, grid.dims, family=family, block_size=args.block_size).density for m in STATIC]
        lines.append(f"{label:<24}{'x'.join(map(str, grid.dims)):>14}" + "".join(f"{d:>16.3f}" for d in dens))
    lines.append("")
    lines.append(f"{'alternative':<52}" + "".join(f"{g[0]:>24}" for g in GEOMETRIES))
    for label, method, opts in ALTERNATIVES:
        row = []
        for _, family, frames, height, width in GEOMETRIES:
            grid = diffsparse.token_grid(family, frames, height, width)
            row.append(diffsparse.block_layout(method, grid.dims, family=family, block_size=args.block_size, **opts).density)
        lines.append(f"{label:<52}" + "".join(f"{d:>24.3f}" for d in row))
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
