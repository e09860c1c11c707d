"""The reference image model (FLUX architecture): image grammar, checker, PCA image VAE, training, loader."""

import os

import numpy as np
import pytest
import torch

from diffsparse.reference import checker
from diffsparse.reference import image_data as I
from pipeline_helpers import train_tiny_reference

TINY_IMAGE = {
    "kind": "image", "height": 32, "width": 32, "batch_size": 2, "steps": 2, "warmup": 1, "text_len": 16,
    "stats_samples": 8, "log_every": 1, "ckpt_every": 1,
    "text_encoder": {"d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
    "clip": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1, "num_single_layers": 1,
                    "axes_dims_rope": [4, 6, 6]},
}


def test_image_grammar_split_and_determinism():
    train, held = I.train_specs(), I.held_out_specs()
    assert train and held and not set(train) & set(held) and len(train) + len(held) == len(I.all_specs())
    for spec in held[:5] + train[:5]:
        assert I.parse_caption(spec.caption) == spec
    with pytest.raises(ValueError, match="not in the image grammar"):
        I.parse_caption("a red square moving left on a plain background")
    a, cap, spec = I.sample(3, seed=1)
    b, _, _ = I.sample(3, seed=1)
    assert np.array_equal(a, b) and a.shape == (64, 64, 3) and a.dtype == np.uint8 and not I.is_held_out(spec)
    assert not np.array_equal(a, I.sample(4, seed=1)[0])


@pytest.mark.parametrize("place", list(I.PLACES))
def test_image_checker_reads_ground_truth(place):
    for k, (color, shape) in enumerate([("red", "square"), ("white", "circle"), ("blue", "triangle")]):
        spec = I.ImageSpec(color, shape, place, "striped" if k % 2 else "plain")
        r = checker.check_image(I.render_image(spec, seed=k, height=96, width=128), spec.caption)
        assert r["color_ok"] and r["shape_ok"] and r["place_ok"], r


def test_image_checker_selftest_is_perfect_on_ground_truth():
    assert checker.selftest(40, kind="image", height=64, width=96) == {"color": 1.0, "shape": 1.0, "place": 1.0}


def test_image_checker_rejects_wrong_content():
    spec = I.ImageSpec("red", "square", "top left", "plain")
    other = I.render_image(I.ImageSpec("green", "circle", "bottom right", "plain"), seed=0)
    r = checker.check_image(other, spec.caption)
    assert not (r["color_ok"] or r["shape_ok"] or r["place_ok"]), r
    blank = np.full((64, 64, 3), 30, np.uint8)
    assert checker.check_image(blank, spec.caption)["pred_place"] is None


def test_image_vae_round_trip_and_pipeline_interface():
    from diffsparse.reference.image_vae import SpaceToDepthImageVAE

    x = torch.rand(2, 3, 16, 24) * 2 - 1
    full = SpaceToDepthImageVAE(scale_factor_spatial=4, latent_channels=48)
    assert full.config.block_out_channels == [48, 48, 48]  # FluxPipeline: vae_scale_factor = 2**(3-1) = 4
    z = full.encode(x).latent_dist.mode()
    assert z.shape == (2, 48, 4, 6)
    assert torch.allclose(full.decode(z).sample, x, atol=1e-6)  # identity basis: lossless
    imgs = torch.from_numpy(np.stack([I.sample(i)[0] for i in range(16)])).float().permute(0, 3, 1, 2) / 127.5 - 1
    pca = SpaceToDepthImageVAE(scale_factor_spatial=4, latent_channels=8)
    std = pca.fit_pca(imgs)
    assert len(std) == 8 and std == sorted(std, reverse=True)
    rec = pca.decode(pca.encode(imgs).latent_dist.mode()).sample
    psnr = 10 * np.log10(4 / float(((rec - imgs) ** 2).mean()))
    assert psnr > 24, psnr  # flat-coloured shapes are nearly all in the top components
    v = SpaceToDepthImageVAE(latent_channels=8, scaling_factor=0.5, shift_factor=0.1)
    assert torch.allclose(v.denormalize(v.normalize(z[:, :8])), z[:, :8], atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        pca.encode(torch.zeros(1, 3, 10, 16))
    with pytest.raises(ValueError, match="latent_channels"):
        SpaceToDepthImageVAE(scale_factor_spatial=2, latent_channels=13)


def test_image_training_resumes_exports_and_renders_through_flux_pipeline(tmp_path):
    from diffusers import FluxPipeline

    import diffsparse
    from diffsparse.reference import load_image_pipeline

    out = train_tiny_reference(TINY_IMAGE, tmp_path)
    pipe = load_image_pipeline(str(out / "export"))
    assert isinstance(pipe, FluxPipeline) and pipe.vae_scale_factor == 4
    kw = dict(prompt="a red square in the top left on a plain background", negative_prompt="", true_cfg_scale=3.0,
              height=48, width=32, num_inference_steps=2, max_sequence_length=16, output_type="np")
    dense = pipe(**kw, generator=torch.Generator().manual_seed(0)).images[0]
    assert dense.shape == (48, 32, 3) and np.isfinite(dense).all()
    # the FLUX adapter runs on it: the dense method through the sparse machinery equals stock attention
    with diffsparse.sparse_attention(pipe, method="dense", dense_steps=0, dense_layers=0, block_size=4) as h:
        same = pipe(**kw, generator=torch.Generator().manual_seed(0)).images[0]
        assert h.stats()["density"] == 1.0
    np.testing.assert_allclose(same, dense, atol=1e-4)


def test_shipped_image_pipeline_defaults_to_its_trained_settings_with_a_progress_bar(capsys):
    from diffusers import FluxPipeline

    from diffsparse.reference import IMAGE_DEFAULTS, IMAGE_WEIGHTS, available, load_pipeline
    from diffsparse.reference.pipelines import ReferenceFluxPipeline, _fill

    if not available("image"):
        pytest.skip(f"no shipped image weights under {IMAGE_WEIGHTS}")
    pipe = load_pipeline("image")
    assert isinstance(pipe, FluxPipeline) and pipe.call_defaults == IMAGE_DEFAULTS

    def stop(p, i, t, callback_kwargs):  # skip the remaining steps: a full-length call costs one
        p._interrupt = True
        return callback_kwargs

    capsys.readouterr()
    img = pipe(prompt="a blue circle in the centre on a plain background", output_type="np",
               generator=torch.Generator().manual_seed(0), callback_on_step_end=stop).images[0]
    assert img.shape == (IMAGE_DEFAULTS["height"], IMAGE_DEFAULTS["width"], 3) == (128, 128, 3)  # not 1024 x 1024
    assert pipe.num_timesteps == IMAGE_DEFAULTS["num_inference_steps"]
    assert f"/{IMAGE_DEFAULTS['num_inference_steps']}" in capsys.readouterr().err  # the progress bar is on
    # a negative prompt given as embeddings keeps the default empty negative prompt out (FLUX refuses both)
    filled = _fill(super(ReferenceFluxPipeline, pipe).__call__, pipe.call_defaults, ("a prompt",),
                   {"negative_prompt_embeds": torch.zeros(1), "height": 64})
    assert "negative_prompt" not in filled and filled["height"] == 64 and filled["true_cfg_scale"] == 4.0


def test_shipped_image_pipeline_renders_offline(monkeypatch):
    from diffsparse.reference import IMAGE_WEIGHTS, available, load_pipeline

    if not available("image"):
        pytest.skip(f"no shipped image weights under {IMAGE_WEIGHTS}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline("image")
    img = pipe(prompt="a blue circle in the centre on a plain background", negative_prompt="", true_cfg_scale=4.0,
               height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images[0]
    assert img.shape == (64, 64, 3) and np.isfinite(img).all()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(IMAGE_WEIGHTS) for f in fs)
    assert total < 20 * 2**20
