"""Shared helpers for the pipeline-level tests (tiny offline pipelines)."""

import torch

from diffsparse.pipelines import ADAPTERS, adapter_for_family
from diffsparse.tiny import example_inputs

# Shapes chosen so token counts do not divide the block sizes used in the tests.
CALLS = {
    "wan": dict(height=48, width=80, num_frames=13, num_inference_steps=3, guidance_scale=5.0, output_type="np"),
    "hunyuan": dict(height=48, width=48, num_frames=9, num_inference_steps=2, output_type="np"),
    "flux": dict(height=128, width=112, num_inference_steps=2, output_type="np"),
}
#: every registered family's tiny pipeline (a new adapter brings its own builder; give it CALLS above)
BUILDERS = {a.family: a.tiny_pipeline for a in ADAPTERS}


def render(pipe, family, seed=0, **overrides):
    """Run a tiny pipeline with fixed noise; returns float frames/images as a tensor."""
    kwargs = dict(example_inputs(family, valid_text=5 if family == "hunyuan" else None), **CALLS[family])
    kwargs.update(overrides)
    res = pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    out = res.images if adapter_for_family(family).single_frame else res.frames
    return torch.as_tensor(out[0])


def train_tiny_reference(cfg: dict, tmp_path):
    """Train a tiny reference-model config for 2 steps, resume to 3, and check the log; returns the run folder
    (its `export/` is the shippable weights folder)."""
    import json

    import numpy as np

    from diffsparse.reference import train

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        train.main(["--config", str(path), "--out", str(out), "--threads", "1"])
        assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 2
        train.main(["--config", str(path), "--out", str(out), "--steps", "3", "--resume", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 3
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    return out
