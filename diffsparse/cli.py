"""Command line: `diffsparse render | eval | show-mask | bench ...` (also `python -m diffsparse`).

Bad input is refused before any work, as one line `error: ...` on stderr and exit status 2 (argparse's
convention), never a traceback: the argument types check each value, `_check_*` check what needs several
values or the model's strides before a model is loaded, and the library's own refusals of user input (a
method option, a PARO plan, a layout request) are caught at this boundary, around the setup only. Batch mode
(`render --prompts`) renders on, past a prompt that fails, and then exits with status 1, naming each failed prompt
(`diffsparse.batch`: its manifest lists them under "failed").
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import os
import sys
from typing import Any, List, Optional, Tuple


from .cli_args import (
    ArgumentParser, HelpFormatter, UsageError, check_out_file, first_line, int_in, non_negative_int, positive_int,
    user_errors,
)

#: show-mask's default video length (Wan 2.1's 5-second clip)
SHOW_MASK_FRAMES = 81


def dense_steps(text: str) -> Any:
    """`--dense-steps`: an int >= 0 (steps) or a fraction in [0, 1) of the steps, as the API takes."""
    value: Any
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not (value >= 0 and (isinstance(value, int) or value < 1.0)):
        raise argparse.ArgumentTypeError(
            f"must be an int >= 0 (leading dense steps) or a fraction in [0, 1) of the steps, got {text!r}")
    return value


def option(text: str) -> Tuple[str, Any]:
    """`--opt key=value`: the value as a Python literal (`0.5`, `(3,3,3)`, `True`), else the text itself
    (a file path, `int8`); the method's validator says what a bad value should be."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expects key=value, e.g. decay_factor=0.5, got {text!r}")
    try:
        return key, ast.literal_eval(raw.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return key, raw


def method_name(text: str) -> str:
    from .methods import list_methods

    if text not in list_methods():
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose one of {list_methods()}")
    return text


def pipeline_folder(text: str) -> str:
    from .render import check_pipeline_folder

    try:
        check_pipeline_folder(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def device(text: str) -> str:
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has no CUDA GPU (torch.cuda.is_available() is False); use cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: diffsparse renders on cpu, cuda, cuda:N or mps")
    return text


# ---- checks of several values, before any model is loaded ----

def check_size(frames: int, height: int, width: int, strides: Tuple[int, int, int], model: str) -> None:
    """frames = 1 + k * frame stride, height / width multiples of the pixel strides (values already >= 1)."""
    ft, fh, fw = strides
    if ft > 1 and frames % ft != 1:
        low = (frames - 1) // ft * ft + 1
        raise UsageError(f"--frames {frames} is not 1 + a multiple of {ft} ({model} packs {ft} frames into one "
                         f"latent frame after the first): use {low} or {low + ft}")
    for name, value, stride in (("--height", height, fh), ("--width", width, fw)):
        if value % stride:
            low = value // stride * stride
            use = f"{low} or {low + stride}" if low else f"{stride}"
            raise UsageError(f"{name} {value} is not a multiple of {stride} px ({model}'s pixel stride): use {use}")


def _check_render(args: argparse.Namespace) -> None:
    """Everything `render` can check before a model is loaded; fills the model's default sizes."""
    from . import render as R
    from .pipelines import adapter_for_family

    if args.prompts:
        _read_prompts(args.prompts)
        _check_ranks(args)
        if os.path.isfile(args.out):
            raise UsageError(f"--out {args.out!r} is a file; with --prompts it is the folder the videos go to")
        for name, value in (("--compare", args.compare), ("--save-layouts", args.save_layouts)):
            if value:
                raise UsageError(f"{name} renders one video; it does not apply with --prompts (batch mode)")
    else:
        check_out_file(args.out, "--out", R.VIDEO_OUT_EXTENSIONS)
        for name, value in (("--num-processes", args.num_processes), ("--ulysses", args.ulysses)):
            if value > 1:
                raise UsageError(f"{name} {value} applies to batch mode (--prompts); one video renders in one "
                                 "process")
    if args.save_layouts:
        check_out_file(args.save_layouts, "--save-layouts", (".pt",))
    family = R.model_family(args.model)
    if args.model and adapter_for_family(family).single_frame:
        raise UsageError(f"--model {args.model!r} holds a {R.pipeline_class_name(args.model)} (an image model); "
                         "render draws videos: use a Wan or HunyuanVideo pipeline folder")
    _fill_defaults(args)
    strides = R.size_strides(args.model)
    if strides is not None:
        model = "this model" if args.model else "the embedded model"
        check_size(args.frames, args.height, args.width, strides, model)
    with user_errors():  # the method's own options: unknown name, bad value, PARO without a plan
        R.check_method_options(args.method, family, _method_options(args))


def _check_ranks(args: argparse.Namespace) -> None:
    """Batch mode's processes: `--num-processes` only outside a launcher, `--ulysses K` dividing the world size
    (the launcher's WORLD_SIZE, else --num-processes) and the model's attention heads."""
    from . import batch

    with user_errors():  # a launcher variable that is not an int
        world = batch.launcher_world()
    if world > 1 and args.num_processes > 1:
        raise UsageError(f"--num-processes {args.num_processes} spawns processes on this machine, but this is already "
                         f"one of {world} ranks under a launcher (torchrun / accelerate launch, WORLD_SIZE={world}): "
                         "drop --num-processes and size the run with the launcher (--nproc_per_node, --nnodes)")
    where = f"WORLD_SIZE={world} under the launcher" if world > 1 else f"--num-processes {args.num_processes}"
    world = world if world > 1 else args.num_processes
    if world % args.ulysses:
        raise UsageError(f"--ulysses {args.ulysses} must divide the world size ({where}): the ranks form "
                         "world/K groups of K ranks")
    if args.ulysses > 1:
        heads = batch.transformer_heads(args.model)
        if heads is not None and heads % args.ulysses:
            model = f"--model {args.model!r}" if args.model else "the embedded model"
            raise UsageError(f"--ulysses {args.ulysses} must divide the attention heads of {model} ({heads}): "
                             "Ulysses gives each rank of a group heads/K of them")


def _read_prompts(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise UsageError(f"--prompts {path!r}: no such file (a text file, one prompt per line)")
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts {path!r}: cannot read it as text ({first_line(err)})") from None
    if not prompts:
        raise UsageError(f"--prompts {path!r} has no prompts (one per line; blank lines are skipped)")
    return prompts


# ---- render ----

def _render(args: argparse.Namespace) -> int:
    _check_render(args)
    if args.prompts:
        return _render_batch(args)
    import torch
    from diffusers.utils import export_to_video

    from . import render as R

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    method_opts = _method_options(args)
    # a folder Diffusers cannot load (missing weights, foreign config) is bad input; the embedded model's are bugs
    with user_errors(OSError) if args.model else contextlib.nullcontext():
        pipe = R.pipeline_for(args.model, device)
    with user_errors():  # every option against the loaded model: shared settings, backend, a PARO plan's model
        R.check_method(pipe, args.method, **method_opts)
    opts = dict(prompt=args.prompt, frames=args.frames, height=args.height, width=args.width, steps=args.steps, seed=args.seed)
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
        stem, ext = os.path.splitext(args.out)
        sbs, dense_out = f"{stem}_compare{ext}", f"{stem}_dense{ext}"
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
    """Batch mode: this process is one rank of a launcher (torchrun / accelerate launch), or spawns
    --num-processes ranks on this machine; rank 0 reports from the manifest. Exit status 1 when a prompt failed."""
    import torch

    from .batch import launched, ranks_from_env, render_batch

    prompts = _read_prompts(args.prompts)
    out_dir = args.out[:-4] if args.out.lower().endswith(".mp4") else args.out
    method_opts = _method_options(args)
    device = torch.device(args.device).type if args.device else None  # each rank takes cuda:LOCAL_RANK
    try:  # bad input found at setup on the ranks (a folder Diffusers cannot load, K against the model)
        manifest = render_batch(
            prompts, out_dir, args.method, args.num_processes, args.model, method_opts, fps=args.fps,
            ulysses=args.ulysses, device=device,
            frames=args.frames, height=args.height, width=args.width, steps=args.steps, seed=args.seed,
        )
    except ValueError as err:
        raise UsageError(first_line(err)) from None
    if launched() and ranks_from_env(args.ulysses).rank != 0:
        return 0  # rank 0 reports for every rank
    for row in manifest["videos"]:
        print(f"{row['file']}: DiT {row['dit_seconds']:.2f} s, density {row['density']} (rank {row['rank']})")
    ranks = manifest["world_size"]
    layout = "" if ranks == 1 else (f" by {ranks} ranks" + (
        f" ({manifest['groups']} groups of {manifest['ulysses']}, Ulysses)" if manifest["ulysses"] > 1 else ""))
    print(f"wrote {len(manifest['videos'])} videos to {out_dir}/{layout} (manifest.json)")
    if manifest["complete"]:
        return 0
    for row in manifest["failed"]:
        where = "" if row["rank"] is None else f" on rank {row['rank']}"
        print(f"error: prompt {row['index']} {row['prompt']!r} failed{where}: {row['error']}", file=sys.stderr)
    print(f"error: {len(manifest['failed'])} of {manifest['prompts']} prompts failed; {out_dir}/manifest.json says "
          '"complete": false and lists them under "failed"', file=sys.stderr)
    return 1


def _method_options(args: argparse.Namespace) -> dict:
    """Method and shared options from --opt, --dense-steps and --block-size (None = preset)."""
    opts = dict(args.opt or [])
    if args.dense_steps is not None:
        opts["dense_steps"] = args.dense_steps
    if args.block_size is not None:
        opts["block_size"] = args.block_size
    return opts


# ---- show-mask ----

def load_layouts(path: str) -> dict:
    """A file written by `render --save-layouts`: {"method", "block_size", "layouts": {layer: (H, nq, nk) bool}}."""
    import torch

    what = "a layouts file written by `diffsparse render --method adaspa --save-layouts run.pt`"
    if not os.path.isfile(path):
        raise UsageError(f"--layouts: no layouts file at {path!r}; it must be {what}")
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign file: pickle, zip, EOF and torch errors alike; only this read is guarded
        raise UsageError(f"--layouts {path!r} is not {what} (torch.load: {type(err).__name__})") from None
    layouts = rec.get("layouts") if isinstance(rec, dict) else None
    if not (isinstance(layouts, dict) and layouts and "method" in rec and all(
            isinstance(k, int) and isinstance(v, torch.Tensor) and v.dim() == 3 for k, v in layouts.items())):
        raise UsageError(f"--layouts {path!r} is not {what}")
    return rec


def _show_recorded(args: argparse.Namespace) -> int:
    """Per-head layouts recorded by `render --save-layouts`: one tile per head of one layer."""
    from .viz import heads_image, save_png

    rec = load_layouts(args.layouts)
    layouts = rec["layouts"]
    layer = args.layer if args.layer is not None else min(layouts)
    if layer not in layouts:
        raise UsageError(f"--layer {layer}: layer not recorded; recorded layers: {sorted(layouts)}")
    mask = layouts[layer]
    title = (f"{rec['method']} layer {layer}: per-head layouts (video blocks, each head's token order), "
             f"density {float(mask.float().mean()):.3f}")
    save_png(heads_image(mask, title), args.out)
    print(f"wrote {args.out}: {mask.shape[0]} heads x {mask.shape[1]}x{mask.shape[2]} blocks, "
          f"densities {[round(float(m.float().mean()), 3) for m in mask]}")
    return 0


def _show_mask(args: argparse.Namespace) -> int:
    from . import api
    from .pipelines import adapter_for_family
    from .preview import block_layout
    from .viz import mask_image, save_png

    check_out_file(args.out, "--out", (".png",))
    if args.layouts:
        return _show_recorded(args)
    if args.layer is not None:
        raise UsageError("--layer picks a recorded layer; it applies only with --layouts")
    family = args.model_family
    adapter = adapter_for_family(family)
    ft, fh, fw = adapter.pixels_per_token
    if adapter.single_frame:
        if args.frames not in (None, 1):
            raise UsageError(f"--frames {args.frames}: flux models draw images (one frame); leave --frames out")
        args.frames = 1
    elif args.frames is None:
        args.frames = SHOW_MASK_FRAMES
    check_size(args.frames, args.height, args.width, (ft, fh, fw), f"a {family} model")
    with user_errors():  # dynamic methods, a method that does not support the family, bad options
        grid = api.token_grid(family, args.frames, args.height, args.width)
        layout = block_layout(args.method, grid, family=family, text_len=args.text_len,
                              block_size=args.block_size, **dict(args.opt or []))
    mask, density = layout.mask, layout.density
    title = (f"{args.method} {family} {args.frames}x{args.height}x{args.width}px grid {grid.dims} "
             f"+{args.text_len} text, block {args.block_size}: density {density:.3f}")
    text_start = grid.numel // args.block_size if args.text_len else None
    save_png(mask_image(mask, title, text_blocks=text_start), args.out)
    print(f"wrote {args.out}: {mask.shape[0]}x{mask.shape[1]} blocks, density {density:.3f}")
    return 0


# ---- bench ----

def _bench(args: argparse.Namespace) -> int:
    """Run the packaged benchmarks (`diffsparse.bench`; `eval/bench_*.py` in a checkout are the same)."""
    import importlib

    chosen = ["attention", "transformer"] if args.which == "all" else [args.which]
    for name in chosen:
        module = importlib.import_module(f"diffsparse.bench.{name}")
        print(f"== diffsparse bench {name} {' '.join(args.extra)}".rstrip())
        rc = module.main(args.extra)
        if rc:
            return rc
    return 0


# ---- parser ----

def build_parser() -> argparse.ArgumentParser:
    from .dynamic import DynamicMethod
    from .methods import METHODS, list_methods
    from .pipelines import adapter_for_family
    from .render import EMBEDDED_DEFAULTS as E, MODEL_DEFAULTS as M, VIDEO_OUT_EXTENSIONS, size_strides

    def by_model(key: str, model: Optional[str] = None) -> str:
        return f"default: {E[key]} for the embedded model, {M[key] if model is None else model} for --model"

    emb, wan = size_strides(None), adapter_for_family("wan").pixels_per_token
    strides = [f"{e} for the embedded model" + (f", {w} for Wan/HunyuanVideo" if w != e else " and Wan/HunyuanVideo")
               for e, w in zip(emb, wan)]

    fmt = {"formatter_class": HelpFormatter}
    parser = ArgumentParser(prog="diffsparse", description="Sparse attention for Diffusers video/image DiTs.", **fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{render,show-mask,eval,bench}")
    r = sub.add_parser("render", help="render a video with a sparse-attention method", **fmt,
                       description="Render a video with a sparse-attention method (and optionally dense, to compare).")
    r.add_argument("--method", type=method_name, default="radial", help=f"one of {', '.join(list_methods())}")
    r.add_argument("--out", default="out.mp4",
                   help=f"video file ({', '.join(VIDEO_OUT_EXTENSIONS)}) in an existing folder; with --prompts the "
                        "folder for the batch (a trailing .mp4 is dropped)")
    r.add_argument("--model", type=pipeline_folder, default=None,
                   help="local Diffusers pipeline folder with model_index.json, Wan or HunyuanVideo; never downloads "
                        "(default: the embedded reference model)")
    r.add_argument("--prompt", default="a red square moving left on a plain background", help="text prompt")
    r.add_argument("--frames", type=positive_int, default=None,
                   help=f"video frames, 1 + a multiple of the VAE's frame stride ({strides[0]}) ({by_model('frames')})")
    r.add_argument("--height", type=positive_int, default=None,
                   help=f"video height in px, a multiple of the pixel stride ({strides[1]}) ({by_model('height')})")
    r.add_argument("--width", type=positive_int, default=None,
                   help=f"video width in px, a multiple of the pixel stride ({strides[2]}) ({by_model('width')})")
    r.add_argument("--steps", type=positive_int, default=None, help=f"denoising steps, >= 1 ({by_model('steps')})")
    r.add_argument("--seed", type=int_in(0, 2**64 - 1, "2**64 - 1"), default=0,
                   help="random seed, an int in [0, 2**64 - 1]")
    r.add_argument("--fps", type=positive_int, default=8, help="frame rate written into the video file, >= 1")
    r.add_argument("--dense-steps", type=dense_steps, default=None,
                   help="leading denoising steps run dense: an int >= 0, or a fraction in [0, 1) of --steps "
                        "(default: the method's preset)")
    r.add_argument("--block-size", type=positive_int, default=None,
                   help=f"kernel block size in tokens, >= 1 ({by_model('block_size', 'the method preset')})")
    r.add_argument("--opt", type=option, action="append",
                   help="method option key=value, the value a Python literal (repeatable), e.g. decay_factor=0.5, "
                        "window=(3,3,3); paro needs plan=FILE (default: the method's preset)")
    r.add_argument("--device", type=device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu; with --prompts each "
                        "process takes one GPU, or the CPU)")
    r.add_argument("--compare", choices=["dense"], default=None,
                   help="also render dense and write a side-by-side video (default: off)")
    r.add_argument("--prompts", default=None,
                   help="text file, one prompt per line: batch mode, --out is a folder (default: off, one video of "
                        "--prompt)")
    r.add_argument("--num-processes", type=positive_int, default=1,
                   help="batch mode on this machine: processes (one GPU each, or CPU), >= 1; under torchrun / "
                        "accelerate launch leave it out, every launched rank takes its share")
    r.add_argument("--ulysses", type=positive_int, default=1,
                   help="batch mode: Ulysses context-parallel degree K, >= 1: the ranks form world/K groups of K "
                        "consecutive ranks, each group rendering its share of the prompts with every video's "
                        "sequence split over its K ranks; K must divide the world size and the model's attention "
                        "heads")
    r.add_argument("--save-layouts", default=None,
                   help="dynamic methods (adaspa, paro): save the per-head layouts to this .pt file (default: off)")
    r.set_defaults(func=_render)

    static = [name for name, cls in METHODS.items() if not issubclass(cls, DynamicMethod)]
    m = sub.add_parser("show-mask", help="draw a method's block layout as a PNG", **fmt,
                       description="Draw a static method's block layout as a PNG, or the per-head layouts a dynamic "
                                   "method recorded (render --save-layouts, then --layouts).")
    m.add_argument("--method", type=method_name, default="radial",
                   help=f"a static method: {', '.join(static)} (dynamic ones decide per head at run time: record "
                        "them with `render --save-layouts` and draw them with --layouts)")
    m.add_argument("--model-family", choices=["wan", "hunyuan", "flux"], default="wan",
                   help="whose token grid and method presets")
    m.add_argument("--frames", type=positive_int, default=None,
                   help=f"video frames, 1 + a multiple of {wan[0]} (default: {SHOW_MASK_FRAMES}; flux: images, one "
                        "frame)")
    m.add_argument("--height", type=positive_int, default=480, help=f"height in px, a multiple of {wan[1]}")
    m.add_argument("--width", type=positive_int, default=832, help=f"width in px, a multiple of {wan[2]}")
    m.add_argument("--text-len", type=non_negative_int, default=0,
                   help="text tokens in the sequence (HunyuanVideo/FLUX), >= 0")
    m.add_argument("--block-size", type=positive_int, default=128, help="kernel block size in tokens, >= 1")
    m.add_argument("--opt", type=option, action="append",
                   help="method option key=value, the value a Python literal (repeatable) (default: the method's "
                        "preset)")
    m.add_argument("--out", default="mask.png", help="PNG file in an existing folder")
    m.add_argument("--layouts", default=None,
                   help="draw the per-head layouts recorded by `render --save-layouts` (a .pt file) instead "
                        "(default: off, draw --method)")
    m.add_argument("--layer", type=non_negative_int, default=None,
                   help="with --layouts: which layer (default: the first recorded)")
    m.set_defaults(func=_show_mask)

    from .eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)

    b = sub.add_parser("bench", help="run the benchmark scripts (ratios measured in one run)", **fmt)
    b.add_argument("which", nargs="?", choices=["all", "attention", "transformer"], default="all",
                   help="which script(s)")
    b.add_argument("extra", nargs=argparse.REMAINDER,
                   help="arguments passed to the script(s), e.g. --device cuda (see `python eval/<script> --help`)")
    b.set_defaults(func=_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
