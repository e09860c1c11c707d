"""backend="auto" on CPU: large inference calls go to the handle's compiled FlexAttention (measured
faster there), everything else stays on our CPU path, and a FlexAttention that cannot be built on
this machine is remembered and never tried again."""

import pytest
import torch

import diffsparse
from diffsparse.kernels import api, block_sparse_attention, build_block_index, reference_attention
from diffsparse.kernels.flex import CompiledFlex, compiled_flex_attention
from pipeline_helpers import BUILDERS

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")


def _inputs(S=200, D=32, bs=64, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, S, D, generator=g) for _ in range(3))
    n = -(-S // bs)
    mask = torch.rand(1, 2, n, n, generator=g) < density
    mask[..., torch.arange(n), torch.arange(n)] = True
    return q, k, v, build_block_index(mask, bs)


class Counting(CompiledFlex):
    def __init__(self, fail=False):
        super().__init__()
        self.calls, self.fail = 0, fail

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("InductorError: no C++ compiler found")
        return super().__call__(*args, **kwargs)


def test_rule_takes_only_large_inference_calls_without_lse_on_big_blocks():
    flex = compiled_flex_attention()
    big = torch.empty(1, 1, 16384, 8)
    index128 = build_block_index(torch.eye(128, dtype=torch.bool)[None, None] | (torch.rand(1, 1, 128, 128) < 0.5), 128)
    dense128 = build_block_index(torch.ones(1, 1, 128, 128, dtype=torch.bool), 128)
    index64 = build_block_index(torch.rand(1, 1, 256, 256) < 0.5, 64)
    assert api.cpu_flex_pays(big, big, big, index128, False, None, flex)
    assert not api.cpu_flex_pays(big, big, big, index64, False, None, flex)  # blocks of 64: even, compile won't pay
    assert not api.cpu_flex_pays(big, big, big, dense128, False, None, flex)  # every block kept: ours is faster
    assert not api.cpu_flex_pays(big[:, :, :8192], big, big, index128, False, None, flex)  # too few scores
    assert not api.cpu_flex_pays(big, big, big, index128, True, None, flex)  # LSE: CPU flex has none
    assert not api.cpu_flex_pays(big, big, big, index128, False, "int8", flex)
    assert not api.cpu_flex_pays(big, big, big, index128, False, None, None)  # no held callable
    assert not api.cpu_flex_pays(big.requires_grad_(), big, big, index128, False, None, flex)  # gradients
    flex.error = "RuntimeError: broken"
    assert not api.cpu_flex_pays(big.detach(), big, big, index128, False, None, flex)


def test_auto_runs_flex_where_it_pays_and_matches_the_reference(monkeypatch):
    monkeypatch.setattr(api, "CPU_FLEX_MIN_BLOCK", 16)
    monkeypatch.setattr(api, "CPU_FLEX_MIN_SCORES", 0)
    q, k, v, index = _inputs()
    flex = Counting()
    out = block_sparse_attention(q, k, v, index, flex_fn=flex)
    assert flex.calls == 1
    ref = reference_attention(q.double(), k.double(), v.double(), index.mask, 64)
    assert (out.double() - ref).abs().max() < 1e-4
    out2, lse = block_sparse_attention(q, k, v, index, flex_fn=flex, return_lse=True)  # LSE: our path
    assert flex.calls == 1 and torch.isfinite(lse).all() and (out2 - out).abs().max() < 1e-4


def test_a_flex_that_cannot_build_falls_back_once_and_is_remembered(monkeypatch):
    monkeypatch.setattr(api, "CPU_FLEX_MIN_BLOCK", 16)
    monkeypatch.setattr(api, "CPU_FLEX_MIN_SCORES", 0)
    q, k, v, index = _inputs(seed=1)
    flex = Counting(fail=True)
    want = block_sparse_attention(q, k, v, index, backend="torch")
    with pytest.warns(UserWarning, match="compiled FlexAttention failed on this CPU.*no C\\+\\+ compiler"):
        got = block_sparse_attention(q, k, v, index, flex_fn=flex)
    assert torch.equal(got, want) and flex.error and flex.calls == 1
    assert torch.equal(block_sparse_attention(q, k, v, index, flex_fn=flex), want)
    assert flex.calls == 1  # not tried again


def test_handle_holds_one_flex_for_auto_and_none_for_torch():
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial")
    assert isinstance(handle.flex_fn(), CompiledFlex) and handle.flex_fn() is handle.flex_fn()
    diffsparse.disable_sparse_attention(pipe)
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", backend="torch")
    assert handle.flex_fn() is None
    diffsparse.disable_sparse_attention(pipe)
