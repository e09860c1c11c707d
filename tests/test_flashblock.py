"""FlashBlock: LSE merge, the block-diffusion primitive, residual reuse on every method and pipeline."""

import math

import pytest
import torch

import diffsparse
from diffsparse.block_diffusion import BlockExternalCache, attention_with_lse, block_attention
from diffsparse.flashblock import FlashBlockCache
from diffsparse.kernels.merge import merge_attention
from diffsparse.geometry import Grid, TokenSpans
from diffsparse.executor import run_plan
from diffsparse.methods import get_method
from diffsparse.plan import build_plan
from pipeline_helpers import BUILDERS, CALLS, render

SMALL = {
    "wan": ("radial", {"decay_factor": 0.5}),
    "hunyuan": ("grat", {"group_size": (1, 2, 2), "variant": "block", "radius": 0}),
    "flux": ("sliding_window", {"tile": (1, 2, 2), "window_tiles": (1, 1, 1)}),
}


def reference(q, k, v, allowed=None):
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.where(torch.isinf(lse).unsqueeze(-1), 0.0, torch.exp(s - lse.unsqueeze(-1)))
    return torch.matmul(p, v.double()), lse


def test_merge_equals_attention_over_the_union():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    split = torch.rand(3, 10, 10, generator=g) < 0.4  # arbitrary disjoint key sets, per head and row
    split[0, 0] = True  # a row whose second set is empty
    o1, l1 = reference(q, k, v, split)
    o2, l2 = reference(q, k, v, ~split)
    o, lse = merge_attention(o1.float(), l1.float(), o2.float(), l2.float())
    full, full_lse = reference(q, k, v)
    assert torch.allclose(o.double(), full, atol=1e-5) and torch.allclose(lse.double(), full_lse, atol=1e-5)
    empty = torch.full_like(l1, float("-inf")).float()
    o, lse = merge_attention(o1.float(), empty, torch.zeros_like(o1).float(), empty)
    assert torch.equal(o, torch.zeros_like(o)) and torch.isinf(lse).all()  # empty on both sides


def test_block_attention_primitive_equals_attention_over_block_and_external():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 12, 8, generator=g)
    k_ext, v_ext = torch.randn(1, 2, 20, 8, generator=g), torch.randn(1, 2, 20, 8, generator=g)
    k_in, v_in = torch.randn(1, 2, 12, 8, generator=g), torch.randn(1, 2, 12, 8, generator=g)
    cached = attention_with_lse(q, k_ext, v_ext, block_size=4)
    out, lse = block_attention(q, k_in, v_in, *cached, block_size=4, return_lse=True)
    full, full_lse = reference(q, torch.cat([k_ext, k_in], 2), torch.cat([v_ext, v_in], 2))
    assert torch.allclose(out.double(), full, atol=1e-5) and torch.allclose(lse.double(), full_lse, atol=1e-5)
    # block-causal inside the block too: in-block mask over 4-token blocks
    causal = torch.tril(torch.ones(3, 3, dtype=torch.bool))[None, None]
    out = block_attention(q, k_in, v_in, *cached, block_mask=causal, block_size=4)
    allowed = torch.cat([torch.ones(12, 20, dtype=torch.bool), causal[0, 0].repeat_interleave(4, 0).repeat_interleave(4, 1)], 1)
    ref, _ = reference(q, torch.cat([k_ext, k_in], 2), torch.cat([v_ext, v_in], 2), allowed)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_block_external_cache_reuses_then_checks_heads():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 8, 8, generator=g)
    k_in, v_in, k_ext, v_ext = (torch.randn(1, 2, 8, 8, generator=g) for _ in range(4))
    cache = BlockExternalCache(check_steps=(1,), block_size=4)
    exact = block_attention(q, k_in, v_in, *attention_with_lse(q, k_ext, v_ext, block_size=4), block_size=4)
    assert torch.allclose(cache.attend(0, q, k_in, v_in, k_ext, v_ext, step=0), exact)
    q2 = q.clone()
    q2[:, 1] = -q2[:, 1]  # head 1 drifts, head 0 does not
    cache.attend(0, q2, k_in, v_in, k_ext, v_ext, step=1)  # check step: head 1 goes live
    out = cache.attend(0, q2, k_in, v_in, k_ext, v_ext, step=2)
    exact2 = block_attention(q2, k_in, v_in, *attention_with_lse(q2, k_ext, v_ext, block_size=4), block_size=4)
    assert torch.allclose(out, exact2, atol=1e-6)  # head 0's cache is exact (same queries), head 1 recomputed
    assert cache.reused_head_calls == 1 and cache.external_head_calls == 2 + 2 + 1
    cache.new_chunk()
    assert not cache._ext


def residual_setup(heads=2):
    grid = Grid(2, 4, 4)
    method = get_method("grat")("wan", group_size=(1, 2, 2), variant="block", radius=0)
    order, vmask = method.video_layout(grid, 4, 4)
    spans = TokenSpans(grid, 3, True)
    plan = build_plan(order, vmask, spans, None, 4, 4)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, spans.total_len, heads, 8, generator=g) for _ in range(3))
    return plan, q, k, v


def test_residual_reuse_reconstructs_full_attention_and_refreshes_drifting_heads():
    plan, q, k, v = residual_setup()
    cache = FlashBlockCache(interval=10, threshold=0.85)
    sparse = run_plan(plan, q, k, v)
    first = cache.run(0, "k", plan, q, k, v, forward_id=1)
    assert torch.equal(first, sparse)  # a refresh returns the method's own output
    dense = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    second = cache.run(0, "k", plan, q, k, v, forward_id=2)  # same inputs: the residual is exact
    assert torch.allclose(second, dense, atol=1e-5)
    assert cache.stats(0) == {"calls": 2, "reused": 2, "refreshed": 2, "reuse_rate": 0.5,
                              "residual_blocks": cache.stats(0)["residual_blocks"]}
    again = cache.run(0, "k", plan, q, k, v, forward_id=2)  # checkpoint recompute: same result, no counting
    assert torch.equal(again, second) and cache.stats(0)["calls"] == 2
    q2 = q.clone()
    q2[:, :, 1] = torch.randn(q2[:, :, 1].shape, generator=torch.Generator().manual_seed(9))
    third = cache.run(0, "k", plan, q2, k, v, forward_id=3)  # head 1 drifts: refreshed, head 0 reuses
    sparse2 = run_plan(plan, q2, k, v)
    assert torch.equal(third[:, :, 1], sparse2[:, :, 1]) and not torch.equal(third[:, :, 0], sparse2[:, :, 0])
    assert cache.stats(0)["reused"] == 3 and cache.stats(0)["refreshed"] == 3


def test_cache_options_are_validated():
    pipe = BUILDERS["wan"]()
    with pytest.raises(ValueError, match="cache must be one of"):
        diffsparse.enable_sparse_attention(pipe, method="radial", cache="teacache")
    with pytest.raises(ValueError, match="only apply with cache='flashblock'"):
        diffsparse.enable_sparse_attention(pipe, method="radial", cache_interval=2)
    with pytest.raises(ValueError, match="cache_interval"):
        diffsparse.enable_sparse_attention(pipe, method="radial", cache="flashblock", cache_interval=0)
    assert diffsparse.get_handle(pipe) is None


def test_refresh_at_every_step_equals_the_method_without_caching(pipe, family):
    method, opts = SMALL[family]
    common = dict(block_size=4, dense_steps=0, dense_layers=0, **opts)
    diffsparse.enable_sparse_attention(pipe, method=method, **common)
    plain = render(pipe, family)
    handle = diffsparse.enable_sparse_attention(pipe, method=method, cache="flashblock", cache_interval=1, **common)
    assert torch.equal(render(pipe, family), plain)
    assert handle.stats()["cache"]["reused"] == 0 and handle.stats()["cache"]["refreshed"] > 0


@pytest.mark.parametrize("method, opts", [("adaspa", {"sparsity": 0.7, "search_steps": (0, 3)}), SMALL["wan"]])
def test_reuse_on_a_pipeline_reports_counts_and_moves_toward_dense(method, opts):
    pipe = BUILDERS["wan"]()
    ref = render(pipe, "wan", num_inference_steps=6)
    common = dict(block_size=4, dense_steps=0, dense_layers=0, **opts)
    diffsparse.enable_sparse_attention(pipe, method=method, **common)
    plain = render(pipe, "wan", num_inference_steps=6)
    handle = diffsparse.enable_sparse_attention(pipe, method=method, cache="flashblock", cache_interval=3, **common)
    cached = render(pipe, "wan", num_inference_steps=6)
    stats = handle.stats()
    for layer in stats["layers"].values():
        assert layer["cache"]["reused"] > 0 and layer["cache"]["refreshed"] > 0
    assert stats["density"] < stats["cache"]["effective_density"] < 1
    assert (cached - ref).abs().mean() < (plain - ref).abs().mean()
    assert not handle.executor.flashblock._entries  # reset at the end of the pipeline call
    if method == "adaspa":  # refresh at every step equals the dynamic method too
        diffsparse.enable_sparse_attention(pipe, method=method, cache="flashblock", cache_interval=1, **common)
        assert torch.equal(render(pipe, "wan", num_inference_steps=6), plain)


def test_paro_with_flashblock_refresh_every_step_equals_paro(tmp_path):
    pipe = BUILDERS["flux"]()
    from diffsparse.tiny import example_inputs

    plan = diffsparse.calibrate(pipe, method="paro", block_size=4, timestep_buckets=1, **example_inputs("flux"), **CALLS["flux"])
    diffsparse.enable_sparse_attention(pipe, method="paro", plan=plan)
    plain = render(pipe, "flux")
    diffsparse.enable_sparse_attention(pipe, method="paro", plan=plan, cache="flashblock", cache_interval=1)
    assert torch.equal(render(pipe, "flux"), plain)
    h = diffsparse.enable_sparse_attention(pipe, method="paro", plan=plan, cache="flashblock")
    render(pipe, "flux")  # one bucket, 2 steps: refresh then reuse
    assert h.stats()["cache"]["reused"] > 0
