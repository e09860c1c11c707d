"""CLI round trips on tiny sizes: render (with --compare dense) and show-mask; bad input is one line, exit 2."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import cv2
import imageio.v3 as iio
import pytest
import torch

import diffsparse
from diffsparse.cli import build_parser, main


def refused(capsys, argv, *fragments, after_load=False):
    """`main(argv)` exits with status 2 and one stderr line `error: ...` holding every fragment, no traceback. Before
    a model is loaded that line is all of stderr; after (`after_load`), it is the last, below the loading bars."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if after_load:
        lines = lines[-1:]
        assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_render_compare_writes_videos_and_table(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", "--method", "sliding_window", "--out", str(out), "--frames", "9", "--height", "64",
               "--width", "96", "--steps", "2", "--compare", "dense"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "default model:" in text  # the default model says what it is
    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[1:3] == (64, 96)
    sbs = iio.imread(tmp_path / "out_compare.mp4")
    assert sbs.shape[2] == 3 * 96
    assert "speed-up" in text and "sliding_window" in text and "SSIM" in text
    assert iio.imread(tmp_path / "out_dense.mp4").shape == frames.shape
    # the printed eval command scores the pair offline
    assert main(["eval", str(out), "--reference", str(tmp_path / "out_dense.mp4"), "--json", str(tmp_path / "e.json")]) == 0


def test_render_refuses_missing_model_folder(tmp_path, capsys):
    refused(capsys, ["render", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.mp4")],
            "--model", "local Diffusers pipeline folder", "no such directory")
    # a folder that is not a pipeline
    refused(capsys, ["render", "--model", str(tmp_path), "--out", str(tmp_path / "x.mp4")],
            "local Diffusers pipeline folder", "no model_index.json")


def test_render_unknown_method_is_a_clear_error(tmp_path, capsys):
    refused(capsys, ["render", "--method", "nope", "--out", str(tmp_path / "x.mp4")],
            "unknown method 'nope'", "radial")


@pytest.mark.parametrize("argv, fragments", [
    (["--width", "0"], ["--width", "must be an int >= 1, got '0'"]),
    (["--height", "-16"], ["--height", "must be an int >= 1"]),
    (["--width", "abc"], ["--width", "must be an int >= 1, got 'abc'"]),
    (["--height", "30"], ["--height 30 is not a multiple of 16 px", "use 16 or 32"]),
    (["--width", "8"], ["--width 8 is not a multiple of 16 px", "use 16"]),
    (["--frames", "0"], ["--frames", "must be an int >= 1, got '0'"]),
    (["--frames", "-5"], ["--frames", "must be an int >= 1, got '-5'"]),
    (["--frames", "10"], ["--frames 10 is not 1 + a multiple of 4", "use 9 or 13"]),
    (["--steps", "-1"], ["--steps", "must be an int >= 1"]),
    (["--steps", "0"], ["--steps", "must be an int >= 1, got '0'"]),
    (["--fps", "0"], ["--fps", "must be an int >= 1, got '0'"]),
    (["--seed", "-1"], ["--seed", "got '-1'"]),
    (["--dense-steps", "-1"], ["--dense-steps", "an int >= 0", "a fraction in [0, 1)", "got '-1'"]),
    (["--dense-steps", "1.5"], ["--dense-steps", "a fraction in [0, 1)", "got '1.5'"]),
    (["--block-size", "0"], ["--block-size", "must be an int >= 1, got '0'"]),
    (["--num-processes", "0"], ["--num-processes", "must be an int >= 1"]),
    (["--num-processes", "2"], ["--num-processes 2 applies to batch mode (--prompts)"]),
    (["--ulysses", "0"], ["--ulysses", "must be an int >= 1, got '0'"]),
    (["--ulysses", "2"], ["--ulysses 2 applies to batch mode (--prompts)"]),
    (["--opt", "decay_factor"], ["--opt", "expects key=value", "'decay_factor'"]),
    (["--opt", "decay_factor=abc"], ["option 'decay_factor' must be a positive number, got 'abc'"]),
    (["--opt", "nope=1"], ["unknown option 'nope' for method 'radial'", "decay_factor"]),
    (["--method", "sliding_window", "--opt", "window=(0,1,1)"], ["option 'window'", "positive ints"]),
    (["--method", "paro"], ["method 'paro' needs plan="]),
    (["--method", "paro", "--opt", "plan=missing_plan.pt"], ["no PARO plan file at 'missing_plan.pt'"]),
    (["--device", "foo"], ["--device", "'foo' is not a device", "cpu"]),
])
def test_render_refuses_bad_values_before_loading_a_model(tmp_path, capsys, argv, fragments):
    refused(capsys, ["render", "--out", str(tmp_path / "x.mp4"), *argv], *fragments)
    assert not (tmp_path / "x.mp4").exists()


def test_render_refuses_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(capsys, ["render", "--device", "cuda", "--out", str(tmp_path / "x.mp4")],
            "--device", "no CUDA GPU", "use cpu")


def test_render_refuses_bad_output_paths(tmp_path, capsys):
    refused(capsys, ["render", "--out", str(tmp_path / "missing" / "x.mp4")],
            "--out", "does not exist")
    refused(capsys, ["render", "--out", str(tmp_path / "x.txt")], "--out", "must end in .mp4", ".gif")
    refused(capsys, ["render", "--out", str(tmp_path / "x.webm")], "must end in .mp4")
    refused(capsys, ["render", "--method", "adaspa", "--out", str(tmp_path / "x.mp4"),
                     "--save-layouts", str(tmp_path / "missing" / "a.pt")], "--save-layouts", "does not exist")


def test_render_refuses_bad_prompt_files(tmp_path, capsys):
    refused(capsys, ["render", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "v")],
            "--prompts", "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    refused(capsys, ["render", "--prompts", str(empty), "--out", str(tmp_path / "v")], "--prompts", "no prompts")
    ok = tmp_path / "p.txt"
    ok.write_text("a red square\n")
    refused(capsys, ["render", "--prompts", str(ok), "--out", str(tmp_path / "v"), "--compare", "dense"],
            "--compare", "does not apply with --prompts")


def test_render_checks_a_model_folder_before_loading_it(tmp_path, capsys):
    """Sizes and options are checked against the folder's pipeline family before any weights are read (the
    folders here have none: loading them would fail differently)."""
    wan = tmp_path / "wan"
    wan.mkdir()
    (wan / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    out = str(tmp_path / "x.mp4")
    refused(capsys, ["render", "--model", str(wan), "--out", out, "--height", "472"], "--height 472", "use 464 or 480")
    refused(capsys, ["render", "--model", str(wan), "--out", out, "--frames", "32"], "--frames 32", "use 29 or 33")
    refused(capsys, ["render", "--model", str(wan), "--out", out, "--opt", "decay_factor=-1"], "decay_factor")
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    refused(capsys, ["render", "--model", str(flux), "--out", out], "FluxPipeline", "image model")
    # a folder Diffusers cannot load is one line too
    refused(capsys, ["render", "--model", str(wan), "--out", out, "--frames", "5", "--height", "32", "--width", "32"],
            "WanPipeline", "expected", after_load=True)


def test_render_refuses_options_only_the_loaded_model_can_check(tmp_path, capsys):
    """Shared settings given through --opt are checked by enabling on the loaded model, before any rendering."""
    out = tmp_path / "x.mp4"
    refused(capsys, ["render", "--method", "grat", "--opt", "dense_layers=-1", "--out", str(out), "--frames", "5",
                     "--height", "32", "--width", "32", "--steps", "1"], "dense_layers must be an int >= 0",
            after_load=True)
    assert not out.exists()


def test_render_accepts_what_the_api_accepts(tmp_path):
    """Values the API takes parse and pass the pre-load checks: a dense-steps fraction, 4k+1 frames, literals."""
    from diffsparse.cli import _check_render, _method_options

    args = build_parser().parse_args(["render", "--dense-steps", "0.25", "--frames", "1", "--opt", "decay_factor=0.5",
                                      "--opt", "band=paper", "--opt", "attention_sink=False",
                                      "--out", str(tmp_path / "x.gif")])
    assert args.dense_steps == 0.25 and isinstance(args.dense_steps, float)
    _check_render(args)
    opts = _method_options(args)
    assert {k: opts[k] for k in ("decay_factor", "band", "attention_sink", "dense_steps")} == {
        "decay_factor": 0.5, "band": "paper", "attention_sink": False, "dense_steps": 0.25}
    args = build_parser().parse_args(["render", "--dense-steps", "3", "--method", "paro", "--opt",
                                      f"plan={tmp_path / 'p.pt'}", "--out", str(tmp_path / "x.mp4")])
    assert args.dense_steps == 3 and isinstance(args.dense_steps, int)
    assert _method_options(args)["plan"] == str(tmp_path / "p.pt")  # not a literal: kept as text
    args = build_parser().parse_args(["render", "--out", str(tmp_path / "x.mp4")])
    _check_render(args)  # the embedded model's defaults pass its own checks
    from diffsparse.render import EMBEDDED_DEFAULTS

    assert (args.frames, args.height, args.width, args.steps) == tuple(
        EMBEDDED_DEFAULTS[k] for k in ("frames", "height", "width", "steps"))


def test_every_option_says_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subparsers) == {"render", "show-mask", "eval", "bench"}
    for name, sub in subparsers.items():
        fmt = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            text = fmt._get_help_string(action)
            assert text and "default" in text, (name, action.option_strings, text)
    from diffsparse.render import EMBEDDED_DEFAULTS, MODEL_DEFAULTS

    help_text = subparsers["render"].format_help()
    assert f"default: {EMBEDDED_DEFAULTS['frames']} for the embedded model, {MODEL_DEFAULTS['frames']} for --model" \
        in " ".join(help_text.split())


def test_errors_are_one_line_from_python_m_and_the_console_script(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [[sys.executable, "-m", "diffsparse", "render", "--width", "0"]]
    script = shutil.which("diffsparse") or os.path.join(os.path.dirname(sys.executable), "diffsparse")
    if os.path.exists(script):
        runs.append([script, "show-mask", "--method", "adaspa", "--out", str(tmp_path / "m.png")])
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_show_mask_png_and_density(tmp_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["show-mask", "--method", "radial", "--frames", "33", "--height", "256", "--width", "256",
                 "--block-size", "64", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100
    grid = diffsparse.token_grid("wan", 33, 256, 256)
    density = diffsparse.preview_layout("radial", grid, "wan", block_size=64).index.density
    assert f"density {density:.3f}" in capsys.readouterr().out


def test_show_mask_bad_option_names_it(tmp_path, capsys):
    refused(capsys, ["show-mask", "--method", "grat", "--opt", "nope=1", "--out", str(tmp_path / "m.png")],
            "unknown option 'nope'")


@pytest.mark.parametrize("argv, fragments", [
    (["--method", "nope"], ["unknown method 'nope'"]),
    (["--method", "adaspa"], ["'adaspa' decides its layout per head", "render --method adaspa --save-layouts"]),
    (["--method", "paro"], ["render --method paro --save-layouts"]),
    (["--frames", "0"], ["--frames", "must be an int >= 1, got '0'"]),
    (["--frames", "80"], ["--frames 80 is not 1 + a multiple of 4", "use 77 or 81"]),
    (["--height", "0"], ["--height", "must be an int >= 1"]),
    (["--width", "830"], ["--width 830 is not a multiple of 16 px", "use 816 or 832"]),
    (["--block-size", "0"], ["--block-size", "must be an int >= 1, got '0'"]),
    (["--text-len", "-5"], ["--text-len", "must be an int >= 0, got '-5'"]),
    (["--model-family", "flux"], ["method 'radial' does not support flux models"]),
    (["--model-family", "flux", "--method", "adaspa"], ["'adaspa' decides its layout per head"]),
    (["--model-family", "flux", "--method", "grat", "--frames", "5"], ["--frames 5", "one frame"]),
    (["--model-family", "sd3"], ["--model-family", "invalid choice: 'sd3'"]),
    (["--layer", "1"], ["--layer", "only with --layouts"]),
    (["--opt", "radius"], ["--opt", "expects key=value"]),
])
def test_show_mask_refuses_bad_values(tmp_path, capsys, argv, fragments):
    refused(capsys, ["show-mask", "--out", str(tmp_path / "m.png"), *argv], *fragments)
    assert not (tmp_path / "m.png").exists()


def test_show_mask_flux_draws_one_frame(tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["show-mask", "--model-family", "flux", "--method", "grat", "--height", "256", "--width", "256",
                 "--block-size", "64", "--out", str(out)]) == 0
    assert "density" in capsys.readouterr().out and cv2.imread(str(out)) is not None


def test_show_mask_refuses_files_that_are_not_layouts(tmp_path, capsys):
    out = str(tmp_path / "m.png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    refused(capsys, ["show-mask", "--layouts", str(text), "--out", out], "is not a layouts file", "--save-layouts")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    refused(capsys, ["show-mask", "--layouts", str(other), "--out", out], "is not a layouts file")
    refused(capsys, ["show-mask", "--layouts", str(tmp_path / "none.pt"), "--out", out], "no layouts file")
    refused(capsys, ["show-mask", "--out", str(tmp_path / "m.jpg")], "--out", "must end in .png")
    refused(capsys, ["show-mask", "--out", str(tmp_path / "missing" / "m.png")], "--out", "does not exist")


def test_token_grid_matches_released_models():
    assert diffsparse.token_grid("wan", 81, 480, 832).dims == (21, 30, 52)
    assert diffsparse.token_grid("hunyuan", 129, 720, 1280).dims == (33, 45, 80)
    assert diffsparse.token_grid("flux", 1, 1024, 1024).dims == (1, 64, 64)
    with pytest.raises(ValueError, match="impossible video size"):
        diffsparse.token_grid("wan", 0, 480, 832)


def test_bench_runs_the_transformer_script(capsys):
    assert main(["bench", "transformer", "--frames", "2", "--height", "8", "--width", "8", "--repeats", "1",
                 "--layers", "1", "--methods", "dense,grat", "--block-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "grat" in out and "device:" in out


@pytest.mark.slow
def test_batch_render_two_processes_writes_each_prompt_once(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\n\na blue circle bouncing\na green triangle growing\n")
    out = tmp_path / "videos"
    assert main(["render", "--prompts", str(prompts), "--num-processes", "2", "--out", str(out), "--frames", "5",
                 "--height", "32", "--width", "32", "--steps", "1", "--method", "grat"]) == 0
    files = sorted(p.name for p in out.glob("*.mp4"))
    assert files == ["0000_a_red_square_moving_left.mp4", "0001_a_blue_circle_bouncing.mp4", "0002_a_green_triangle_growing.mp4"]
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    # the same manifest a torchrun launch writes (tests/test_batch_distributed.py): both spawned ranks worked
    assert manifest["complete"] is True and manifest["failed"] == []
    assert (manifest["world_size"], manifest["ulysses"], manifest["groups"]) == (2, 1, 2)
    assert [(row["index"], row["rank"]) for row in manifest["videos"]] == [(0, 0), (1, 1), (2, 0)]
    assert [row["file"] for row in manifest["videos"]] == files
    assert "wrote 3 videos to" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_dynamic_layouts_are_recorded_and_drawn_per_head(tmp_path, capsys):
    layouts = tmp_path / "ada.pt"
    assert main(["render", "--method", "adaspa", "--out", str(tmp_path / "a.mp4"), "--frames", "9", "--height", "64",
                 "--width", "96", "--steps", "3", "--save-layouts", str(layouts)]) == 0
    png = tmp_path / "heads.png"
    assert main(["show-mask", "--layouts", str(layouts), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "heads x" in text and cv2.imread(str(png)) is not None
    refused(capsys, ["show-mask", "--layouts", str(layouts), "--layer", "99", "--out", str(png)], "recorded layers")
    refused(capsys, ["show-mask", "--layouts", str(tmp_path / "none.pt"), "--out", str(png)], "no layouts file")
