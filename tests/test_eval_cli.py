"""`diffsparse eval` round trip on small mp4 files, and its errors."""

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from diffsparse.cli import main
from diffsparse.metrics import load_video, psnr, ssim


def write(path, frames):
    iio.imwrite(path, frames, fps=8, codec="libx264", quality=10)


def clip(shift=0, seed=0):
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.integers(0, 255, (20, 40, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    return np.stack([tex[:64, 2 * t + shift : 2 * t + shift + 64] for t in range(9)])


def test_eval_folders_matched_by_name_writes_json_and_table(tmp_path):
    (tmp_path / "dense").mkdir()
    (tmp_path / "sparse").mkdir()
    for name, seed in (("a.mp4", 0), ("b.mp4", 1)):
        write(tmp_path / "dense" / name, clip(seed=seed))
        write(tmp_path / "sparse" / name, clip(shift=1, seed=seed))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "diffsparse", "eval", str(tmp_path / "sparse"), "--reference",
                           str(tmp_path / "dense"), "--json", str(out), "--weights-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, check=True)
    header = proc.stdout.splitlines()[0].split()
    assert header == ["metric", "candidate", "reference", "delta", "better-is", "impl"]
    assert "psnr" in proc.stdout and "proxy*" in proc.stdout
    r = json.loads(out.read_text())
    assert [v["id"] for v in r["per_video"]] == ["a.mp4", "b.mp4"]
    m = r["metrics"]
    # The JSON agrees with the library on the decoded files (one-pixel shift: far from identical).
    pairs = [(load_video(str(tmp_path / "sparse" / n))[0], load_video(str(tmp_path / "dense" / n))[0])
             for n in ("a.mp4", "b.mp4")]
    assert m["psnr"]["impl"] == "exact" and m["psnr"]["value"] == pytest.approx(np.mean([psnr(c, d) for c, d in pairs]))
    assert m["ssim"]["value"] == pytest.approx(np.mean([ssim(c, d) for c, d in pairs])) and m["ssim"]["value"] < 0.95
    assert r["per_video"][0]["fps"] == pytest.approx(8.0)
    assert m["temporal_flickering"]["reference"] is not None
    assert m["lpips"]["impl"] == "skipped" and str(tmp_path / "none" / "lpips") in m["lpips"]["reason"]


def test_eval_single_file_without_reference(tmp_path, capsys):
    write(tmp_path / "x.mp4", clip())
    assert main(["eval", str(tmp_path / "x.mp4"), "--json", str(tmp_path / "x.json")]) == 0
    r = json.loads((tmp_path / "x.json").read_text())
    assert r["metrics"]["psnr"]["impl"] == "skipped" and r["metrics"]["temporal_flickering"]["value"] < 1.0


def test_gif_is_read_with_its_frame_rate(tmp_path):
    frames = clip()
    iio.imwrite(tmp_path / "g.gif", frames, duration=100, loop=0)  # 100 ms per frame = 10 fps (GIF stores 1/100 s)
    assert main(["eval", str(tmp_path / "g.gif"), "--reference", str(tmp_path / "g.gif"),
                 "--json", str(tmp_path / "g.json")]) == 0
    r = json.loads((tmp_path / "g.json").read_text())
    assert r["per_video"][0]["fps"] == pytest.approx(10.0) and r["per_video"][0]["frames"] == len(frames)
    assert r["metrics"]["psnr"]["value"] is None and r["metrics"]["psnr"]["identical"] is True
    assert r["metrics"]["ssim"]["value"] == pytest.approx(1.0)


def refused(capsys, argv, *fragments):
    """`main(argv)` exits with status 2 and one stderr line `error: ...` holding every fragment, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_eval_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "r").mkdir()
    write(tmp_path / "c" / "only_here.mp4", clip())
    refused(capsys, ["eval", str(tmp_path / "c"), "--reference", str(tmp_path / "r")], "only_here.mp4")
    refused(capsys, ["eval", str(tmp_path / "missing.mp4")], "does not exist")
    refused(capsys, ["eval", str(tmp_path / "c" / "only_here.mp4"), "--reference", str(tmp_path / "r")],
            "is a file but reference")
    refused(capsys, ["eval", str(tmp_path / "r")], "no videos")
    (tmp_path / "notes.txt").write_text("hello")
    refused(capsys, ["eval", str(tmp_path / "notes.txt")], "is not a video file", ".mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    line = refused(capsys, ["eval", str(tmp_path / "bad.mp4"), "--json", str(tmp_path / "b.json")],
                   "cannot read video", "bad.mp4", "Invalid data")
    assert "ffmpeg version" not in line and "configuration:" not in line  # no banner


@pytest.mark.parametrize("argv, fragments", [
    (["--json", "{missing}/r.json"], ["--json", "does not exist"]),
    (["--json", "{tmp}"], ["--json", "must end in .json"]),
    (["--fps", "-3"], ["--fps", "must be a number >= 1, got '-3'"]),
    (["--fps", "0"], ["--fps", "got '0'"]),
    (["--fps", "nan"], ["--fps", "got 'nan'"]),
])
def test_eval_refuses_bad_options_before_reading_videos(tmp_path, capsys, argv, fragments):
    write(tmp_path / "x.mp4", clip())
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in argv]
    refused(capsys, ["eval", str(tmp_path / "x.mp4"), *argv], *fragments)


def test_eval_of_an_unreadable_file_prints_one_line_without_the_ffmpeg_banner(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    proc = subprocess.run([sys.executable, "-m", "diffsparse", "eval", "bad.mp4"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot read video 'bad.mp4'"), proc.stderr
    assert "ffmpeg version" not in proc.stderr and not (tmp_path / "eval.json").exists()


def test_reader_error_keeps_ffmpegs_complaint_only():
    from diffsparse.metrics.video import reader_error

    err = OSError("Could not load meta information\n=== stderr ===\n\nffmpeg version n7 Copyright (c) the FFmpeg "
                  "developers\n  built with gcc 13\n  configuration: --enable-gpl\n  libavutil      59. 1.100\n"
                  "[in#0 @ 0x5] moov atom not found\n"
                  "Error opening input files: Invalid data found when processing input")
    assert reader_error(err) == ("Could not load meta information (ffmpeg: Error opening input files: Invalid data "
                                 "found when processing input)")
    assert reader_error(ValueError("plain message")) == "plain message"
