"""torch.compile of a patched transformer: one graph, no more recompiles than stock, same result.

The step hook and the processors reach the handle through two opaque custom ops (compile_ops.py),
so per-step decisions (dense warm-up, CFG branch, plans, AdaSpa searches) run at every call with
the real values. Dynamo runs with `aot_eager` here (fake tensors, functionalisation; Inductor's
code generation is not what is tested and takes minutes on CI);
`python experiments/compile_probe.py` measures the same with Inductor.
"""

import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

import diffsparse
from diffsparse.pipelines import adapter_for_family
from pipeline_helpers import BUILDERS, render

# family -> (method, options): the methods whose per-call decisions differ most (a static layout
# with a dense warm-up; AdaSpa's searches and per-branch caches)
CASES = {
    "wan": ("radial", {"dense_steps": 1}),
    "hunyuan": ("radial", {"dense_steps": 1}),  # padded text: the key mask goes through the op
    "flux": ("sliding_window", {"dense_steps": 1}),  # single-stream blocks read the text length at run time
}


def _graphs() -> int:
    return counters["stats"].get("unique_graphs", 0)


def _calls(handle):
    s = handle.stats()
    return s["sparse_calls"], s["dense_calls"], s["density"]


def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()


def _eager(pipe, handle, family="wan", **call):
    """An eager render and the handle's calls for it; the stats start over for the next render."""
    frames, calls = render(pipe, family, **call), _calls(handle)
    handle.reset_stats()
    return frames, calls


@contextlib.contextmanager
def compiled(pipe, fullgraph=True, **kwargs):
    """`pipe.transformer` compiled (aot_eager) inside the block, with fresh dynamo counters; restored after."""
    _fresh_dynamo()
    transformer = pipe.transformer
    pipe.transformer = torch.compile(transformer, fullgraph=fullgraph, backend="aot_eager", **kwargs)
    try:
        yield
    finally:
        pipe.transformer = transformer
        _fresh_dynamo()


@pytest.mark.parametrize("family", sorted(CASES))
def test_fullgraph_compile_runs_the_same_calls_and_output_as_eager(family):
    method, opts = CASES[family]
    pipe = BUILDERS[family]()
    handle = diffsparse.enable_sparse_attention(pipe, method=method, block_size=8, dense_layers=0, **opts)
    eager, want = _eager(pipe, handle, family)
    with compiled(pipe):
        torch.testing.assert_close(render(pipe, family), eager, atol=1e-4, rtol=1e-4)
        assert _calls(handle) == want  # the same dense warm-up and sparse calls, the same blocks
        graphs = _graphs()
        assert graphs >= 1 and sum(counters["graph_break"].values()) == 0
        handle.reset_stats()
        render(pipe, family, seed=1)  # a second call: no recompile
        assert _graphs() == graphs and _calls(handle)[:2] == want[:2]


@pytest.mark.parametrize("method, opts", [("grat", {}), ("adaspa", {}), ("radial", {"cache": "flashblock"}),
                                          ("radial", {"quantize": "int8"}), ("dense", {})])
def test_every_method_and_option_compiles_to_one_graph(method, opts):
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method=method, block_size=8, dense_steps=1, dense_layers=0, **opts)
    eager, want = _eager(pipe, handle)
    with compiled(pipe):
        torch.testing.assert_close(render(pipe, "wan"), eager, atol=1e-4, rtol=1e-4)
        assert _calls(handle) == want and _graphs() == 1


def _graphs_over_two_resolutions(method):
    pipe = BUILDERS["wan"]()
    if method:
        diffsparse.enable_sparse_attention(pipe, method=method, block_size=8, dense_steps=1, dense_layers=0)
    with compiled(pipe):
        render(pipe, "wan", num_inference_steps=2)
        first = _graphs()
        render(pipe, "wan", num_inference_steps=2, height=64)
        return first, _graphs()


def test_recompiles_at_most_stock_plus_one():
    stock = _graphs_over_two_resolutions(None)
    for method in ("radial", "adaspa"):
        first, after = _graphs_over_two_resolutions(method)
        assert first <= stock[0] + 1 and after <= stock[1] + 1, (method, (first, after), stock)


def test_a_stopped_compiled_call_does_not_change_the_next():
    class Stop(Exception):
        pass

    def stop_at_2(pipe, i, t, kwargs):
        if i == 2:
            raise Stop
        return kwargs

    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="grat", dense_steps=2, dense_layers=0, block_size=8)
    with compiled(pipe):
        clean, want = _eager(pipe, handle, num_inference_steps=4)  # a clean compiled call
        with pytest.raises(Stop):
            render(pipe, "wan", num_inference_steps=4, callback_on_step_end=stop_at_2)
        handle.reset_stats()
        assert torch.equal(render(pipe, "wan", num_inference_steps=4), clean) and _calls(handle) == want


def test_regional_compilation_of_the_repeated_blocks():
    """Diffusers' `compile_repeated_blocks`: the hook runs eagerly, the processors inside compiled blocks."""
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=1, dense_layers=0)
    eager, want = _eager(pipe, handle)
    _fresh_dynamo()
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    try:
        torch.testing.assert_close(render(pipe, "wan"), eager, atol=1e-4, rtol=1e-4)
        assert _calls(handle) == want
    finally:
        _fresh_dynamo()


def test_disable_after_compiling_restores_stock_output():
    pipe = BUILDERS["wan"]()
    stock = render(pipe, "wan", num_inference_steps=2)
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    with compiled(pipe):
        render(pipe, "wan", num_inference_steps=2)
    diffsparse.disable_sparse_attention(pipe)
    assert torch.equal(render(pipe, "wan", num_inference_steps=2), stock)
    assert adapter_for_family("wan").matches(pipe.transformer) and handle.active is False


def test_compiled_training_keeps_the_traced_path_and_its_gradients():
    """Calls that need gradients do not go through the (inference-only) ops: same output and gradients."""
    tr = BUILDERS["wan"]().transformer
    handle = diffsparse.enable_sparse_attention(tr, method="radial", dense_steps=0, dense_layers=0, block_size=4)
    x, ehs = torch.randn(1, 16, 3, 6, 10), torch.randn(1, 8, 32)

    def loss_and_grads(model):
        handle.reset()
        tr.zero_grad()
        out = model(x, torch.tensor([900]), ehs, return_dict=False)[0]
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in tr.parameters() if p.grad is not None]

    ref, ref_grads = loss_and_grads(tr)
    _fresh_dynamo()
    try:
        out, grads = loss_and_grads(torch.compile(tr, backend="aot_eager"))
    finally:
        _fresh_dynamo()
    torch.testing.assert_close(out, ref)
    assert len(grads) == len(ref_grads) > 0
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert handle.stats()["sparse_calls"] == 4  # two layers, sparse in both runs


def test_compiled_flex_runs_inside_the_op(monkeypatch):
    """CPU `auto` hands large calls to the handle's compiled FlexAttention. Its first call inside a
    compiled graph's op is a nested compile (with vmap over the mask), which needs the eager
    dispatcher state the op restores."""
    import warnings

    from diffsparse.kernels import api

    monkeypatch.setattr(api, "CPU_FLEX_MIN_BLOCK", 16)  # make the tiny calls "large"
    monkeypatch.setattr(api, "CPU_FLEX_MIN_SCORES", 0)
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=16, dense_steps=0, dense_layers=0,
                                                decay_factor=0.5)  # sparse enough for Flex
    handle.executor.native_fn().error = "off for this test"  # Flex takes what our C++ kernel would
    with compiled(pipe), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "compiled FlexAttention failed" would be one
        frames = render(pipe, "wan", num_inference_steps=2)  # Flex compiles here, inside the op
    assert handle.flex_fn()._fn is not None and handle.flex_fn().error is None  # it ran, and did not fail
    torch.testing.assert_close(frames, render(pipe, "wan", num_inference_steps=2), atol=1e-4, rtol=1e-4)


def test_without_opaque_ops_compiling_takes_the_traced_path(monkeypatch):
    """A torch without opaque objects in custom ops (before 2.13): graph breaks, the same calls and output."""
    from diffsparse import compile_ops

    monkeypatch.setattr(compile_ops, "AVAILABLE", False)
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=1, dense_layers=0)
    eager, want = _eager(pipe, handle)
    with compiled(pipe, fullgraph=False):
        torch.testing.assert_close(render(pipe, "wan"), eager, atol=1e-4, rtol=1e-4)
        assert _calls(handle) == want and sum(counters["graph_break"].values()) > 0


def test_enabling_on_an_already_compiled_transformer():
    """`pipe.transformer = torch.compile(...)` first, then enable/disable: the wrapped module is patched and the
    wrapper recompiles for it (the same calls and output as eager), then goes back to stock."""
    pipe = BUILDERS["wan"]()
    stock = render(pipe, "wan")
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=1, dense_layers=0)
    eager, want = _eager(pipe, handle)
    diffsparse.disable_sparse_attention(pipe)
    with compiled(pipe):
        assert torch.equal(render(pipe, "wan"), stock)
        handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=1, dense_layers=0)
        torch.testing.assert_close(render(pipe, "wan"), eager, atol=1e-4, rtol=1e-4)
        assert _calls(handle) == want
        diffsparse.disable_sparse_attention(pipe)
        assert torch.equal(render(pipe, "wan"), stock)
