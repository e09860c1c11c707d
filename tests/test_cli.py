"""CLI round trips on tiny sizes: render (with --compare dense) and show-mask."""

import cv2
import imageio.v3 as iio
import pytest

import diffsparse
from diffsparse.cli import main


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


def test_render_refuses_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="local Diffusers pipeline folder"):
        main(["render", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.mp4")])


def test_render_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        main(["render", "--method", "nope", "--out", str(tmp_path / "x.mp4")])


def test_show_mask_png_and_density(tmp_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["show-mask", "--method", "radial", "--frames", "33", "--height", "256", "--width", "256",
                 "--block-size", "64", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100
    grid = diffsparse.token_grid("wan", 33, 256, 256)
    density = diffsparse.preview_layout("radial", grid, "wan", block_size=64).index.density
    assert f"density {density:.3f}" in capsys.readouterr().out


def test_show_mask_bad_option_names_it(tmp_path):
    with pytest.raises(TypeError, match="unknown option 'nope'"):
        main(["show-mask", "--method", "grat", "--opt", "nope=1", "--out", str(tmp_path / "m.png")])


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
    assert [row["index"] for row in manifest] == [0, 1, 2]
    assert not list(out.glob(".rank*"))


def test_dynamic_layouts_are_recorded_and_drawn_per_head(tmp_path, capsys):
    layouts = tmp_path / "ada.pt"
    assert main(["render", "--method", "adaspa", "--out", str(tmp_path / "a.mp4"), "--frames", "9", "--height", "64",
                 "--width", "96", "--steps", "3", "--save-layouts", str(layouts)]) == 0
    png = tmp_path / "heads.png"
    assert main(["show-mask", "--layouts", str(layouts), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "heads x" in text and cv2.imread(str(png)) is not None
    with pytest.raises(SystemExit, match="recorded layers"):
        main(["show-mask", "--layouts", str(layouts), "--layer", "99", "--out", str(png)])
    with pytest.raises(SystemExit, match="no layouts file"):
        main(["show-mask", "--layouts", str(tmp_path / "none.pt"), "--out", str(png)])
