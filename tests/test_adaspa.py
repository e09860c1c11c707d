"""AdaSpa: exact block mass, top-mass selection, head-adaptive budgets, LSE-cached search, pipelines."""

import math

import pytest
import torch

import diffsparse
from diffsparse.blockmass import block_mass, head_adaptive_sparsity, recall, select_blocks
from diffsparse.dynamic import DynamicContext, DynamicEngine
from diffsparse.geometry import Grid, TokenSpans
from diffsparse.methods import get_method
from pipeline_helpers import BUILDERS, CALLS, render


def dense_probs(q, k):
    """Softmax weights `(B, H, Sq, Sk)` in float64."""
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1)


def brute_block_mass(p, nv, bq, bk):
    """Per-row block mass over the video part of `p` (B, H, S, S), summed over the batch: (H, nq, nk)."""
    p = p[:, :, :nv, :nv].sum(0)
    nq, nk = -(-nv // bq), -(-nv // bk)
    out = torch.zeros(p.shape[0], nq, nk, dtype=torch.float64)
    for i in range(nq):
        rows = p[:, i * bq : (i + 1) * bq]
        for j in range(nk):
            out[:, i, j] = rows[:, :, j * bk : (j + 1) * bk].sum((-1, -2)) / rows.shape[1]
    return out


def brute_top(mass, density):
    """Exact top-k per head (k = round(density * blocks)), by sorting every block."""
    H, nq, nk = mass.shape
    keep = torch.zeros_like(mass, dtype=torch.bool)
    for h in range(H):
        k = round(float(density[h]) * nq * nk)
        flat = sorted(range(nq * nk), key=lambda i: -float(mass[h].reshape(-1)[i]))[:k]
        keep[h].view(-1)[flat] = True
    return keep


def context(q, k, v, spans, block, cache, step=0, num_steps=10, forward_id=1):
    engine = DynamicEngine(get_method("dense")("wan"))  # only for its base plan
    base = engine.base_plan(spans, None, block, block, q.device)
    return DynamicContext(
        layer=0, step=step, num_steps=num_steps, forward_id=forward_id, slot=0, spans=spans, block_q=block,
        block_k=block, backend="auto", cache=cache, base=base, _qkv=(q, k, v),
    )


def planted_qkv(grid, heads, text=0, seed=0, sharpness=4.0):
    """q/k whose attention concentrates on a few key blocks, with distinct masses (model order)."""
    g = torch.Generator().manual_seed(seed)
    n = grid.numel + text
    q = torch.randn(1, n, heads, 16, generator=g)
    k = torch.randn(1, n, heads, 16, generator=g)
    k[:, : grid.numel] += sharpness * q[:, : grid.numel].roll(7, dims=1)  # each query favours one far key
    return q, k, torch.randn(1, n, heads, 16, generator=g)


def test_block_mass_is_exact_with_text_keys():
    grid, text, block = Grid(2, 3, 5), 3, 4
    q, k, v = planted_qkv(grid, heads=2, text=text)
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    lse = torch.logsumexp(torch.matmul(qh, kh.transpose(-1, -2)) / 4.0, dim=-1)
    nv = grid.numel
    got = block_mass(qh[:, :, :nv], kh[:, :, :nv], lse[:, :, :nv], block, block)[0]
    want = brute_block_mass(dense_probs(qh, kh), nv, block, block)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_block_mass_under_per_head_orders_and_uneven_blocks():
    grid = Grid(2, 3, 5)
    q, k, _ = planted_qkv(grid, heads=2)
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    lse = torch.logsumexp(torch.matmul(qh, kh.transpose(-1, -2)) / 4.0, dim=-1)
    g = torch.Generator().manual_seed(5)
    orders = torch.stack([torch.randperm(grid.numel, generator=g) for _ in range(2)])
    shared, per_head = block_mass(qh, kh, lse, 4, 7, [orders[:1], orders])
    p = dense_probs(qh, kh)
    for h in range(2):
        o = orders[h]
        want = brute_block_mass(p[:, :, o][:, :, :, o], grid.numel, 4, 7)[h]
        assert torch.allclose(per_head[h].double(), want, atol=1e-5)
    o = orders[0]
    assert torch.allclose(shared.double(), brute_block_mass(p[:, :, o][:, :, :, o], grid.numel, 4, 7), atol=1e-5)


def test_global_selection_is_exactly_the_top_mass_blocks():
    g = torch.Generator().manual_seed(0)
    H, nq, nk = 3, 6, 6
    mass = torch.rand(H, nq, nk, generator=g).double()
    mass += 5.0 * torch.eye(nq).double()  # every row's best block is on the diagonal (inside any top-k >= nq)
    density = torch.tensor([0.3, 0.5, 0.8])
    keep = select_blocks(mass, density)
    assert torch.equal(keep, brute_top(mass, density))
    assert keep.sum((-1, -2)).tolist() == [round(d * nq * nk) for d in density.tolist()]


def test_global_selection_keeps_every_rows_best_block():
    mass = torch.zeros(1, 4, 4, dtype=torch.float64)
    mass[0, 0] = torch.tensor([10.0, 9.0, 8.0, 7.0])  # row 0 holds all the large masses
    mass[0, 1:, 0] = 0.1
    keep = select_blocks(mass, 0.25)  # budget 4 blocks
    assert keep.sum() == 4 and keep.any(-1).all()


def test_row_wise_keeps_the_same_count_in_every_row():
    mass = torch.rand(2, 5, 8, generator=torch.Generator().manual_seed(1))
    keep = select_blocks(mass, torch.tensor([0.25, 0.5]), row_wise=True)
    assert keep[0].sum(-1).eq(2).all() and keep[1].sum(-1).eq(4).all()
    for h in range(2):
        for r in range(5):  # the kept blocks of a row are its largest
            kept, dropped = mass[h, r][keep[h, r]], mass[h, r][~keep[h, r]]
            assert kept.min() >= dropped.max()


def test_head_adaptive_budgets_average_to_the_target():
    nq = nk = 10
    mass = torch.full((6, nq, nk), 1e-3, dtype=torch.float64)
    for h in range(3):  # concentrated heads: recall at s = 0.8 near 1
        mass[h] += torch.eye(nq) * (h + 1)
    mass[3:] += torch.rand(3, nq, nk, generator=torch.Generator().manual_seed(2))  # diffuse heads
    s = 0.8
    rec = recall(mass, select_blocks(mass, 1 - s))
    n = int((rec > 0.8).sum())
    assert n == 3
    sp = head_adaptive_sparsity(mass, s)
    assert sp.mean().item() == pytest.approx(s)
    best = torch.sort(rec, descending=True).indices
    assert torch.allclose(sp[best[:n]], torch.tensor((1 + s) / 2, dtype=torch.float64))
    assert torch.allclose(sp[best[-n:]], torch.tensor((3 * s - 1) / 2, dtype=torch.float64))
    kept = select_blocks(mass, 1 - sp).sum((-1, -2)).double()
    assert kept.mean().item() == pytest.approx((1 - s) * nq * nk, abs=0.5)


def test_head_adaptive_caps_n_and_keeps_the_mean():
    mass = torch.eye(8).repeat(5, 1, 1).double() + 1e-4  # every head concentrated: n capped at H // 2
    sp = head_adaptive_sparsity(mass, 0.7)
    assert sorted(sp.tolist()).count(0.85) == 2 and sp.mean().item() == pytest.approx(0.7)


def test_search_picks_top_mass_blocks_then_reuses_and_lse_cached_search():
    grid, block = Grid(2, 4, 4), 4
    q, k, v = planted_qkv(grid, heads=2)
    spans = TokenSpans(grid, 0, False)
    # the paper's rule (the preset renormalizes the cached search; tested below)
    method = get_method("adaspa")("wan", sparsity=0.75, head_adaptive=False, search_steps=(2, 5), renormalize=False)
    cache = {}
    # a step without a pattern searches: full pass (dense output) + block sums
    lay = method.dynamic_layout(context(q, k, v, spans, block, cache, step=2))
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    p = dense_probs(qh, kh)
    mass = brute_block_mass(p, grid.numel, block, block)
    assert torch.equal(lay.mask, brute_top(mass, torch.full((2,), 0.25)))
    assert torch.allclose(lay.output.double(), torch.matmul(p, vh.double()), atol=1e-5)
    assert lay.info["lse_cached"] is False and lay.info["recall"] == pytest.approx(recall(mass, lay.mask).tolist(), abs=1e-5)
    # between searches: the same pattern, nothing computed
    again = method.dynamic_layout(context(q * 3, k, v, spans, block, cache, step=3, forward_id=2))
    assert again.output is None and again.info is None and torch.equal(again.mask, lay.mask)
    # next search step: one pass with the cached LSE (no output), masses exp(qk - cached lse)
    q2 = q.flip(1)
    later = method.dynamic_layout(context(q2, k, v, spans, block, cache, step=5, forward_id=3))
    assert later.output is None and later.info["lse_cached"] is True
    lse = torch.logsumexp(torch.matmul(qh.double(), kh.double().transpose(-1, -2)) / 4.0, dim=-1)
    s2 = torch.matmul(q2.transpose(1, 2).double(), kh.double().transpose(-1, -2)) / 4.0
    mass2 = brute_block_mass(torch.exp(s2 - lse.unsqueeze(-1)), grid.numel, block, block)
    assert torch.equal(later.mask, brute_top(mass2, torch.full((2,), 0.25)))


def test_renormalize_cancels_the_stale_lse_of_a_later_search():
    # Blocks of one query row each: a drifted row's masses are off by exactly one factor, so the
    # renormalized LSE-cached search selects what a search with the fresh LSE would; without it the
    # global ranking follows the stale scale (the paper's rule, kept as the default).
    grid, bq = Grid(2, 4, 4), 1
    q, k, v = planted_qkv(grid, heads=2, seed=3)
    spans = TokenSpans(grid, 0, False)
    kh = k.transpose(1, 2).double()
    q2 = q * torch.linspace(0.3, 2.0, q.shape[1])[None, :, None, None]  # rows drift by different amounts
    s2 = torch.matmul(q2.transpose(1, 2).double(), kh.transpose(-1, -2)) / 4.0
    fresh = brute_block_mass(torch.softmax(s2, -1), grid.numel, bq, bq)
    want = brute_top(fresh, torch.full((2,), 0.25))
    picks = {}
    for renorm in (False, True):
        method = get_method("adaspa")("wan", sparsity=0.75, head_adaptive=False, search_steps=(2, 5), renormalize=renorm)
        cache = {}
        method.dynamic_layout(context(q, k, v, spans, bq, cache, step=2))
        picks[renorm] = method.dynamic_layout(context(q2, k, v, spans, bq, cache, step=5, forward_id=2)).mask
    assert torch.equal(picks[True], want)
    assert not torch.equal(picks[False], want)


def test_search_steps_are_fractions_of_the_pipeline():
    m = get_method("adaspa")("wan")
    assert m.search_step_set(50) == {10, 30}
    assert get_method("adaspa")("wan", search_steps=(3, 1)).search_step_set(None) == {1, 3}


@pytest.mark.parametrize(
    "opts, match",
    [({"sparsity": 1.0}, "sparsity"), ({"search_steps": (0.2, 3)}, "search_steps"), ({"row_wise": 1}, "row_wise")],
)
def test_invalid_options(opts, match):
    with pytest.raises(ValueError, match=match):
        get_method("adaspa")("wan", **opts)


def test_adaspa_has_no_static_preview():
    with pytest.raises(ValueError, match="run time"):
        diffsparse.preview_layout("adaspa", Grid(2, 4, 4))


def test_adaspa_on_tiny_pipelines(pipe, family):
    steps = CALLS[family]["num_inference_steps"]
    handle = diffsparse.enable_sparse_attention(pipe, method="adaspa", block_size=4, dense_steps=0, dense_layers=0, search_steps=(0, steps - 1), sparsity=0.6)
    first = render(pipe, family)
    stats = handle.stats()
    assert not stats["fallbacks"] and 0 < stats["density"] < 1
    heads = 2
    for layer in stats["layers"].values():
        assert len(layer["head_density"]) == heads and len(layer["recall"]) == heads
        assert all(0 < r <= 1 for r in layer["recall"]) and layer["searches"] >= 2
    assert not handle.dynamic._caches  # caches cleared at the end of the call
    assert torch.equal(render(pipe, family), first)  # nothing carried over between calls


def test_head_adaptive_and_row_wise_on_a_pipeline():
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(
        pipe, method="adaspa", block_size=4, dense_steps=1, dense_layers=0, row_wise=True, search_steps=(1,), sparsity=0.6,
    )
    render(pipe, "wan")
    layer = handle.stats()["layers"][0]
    assert layer["dense_calls"] == 2 and layer["sparse_calls"] == 4
    assert sum(layer["sparsity"]) / 2 == pytest.approx(0.6)


def test_checkpoint_recompute_does_not_search_twice():
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe.transformer, method="adaspa", block_size=4, dense_steps=0, dense_layers=0, search_steps=(0, 1))
    grid = Grid(2, 3, 4)
    q, k, v = planted_qkv(grid, heads=2)
    st = handle.state
    st.grid, st.step, st.forward_id = grid, 0, 1
    kw = dict(text_len=0, key_mask=None, dense=lambda: None)
    a = handle.attend(0, q, k, v, **kw)
    b = handle.attend(0, q, k, v, **kw)  # recompute of the same forward
    assert torch.equal(a, b) and handle.stats()["layers"][0]["searches"] == 1
    st.step, st.forward_id = 1, 2
    c = handle.attend(0, q, k, v, **kw)
    d = handle.attend(0, q, k, v, **kw)
    assert torch.equal(c, d) and handle.stats()["layers"][0]["searches"] == 2
    assert handle.stats()["layers"][0]["sparse_calls"] == 2


def test_gradient_checkpointing_matches_plain_backward():
    from diffsparse.tiny import tiny_wan_pipeline

    def run(checkpointing):
        t = tiny_wan_pipeline().transformer
        if checkpointing:
            t.enable_gradient_checkpointing()
        h = diffsparse.enable_sparse_attention(t, method="adaspa", block_size=4, dense_steps=0, dense_layers=0, search_steps=(0, 1))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, 2, 6, 8, generator=g)
        ctx = torch.randn(1, 8, 32, generator=g)
        losses = []
        for step in range(3):
            out = t(x, timestep=torch.tensor([900 - 100 * step]), encoder_hidden_states=ctx, return_dict=False)[0]
            loss = out.square().mean()
            loss.backward()
            losses.append(loss.item())
        grads = [p.grad.clone() for p in t.parameters() if p.grad is not None]
        return losses, grads, h.stats()["layers"]

    plain, ckpt = run(False), run(True)
    assert plain[0] == pytest.approx(ckpt[0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], ckpt[1]))
    assert plain[2] == ckpt[2]
