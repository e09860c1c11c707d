"""Our C++ CPU forward (kernels/cpu_native.cpp): equals the float64 reference, isolates NaNs per row,
is what backend="auto" runs where it was measured faster, and a machine that cannot build it stays
on the PyTorch path (remembered, one warning)."""

import pytest
import torch

import diffsparse
from diffsparse.kernels import api, block_sparse_attention, build_block_index, reference_attention
from diffsparse.kernels.cpu_native import NativeCpuKernel
from pipeline_helpers import BUILDERS, render

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU kernel")


@pytest.fixture(scope="module")
def native():
    kernel = NativeCpuKernel()
    kernel._load()  # built once for the module (about a second; cached on disk)
    return kernel


def _case(B, H, Sq, Sk, D, Dv, bs, density, seed, heads_in_mask=True):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, Sq, D, generator=g), torch.randn(B, H, Sk, D, generator=g)
    v = torch.randn(B, H, Sk, Dv, generator=g)
    bq, bk = (bs, bs) if isinstance(bs, int) else bs
    nq, nk = -(-Sq // bq), -(-Sk // bk)
    mask = torch.rand(B if heads_in_mask else 1, H if heads_in_mask else 1, nq, nk, generator=g) < density
    mask[..., 0, :] = False  # an empty row
    return q, k, v, mask, (bq, bk)


@pytest.mark.parametrize("B, H, Sq, Sk, D, Dv, bs, heads_in_mask", [
    (1, 2, 200, 200, 32, 32, 64, True),
    (2, 3, 1000, 777, 64, 48, 128, False),  # odd lengths, partial last blocks, value head dim != query's
    (1, 2, 77, 130, 16, 16, (16, 32), True),  # rectangular blocks, Sq != Sk
    (1, 1, 513, 513, 128, 128, 128, True),
])
def test_kernel_equals_the_float64_reference_with_lse_and_empty_rows(native, B, H, Sq, Sk, D, Dv, bs, heads_in_mask):
    q, k, v, mask, block = _case(B, H, Sq, Sk, D, Dv, bs, 0.5, seed=Sq + D, heads_in_mask=heads_in_mask)
    index = build_block_index(mask, block)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, S, H, D) storage, as the processors give it
    out, lse = native(qt, k, v, index, 0.3)
    ref, ref_lse = reference_attention(q.double(), k.double(), v.double(), mask, block, scale=0.3, return_lse=True)
    assert (out.double() - ref).abs().max() < 1e-5
    kept = torch.isfinite(ref_lse)
    assert (lse.double()[kept] - ref_lse[kept]).abs().max() < 1e-5
    assert bool((lse[~kept] == float("-inf")).all()) and bool((out[~kept] == 0).all()) and bool((~kept).any())


def test_a_nan_stays_in_the_rows_that_read_its_block(native):
    q, k, v, mask, block = _case(1, 2, 512, 512, 32, 32, 128, 0.5, seed=3)
    mask[..., 1:, 0] = torch.tensor([True, False, True])  # key block 0 kept by some rows only
    k[:, :, 5] = float("nan")
    index = build_block_index(mask, block)
    out, _ = native(q, k, v, index, 32 ** -0.5)
    rows_nan = torch.isnan(out).any(-1).view(1, 2, 4, 128).all(-1)
    assert torch.equal(rows_nan, mask[..., 0])


def test_auto_takes_float32_inference_calls_on_sparse_layouts(native):
    big = torch.empty(1, 1, 16384, 8)
    sparse128 = build_block_index(torch.eye(128, dtype=torch.bool)[None, None], 128)
    sparse64 = build_block_index(torch.eye(256, dtype=torch.bool)[None, None], 64)
    dense128 = build_block_index(torch.ones(1, 1, 128, 128, dtype=torch.bool), 128)
    assert api.cpu_native_pays(big, big, big, sparse128, None, native)
    assert api.cpu_native_pays(big, big, big, sparse64, None, native)
    assert not api.cpu_native_pays(big, big, big, dense128, None, native)  # every block kept: in-place flash
    assert not api.cpu_native_pays(big.bfloat16(), big, big, sparse128, None, native)  # float32 only
    assert not api.cpu_native_pays(big, big, big, sparse128, "int8", native)
    assert not api.cpu_native_pays(big, big, big, sparse128, None, None)
    assert not api.cpu_native_pays(big.requires_grad_(), big, big, sparse128, None, native)  # gradients


def test_auto_runs_it_and_matches_the_pytorch_path_lse_included(native):
    q, k, v, mask, block = _case(1, 2, 300, 300, 32, 32, 64, 0.5, seed=5)
    index = build_block_index(mask, block)
    want, want_lse = block_sparse_attention(q, k, v, index, backend="torch", return_lse=True)
    got, got_lse = block_sparse_attention(q, k, v, index, return_lse=True, native_fn=native)
    kept = torch.isfinite(want_lse)
    assert (got - want).abs().max() < 1e-5 and (got_lse[kept] - want_lse[kept]).abs().max() < 1e-5
    assert torch.equal(torch.isfinite(got_lse), kept)


def test_a_kernel_that_cannot_build_falls_back_once_and_is_remembered(monkeypatch):
    import diffsparse.kernels.cpu_native as cpu_native

    def broken():
        raise RuntimeError("c++ failed building cpu_native.cpp: no compiler")

    monkeypatch.setattr(cpu_native, "build_library", broken)
    kernel = NativeCpuKernel()
    q, k, v, mask, block = _case(1, 2, 300, 300, 32, 32, 64, 0.5, seed=6)
    index = build_block_index(mask, block)
    want = block_sparse_attention(q, k, v, index, backend="torch")
    with pytest.warns(UserWarning, match="C\\+\\+ CPU kernel could not be built.*no compiler"):
        got = block_sparse_attention(q, k, v, index, native_fn=kernel)
    assert torch.equal(got, want) and kernel.error and not kernel.usable()
    assert torch.equal(block_sparse_attention(q, k, v, index, native_fn=kernel), want)  # not tried again


def test_a_handle_holds_one_kernel_for_auto_and_runs_it():
    pipe = BUILDERS["wan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0)
    kernel = handle.executor.native_fn()
    assert isinstance(kernel, NativeCpuKernel) and handle.executor.native_fn() is kernel
    auto = render(pipe, "wan", num_inference_steps=2)
    assert kernel._fn is not None and kernel.usable()  # built and used by the tiny pipeline's calls
    diffsparse.enable_sparse_attention(pipe, method="radial", block_size=8, dense_steps=0, dense_layers=0,
                                       backend="torch")  # the PyTorch path gives the same frames
    torch.testing.assert_close(render(pipe, "wan", num_inference_steps=2), auto, atol=1e-4, rtol=1e-4)
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", backend="torch")
    assert handle.executor.native_fn() is None
