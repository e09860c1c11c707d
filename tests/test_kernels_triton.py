"""Triton block-sparse attention (forward, LSE, backward), INT8 QK, block scores and LSE merge
against float64 PyTorch definitions. Without a GPU the kernels run in Triton's CPU interpreter
(conftest sets TRITON_INTERPRET=1), so sizes are small but shapes are deliberately awkward."""

import math

import pytest
import torch

from diffsparse.kernels import block_sparse_attention, build_block_index, reference_attention
from diffsparse.kernels.block_score import block_scores
from diffsparse.kernels.merge import merge_attention
from diffsparse.kernels.triton_attention import triton_backward, triton_forward

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _blocks(n, b):
    return -(-n // b)


def _case(B, H, Sq, Sk, D, bq, bk, dtype, density=0.5, mask_b=1, mask_h=None, seed=0, dv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g)
    k = torch.randn(B, H, Sk, D, generator=g)
    v = torch.randn(B, H, Sk, dv or D, generator=g)
    mh = H if mask_h is None else mask_h
    mask = torch.rand(mask_b, mh, _blocks(Sq, bq), _blocks(Sk, bk), generator=g) < density
    mask[..., 0, :] = False  # an empty query-block row: out 0, lse -inf
    if mask.shape[-2] > 1:
        mask[..., 1, :] = True  # a full row
    return [t.to(DEV, dtype) for t in (q, k, v)] + [mask.to(DEV)]


def _reference(q, k, v, mask, bs, scale=None):
    return reference_attention(q.double(), k.double(), v.double(), mask, bs, scale=scale, return_lse=True)


SHAPES = [  # B, H, Sq, Sk, D, bq, bk
    (1, 2, 37, 45, 16, 16, 16),  # odd lengths, partial last blocks
    (2, 1, 50, 33, 64, 16, 32),  # rectangular blocks, D 64
    (1, 1, 45, 70, 80, 32, 16),  # D 80 (padded to 128), partial last query block
    (1, 1, 40, 40, 16, 12, 20),  # blocks that are not powers of two
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_lse_match_reference(shape, dtype):
    B, H, Sq, Sk, D, bq, bk = shape
    q, k, v, mask = _case(B, H, Sq, Sk, D, bq, bk, dtype)
    idx = build_block_index(mask, (bq, bk))
    out, lse = triton_forward(q, k, v, idx.counts, idx.indices, bq, bk, 1 / math.sqrt(D), poison=True)
    ro, rl = _reference(q, k, v, mask, (bq, bk))
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert (out.double() - ro).abs().max() < TOL[dtype]
    assert torch.equal(torch.isinf(lse), torch.isinf(rl))
    fin = torch.isfinite(rl)
    assert (lse[fin].double() - rl[fin].double()).abs().max() < TOL[dtype]
    assert (out[..., :bq, :] == 0).all()  # the empty query block row


def test_broadcast_masks_per_batch_and_head():
    q, k, v, mask = _case(2, 3, 33, 33, 16, 16, 16, torch.float32, mask_b=2, mask_h=1)
    out, lse = block_sparse_attention(q, k, v, mask, block_size=16, return_lse=True, backend="triton")
    ro, rl = _reference(q, k, v, mask, 16)
    assert (out.double() - ro).abs().max() < 2e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(rl))


def test_large_layout_blocks_span_several_tiles():
    # 136-row / 144-key layout blocks: more than one 128-wide kernel tile per block.
    q, k, v, mask = _case(1, 1, 150, 300, 16, 136, 144, torch.float32, density=0.7)
    out, lse = block_sparse_attention(q, k, v, mask, block_size=(136, 144), return_lse=True, backend="triton")
    ro, rl = _reference(q, k, v, mask, (136, 144))
    assert (out.double() - ro).abs().max() < 2e-5
    fin = torch.isfinite(rl)
    assert (lse[fin] - rl[fin]).abs().max() < 2e-5


def test_full_mask_equals_dense_sdpa_and_custom_scale():
    q, k, v, _ = _case(1, 2, 41, 41, 32, 16, 16, torch.float32)
    full = torch.ones(1, 1, 3, 3, dtype=torch.bool, device=DEV)
    out = block_sparse_attention(q, k, v, full, block_size=16, scale=0.3, backend="triton")
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert (out - ref).abs().max() < 2e-5


def test_value_dim_may_differ():
    q, k, v, mask = _case(1, 1, 30, 30, 16, 16, 16, torch.float32, dv=24)
    out = block_sparse_attention(q, k, v, mask, block_size=16, backend="triton")
    ro, _ = _reference(q, k, v, mask, 16)
    assert out.shape[-1] == 24 and (out.double() - ro).abs().max() < 2e-5


def _backend(name, monkeypatch):
    """"torch-gather" forces the CPU path's gathered groups even for short sequences; "torch-pad"
    also lets every group pad its rows to the longest (masked zero blocks) and "torch-split" caps
    the gather so that every row is a group of its own."""
    if name.startswith("torch-"):
        monkeypatch.setattr("diffsparse.kernels.torch_sparse.MASKED_LIMIT", 0)
    if name == "torch-pad":
        monkeypatch.setattr("diffsparse.kernels.torch_sparse._PAD_SLACK", 100.0)
    if name == "torch-split":
        monkeypatch.setattr("diffsparse.kernels.torch_sparse._GATHER_BUDGET", 1)
    return "torch" if name.startswith("torch") else name


@pytest.mark.parametrize("backend", ["torch", "torch-gather", "torch-pad", "torch-split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_path_forward_and_lse_both_strategies(shape, dtype, backend, monkeypatch):
    B, H, Sq, Sk, D, bq, bk = shape
    q, k, v, mask = _case(B, H, Sq, Sk, D, bq, bk, dtype)
    out, lse = block_sparse_attention(q, k, v, mask, block_size=(bq, bk), return_lse=True,
                                      backend=_backend(backend, monkeypatch))
    ro, rl = _reference(q, k, v, mask, (bq, bk))
    assert (out.double() - ro).abs().max() < TOL[dtype]
    assert torch.equal(torch.isinf(lse), torch.isinf(rl)) and (out[..., :bq, :] == 0).all()
    fin = torch.isfinite(rl)
    assert (lse[fin].double() - rl[fin].double()).abs().max() < TOL[dtype]


@pytest.mark.parametrize("backend", ["triton", "torch", "torch-gather", "torch-pad", "torch-split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], (1, 1, 150, 160, 16, 136, 48)])
def test_gradients_match_autograd_through_reference(shape, dtype, backend, monkeypatch):
    backend = _backend(backend, monkeypatch)
    B, H, Sq, Sk, D, bq, bk = shape
    q, k, v, mask = _case(B, H, Sq, Sk, D, bq, bk, dtype, seed=1)
    do = torch.randn(B, H, Sq, D, generator=torch.Generator().manual_seed(2)).to(DEV, dtype)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    block_sparse_attention(qs, ks, vs, mask, block_size=(bq, bk), backend=backend).backward(do)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    reference_attention(qr, kr, vr, mask, (bq, bk)).backward(do.double())
    tol = {torch.float32: 1e-4, torch.bfloat16: 8e-2}[dtype]
    for got, want in ((qs, qr), (ks, kr), (vs, vr)):
        assert got.grad.dtype == dtype
        err = (got.grad.double() - want.grad).abs().max() / want.grad.abs().max().clamp(min=1)
        assert err < tol, (backend, err)


def test_head_dims_wider_than_128_use_every_channel():
    # D 160 pads to 256: the padding once stopped at 128, silently dropping channels 128 and up.
    q, k, v, mask = _case(1, 1, 40, 40, 160, 16, 16, torch.float32, seed=4)
    do = torch.randn(1, 1, 40, 160, generator=torch.Generator().manual_seed(5)).to(DEV)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qs, ks, vs, mask, block_size=16, backend="triton")
    out.backward(do)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, mask, 16)
    ref.backward(do.double())
    assert (out.double() - ref).abs().max() < 2e-5
    for got, want in ((qs, qr), (ks, kr), (vs, vr)):
        assert (got.grad.double() - want.grad).abs().max() < 1e-4


def test_backward_writes_every_gradient_element():
    B, H, Sq, Sk, D, bq, bk = SHAPES[0]
    q, k, v, mask = _case(B, H, Sq, Sk, D, bq, bk, torch.float32)
    mask[..., :, 1] = False  # a key block nobody reads: its dk/dv must be exactly zero
    idx = build_block_index(mask, (bq, bk))
    t = idx.transposed()
    scale = 1 / math.sqrt(D)
    out, lse = triton_forward(q, k, v, idx.counts, idx.indices, bq, bk, scale)
    dq, dk, dv = triton_backward(q, k, v, out, lse, torch.randn_like(out), idx.counts, idx.indices, t.counts,
                                 t.indices, bq, bk, scale, poison=True)
    for g in (dq, dk, dv):
        assert not torch.isnan(g).any()
    assert (dk[:, :, bk : 2 * bk] == 0).all() and (dv[:, :, bk : 2 * bk] == 0).all()
    assert (dq[:, :, :bq] == 0).all()  # the empty query row


def test_int8_qk_error_bound_and_backends_agree():
    q, k, v, mask = _case(1, 2, 64, 64, 64, 16, 16, torch.float32, density=0.6)
    k = k + 2.0  # channel offset: what K smoothing removes
    exact, lse = _reference(q, k, v, mask, 16)
    outs = {}
    for backend in ("triton", "torch"):
        o, l8 = block_sparse_attention(q, k, v, mask, block_size=16, return_lse=True, backend=backend, quantize="int8")
        fin = torch.isfinite(lse)
        # Unit-variance inputs, D 64: int8 logits err ~1e-2, so outputs stay within 0.05 and
        # cosine > 0.999 (SageAttention's accuracy class); the LSE is of the unsmoothed logits.
        assert (o.double() - exact).abs().max() < 0.05
        cos = torch.nn.functional.cosine_similarity(o.double().flatten(), exact.flatten(), dim=0)
        assert cos > 0.999
        assert (l8[fin] - lse[fin]).abs().max() < 0.05
        assert torch.equal(torch.isinf(l8), torch.isinf(lse))
        outs[backend] = o
    assert (outs["triton"] - outs["torch"]).abs().max() < 1e-4
    assert not torch.equal(outs["torch"], exact.float())
    with pytest.raises(ValueError, match="inference-only"):
        block_sparse_attention(q.requires_grad_(), k, v, mask, block_size=16, quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        block_sparse_attention(q, k, v, mask, block_size=16, quantize="int4")


def _brute_mass(q, k, lse, bq, bk):
    p = torch.exp(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]) - lse.double()[..., None])
    B, H, Sq, Sk = p.shape
    nq, nk = _blocks(Sq, bq), _blocks(Sk, bk)
    p = torch.nn.functional.pad(p, (0, nk * bk - Sk, 0, nq * bq - Sq))
    return p.view(B, H, nq, bq, nk, bk).sum((3, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_block_scores_triton_and_torch(dtype):
    q, k, v, _ = _case(1, 2, 45, 37, 16, 16, 12, dtype)
    _, lse = _reference(q, k, v, torch.ones(1, 1, 3, 4, dtype=torch.bool, device=DEV), (16, 12))
    want = _brute_mass(q, k, lse, 16, 12)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for backend in ("triton", "torch"):
        got = block_scores(q, k, lse, (16, 12), backend=backend)
        assert got.shape == (1, 2, 3, 4)
        assert (got.double() - want).abs().max() < tol
    # With the LSE over all keys, every query block's masses add up to its number of rows.
    rows = torch.tensor([16.0, 16.0, 13.0], dtype=torch.float64, device=DEV)
    assert torch.allclose(want.sum(-1), rows.expand(1, 2, 3))


def test_pooled_scores_rank_planted_blocks_and_validate():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, 64, 16, generator=g) * 0.1
    k = torch.randn(1, 1, 64, 16, generator=g) * 0.1
    q[:, :, :16] += 3.0
    k[:, :, 32:48] += 3.0  # query block 0 should look at key block 2
    s = block_scores(q, k, block_size=16, mode="pooled")
    assert int(s[0, 0, 0].argmax()) == 2
    assert torch.allclose(s.sum(-1), torch.full((1, 1, 4), 16.0))
    with pytest.raises(ValueError, match="lse"):
        block_scores(q, k, None, 16)
    with pytest.raises(ValueError, match="mode"):
        block_scores(q, k, None, 16, mode="magic")


def test_lse_merge_equals_attention_over_union():
    q, k, v, mask = _case(1, 2, 48, 48, 16, 16, 16, torch.float32, density=0.5)
    mask[..., 0, :] = False
    other = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)).to(DEV) < 0.5
    a, b = mask & other, mask & ~other  # disjoint, union = mask
    oa, la = block_sparse_attention(q, k, v, a, block_size=16, return_lse=True, backend="triton")
    ob, lb = block_sparse_attention(q, k, v, b, block_size=16, return_lse=True, backend="triton")
    o, lse = merge_attention(oa, la, ob, lb)
    ro, rl = _reference(q, k, v, mask, 16)
    assert (o.double() - ro).abs().max() < 2e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(rl))
    fin = torch.isfinite(rl)
    assert (lse[fin] - rl[fin]).abs().max() < 2e-5
    with pytest.raises(ValueError, match="equal shapes"):
        merge_attention(oa, la, ob[..., :8], lb)


def test_custom_op_registration_and_compile_fullgraph():
    q, k, v, mask = _case(1, 2, 40, 40, 16, 16, 16, torch.float32)
    idx = build_block_index(mask, 16)
    t = idx.transposed()
    args = (q, k, v, idx.mask, idx.counts, idx.indices, t.counts, t.indices, 16, 16, 0.25, "torch")
    torch.library.opcheck(torch.ops.diffsparse.block_sparse_attention.default, args,
                          test_utils=("test_schema", "test_faketensor"))

    def block(x):
        return block_sparse_attention(x, k, v, idx, backend="torch") * 2

    eager = block(q)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(q)
    assert torch.equal(compiled, eager)
    x = q.clone().requires_grad_()
    torch.compile(block, fullgraph=True, backend="aot_eager")(x).sum().backward()
    y = q.clone().requires_grad_()
    block(y).sum().backward()
    assert torch.allclose(x.grad, y.grad)


def test_block_mass_kernel_path_matches_shared_pass_for_permuted_orders():
    from diffsparse.blockmass import _kernel_mass, block_mass

    q, k, v, _ = _case(2, 2, 44, 44, 16, 8, 8, torch.float32)
    _, lse = _reference(q, k, v, torch.ones(1, 1, 6, 6, dtype=torch.bool, device=DEV), 8)
    orders = torch.stack([torch.randperm(44, generator=torch.Generator().manual_seed(h)) for h in range(2)])
    shared = block_mass(q.cpu(), k.cpu(), lse.cpu(), 8, 12, [None, orders])
    for order, want in zip([None, orders], shared):
        got = _kernel_mass(q, k, lse, 8, 12, order, 0.25, backend="triton")
        assert torch.allclose(got.cpu(), want, atol=1e-5)


@pytest.mark.parametrize("family,method,opts", [
    ("wan", "radial", {}), ("hunyuan", "sliding_window", {}), ("flux", "grat", {}), ("wan", "adaspa", {}),
])
def test_methods_run_on_the_triton_kernels_in_pipelines(family, method, opts):
    """Every layer of a real (tiny) pipeline through the Triton kernels gives the CPU path's output."""
    import diffsparse
    from pipeline_helpers import BUILDERS, render

    pipe = BUILDERS[family]()
    outs = {}
    for backend in ("torch", "triton"):
        handle = diffsparse.enable_sparse_attention(pipe, method=method, block_size=16, dense_steps=0,
                                                    backend=backend, **opts)
        outs[backend] = render(pipe, family)
        assert handle.stats()["sparse_calls"] > 0
        diffsparse.disable_sparse_attention(pipe)
    assert (outs["triton"] - outs["torch"]).abs().max() < 1e-4


@pytest.mark.parametrize("backend", ["flex", "reference"])
def test_int8_emulated_on_backends_without_an_int8_path(backend):
    q, k, v, mask = _case(1, 2, 64, 64, 64, 16, 16, torch.float32, density=0.6)
    if backend == "flex" and not q.is_cuda:  # compiled flex on CPU has no LSE, which the emulation needs
        with pytest.raises(NotImplementedError, match="flex.*LSE.*backend='torch'"):
            block_sparse_attention(q, k, v, mask, block_size=16, return_lse=True, backend=backend, quantize="int8")
        return
    want, lw = block_sparse_attention(q, k, v, mask, block_size=16, return_lse=True, backend="torch", quantize="int8")
    got, lg = block_sparse_attention(q, k, v, mask, block_size=16, return_lse=True, backend=backend, quantize="int8")
    fin = torch.isfinite(lw)
    assert (got - want).abs().max() < 1e-4 and (lg[fin] - lw[fin]).abs().max() < 1e-4


def test_flex_backend_runs_compiled_and_refuses_what_cpu_flex_cannot_do():
    q, k, v, mask = _case(1, 2, 200, 200, 32, 64, 64, torch.float32, density=0.5)
    out = block_sparse_attention(q, k, v, mask, block_size=64, backend="flex")
    ro, _ = _reference(q, k, v, mask, 64)
    assert (out.double() - ro).abs().max() < 1e-4
    if not q.is_cuda:
        with pytest.raises(NotImplementedError, match="gradients"):
            block_sparse_attention(q.requires_grad_(), k, v, mask, block_size=64, backend="flex")


@pytest.mark.parametrize("mode", ["grad", "inference"])
def test_cpu_path_worker_threads_under_grad_and_inference_mode(mode, monkeypatch):
    # Several groups on several worker threads (every row its own group), block-multiple lengths so
    # the rows are views of the inputs: the workers must not record autograd nor touch inference tensors wrongly.
    if DEV != "cpu":
        pytest.skip("CPU path")
    monkeypatch.setattr("diffsparse.kernels.torch_sparse.MASKED_LIMIT", 0)
    monkeypatch.setattr("diffsparse.kernels.torch_sparse._GATHER_BUDGET", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, v, mask = _case(1, 2, 64, 64, 16, 16, 16, torch.float32, density=0.6, seed=3)
        ro, _ = _reference(q, k, v, mask, 16)
        if mode == "inference":
            with torch.inference_mode():
                out = block_sparse_attention(q, k, v, mask, block_size=16, backend="torch")
            assert (out.double() - ro).abs().max() < 2e-5
        else:
            qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
            out = block_sparse_attention(qs, ks, vs, mask, block_size=16, backend="torch")
            out.sum().backward()
            qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
            reference_attention(qr, kr, vr, mask, 16).sum().backward()
            assert (out.double() - ro).abs().max() < 2e-5
            for got, want in ((qs, qr), (ks, kr), (vs, vr)):
                assert (got.grad.double() - want.grad).abs().max() < 1e-4
        assert torch.get_num_threads() == 2  # the workers' one-thread setting does not leak
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", ["torch", "torch-gather"])
def test_nan_in_a_key_block_stays_in_the_rows_that_read_it(backend, monkeypatch):
    # Short sequences run one masked call: a NaN key must not reach rows whose layout skips its block.
    q, k, v, _ = _case(1, 1, 64, 64, 16, 16, 16, torch.float32, seed=5)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool, device=DEV)
    mask[..., :, 1:] = True
    mask[..., 0, 0] = True  # only query block 0 reads key block 0
    k = k.clone()
    k[..., 3, :] = float("nan")
    out = block_sparse_attention(q, k, v, mask, block_size=16, backend=_backend(backend, monkeypatch))
    ref = block_sparse_attention(q, k, v, mask, block_size=16, backend="reference")
    assert torch.equal(torch.isnan(out).any(-1), torch.isnan(ref).any(-1))
    assert torch.isnan(out[..., :16, :]).all() and torch.isfinite(out[..., 16:, :]).all()


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_empty_query_or_key_sequences(backend):
    q, k, v, _ = _case(1, 2, 20, 20, 16, 16, 16, torch.float32)
    out, lse = block_sparse_attention(q[:, :, :0], k, v, torch.ones(1, 1, 0, 2, dtype=torch.bool), block_size=16,
                                      return_lse=True, backend=backend)
    assert out.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)
    out, lse = block_sparse_attention(q, k[:, :, :0], v[:, :, :0], torch.ones(1, 1, 2, 0, dtype=torch.bool),
                                      block_size=16, return_lse=True, backend=backend)
    assert (out == 0).all() and torch.isinf(lse).all() and out.shape == (1, 2, 20, 16)


def test_mixed_devices_and_dtypes_are_refused_up_front():
    q, k, v, mask = _case(1, 1, 20, 20, 16, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="one device.*meta"):
        block_sparse_attention(q, k.to("meta"), v, mask, block_size=16)
    with pytest.raises(ValueError, match="one floating dtype.*float16"):
        block_sparse_attention(q, k.half(), v, mask, block_size=16)
    with pytest.raises(ValueError, match="one floating dtype"):
        block_sparse_attention(q.long(), k.long(), v.long(), mask, block_size=16)


@pytest.mark.parametrize("backend", ["torch", "torch-gather"])
@pytest.mark.parametrize("dv", [24, 8])
def test_value_head_dim_may_differ_on_the_cpu_path(dv, backend, monkeypatch):
    q, k, v, mask = _case(1, 2, 40, 40, 16, 16, 16, torch.float32, dv=dv, seed=4)
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qs, ks, vs, mask, block_size=16, backend=_backend(backend, monkeypatch))
    out.sum().backward()
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qr, kr, vr, mask, 16)
    ref.sum().backward()
    assert out.shape[-1] == dv and (out.double() - ref).abs().max() < 2e-5
    for got, want in ((qs, qr), (ks, kr), (vs, vr)):
        assert got.grad.shape == want.grad.shape and (got.grad.double() - want.grad).abs().max() < 1e-4
