"""End to end on tiny Wan, HunyuanVideo and FLUX pipelines (offline, random weights)."""

import pytest
import torch

import diffsparse
from diffsparse.tiny import tiny_wan_pipeline
from pipeline_helpers import BUILDERS, CALLS, render

SPARSE = {"wan": "radial", "hunyuan": "radial", "flux": "sliding_window"}
SMALL = {  # options making the tiny grids genuinely sparse
    "radial": {"decay_factor": 0.5},
    "sliding_window": {"tile": (1, 2, 2), "window_tiles": (1, 1, 1)},
    "grat": {"group_size": (1, 2, 2), "variant": "block", "radius": 0},
}


def test_dense_method_equals_stock(pipe, family):
    """The whole plan/processor/kernel machinery with a full layout reproduces the stock output."""
    ref = render(pipe, family)
    handle = diffsparse.enable_sparse_attention(pipe, method="dense", block_size=8)
    out = render(pipe, family)
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()
    stats = handle.stats()
    assert stats["density"] == 1.0 and stats["sparse_calls"] > 0 and stats["dense_calls"] == 0


def test_dense_steps_covering_all_steps_is_exactly_dense(pipe, family):
    ref = render(pipe, family)
    method = SPARSE[family]
    handle = diffsparse.enable_sparse_attention(pipe, method=method, dense_steps=CALLS[family]["num_inference_steps"], block_size=4)
    assert torch.equal(render(pipe, family), ref)
    assert handle.stats()["sparse_calls"] == 0 and handle.stats()["density"] is None


@pytest.mark.parametrize("method", ["radial", "sliding_window", "grat"])
def test_sparse_methods_run_and_report_density(pipe, family, method):
    if family == "flux" and method == "radial":
        pytest.skip("radial needs a temporal axis")
    ref = render(pipe, family)
    handle = diffsparse.enable_sparse_attention(pipe, method=method, dense_steps=0, dense_layers=0, block_size=4, **SMALL[method])
    out = render(pipe, family)
    stats = handle.stats()
    assert 0 < stats["density"] < 1, stats
    assert not stats["fallbacks"], stats["fallbacks"]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)
    diffsparse.disable_sparse_attention(pipe)
    assert torch.equal(render(pipe, family), ref)


def test_dense_layers_and_steps_split(family):
    pipe = BUILDERS[family](**({"num_layers": 2} if family == "wan" else {"num_layers": 1, "num_single_layers": 1}))
    steps = CALLS[family]["num_inference_steps"]
    method = SPARSE[family]
    handle = diffsparse.enable_sparse_attention(pipe, method=method, dense_steps=1, dense_layers=1, block_size=4, **SMALL[method])
    render(pipe, family)
    layers = handle.stats()["layers"]
    calls_per_step = 2 if family == "wan" else 1  # Wan runs CFG as two transformer calls
    assert layers[0] == {"density": None, "sparse_calls": 0, "dense_calls": steps * calls_per_step}
    assert layers[1]["dense_calls"] == calls_per_step and layers[1]["sparse_calls"] == (steps - 1) * calls_per_step


def test_step_counter_resets_per_call(pipe, family):
    method = SPARSE[family]
    handle = diffsparse.enable_sparse_attention(pipe, method=method, dense_steps=1, dense_layers=0, block_size=4, **SMALL[method])
    first = render(pipe, family)
    assert handle.state.step == -1  # reset by the pipeline's maybe_free_model_hooks
    second = render(pipe, family)
    assert torch.equal(first, second)


def test_stats_density_matches_layout():
    pipe = tiny_wan_pipeline()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", dense_steps=0, dense_layers=0, block_size=4, decay_factor=0.5)
    render(pipe, "wan")
    grid = handle.state.grid or diffsparse.Grid(4, 3, 5)
    _, mask = handle.video_layout(grid)
    assert handle.stats()["density"] == pytest.approx(mask.float().mean().item())


def test_wan22_two_experts_share_one_step_state():
    pipe = tiny_wan_pipeline(two_experts=True)
    ref = render(pipe, "wan", num_inference_steps=4)
    handle = diffsparse.enable_sparse_attention(pipe, method="radial", dense_steps=0, dense_layers=0, block_size=4, decay_factor=0.5)
    assert len(handle.transformers) == 2
    for t in (pipe.transformer, pipe.transformer_2):
        assert all(getattr(p, "handle", None) is handle for k, p in t.attn_processors.items() if "attn1" in k)
    out = render(pipe, "wan", num_inference_steps=4)
    assert not torch.equal(out, ref)
    calls = sum(v["sparse_calls"] for v in handle.stats()["layers"].values())
    assert calls == 4 * 2 * 2  # 4 steps x CFG x 2 layers, split between the experts
    diffsparse.disable_sparse_attention(pipe)
    assert torch.equal(render(pipe, "wan", num_inference_steps=4), ref)


def test_wan_image_to_video_pipeline():
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image

    base = tiny_wan_pipeline()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler, transformer=transformer,
        image_encoder=None, image_processor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        image=Image.new("RGB", (80, 48), (120, 30, 200)), prompt_embeds=torch.randn(1, 8, 32),
        negative_prompt_embeds=torch.randn(1, 8, 32), height=48, width=80, num_frames=9,
        num_inference_steps=2, guidance_scale=5.0, output_type="np",
    )
    ref = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    handle = diffsparse.enable_sparse_attention(pipe, method="dense", block_size=8)
    out = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    assert abs(out - ref).max() < 2e-5 and handle.stats()["sparse_calls"] == 2 * 2 * 2  # steps x CFG x layers


def test_bare_transformer_and_manual_reset():
    tr = tiny_wan_pipeline().transformer
    x, ehs = torch.randn(1, 16, 3, 6, 10), torch.randn(1, 8, 32)

    def call(t):
        return tr(x, torch.tensor([t]), ehs, return_dict=False)[0]

    ref900, ref800 = call(900), call(800)
    handle = diffsparse.enable_sparse_attention(
        tr, method="grat", dense_steps=1, dense_layers=0, block_size=4, group_size=(1, 2, 2), variant="block", radius=0
    )
    assert torch.equal(call(900), ref900)  # step 0 is dense
    assert not torch.equal(call(800), ref800)  # step 1 is sparse
    assert handle.state.step == 1 and handle.stats()["sparse_calls"] == 2
    handle.reset()  # a new generation: its first step is dense again
    assert torch.equal(call(800), ref800)
    diffsparse.disable_sparse_attention(tr)
    assert torch.equal(call(900), ref900)


def test_gradient_checkpointing_counts_once_and_trains():
    pipe = tiny_wan_pipeline()
    tr = pipe.transformer
    tr.enable_gradient_checkpointing()
    tr.train()
    handle = diffsparse.enable_sparse_attention(tr, method="radial", dense_steps=0, dense_layers=0, block_size=4, decay_factor=0.5)
    x = torch.randn(1, 16, 4, 6, 10)
    out = tr(x, torch.tensor([500]), torch.randn(1, 8, 32), return_dict=False)[0]
    out.square().mean().backward()
    stats = handle.stats()
    assert stats["sparse_calls"] == 2  # 2 layers, not doubled by the recompute in backward
    grads = [p.grad for p in tr.blocks[1].attn1.to_q.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_torch_compile_matches_eager():
    tr = tiny_wan_pipeline().transformer
    x, ehs = torch.randn(1, 16, 3, 6, 10), torch.randn(1, 8, 32)
    handle = diffsparse.enable_sparse_attention(tr, method="radial", dense_steps=0, dense_layers=0, block_size=4, decay_factor=0.5)
    eager = tr(x, torch.tensor([400]), ehs, return_dict=False)[0]
    compiled = torch.compile(tr, backend="aot_eager")(x, torch.tensor([300]), ehs, return_dict=False)[0]
    assert handle.stats()["sparse_calls"] == 4
    handle.reset()
    assert torch.allclose(compiled, tr(x, torch.tensor([300]), ehs, return_dict=False)[0], atol=1e-6)
    assert torch.isfinite(eager).all()


def test_family_facts_live_on_the_adapter():
    """token_grid and block_layout read a family's pixels per token and text position from its adapter."""
    from diffsparse.pipelines import ADAPTERS, adapter_for_family

    for adapter in ADAPTERS:
        assert adapter_for_family(adapter.family) is adapter
        ft, fh, fw = adapter.pixels_per_token
        grid = diffsparse.token_grid(adapter.family, 1 + 4 * ft, 8 * fh, 5 * fw)
        assert grid.dims == ((1, 8, 5) if adapter.single_frame else (5, 8, 5))
    with pytest.raises(ValueError, match=r"unknown model family 'ltx'.*'flux', 'hunyuan', 'wan'"):
        diffsparse.token_grid("ltx", 17, 64, 64)
    # FLUX puts text first: the layout's token order starts with the text tokens' model positions
    layout = diffsparse.block_layout("sliding_window", (1, 4, 4), family="flux", text_len=3, block_size=1,
                                     tile=(1, 2, 2), window_tiles=(1, 1, 1))
    video_positions = set(layout.order[:16].tolist()) if layout.order is not None else set(range(3, 19))
    assert video_positions == set(range(3, 19))


def test_a_method_without_a_preset_for_the_family_refuses_it(monkeypatch):
    from diffsparse.methods import get_method

    radial = get_method("radial")
    monkeypatch.setattr(radial, "presets", {k: v for k, v in radial.presets.items() if k != "hunyuan"})
    with pytest.raises(ValueError, match=r"method 'radial' has no preset for 'hunyuan' models"):
        radial("hunyuan")
    radial("wan")  # the others still work


def test_a_family_brings_its_presets_for_existing_methods_in_its_adapter(monkeypatch):
    """A new family is one adapter file: presets for methods that have none for it live on the adapter."""
    from diffsparse.methods import get_method
    from diffsparse.pipelines import adapter_for_family

    radial, adapter = get_method("radial"), adapter_for_family("hunyuan")
    monkeypatch.setattr(radial, "presets", {k: v for k, v in radial.presets.items() if k != "hunyuan"})
    monkeypatch.setattr(adapter, "presets", {"radial": {"decay_factor": 0.5, "attention_sink": True,
                                                        "dense_layers": 1, "dense_steps": 2}})
    pipe = BUILDERS["hunyuan"]()
    handle = diffsparse.enable_sparse_attention(pipe, method="radial")
    assert handle.method.decay_factor == 0.5 and handle.method.attention_sink is True
    assert handle.settings.dense_steps == 2 and handle.settings.dense_layers == 1
    assert diffsparse.block_layout("radial", (3, 4, 4), family="hunyuan", block_size=4).mask.any()


def test_each_method_family_preset_is_defined_in_one_place():
    from diffsparse.methods import METHODS
    from diffsparse.pipelines import ADAPTERS

    for adapter in ADAPTERS:
        for name in adapter.presets:
            assert name in METHODS, (adapter.family, name)
            assert adapter.family not in METHODS[name].presets, f"{name} on {adapter.family}: preset in two places"