"""Batch rendering and evaluation under a standard launcher: `torchrun` with CPU processes over gloo.

Each launch is a real `python -m torch.distributed.run --standalone` subprocess running the module / script a
user runs; the single-process renders they are compared with run here, in-process.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from diffsparse.batch import Ranks, output_name, render_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red square moving left", "a blue circle bouncing", "a green triangle growing"]
SIZE = {"frames": 9, "height": 64, "width": 64, "steps": 2}  # 48 tokens: radial keeps 8 of 9 blocks of 16
SIZE_ARGS = [arg for key, value in SIZE.items() for arg in (f"--{key}", str(value))]
METHOD = ["--method", "radial", "--block-size", "16"]


def torchrun(nproc, *argv, cwd=ROOT):
    """`torchrun --standalone --nproc_per_node nproc <argv>`: its exit status and stdout + stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *argv]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc.returncode, proc.stdout + proc.stderr


def render_under_torchrun(tmp_path, nproc, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "videos"
    rc, log = torchrun(nproc, "-m", "diffsparse", "render", "--prompts", str(prompts), "--out", str(out),
                       *SIZE_ARGS, *METHOD, *extra)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    return rc, log, out, manifest


def frames(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame.astype(np.float32))
    cap.release()
    assert out, path
    return np.stack(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The prompts rendered by one process (no launcher): the reference for every launch."""
    out = tmp_path_factory.mktemp("single")
    manifest = render_batch(PROMPTS, str(out), "radial", 1, method_options={"block_size": 16}, **SIZE, seed=0)
    assert manifest["complete"] and [row["rank"] for row in manifest["videos"]] == [0, 0, 0]
    videos = {row["index"]: frames(out / row["file"]) for row in manifest["videos"]}
    # the prompts draw different videos, so a prompt rendered in another's place cannot pass for it
    for i in range(len(PROMPTS)):
        for j in range(i):
            assert np.abs(videos[i] - videos[j]).mean() > 5, (i, j)
    return videos


def test_groups_of_consecutive_ranks_share_items_round_robin():
    ranks = [Ranks(rank=r, world=8, local_rank=r % 4, local_world=4, ulysses=2) for r in range(8)]
    assert [(r.group, r.leader) for r in ranks] == [(g, lead) for g in range(4) for lead in (True, False)]
    items = list("abcdefghij")
    shares = [r.share(items) for r in ranks]
    assert shares[0] == shares[1] == [(0, "a"), (4, "e"), (8, "i")]  # a group renders together
    assert sorted(i for r in ranks if r.leader for i, _ in r.share(items)) == list(range(10))  # once each
    assert Ranks().share(items) == list(enumerate(items))  # one process: everything, in order
    with pytest.raises(ValueError, match="ulysses=3 must divide the world size 8"):
        Ranks(rank=0, world=8, ulysses=3)


def assert_same_videos(out, manifest, single):
    for row in manifest["videos"]:
        got, want = frames(out / row["file"]), single[row["index"]]
        assert got.shape == want.shape
        assert np.abs(got - want).mean() < 0.5, (row, np.abs(got - want).mean())


def assert_complete(out, manifest):
    assert manifest["complete"] is True and manifest["failed"] == []
    assert [row["index"] for row in manifest["videos"]] == list(range(len(PROMPTS)))  # every prompt exactly once
    assert [row["prompt"] for row in manifest["videos"]] == PROMPTS
    for row in manifest["videos"]:
        assert row["file"] == output_name(row["index"], row["prompt"]) and (out / row["file"]).is_file()
        assert row["dit_seconds"] > 0 and 0 < row["density"] < 1  # sparse, under Ulysses too
    written = [row["file"] for row in manifest["videos"]] + ["manifest.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # no partial files, no per-rank leftovers


@pytest.mark.slow
def test_torchrun_ranks_render_each_prompt_once(tmp_path, single):
    rc, log, out, manifest = render_under_torchrun(tmp_path, 2)
    assert rc == 0, log
    assert_complete(out, manifest)
    assert (manifest["world_size"], manifest["ulysses"], manifest["groups"]) == (2, 1, 2)
    # both ranks worked: prompts 0 and 2 on rank 0, prompt 1 on rank 1
    assert [row["rank"] for row in manifest["videos"]] == [0, 1, 0]
    assert_same_videos(out, manifest, single)
    # rank 0 reports once for all ranks
    assert log.count("wrote 3 videos to") == 1 and "by 2 ranks" in log
    for row in manifest["videos"]:
        assert log.count(f"{row['file']}: DiT") == 1


@pytest.mark.slow
def test_ulysses_groups_split_prompts_and_render_what_one_process_renders(tmp_path, single):
    """4 ranks, --ulysses 2: 2 groups of 2 ranks; each group's first rank (0, 2) writes its group's videos."""
    rc, log, out, manifest = render_under_torchrun(tmp_path, 4, "--ulysses", "2")
    assert rc == 0, log
    assert_complete(out, manifest)
    assert (manifest["world_size"], manifest["ulysses"], manifest["groups"]) == (4, 2, 2)
    assert [(row["rank"], row["group"]) for row in manifest["videos"]] == [(0, 0), (2, 1), (0, 0)]
    assert "2 groups of 2, Ulysses" in log
    assert_same_videos(out, manifest, single)


@pytest.mark.slow
def test_a_prompt_failing_on_one_rank_is_reported_and_not_claimed(tmp_path):
    """Prompt 1's output path is taken by a folder: rank 1 cannot write its video. The run goes on, exits 1 naming
    the prompt, and the manifest says incomplete and lists the video nowhere but under "failed"."""
    out = tmp_path / "videos"
    (out / output_name(1, PROMPTS[1])).mkdir(parents=True)
    rc, log, out, manifest = render_under_torchrun(tmp_path, 2)
    assert rc != 0, log
    assert f"error: prompt 1 {PROMPTS[1]!r} failed on rank 1" in log
    assert "1 of 3 prompts failed" in log
    assert manifest["complete"] is False
    assert [row["index"] for row in manifest["videos"]] == [0, 2]  # rank 0's prompts were written
    assert [(row["index"], row["prompt"], row["rank"]) for row in manifest["failed"]] == [(1, PROMPTS[1], 1)]
    assert manifest["failed"][0]["error"]
    assert all((out / row["file"]).is_file() for row in manifest["videos"])
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_launched_ranks_refuse_num_processes_and_bad_ulysses(tmp_path, monkeypatch, capsys):
    from test_cli import refused

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square\n")
    base = ["render", "--prompts", str(prompts), "--out", str(tmp_path / "v"), *SIZE_ARGS]
    refused(capsys, base + ["--num-processes", "3", "--ulysses", "2"], "--ulysses 2 must divide the world size",
            "--num-processes 3")
    refused(capsys, base + ["--num-processes", "3", "--ulysses", "3"],
            "--ulysses 3 must divide the attention heads of the embedded model (4)")
    monkeypatch.setenv("WORLD_SIZE", "2")
    refused(capsys, base + ["--num-processes", "2"], "--num-processes 2", "already one of 2 ranks under a launcher",
            "drop --num-processes")
    refused(capsys, base + ["--ulysses", "4"], "--ulysses 4 must divide the world size (WORLD_SIZE=2")
    assert not (tmp_path / "v").exists()


def load_run_eval():
    spec = importlib.util.spec_from_file_location("run_eval_under_test", os.path.join(ROOT, "eval", "run_eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_run_eval_under_torchrun_scores_what_one_process_scores(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    argv = ["--prompts", str(prompts), "--methods", "radial", *SIZE_ARGS, "--block-size", "16",
            "--out-root", str(tmp_path), "--weights-dir", str(tmp_path / "no_weights")]
    rc, log = torchrun(2, os.path.join(ROOT, "eval", "run_eval.py"), *argv, "--run-name", "two")  # torchrun takes --run
    assert rc == 0, log
    assert load_run_eval().main(argv + ["--run", "one"]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["run"]["ranks"] == {"world_size": 2, "ulysses": 1, "groups": 2} and "ranks" not in one["run"]
    # 4 jobs (2 prompts x dense, radial) over 2 ranks: both rendered, each job once
    jobs = sorted(re.findall(r"\[(\d)/2\] (\w+) +DiT .*\(rank (\d)\)", log))  # (prompt, method, rank)
    assert jobs == [("1", "dense", "0"), ("1", "radial", "1"), ("2", "dense", "0"), ("2", "radial", "1")], log
    timings = ("dit_s", "speedup")
    assert [{k: v for k, v in row.items() if k not in timings} for row in two["rows"]] == \
        [{k: v for k, v in row.items() if k not in timings} for row in one["rows"]]
    assert two["metrics"] == one["metrics"] and two["per_video"] == one["per_video"]
    assert (tmp_path / "two" / "results.md").is_file() and (tmp_path / "two" / "quality_vs_speed.png").is_file()
