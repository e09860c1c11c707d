"""`diffsparse eval` round trip on small mp4 files, and its errors."""

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from diffsparse.cli import main


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
    assert "metric" in proc.stdout and "psnr" in proc.stdout and "proxy*" in proc.stdout
    r = json.loads(out.read_text())
    assert [v["id"] for v in r["per_video"]] == ["a.mp4", "b.mp4"]
    m = r["metrics"]
    assert m["psnr"]["impl"] == "exact" and 5 < m["psnr"]["value"] < 60
    assert 0 < m["ssim"]["value"] < 1
    assert m["temporal_flickering"]["reference"] is not None
    assert m["lpips"]["impl"] == "skipped"


def test_eval_single_file_without_reference(tmp_path, capsys):
    write(tmp_path / "x.mp4", clip())
    assert main(["eval", str(tmp_path / "x.mp4"), "--json", str(tmp_path / "x.json")]) == 0
    r = json.loads((tmp_path / "x.json").read_text())
    assert r["metrics"]["psnr"]["impl"] == "skipped" and r["metrics"]["temporal_flickering"]["value"] < 1.0


def test_eval_errors_name_the_problem(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "r").mkdir()
    write(tmp_path / "c" / "only_here.mp4", clip())
    with pytest.raises(SystemExit, match="only_here.mp4"):
        main(["eval", str(tmp_path / "c"), "--reference", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["eval", str(tmp_path / "missing.mp4")])
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(SystemExit, match="cannot read video"):
        main(["eval", str(tmp_path / "bad.mp4")])
