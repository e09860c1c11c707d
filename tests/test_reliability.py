"""Regression tests for defects found by trying the library as a new user would (each failed before its fix)."""

import pytest
import torch

import diffsparse
from diffsparse.tiny import example_inputs, tiny_wan_pipeline

from pipeline_helpers import CALLS, render


class Stop(Exception):
    pass


def _stop_at(step):
    def callback(pipe, i, t, kwargs):
        if i == step:
            raise Stop
        return kwargs

    return callback


def _calls(handle):
    s = handle.stats()
    return s["sparse_calls"], s["dense_calls"]


@pytest.mark.parametrize("method, opts", [("grat", {}), ("adaspa", {"search_steps": (2,)})])
def test_a_call_stopped_by_an_exception_does_not_change_the_next(method, opts):
    pipe = tiny_wan_pipeline()
    handle = diffsparse.enable_sparse_attention(pipe, method=method, dense_steps=2, dense_layers=0, block_size=8, **opts)
    steps = 4
    clean = render(pipe, "wan", num_inference_steps=steps)
    want = _calls(handle)
    handle.reset_stats()
    with pytest.raises(Stop):
        render(pipe, "wan", num_inference_steps=steps, callback_on_step_end=_stop_at(2))
    handle.reset_stats()
    again = render(pipe, "wan", num_inference_steps=steps)
    assert _calls(handle) == want
    assert torch.equal(again, clean)


def test_adaspa_video_does_not_depend_on_its_batch_mates():
    pipe = tiny_wan_pipeline()
    diffsparse.enable_sparse_attention(pipe, method="adaspa", block_size=8, dense_steps=0, dense_layers=0, search_steps=(0, 1), sparsity=0.6)
    inputs = example_inputs("wan")
    alone = pipe(generator=torch.Generator().manual_seed(0), **inputs, **CALLS["wan"]).frames[0]
    other = {k: torch.randn_like(v) if k == "prompt_embeds" else v for k, v in inputs.items()}
    both = {k: torch.cat([inputs[k], other[k]]) for k in ("prompt_embeds", "negative_prompt_embeds")}
    gen = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    batch = pipe(generator=gen, **both, **CALLS["wan"]).frames[0]
    assert torch.allclose(torch.as_tensor(batch), torch.as_tensor(alone), atol=1e-4)


def test_cfg_branches_are_the_pipelines_names_not_call_order():
    pipe = tiny_wan_pipeline()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    seen = []
    original = handle.branch

    def spy():
        seen.append(original())
        return seen[-1]

    handle.branch = spy
    render(pipe, "wan", num_inference_steps=2)
    assert set(seen) == {"cond", "uncond"}


def test_two_pipelines_sharing_a_transformer_use_their_own_step_counts():
    pipe1 = tiny_wan_pipeline()
    pipe2 = type(pipe1)(**pipe1.components)
    pipe2.scheduler = type(pipe1.scheduler).from_config(pipe1.scheduler.config)  # a scheduler of its own
    handle = diffsparse.enable_sparse_attention(pipe1, method="radial", block_size=8, dense_steps=0.5, dense_layers=0)
    render(pipe1, "wan", num_inference_steps=2)
    handle.reset_stats()
    render(pipe2, "wan", num_inference_steps=4)
    layers = pipe1.transformer.config.num_layers
    assert _calls(handle) == (2 * 2 * layers, 2 * 2 * layers)  # half of pipe2's 4 steps dense, x2 CFG


def test_scoped_sparse_attention_restores_the_previous_configuration():
    pipe = tiny_wan_pipeline()
    outer = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    before = render(pipe, "wan")
    with diffsparse.sparse_attention(pipe, method="grat", block_size=8) as inner:
        assert diffsparse.get_handle(pipe) is inner
        with diffsparse.sparse_attention(pipe, method="dense"):
            pass
        assert diffsparse.get_handle(pipe) is inner and inner.active
    assert diffsparse.get_handle(pipe) is outer and outer.active and not inner.active
    assert torch.equal(render(pipe, "wan"), before)
    diffsparse.disable_sparse_attention(pipe)
    with diffsparse.sparse_attention(pipe, method="radial"):
        pass
    assert diffsparse.get_handle(pipe) is None


def test_attention_backend_set_while_enabled_survives_disable():
    pipe = tiny_wan_pipeline()
    diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8)
    pipe.transformer.set_attention_backend("native")
    diffsparse.disable_sparse_attention(pipe)
    procs = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
    assert procs and all(str(getattr(p, "_attention_backend", None)) in ("native", "AttentionBackendName.NATIVE")
                         for p in procs if hasattr(p, "_attention_backend"))


@pytest.mark.parametrize("method", ["radial", "sliding_window", "grat", "adaspa"])
def test_int8_quantize_is_an_option_of_every_method(method):
    pipe = tiny_wan_pipeline()
    opts = dict(block_size=8, dense_steps=0, dense_layers=0)
    diffsparse.enable_sparse_attention(pipe, method=method, **opts)
    exact = render(pipe, "wan")
    handle = diffsparse.enable_sparse_attention(pipe, method=method, quantize="int8", **opts)
    approx = render(pipe, "wan")
    assert handle.stats()["quantize"] == "int8"
    diff = (approx - exact).abs()
    assert not torch.equal(approx, exact) and diff.mean() < 0.01
    with pytest.raises(ValueError, match="quantize must be one of.*'int4'"):
        diffsparse.enable_sparse_attention(pipe, method=method, quantize="int4")
