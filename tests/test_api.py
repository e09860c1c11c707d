"""The public API: enabling, replacing, restoring, errors raised before any work."""

import pytest
import torch

import diffsparse
from diffsparse.tiny import tiny_wan_pipeline

from pipeline_helpers import render


def test_list_methods():
    assert set(diffsparse.list_methods()) >= {"dense", "radial", "sliding_window", "grat"}


def test_unknown_method_lists_valid_names():
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="unknown method 'nope'.*radial"):
        diffsparse.enable_sparse_attention(pipe, method="nope")


@pytest.mark.parametrize(
    "method, opts, exc, match",
    [
        ("radial", {"window": 3}, TypeError, "unknown option 'window'.*decay_factor"),
        ("radial", {"decay_factor": -1.0}, ValueError, "decay_factor"),
        ("radial", {"block_size": 0}, ValueError, "block_size"),
        ("radial", {"block_size": (4, -2)}, ValueError, "block_size"),
        ("radial", {"dense_steps": -1}, ValueError, "dense_steps"),
        ("radial", {"dense_steps": 1.5}, ValueError, "dense_steps"),
        ("radial", {"dense_layers": "1"}, ValueError, "dense_layers"),
        ("radial", {"backend": "cuda-magic"}, ValueError, "backend"),
        ("sliding_window", {"window": (3, -1, 3)}, ValueError, "window"),
        ("sliding_window", {"window": (3, 3, 3), "window_tiles": (1, 1, 1)}, ValueError, "exactly one"),
        ("sliding_window", {"tile": (0, 2, 2)}, ValueError, "tile"),
        ("grat", {"variant": "diagonal"}, ValueError, "variant"),
        ("grat", {"radius": -1}, ValueError, "radius"),
    ],
)
def test_invalid_options_raise_before_any_change(method, opts, exc, match):
    pipe = tiny_wan_pipeline()
    before = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}
    with pytest.raises(exc, match=match):
        diffsparse.enable_sparse_attention(pipe, method=method, **opts)
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == before
    assert diffsparse.get_handle(pipe) is None


def test_unsupported_pipeline_and_model():
    with pytest.raises(TypeError, match="unsupported pipeline.*WanTransformer3DModel"):
        diffsparse.enable_sparse_attention(object(), method="radial")
    with pytest.raises(TypeError, match="unsupported model Linear.*FluxTransformer2DModel"):
        diffsparse.enable_sparse_attention(torch.nn.Linear(2, 2), method="radial")


def test_radial_refuses_images_with_a_reason():
    from diffsparse.tiny import tiny_flux_pipeline

    with pytest.raises(ValueError, match="radial.*flux.*one frame"):
        diffsparse.enable_sparse_attention(tiny_flux_pipeline(), method="radial")


def test_fraction_dense_steps_needs_a_pipeline():
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="bare transformer"):
        diffsparse.enable_sparse_attention(pipe.transformer, method="radial", dense_steps=0.5)
    handle = diffsparse.enable_sparse_attention(pipe.transformer, method="radial")  # preset fraction -> 0
    assert handle.settings.dense_steps == 0


def test_disable_never_enabled_is_noop_and_restores_exactly():
    pipe = tiny_wan_pipeline()
    diffsparse.disable_sparse_attention(pipe)  # no-op
    ref = render(pipe, "wan")
    procs = dict(pipe.transformer.attn_processors)
    diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    assert not torch.equal(render(pipe, "wan"), ref)
    diffsparse.disable_sparse_attention(pipe)
    assert all(pipe.transformer.attn_processors[k] is p for k, p in procs.items())
    assert torch.equal(render(pipe, "wan"), ref)
    assert pipe.transformer._diffusers_hook.get_hook("diffsparse_step_tracker") is None


def test_enable_again_replaces_configuration():
    pipe = tiny_wan_pipeline()
    h1 = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8)
    h2 = diffsparse.enable_sparse_attention(pipe, method="grat", block_size=8, group_size=(1, 2, 2))
    assert not h1.active and h2.active
    assert diffsparse.get_handle(pipe) is h2
    assert all(getattr(p, "handle", None) is h2 for k, p in pipe.transformer.attn_processors.items() if "attn1" in k)
    diffsparse.disable_sparse_attention(pipe)
    assert all(type(p).__name__ == "WanAttnProcessor" for p in pipe.transformer.attn_processors.values())


def test_context_manager_restores_even_on_error():
    pipe = tiny_wan_pipeline()
    ref = render(pipe, "wan")
    with pytest.raises(RuntimeError, match="boom"):
        with diffsparse.sparse_attention(pipe, method="grat", block_size=8, dense_steps=0, dense_layers=0) as h:
            assert h.active
            raise RuntimeError("boom")
    assert diffsparse.get_handle(pipe) is None
    assert torch.equal(render(pipe, "wan"), ref)


def test_failed_render_is_restorable():
    pipe = tiny_wan_pipeline()
    ref = render(pipe, "wan")
    diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    with pytest.raises(Exception):
        render(pipe, "wan", prompt_embeds=torch.randn(1, 8, 7))  # wrong text dim fails inside the model
    diffsparse.disable_sparse_attention(pipe)
    assert torch.equal(render(pipe, "wan"), ref)


def test_foreign_processor_is_refused():
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = tiny_wan_pipeline()
    pipe.transformer.blocks[0].attn1.processor = AttnProcessor2_0()
    with pytest.raises(TypeError, match="AttnProcessor2_0.*WanAttnProcessor"):
        diffsparse.enable_sparse_attention(pipe, method="radial")


def test_backends_this_machine_cannot_run_are_refused_at_enable(monkeypatch):
    from diffsparse.tiny import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ValueError, match="backend='triton' needs a CUDA GPU"):
            diffsparse.enable_sparse_attention(pipe, method="radial", backend="triton")
        with pytest.raises(ValueError, match="backend='flex' on CPU cannot run method 'adaspa'"):
            diffsparse.enable_sparse_attention(pipe, method="adaspa", backend="flex")
        with pytest.raises(ValueError, match="cache='flashblock'"):
            diffsparse.enable_sparse_attention(pipe, method="radial", backend="flex", cache="flashblock")
    assert diffsparse.get_handle(pipe) is None  # nothing was touched
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", backend="flex")
    assert handle.flex_fn() is handle.flex_fn()  # one compiled callable, held by the handle
