"""PARO: axis orders, planted-order recovery, per-head permuted plans, plan files, refusals, INT8."""

import math

import pytest
import torch

import diffsparse
from diffsparse.calibration import ORDERS, axis_order, order_scores
from diffsparse.geometry import Grid, TokenSpans, raster_coords
from diffsparse.executor import run_plan
from diffsparse.kernels import expand_block_mask
from diffsparse.plan import build_plan
from diffsparse.kernels import block_sparse_attention as sparse_attention
from diffsparse.tiny import example_inputs
from pipeline_helpers import BUILDERS, CALLS, render


def calibration_kwargs(family, seed=1):
    kw = dict(example_inputs(family, seed=seed, valid_text=5 if family == "hunyuan" else None), **CALLS[family])
    return dict(kw, generator=torch.Generator().manual_seed(seed))


def test_axis_orders():
    grid = Grid(2, 3, 4)
    assert torch.equal(axis_order(grid, "FHW"), torch.arange(grid.numel))
    t, h, w = (c[axis_order(grid, "HWF")] for c in raster_coords(grid))
    assert t[:2].tolist() == [0, 1] and h[:2].tolist() == [0, 0] and w[:2].tolist() == [0, 0]  # F innermost
    t, h, w = (c[axis_order(grid, "WFH")] for c in raster_coords(grid))
    assert h[:3].tolist() == [0, 1, 2] and t[3] == 1 and w[:6].eq(0).all()
    for name in ORDERS:
        assert torch.equal(axis_order(grid, name).sort().values, torch.arange(grid.numel))
    with pytest.raises(ValueError, match="permutation"):
        axis_order(grid, "FHH")


def planted(grid, names, group=8, sharp=30.0):
    """q/k per head whose attention is uniform inside runs of `group` tokens of the head's order."""
    heads = len(names)
    n = grid.numel
    groups = n // group
    q = torch.zeros(1, heads, n, groups)
    for h, name in enumerate(names):
        pos = torch.empty(n, dtype=torch.long)
        pos[axis_order(grid, name)] = torch.arange(n)
        q[0, h, torch.arange(n), pos // group] = sharp
    return q, q.clone() / sharp * 1.0


def test_order_scores_find_the_planted_order_of_every_head():
    grid = Grid(4, 4, 4)
    q, k = planted(grid, ORDERS)  # head h planted with ORDERS[h]
    lse = torch.logsumexp(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    scores = order_scores(q, k, lse, grid, 8, 8)
    assert scores.argmin(-1).tolist() == list(range(6))
    assert torch.allclose(scores.diagonal(), torch.full((6,), 1 / 8))  # block diagonal: 8 of 64 blocks


def test_per_head_orders_execute_exactly():
    grid, block = Grid(2, 3, 4), (4, 4)
    names = ["HWF", "FHW", "WFH"]
    order = torch.stack([axis_order(grid, n) for n in names])
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 6, 6, generator=g) < 0.5
    mask |= torch.eye(6, dtype=torch.bool)
    for text_first, text in ((False, 0), (True, 5)):
        spans = TokenSpans(grid, text, text_first)
        plan = build_plan(order, mask, spans, None, *block)
        q, k, v = (torch.randn(1, spans.total_len, 3, 8, generator=g) for _ in range(3))
        out = run_plan(plan, q, k, v)
        # reference: token mask per head in model order
        n = spans.total_len
        internal = expand_block_mask(plan.index.mask, block, n, n)[0]
        allowed = torch.zeros(3, n, n, dtype=torch.bool)
        for h in range(3):
            qo, ko = plan.q_order[h], plan.k_order[h]
            allowed[h][qo.unsqueeze(1), ko.unsqueeze(0)] = internal[h]
        s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(8)
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
        ref = torch.einsum("bhqk,bkhd->bqhd", p, v.double())
        assert torch.allclose(out.double(), ref, atol=1e-5)


def test_int8_qk_is_close_and_lse_comparable():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    k += 3.0  # a large common offset: what K smoothing removes
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    exact, lse = sparse_attention(q, k, v, diffsparse.build_block_index(mask, 8), return_lse=True)
    approx, lse8 = sparse_attention(q, k, v, diffsparse.build_block_index(mask, 8), quantize="int8", return_lse=True)
    assert (approx - exact).abs().max() < 0.05 and not torch.equal(approx, exact)
    assert (lse8 - lse).abs().max() < 0.05


@pytest.fixture(scope="module")
def wan_plan():
    pipe = BUILDERS["wan"]()
    return diffsparse.calibrate(pipe, method="paro", density=0.5, block_size=4, **calibration_kwargs("wan"))


def test_plan_round_trips_and_runs_identically(wan_plan, tmp_path):
    path = tmp_path / "wan_paro.pt"
    wan_plan.save(path)
    loaded = diffsparse.load_plan(path)
    assert loaded.grid == wan_plan.grid and loaded.block_size == wan_plan.block_size == (4, 4)
    assert loaded.model_config == wan_plan.model_config and loaded.density == wan_plan.density
    assert torch.equal(loaded.orders, wan_plan.orders) and torch.equal(loaded.scores, wan_plan.scores)
    for b in range(wan_plan.num_buckets):
        for layer in range(wan_plan.num_layers):
            assert torch.equal(loaded.mask(b, layer), wan_plan.mask(b, layer))
            assert loaded.mask(b, layer).any(-1).all()  # every query row reads something
    pipe = BUILDERS["wan"]()
    ref = render(pipe, "wan")
    h = diffsparse.enable_sparse_attention(pipe, method="paro", plan=wan_plan)
    a = render(pipe, "wan")
    stats = h.stats()
    assert 0.4 < stats["density"] < 0.6 and not stats["fallbacks"] and not torch.equal(a, ref)
    assert stats["plan"]["grid"] == wan_plan.grid.dims and len(stats["layers"][0]["head_density"]) == 2
    diffsparse.enable_sparse_attention(pipe, method="paro", plan=str(path))
    assert torch.equal(render(pipe, "wan"), a)
    diffsparse.enable_sparse_attention(pipe, method="paro", plan=path, quantize="int8")
    q8 = render(pipe, "wan")
    assert (q8 - a).abs().max() < 0.05


def test_plan_masks_follow_the_calibrated_mass(wan_plan):
    assert wan_plan.mask_shape == (4, 2, 2, 15, 15)
    kept = torch.stack([wan_plan.mask(b, 0) for b in range(4)]).float().mean().item()
    assert kept == pytest.approx(0.5, abs=0.02)
    assert wan_plan.meta["calibrated_buckets"] == [0, 1, 2]  # 3 steps over 4 buckets; bucket 3 copies 2
    assert torch.equal(wan_plan.mask(3, 1), wan_plan.mask(2, 1))


def test_refusals(wan_plan, tmp_path):
    with pytest.raises(ValueError, match="needs plan="):
        diffsparse.enable_sparse_attention(BUILDERS["wan"](), method="paro")
    with pytest.raises(ValueError, match="num_layers: plan 2 vs model 3"):
        diffsparse.enable_sparse_attention(BUILDERS["wan"](num_layers=3), method="paro", plan=wan_plan)
    with pytest.raises(ValueError, match="calibrated for a wan model, not flux"):
        diffsparse.enable_sparse_attention(BUILDERS["flux"](), method="paro", plan=wan_plan)
    with pytest.raises(ValueError, match="block_size"):
        diffsparse.enable_sparse_attention(BUILDERS["wan"](), method="paro", plan=wan_plan, block_size=8)
    pipe = BUILDERS["wan"]()
    diffsparse.enable_sparse_attention(pipe, method="paro", plan=wan_plan)
    with pytest.raises(ValueError, match=r"grid \(4, 3, 5\).*this call has \(4, 4, 5\).*calibrate"):
        render(pipe, "wan", height=64)
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match="not a diffsparse PARO plan"):
        diffsparse.load_plan(bad)
    with pytest.raises(FileNotFoundError, match="calibrate"):
        diffsparse.load_plan(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="quantize"):
        diffsparse.enable_sparse_attention(BUILDERS["wan"](), method="paro", plan=wan_plan, quantize="int4")


@pytest.mark.parametrize("family", ["hunyuan", "flux"])
def test_calibrate_and_run_other_families(family):
    pipe = BUILDERS[family]()
    plan = diffsparse.calibrate(pipe, method="paro", density=0.4, block_size=4, timestep_buckets=2, **calibration_kwargs(family))
    assert plan.family == family and plan.num_buckets == 2
    ref = render(pipe, family)
    assert diffsparse.get_handle(pipe) is None  # calibration leaves the pipeline dense
    h = diffsparse.enable_sparse_attention(pipe, method="paro", plan=plan, quantize="int8")
    out = render(pipe, family)
    assert torch.isfinite(out).all() and out.shape == ref.shape
    stats = h.stats()
    assert 0 < stats["density"] < 1 and not stats["fallbacks"]
