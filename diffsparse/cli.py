"""Command line: `diffsparse render | eval | show-mask | bench ...` (also `python -m diffsparse`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _render(args: argparse.Namespace) -> int:
    import torch
    from diffusers.utils import export_to_video

    from . import render as R
    from .methods import list_methods

    if args.method not in list_methods():
        raise SystemExit(f"error: unknown method {args.method!r}; choose one of {list_methods()}")
    if args.prompts:
        return _render_batch(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _fill_defaults(args)
    pipe = R.pipeline_for(args.model, device)
    opts = dict(prompt=args.prompt, frames=args.frames, height=args.height, width=args.width, steps=args.steps, seed=args.seed)
    method_opts = _method_options(args)
    sparse = R.render(pipe, args.method, **opts, **method_opts)
    export_to_video(list(sparse.frames), args.out, fps=args.fps)
    if args.save_layouts:
        if not sparse.layouts:
            print(f"note: {args.method} has a static layout; see it with `diffsparse show-mask --method {args.method}`")
        else:
            torch.save({"method": args.method, "block_size": args.block_size, "layouts": sparse.layouts}, args.save_layouts)
            print(f"wrote {args.save_layouts}: per-head layouts of {len(sparse.layouts)} layers "
                  f"(diffsparse show-mask --layouts {args.save_layouts})")
    s = sparse.stats or {}
    density = s.get("density")
    print(f"wrote {args.out}: {sparse.frames.shape[0]} frames {sparse.frames.shape[2]}x{sparse.frames.shape[1]}")
    print(f"method {args.method}: DiT {sparse.dit_seconds:.2f} s, total {sparse.total_seconds:.2f} s, "
          f"density {'n/a' if density is None else f'{density:.3f}'} ({s.get('sparse_calls', 0)} sparse / {s.get('dense_calls', 0)} dense calls)")
    if args.compare == "dense":
        dense = R.render(pipe, None, **opts)
        sbs = args.out.rsplit(".", 1)[0] + "_compare.mp4"
        dense_out = args.out.rsplit(".", 1)[0] + "_dense.mp4"
        export_to_video(list(dense.frames), dense_out, fps=args.fps)
        export_to_video(list(R.side_by_side(dense.frames, sparse.frames)), sbs, fps=args.fps)
        p = R.psnr(dense.frames, sparse.frames)
        sim = R.ssim(dense.frames, sparse.frames)
        print(f"wrote {sbs}: dense | {args.method} | |difference| x8")
        print(f"{'':<10}{'DiT s':>8}{'speed-up':>10}{'density':>9}{'PSNR dB':>10}{'SSIM':>8}")
        print(f"{'dense':<10}{dense.dit_seconds:>8.2f}{1.0:>10.2f}{1.0:>9.3f}{'-':>10}{'-':>8}")
        print(f"{args.method:<10}{sparse.dit_seconds:>8.2f}{dense.dit_seconds / sparse.dit_seconds:>10.2f}"
              f"{(density if density is not None else 1.0):>9.3f}{('identical' if p is None else f'{p:.2f}'):>10}{sim:>8.4f}")
        print(f"wrote {dense_out}; score both offline: diffsparse eval {args.out} --reference {dense_out}")
    return 0


def _fill_defaults(args: argparse.Namespace) -> None:
    """Sizes left unset take the embedded model's defaults, or Wan 480p ones for --model."""
    from .render import EMBEDDED_DEFAULTS, MODEL_DEFAULTS

    for key, value in (MODEL_DEFAULTS if args.model else EMBEDDED_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _render_batch(args: argparse.Namespace) -> int:
    from .batch import render_batch

    _fill_defaults(args)
    with open(args.prompts) as f:
        prompts = [line.strip() for line in f if line.strip()]
    out_dir = args.out if not args.out.endswith(".mp4") else args.out[:-4]
    method_opts = _method_options(args)
    manifest = render_batch(
        prompts, out_dir, args.method, args.num_processes, args.model, method_opts,
        frames=args.frames, height=args.height, width=args.width, steps=args.steps, seed=args.seed,
    )
    for row in manifest:
        print(f"{row['file']}: DiT {row['dit_seconds']:.2f} s, density {row['density']}")
    print(f"wrote {len(manifest)} videos to {out_dir}/ (manifest.json)")
    return 0


def _method_options(args: argparse.Namespace) -> dict:
    """Method and shared options from --opt, --dense-steps and --block-size (None = preset)."""
    opts = _parse_options(args.opt)
    if args.dense_steps is not None:
        opts["dense_steps"] = args.dense_steps
    if args.block_size is not None:
        opts["block_size"] = args.block_size
    return opts


def _parse_options(pairs: List[str]) -> dict:
    """`["decay_factor=0.5", "window=(3,3,3)"]` -> dict with Python literal values."""
    import ast

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"error: --opt expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _show_recorded(args: argparse.Namespace) -> int:
    """Per-head layouts recorded by `render --save-layouts`: one tile per head of one layer."""
    from .viz import heads_image, save_png

    rec = torch_load(args.layouts)
    layouts = rec["layouts"]
    layer = args.layer if args.layer is not None else min(layouts)
    if layer not in layouts:
        raise SystemExit(f"error: layer {layer} not recorded; recorded layers: {sorted(layouts)}")
    mask = layouts[layer]
    title = (f"{rec['method']} layer {layer}: per-head layouts (video blocks, each head's token order), "
             f"density {float(mask.float().mean()):.3f}")
    save_png(heads_image(mask, title), args.out)
    print(f"wrote {args.out}: {mask.shape[0]} heads x {mask.shape[1]}x{mask.shape[2]} blocks, "
          f"densities {[round(float(m.float().mean()), 3) for m in mask]}")
    return 0


def torch_load(path: str):
    import torch

    if not os.path.isfile(path):
        raise SystemExit(f"error: no layouts file at {path!r} (write one with `diffsparse render --save-layouts`)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _show_mask(args: argparse.Namespace) -> int:
    from . import api
    from .preview import block_layout
    from .viz import mask_image, save_png

    if args.layouts:
        return _show_recorded(args)

    grid = api.token_grid(args.model_family, args.frames, args.height, args.width)
    opts = _parse_options(args.opt)
    layout = block_layout(args.method, grid, family=args.model_family, text_len=args.text_len,
                          block_size=args.block_size, **opts)
    mask, density = layout.mask, layout.density
    title = (f"{args.method} {args.model_family} {args.frames}x{args.height}x{args.width}px grid {grid.dims} "
             f"+{args.text_len} text, block {args.block_size}: density {density:.3f}")
    text_start = grid.numel // args.block_size if args.text_len else None
    save_png(mask_image(mask, title, text_blocks=text_start), args.out)
    print(f"wrote {args.out}: {mask.shape[0]}x{mask.shape[1]} blocks, density {density:.3f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run the benchmark scripts of a source checkout (they live in eval/, next to the package)."""
    import importlib.util
    from pathlib import Path

    eval_dir = Path(__file__).resolve().parent.parent / "eval"
    scripts = {"attention": "bench_attention.py", "transformer": "bench_transformer.py"}
    chosen = list(scripts) if args.which == "all" else [args.which]
    for name in chosen:
        path = eval_dir / scripts[name]
        if not path.exists():
            raise SystemExit(f"error: {path} not found; `diffsparse bench` needs a source checkout of diffsparse")
        spec = importlib.util.spec_from_file_location(f"diffsparse_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {scripts[name]} {' '.join(args.extra)}".rstrip())
        rc = module.main(args.extra)
        if rc:
            return rc
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffsparse", description="Sparse attention for Diffusers video/image DiTs.")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render a video with a sparse-attention method")
    r.add_argument("--method", default="radial")
    r.add_argument("--out", default="out.mp4")
    r.add_argument("--model", default=None, help="local Diffusers pipeline folder (default: embedded model)")
    r.add_argument("--prompt", default="a red square moving left on a plain background")
    r.add_argument("--frames", type=int, default=None)
    r.add_argument("--height", type=int, default=None)
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=int, default=8)
    r.add_argument("--dense-steps", type=int, default=None, help="leading dense steps (default: method preset)")
    r.add_argument("--block-size", type=int, default=None, help="kernel block size (default: 16 on the embedded model, else 128)")
    r.add_argument("--opt", action="append", help="method option key=value (repeatable), e.g. decay_factor=0.5")
    r.add_argument("--device", default=None)
    r.add_argument("--compare", choices=["dense"], default=None, help="also render dense and write a side-by-side video")
    r.add_argument("--prompts", default=None, help="text file, one prompt per line: batch mode, --out is a folder")
    r.add_argument("--num-processes", type=int, default=1, help="batch mode: processes (one GPU each, or CPU)")
    r.add_argument("--save-layouts", default=None, help="dynamic methods: save the per-head layouts to this .pt file")
    r.set_defaults(func=_render)

    m = sub.add_parser("show-mask", help="draw a method's block layout as a PNG")
    m.add_argument("--method", default="radial")
    m.add_argument("--model-family", choices=["wan", "hunyuan", "flux"], default="wan")
    m.add_argument("--frames", type=int, default=81)
    m.add_argument("--height", type=int, default=480)
    m.add_argument("--width", type=int, default=832)
    m.add_argument("--text-len", type=int, default=0, help="text tokens in the sequence (HunyuanVideo/FLUX)")
    m.add_argument("--block-size", type=int, default=128)
    m.add_argument("--opt", action="append", help="method option key=value (repeatable)")
    m.add_argument("--out", default="mask.png")
    m.add_argument("--layouts", default=None, help="per-head layouts recorded by `render --save-layouts` (dynamic methods)")
    m.add_argument("--layer", type=int, default=None, help="with --layouts: which layer (default the first recorded)")
    m.set_defaults(func=_show_mask)

    from .eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)

    b = sub.add_parser("bench", help="run the benchmark scripts (ratios measured in one run)")
    b.add_argument("which", nargs="?", choices=["all", "attention", "transformer"], default="all")
    b.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed to the script(s), e.g. --device cuda")
    b.set_defaults(func=_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
