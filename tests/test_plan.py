"""Plans: text sink, key padding, permutations and the handle's execution against references."""

import pytest
import torch
import torch.nn.functional as F

from diffsparse.executor import run_plan
from diffsparse.geometry import Grid, TokenSpans
from diffsparse.handle import Settings, SparseHandle
from diffsparse.kernels import expand_block_mask
from diffsparse.methods import get_method
from diffsparse.plan import build_plan


def model_order_token_mask(plan, spans, n_keys):
    """The token mask a plan computes, in the model's order (queries x keys of the model sequence)."""
    nq = spans.total_len
    internal = expand_block_mask(plan.index.mask, (plan.index.block_q, plan.index.block_k), nq, n_keys)[0, 0]
    q_pos = plan.q_order if plan.q_order is not None else torch.arange(nq)
    k_pos = plan.k_order if plan.k_order is not None else torch.arange(n_keys)
    out = torch.zeros(nq, spans.total_len, dtype=torch.bool)
    out[q_pos.unsqueeze(1), k_pos.unsqueeze(0)] = internal
    return out


@pytest.mark.parametrize("text_first", [False, True])
@pytest.mark.parametrize("key_text", [None, torch.tensor([0, 1, 2]), torch.tensor([1, 4])])
def test_plan_text_sink_padding_and_permutation(text_first, key_text):
    grid, nt, block = Grid(3, 4, 5), 6, (4, 8)
    method = get_method("grat")("wan", group_size=(1, 2, 2), variant="block", radius=0)
    order, vmask = method.video_layout(grid, *block)
    spans = TokenSpans(grid, nt, text_first)
    plan = build_plan(order, vmask, spans, key_text, *block)
    n_keys = spans.video_len + (nt if key_text is None else key_text.numel())
    m = model_order_token_mask(plan, spans, n_keys)
    text = spans.text_positions()
    valid = text if key_text is None else text[key_text]
    padded = sorted(set(text.tolist()) - set(valid.tolist()))
    assert m[text].sum(1).eq(spans.video_len + valid.numel()).all()  # text rows: every usable key
    assert m[:, valid].all()  # text columns dense
    assert not m[:, padded].any()  # padded text keys never read
    video = spans.video_positions()
    assert not m[video][:, video].all()  # the video part is genuinely sparse

    q, k, v = (torch.randn(2, spans.total_len, 3, 8, dtype=torch.float64) for _ in range(3))
    out = run_plan(plan, q, k, v)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-10)


def make_handle(method="radial", **opts):
    m = get_method(method)("wan", **opts)
    return SparseHandle(m, Settings(0, 0, (4, 4), "auto"), "wan", [])


def test_attend_splits_batch_by_text_padding():
    handle = make_handle("radial", decay_factor=0.5)
    grid = Grid(4, 2, 3)
    handle.state.grid, handle.state.step = grid, 0
    S = grid.numel + 5
    q, k, v = (torch.randn(3, S, 2, 8) for _ in range(3))
    mask = torch.ones(3, 1, 1, S, dtype=torch.bool)
    mask[0, ..., -2:] = False
    mask[2, ..., -4:] = False
    dense = lambda: (_ for _ in ()).throw(AssertionError("should not fall back"))  # noqa: E731
    out = handle.attend(1, q, k, v, text_len=5, key_mask=mask, dense=dense)
    for b in range(3):
        single = handle.attend(1, q[b : b + 1], k[b : b + 1], v[b : b + 1], text_len=5, key_mask=mask[b : b + 1], dense=dense)
        assert torch.allclose(out[b : b + 1], single, atol=1e-6)


def test_attend_falls_back_dense_with_reason_on_unknown_geometry():
    handle = make_handle("radial")
    handle.state.grid, handle.state.step = Grid(2, 2, 2), 0
    q = torch.randn(1, 9, 2, 4)
    out = handle.attend(0, q, q, q, text_len=0, key_mask=None, dense=lambda: "dense-result")
    assert out == "dense-result"
    assert any("does not match grid" in r for r in handle.stats()["fallbacks"])
    assert handle.stats()["layers"][0]["dense_calls"] == 1


def test_plans_are_cached_per_geometry_on_the_handle():
    handle = make_handle("radial")
    spans = TokenSpans(Grid(3, 2, 2), 0, False)
    p1 = handle.plan(spans, None, torch.device("cpu"))
    assert handle.plan(spans, None, torch.device("cpu")) is p1
    p2 = handle.plan(TokenSpans(Grid(5, 2, 2), 0, False), None, torch.device("cpu"))
    assert p2 is not p1 and p2.index.mask.shape != p1.index.mask.shape
    assert len(handle._plans) == 2
    other = make_handle("radial")
    assert len(other._plans) == 0  # nothing shared between handles
    # one frozen key per call geometry: text keys as a tuple, the device as a string
    from diffsparse.plan import PlanKey

    k1 = PlanKey.of("m", spans, torch.tensor([0, 2]), 4, 4, torch.device("cpu"))
    assert k1 == PlanKey("m", spans, (0, 2), 4, 4, "cpu") and hash(k1) == hash(PlanKey.of("m", spans, torch.tensor([0, 2]), 4, 4, "cpu"))


def test_the_handle_is_what_processors_may_use():
    from diffsparse.pipelines import AttentionHandle

    assert isinstance(make_handle("radial"), AttentionHandle)
