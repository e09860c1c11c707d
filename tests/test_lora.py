"""LoRA length-extension script: 2 CPU steps on a tiny Wan, resume, reload with load_lora_weights; data errors."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "loras", "train_length_extension.py")
sys.path.insert(0, os.path.join(ROOT, "loras"))
from video_data import list_clips, load_clip  # noqa: E402


def write_clips(folder, n=2, frames=17, captions=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        iio.imwrite(os.path.join(folder, f"c{i}.mp4"), (rng.random((frames, 32, 32, 3)) * 255).astype(np.uint8), fps=8)
    if captions:
        with open(os.path.join(folder, "captions.json"), "w") as f:
            json.dump({f"c{i}.mp4": f"clip number {i}" for i in range(n)}, f)


def train(tmp_path, *extra):
    cmd = [sys.executable, SCRIPT, "--tiny", "--data", str(tmp_path / "clips"), "--frames", "17", "--height", "32",
           "--width", "32", "--method", "radial", "--block-size", "4", "--rank", "4", "--save-every", "1",
           "--output-dir", str(tmp_path / "lora"), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.slow
def test_two_steps_resume_and_reload(tmp_path):
    write_clips(tmp_path / "clips")
    out = train(tmp_path, "--steps", "2")
    assert "training density" in out
    lora = tmp_path / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").exists()
    assert len((lora / "loss.jsonl").read_text().splitlines()) == 2
    out = train(tmp_path, "--steps", "3", "--resume")
    assert "resumed from" in out and "checkpoint-2" in out
    assert [json.loads(x)["step"] for x in (lora / "loss.jsonl").read_text().splitlines()] == [1, 2, 3]

    from diffsparse.tiny import example_inputs, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    kwargs = dict(example_inputs("wan"), height=32, width=32, num_frames=9, num_inference_steps=2, output_type="np")
    before = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    pipe.load_lora_weights(str(lora))
    after = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    assert not np.array_equal(before, after)  # the adapter is loaded and active


def test_data_errors_name_the_files(tmp_path):
    write_clips(tmp_path / "nocap", captions=False)
    with pytest.raises(ValueError, match="missing captions.*c0.mp4.*c1.mp4"):
        list_clips(str(tmp_path / "nocap"))
    write_clips(tmp_path / "short", n=1, frames=5)
    clip = list_clips(str(tmp_path / "short"))[0]
    with pytest.raises(ValueError, match="has 5 frames; training needs at least 17"):
        load_clip(clip, 17, 32, 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"not a video")
    (tmp_path / "bad" / "x.txt").write_text("caption")
    with pytest.raises(ValueError, match="cannot read video"):
        load_clip(list_clips(str(tmp_path / "bad"))[0], 5, 32, 32)
    with pytest.raises(ValueError, match="does not exist"):
        list_clips(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_procedural_clips_with_caption_dropout_on_the_reference_model(tmp_path):
    out = tmp_path / "lora"
    cmd = [sys.executable, SCRIPT, "--reference", "--procedural", "3", "--frames", "9", "--height", "32", "--width", "32",
           "--method", "radial", "--block-size", "4", "--rank", "2", "--steps", "2", "--caption-dropout", "0.5",
           "--output-dir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((out / "cache").glob("proc*.pt"))) == 3
    assert json.loads((out / "args.json").read_text())["procedural"] == 3
    from diffsparse.reference import data as D

    held = {s.caption for s in D.held_out_specs()}
    for path in (out / "cache").glob("proc*.pt"):
        assert torch.load(path)["embeds"].shape[0] == 512  # padded as WanPipeline pads at inference
    captions = [D.sample(i, seed=1, num_frames=1, height=8, width=8)[1] for i in range(3)]
    assert not held.intersection(captions)  # training never sees a held-out caption


def test_training_source_options_are_exclusive_and_required():
    import train_length_extension as T

    a = T.parse_args(["--reference", "--procedural", "8", "--frames", "33", "--output-dir", "out"])
    assert a.reference and a.procedural == 8 and a.data is None
    for bad in (["--reference", "--frames", "33"],  # no data source
                ["--reference", "--procedural", "8", "--data", "clips", "--frames", "33"],  # two data sources
                ["--reference", "--tiny", "--procedural", "8", "--frames", "33"]):  # two models
        with pytest.raises(SystemExit):
            T.parse_args(bad + ["--output-dir", "out"])


def test_acceptance_metrics():
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import lora_acceptance as A

    still = np.full((5, 8, 8, 3), 100, np.uint8)
    assert A.temporal_flickering(still) == 1.0 and A.psnr(still, still) is None
    steps = still.copy()
    steps[1::2] = 151  # every adjacent pair differs by 51 everywhere
    assert A.temporal_flickering(steps) == pytest.approx((255 - 51) / 255)
    assert A.psnr(steps, still) == pytest.approx(10 * np.log10(255**2 / (51**2 * 2 / 5)))
    p = A._paired([1, 0, 1, 1], [0, 0, 1, 0])
    assert (p["higher"], p["lower"], p["equal"]) == (2, 0, 2) and p["mean_diff"] == 0.5


def test_memory_estimate_counts_parameters_and_tokens_exactly():
    import math

    import estimate_memory as E  # loras/ is on sys.path (above)
    from diffusers import WanTransformer3DModel

    import diffsparse

    cfg = {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 32, "num_layers": 2, "in_channels": 4,
           "out_channels": 4, "text_dim": 16, "freq_dim": 16}
    est = E.estimate(cfg, frames=17, height=96, width=160, rank=4)
    assert est["parameters"] == sum(p.numel() for p in WanTransformer3DModel(**cfg).parameters())
    assert est["video_tokens"] == math.prod(diffsparse.token_grid("wan", 17, 96, 160).dims)
    assert est["lora_parameters"] == 2 * 4 * 4 * (24 + 24)
    longer = E.estimate(cfg, frames=33, height=96, width=160, rank=4)
    assert longer["checkpointed block inputs"] > est["checkpointed block inputs"]
    assert longer["frozen weights"] == est["frozen weights"]
