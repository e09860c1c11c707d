"""GPU readiness without a GPU: the Triton kernels compile ahead of time for Hopper (sm_90a).

`eval/aot_check.py --quick` compiles the forward, both backward kernels, the INT8 forward and the
block-score kernel at bf16, D 128, layout block 128 for sm_90 with Triton's bundled ptxas, exactly as
the dispatcher would launch them there, and the rows must compile, fit the H100's 227 KB of shared
memory per block, and use wgmma. The full grid (sm_80 + sm_90, every dtype, head dim and block) is
`python eval/aot_check.py` (results in eval/results/aot_check.txt).
"""

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _aot():
    spec = importlib.util.spec_from_file_location("aot_check", os.path.join(ROOT, "eval", "aot_check.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("aot_check", mod)
    spec.loader.exec_module(mod)
    return mod


def test_dispatcher_configs_are_a_pure_function_of_the_inputs():
    from diffsparse.kernels.triton_attention import kernel_config
    from diffsparse.kernels.triton_block_score import mass_config

    fwd = kernel_config(torch.bfloat16, 128, 128, 128, arch_major=9, interpret=False)
    assert (fwd["BLOCK_M"], fwd["BLOCK_N"], fwd["D_PAD"], fwd["num_warps"], fwd["num_stages"]) == (128, 128, 128, 8, 3)
    assert fwd["QUANT"] is False and fwd["FP32_IEEE"] is False and fwd["UPCAST"] is False
    bwd = kernel_config(torch.bfloat16, 128, 128, 128, backward=True, arch_major=9, interpret=False)
    assert (bwd["BLOCK_M"], bwd["TILES_M"], bwd["num_warps"], bwd["num_stages"]) == (128, 1, 8, 2) and "QUANT" not in bwd
    bwd80 = kernel_config(torch.bfloat16, 128, 128, 128, backward=True, arch_major=8, interpret=False)
    assert (bwd80["BLOCK_M"], bwd80["TILES_M"], bwd80["num_warps"], bwd80["num_stages"]) == (64, 2, 4, 2)
    fwd64 = kernel_config(torch.float16, 64, 128, 128, arch_major=9, interpret=False)  # measured on the H200
    assert (fwd64["BLOCK_M"], fwd64["BLOCK_N"], fwd64["TILES_N"], fwd64["num_warps"], fwd64["num_stages"]) == (128, 64, 2, 4, 3)
    import diffsparse.kernels.triton_attention as ta  # a per-kernel measured launch overrides the shared one

    table = {**ta.SM90_MEASURED, ("bwd_dkdv", 128): (32, 128, 4, 5)}
    saved, ta.SM90_MEASURED = ta.SM90_MEASURED, table
    try:
        dkdv = kernel_config(torch.bfloat16, 128, 128, 128, backward=True, arch_major=9, interpret=False, kernel="bwd_dkdv")
        dq = kernel_config(torch.bfloat16, 128, 128, 128, backward=True, arch_major=9, interpret=False, kernel="bwd_dq")
    finally:
        ta.SM90_MEASURED = saved
    assert (dkdv["BLOCK_M"], dkdv["BLOCK_N"], dkdv["TILES_M"], dkdv["num_warps"], dkdv["num_stages"]) == (32, 128, 4, 4, 5)
    assert (dq["BLOCK_M"], dq["BLOCK_N"], dq["num_warps"]) == (128, 128, 8)
    small = kernel_config(torch.bfloat16, 128, 64, 64, backward=True, arch_major=9, interpret=False)  # not measured
    assert (small["BLOCK_M"], small["num_warps"]) == (64, 4)
    q8 = kernel_config(torch.bfloat16, 64, 128, 128, quant=True, arch_major=9, interpret=False)  # INT8: generic
    assert (q8["BLOCK_N"], q8["num_warps"]) == (128, 8)
    odd = kernel_config(torch.float16, 64, 48, 16, arch_major=8, interpret=False)  # padded 64-row tiles, 16-key tiles
    assert (odd["BLOCK_M"], odd["BLOCK_N"], odd["TILES_M"], odd["num_warps"]) == (64, 16, 1, 4)
    fp32 = kernel_config(torch.float32, 64, 128, 128, arch_major=8, interpret=False)
    assert (fp32["BLOCK_M"], fp32["TILES_M"], fp32["FP32_IEEE"]) == (32, 4, True)
    wide = kernel_config(torch.bfloat16, 160, 128, 128, arch_major=9, interpret=False)
    assert (wide["D_PAD"], wide["BLOCK_M"]) == (256, 64)  # D 160 pads to 256 (every channel), 64-row tiles
    interp = kernel_config(torch.bfloat16, 64, 128, 128, arch_major=9, interpret=True)
    assert interp["UPCAST"] and "num_warps" not in interp and interp["BLOCK_M"] == 128
    assert mass_config(torch.float32, 128, 128, 128, gpu=True)["BLOCK_M"] == 64


def test_quick_subset_compiles_for_hopper_with_wgmma():
    aot = _aot()
    why = aot.ptxas_status([90])
    if why:
        pytest.skip(f"Triton's ptxas is not usable here, so nothing can be compiled for sm_90: {why}")
    rows = aot.run_checks(archs=[90], quick=True)
    assert {r["kernel"] for r in rows} == set(aot.KERNELS)
    for r in rows:
        assert r["ok"], r
        assert r["shared"] is not None and 0 < r["shared"] <= aot.SMEM_LIMIT[90], r
        assert r["wgmma_expected"] and r["wgmma"] and r["mma"] == "wgmma", r  # bf16, 64/128-row tiles: all wgmma
        n_wg, n_dots = map(int, r["dots"].split("/"))
        assert n_wg == n_dots > 0, r
        assert r["seconds"] is not None
