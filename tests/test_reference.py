"""The shipped reference models: data generator, text side, space-to-depth VAE, training loop, loader."""

import json
import os

import numpy as np
import pytest
import torch

from diffsparse.reference import checker
from diffsparse.reference import data as D
from pipeline_helpers import train_tiny_reference


def test_data_is_deterministic_by_seed():
    v1, c1, s1 = D.sample(7, seed=3)
    v2, c2, s2 = D.sample(7, seed=3)
    assert c1 == c2 and s1 == s2 and np.array_equal(v1, v2)
    assert v1.shape == (17, 64, 64, 3) and v1.dtype == np.uint8
    v3, _, _ = D.sample(8, seed=3)
    assert not np.array_equal(v1, v3)
    assert D.render_video(s1, 5, num_frames=9, height=32, width=48).shape == (9, 32, 48, 3)


def test_held_out_split_and_caption_grammar():
    train, held = D.train_specs(), D.held_out_specs()
    assert train and held and not set(train) & set(held)
    for spec in held[:10] + train[:10]:
        assert D.parse_caption(spec.caption) == spec
    for i in range(20):
        assert not D.is_held_out(D.sample(i)[2])


@pytest.mark.parametrize("color", list(D.COLORS))
def test_caption_matches_content(color):
    for k, (shape, motion) in enumerate([("square", "left"), ("circle", "bounce"), ("triangle", "grow")]):
        spec = D.Spec(color, shape, motion, "striped" if k % 2 else "plain", "right" if k == 1 else None)
        video = D.render_video(spec, seed=k)
        r = checker.check(video, spec.caption)
        assert r["color_ok"] and r["shape_ok"] and r["motion_ok"], r


def test_tokenizer_round_trip(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from diffsparse.reference.text import build_tokenizer

    tok = build_tokenizer()
    cap = "a red square moving left on a striped background, camera panning right"
    ids = tok(cap).input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == cap
    out = tok([cap, "A Blue zebra"], padding="max_length", max_length=24, return_tensors="pt")
    assert out.input_ids.shape == (2, 24) and int(out.attention_mask[1].sum()) == 4
    assert tok.unk_token_id in out.input_ids[1].tolist()
    tok.save_pretrained(tmp_path)
    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path, local_files_only=True)
    assert tok2(cap).input_ids == ids


def test_space_to_depth_vae_is_lossless():
    from diffsparse.reference.vae import SpaceToDepthVAE

    vae = SpaceToDepthVAE()
    x = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, vae.config.z_dim, 3, 4, 6)
    assert torch.allclose(vae.decode(z).sample, x)
    assert vae.config.scale_factor_temporal == 4 and vae.config.scale_factor_spatial == 4
    assert len(vae.config.latents_mean) == vae.config.z_dim


TINY = {
    "frames": 5, "height": 16, "width": 16, "batch_size": 2, "steps": 2, "warmup": 1, "text_len": 16,
    "stats_samples": 4, "log_every": 1, "ckpt_every": 1, "vae": {"latent_channels": 8},
    "text_encoder": {"d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 16, "num_layers": 1,
                    "freq_dim": 32, "rope_max_seq_len": 64},
}


def test_training_writes_checkpoint_resumes_and_exports(tmp_path):
    from diffsparse.reference import load_video_pipeline

    out = train_tiny_reference(TINY, tmp_path)
    pipe = load_video_pipeline(str(out / "export"))
    video = pipe(prompt="a red square moving left on a plain background", num_frames=5, height=16, width=16,
                 num_inference_steps=2, max_sequence_length=16, generator=torch.Generator().manual_seed(0),
                 output_type="np").frames[0]
    assert video.shape == (5, 16, 16, 3)

    # a fine-tune started from that exported folder (no checkpoint of its own) begins from its weights
    from diffsparse.reference.train import Trainer, load_config

    cfg = load_config(None, {**TINY, "out": str(tmp_path / "ft"), "init_from": str(out / "export"),
                             "schedule_start": 3, "steps": 5, "stats_samples": 2})
    tr = Trainer(cfg)
    fresh = {k: v.clone() for k, v in tr.modules["transformer"].state_dict().items()}
    tr.init_from(cfg["init_from"])
    shipped = pipe.transformer.state_dict()
    assert tr.step == 3 and all(torch.equal(v, shipped[k]) for k, v in tr.modules["transformer"].state_dict().items())
    assert any(not torch.equal(v, shipped[k]) for k, v in fresh.items())  # the init actually changed something
    assert all(torch.equal(tr.ema[f"transformer.{k}"], v) for k, v in tr.modules["transformer"].named_parameters())
    assert torch.equal(tr.vae.basis, pipe.vae.basis) and torch.equal(tr.vae.center, pipe.vae.center)
    tr.run()
    assert tr.step == 5

    # sharpened cross-attention: the q/k gains are scaled at the start and stay fixed while the rest trains
    cfg = {**cfg, "out": str(tmp_path / "sharp"), "cross_attn_gain": 2.0}
    tr = Trainer(cfg)
    tr.init_from(cfg["init_from"])
    attn2 = tr.modules["transformer"].blocks[0].attn2
    assert torch.allclose(attn2.norm_q.weight, 2 * pipe.transformer.blocks[0].attn2.norm_q.weight)
    gains = [n.weight.clone() for n in tr._cross_attn_norms()]
    before = attn2.to_q.weight.clone()
    tr.run()
    assert all(torch.equal(g, n.weight) for g, n in zip(gains, tr._cross_attn_norms()))
    assert not torch.equal(before, attn2.to_q.weight)
    # the exported folder does not record the local folder its VAE was loaded from
    with open(os.path.join(tr.export(), "vae", "config.json")) as f:
        assert "_name_or_path" not in json.load(f)


def _stop_after_one_step(pipe, i, t, callback_kwargs):
    """A `callback_on_step_end` that skips the remaining steps (Diffusers' interrupt): a full-length call costs one."""
    pipe._interrupt = True
    return callback_kwargs


def test_shipped_video_pipeline_defaults_to_its_trained_settings_with_a_progress_bar(capsys):
    from diffusers import WanPipeline

    import diffsparse
    from diffsparse.reference import VIDEO_DEFAULTS, VIDEO_WEIGHTS, available, load_pipeline

    if not available("video"):
        pytest.skip(f"no shipped weights under {VIDEO_WEIGHTS}")
    with open(os.path.join(VIDEO_WEIGHTS, "training.json")) as f:
        trained = json.load(f)["config"]
    pipe = load_pipeline("video")
    assert isinstance(pipe, WanPipeline)
    assert pipe.call_defaults == {**VIDEO_DEFAULTS, "num_frames": trained["frames"], "height": trained["height"],
                                  "width": trained["width"]}
    assert (trained["frames"], trained["height"], trained["width"]) == (17, 64, 64)
    capsys.readouterr()
    video = pipe(prompt="a blue circle bouncing", generator=torch.Generator().manual_seed(0), output_type="np",
                 callback_on_step_end=_stop_after_one_step).frames[0]
    assert video.shape == (17, 64, 64, 3)  # not Wan's 81 x 480 x 832
    assert pipe.num_timesteps == VIDEO_DEFAULTS["num_inference_steps"] and pipe.guidance_scale == 4.0
    assert f"/{VIDEO_DEFAULTS['num_inference_steps']}" in capsys.readouterr().err  # Diffusers' progress bar is on
    # anything passed wins, by name or by position
    video = pipe("a blue circle bouncing", None, 32, 48, 5, num_inference_steps=1, guidance_scale=1.0,
                 output_type="np").frames[0]
    assert video.shape == (5, 32, 48, 3) and pipe.num_timesteps == 1 and pipe.guidance_scale == 1.0
    pipe.set_progress_bar_config(disable=True)  # users can turn the bar off
    capsys.readouterr()
    pipe(prompt="x", num_frames=1, height=16, width=16, num_inference_steps=1, output_type="np")
    assert "/1" not in capsys.readouterr().err
    with diffsparse.sparse_attention(pipe, method="radial") as handle:  # still a pipeline diffsparse patches
        assert diffsparse.get_handle(pipe) is handle


def test_call_defaults_come_from_the_weights_training_record(tmp_path):
    from diffsparse.reference import VIDEO_DEFAULTS
    from diffsparse.reference.pipelines import call_defaults

    assert call_defaults(str(tmp_path), VIDEO_DEFAULTS) == VIDEO_DEFAULTS  # no training.json: the constants
    (tmp_path / "training.json").write_text(json.dumps({"config": {"frames": 5, "height": 16, "width": 32}}))
    assert call_defaults(str(tmp_path), VIDEO_DEFAULTS) == {**VIDEO_DEFAULTS, "num_frames": 5, "height": 16,
                                                            "width": 32}


def test_shipped_video_pipeline_renders_offline(monkeypatch):
    from diffsparse.reference import VIDEO_WEIGHTS, available, load_pipeline

    if not available("video"):
        pytest.skip(f"no shipped weights under {VIDEO_WEIGHTS}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline("video")
    from diffusers import WanPipeline

    assert isinstance(pipe, WanPipeline)
    video = pipe(prompt="a blue circle bouncing", num_frames=9, height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert video.shape == (9, 32, 32, 3) and np.isfinite(video).all()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(VIDEO_WEIGHTS) for f in fs)
    assert total < 50 * 2**20


def test_mixed_sizes_and_warm_restart_schedule():
    from diffsparse.reference.train import Trainer, batch, batch_geometry, load_config

    cfg = load_config(None, {**TINY, "out": "/tmp/unused", "sizes": [[16, 16, 2], [32, 24, 1]]})
    assert [batch_geometry(cfg, s) for s in range(3)] == [(16, 16, 2), (32, 24, 1), (16, 16, 2)]
    x, caps = batch(cfg, 1, np.random.default_rng(0), num_frames=5)
    assert x.shape == (1, 3, 5, 32, 24) and len(caps) == 1
    a, _ = batch(cfg, 0, np.random.default_rng(0), num_frames=5)
    b, _ = batch(cfg, 2, np.random.default_rng(0), num_frames=5)
    assert not torch.equal(a, b)  # no repeated samples across steps of the same size
    tr = Trainer({**cfg, "warmup": 10, "steps": 200, "schedule_start": 100})
    tr.step = 100
    assert tr.lr_scale() == pytest.approx(0.1)  # warm-up restarts at schedule_start
    tr.step = 109
    assert tr.lr_scale() == pytest.approx(1.0)
    tr.step = 200
    assert tr.lr_scale() == pytest.approx(0.1)  # cosine over the 100 restarted steps, to 10 %


def test_compact_text_equals_padded_text_in_output_and_gradients():
    """Training's shortcut (text + one padding key with a log-count bias) is the 512-padded layout's maths."""
    from diffsparse.reference import compact_text
    from diffsparse.reference.text import encode
    from diffsparse.reference.train import Trainer, load_config

    tr = Trainer(load_config(None, {**TINY, "out": "/tmp/unused", "text_len": 40}))
    te, tf = tr.modules["text_encoder"], tr.modules["transformer"]
    assert tr.text_bias is not None
    caps = ["a red square moving left on a striped background, camera panning right", "", "a blue circle growing"]
    x = torch.randn(3, tr.vae.config.z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100.0, 500.0, 900.0])

    def run(compact: bool):
        tr.text_bias.bias = None
        te.zero_grad(), tf.zero_grad()
        if compact:
            emb, tr.text_bias.bias = compact_text.compact_prompt_embeds(tr.tokenizer, te, caps, 40)
            longest = len(tr.tokenizer(caps[0]).input_ids)  # 13 words + </s>
            assert emb.shape[1] == longest + 1 and tr.text_bias.bias.shape == (3, 1, 1, longest + 1)
        else:
            emb = encode(tr.tokenizer, te, caps, 40)
        out = tf(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
        out.square().mean().backward()
        grads = {n: p.grad.clone() for m in (te, tf) for n, p in m.named_parameters() if p.grad is not None}
        return out.detach(), grads

    (a, ga), (b, gb) = run(True), run(False)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6, rtol=1e-3), n
    # without the bias the short layout is a different model: the check above can fail
    tr.text_bias.bias = None
    emb, _ = compact_text.compact_prompt_embeds(tr.tokenizer, te, caps, 40)
    c = tf(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
    assert not torch.allclose(c, b, atol=1e-4)


def test_evaluation_rates_by_motion_and_interval():
    from diffsparse.reference.evaluate import rates, wilson_interval

    caps = ["a red square growing on a plain background", "a red square moving up on a plain background"]
    res = [{"caption": caps[i % 2], "color_ok": True, "shape_ok": False, "motion_ok": i % 2 == 0 or i == 1,
            "adjacent_ssim": 0.5} for i in range(8)]
    r = rates(res)
    assert r["motion"] == 5 / 8 and r["motion_direction_only"] == 1 / 4
    assert r["motion_by_kind"] == {"up": "1/4", "grow": "4/4"}
    lo, hi = r["motion_ci95"]
    assert 0 < lo < 5 / 8 < hi < 1
    assert wilson_interval(21, 28) == pytest.approx([0.5664, 0.8732], abs=1e-4)  # textbook Wilson values
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    a, b = wilson_interval(21, 28), wilson_interval(63, 84)
    assert b[1] - b[0] < a[1] - a[0]  # more samples, narrower interval


def test_diagnostics_text_share_and_direction_sensitivity_on_a_text_blind_model():
    """With every text position mapped to one embedding the keys are all equal: attention is uniform, so the
    text's share is exactly its length / 512, and the denoiser cannot tell a direction from its opposite."""
    from diffsparse.reference import VIDEO_WEIGHTS, available, load_pipeline
    from diffsparse.reference.diagnostics import direction_rendering, direction_sensitivity, text_attention_share

    if not available("video"):
        pytest.skip(f"no shipped weights under {VIDEO_WEIGHTS}")
    pipe = load_pipeline("video")
    seeing = text_attention_share(pipe, sigmas=(0.95,), n=4)["sigma_0.95"]
    with torch.no_grad():
        pipe.transformer.condition_embedder.text_embedder.linear_2.weight.zero_()
    blind = text_attention_share(pipe, sigmas=(0.95,), n=4)["sigma_0.95"]
    assert len(blind) == len(pipe.transformer.blocks)
    pool = D.train_specs()
    specs = [pool[i] for i in np.random.default_rng(0).choice(len(pool), 4, replace=False)]
    expected = np.mean([len(pipe.tokenizer(s.caption).input_ids) / 512 for s in specs])
    assert blind == pytest.approx([expected] * len(blind), abs=1e-4)  # shares are rounded to 4 places
    assert max(seeing) > 5 * expected  # the trained model does look at its prompt
    ds = direction_sensitivity(pipe, sigmas=(0.9,))["sigma_0.9"]
    assert ds["true"] == ds["opposite"] and ds["true"] > 0.05  # moves with the input's own motion, either way
    drawn = direction_rendering(pipe, n=2, steps=3)  # same seeds, blind to the word: the same clips for every word
    assert all(drawn[w] == drawn["left"] for w in D.DIRECTIONS)


def test_direction_rendering_reads_ground_truth_clips():
    """On a 'pipeline' that returns the generator's own clip for the caption, the probe sees each word's sign,
    its start on the opposite side and the checker agreeing."""
    from types import SimpleNamespace

    from diffsparse.reference.diagnostics import direction_rendering

    def truth(prompt, num_frames, height, width, generator, **_):
        seed = int(generator.initial_seed())
        clip = D.render_video(D.parse_caption(prompt), seed, num_frames=num_frames, height=height, width=width)
        return SimpleNamespace(frames=[clip.astype(np.float32) / 255.0])

    drawn = direction_rendering(truth, n=4)
    for word, (dx, dy) in D.DIRECTIONS.items():
        d, st = np.array(drawn[word]["displacement_xy"]), np.array(drawn[word]["start_xy"])
        assert d @ np.array([dx, dy]) > 0.25 and abs(d @ np.array([dy, dx])) < 0.05  # along the word, not across
        assert (st - 0.5) @ np.array([dx, dy]) < -0.05  # starts on the side it moves away from
        assert drawn[word]["checker"] == {word: 4}


def test_frame_sigmas_noise_each_latent_frame_apart(tmp_path):
    from diffsparse.reference.train import Trainer, load_config

    cfg = load_config(None, {**TINY, "out": str(tmp_path / "fs"), "frame_sigma_prob": 1.0})
    tr = Trainer(cfg)
    x0, inputs = tr.prepare(0)
    b, _, f, h, w = x0.shape
    s, t = tr.frame_sigmas(x0)
    assert s.shape == (b, 1, f, 1, 1) and t.shape == (b, f * (h // 2) * (w // 2))
    assert all(len(set(row.tolist())) == f for row in s.view(b, f))  # every latent frame its own sigma
    assert torch.equal(t.view(b, f, -1), s.view(b, f, 1).expand(b, f, (h // 2) * (w // 2)))  # frame-major tokens
    # a per-token timestep that is the same everywhere is exactly the one-sigma path Wan's pipelines use
    tm = tr.modules["transformer"].eval()
    xt = torch.randn_like(x0)
    one = torch.full((b,), 0.7)
    with torch.no_grad():
        ref = tr.predict(xt, one, inputs)
        per_token = tr.predict(xt, one[:, None].expand_as(t).contiguous(), inputs)
        other = tr.predict(xt, t, inputs)
    assert torch.allclose(ref, per_token, atol=1e-5) and not torch.allclose(ref, other, atol=1e-3)
    tm.train()
    assert tr.train_step() > 0  # a whole step with per-frame noise

    cfg0 = load_config(None, {**TINY, "out": str(tmp_path / "fs0")})
    s0, t0 = Trainer(cfg0).frame_sigmas(x0)
    assert t0.shape == (b,) and torch.equal(s0.view(b), t0)

    with pytest.raises(ValueError, match="frame_sigma_prob must be a fraction"):
        load_config(None, {"frame_sigma_prob": 1.5})
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"kind": "image", "frame_sigma_prob": 0.5}))
    with pytest.raises(ValueError, match="needs a video model"):
        load_config(str(path))


@pytest.mark.parametrize("motion,pan", [("left", None), ("right", "left"), ("up", "right"), ("down", None)])
def test_time_reversed_translation_is_the_opposite_caption(motion, pan):
    spec = D.Spec("red", "square", motion, "striped" if pan else "plain", pan)
    rev = D.time_reversed(spec)
    assert rev.motion == D.OPPOSITE_DIRECTION[motion]
    assert rev.pan == {"left": "right", "right": "left", None: None}[pan]
    for seed in range(3):  # the checker, exact on ground truth, reads the backwards clip as the reversed caption
        clip = D.render_video(spec, seed)[::-1]
        assert checker.check(clip, rev.caption)["motion_ok"]
        assert not checker.check(clip, spec.caption)["motion_ok"]
    for other in ("bounce", "rotate", "grow"):
        assert D.time_reversed(D.Spec("red", "square", other, "plain")) is None


def test_direction_pairs_batch_and_shared_noise(tmp_path):
    from diffsparse.reference.train import Trainer, batch, load_config

    cfg = load_config(None, {**TINY, "out": str(tmp_path / "dp"), "direction_pairs": True, "batch_size": 8,
                             "caption_dropout": 0.0})
    paired = 0
    for step in range(6):
        pix, caps = batch(cfg, step, np.random.default_rng(0), num_frames=cfg["frames"])
        specs = [D.parse_caption(c) for c in caps]
        assert not any(D.is_held_out(s) for s in specs)  # pairing never shows a held-out combination
        for j in range(1, 8, 2):
            rev = D.time_reversed(specs[j - 1])
            if rev is not None and not D.is_held_out(rev):
                assert specs[j] == rev and torch.equal(pix[j], pix[j - 1].flip(1))  # (3, F, H, W): F reversed
                paired += 1
            else:
                assert not torch.equal(pix[j], pix[j - 1].flip(1))
    assert paired >= 6  # translations are 4 of 7 motions
    tr = Trainer(cfg)
    seen = {}
    predict = tr.predict

    def spy(xt, sigma, inputs):
        seen["xt"], seen["sigma"] = xt.detach().clone(), sigma.detach().clone()
        return predict(xt, sigma, inputs)

    prepare = tr.prepare

    def keep(step):
        seen["p"] = prepare(step)
        return seen["p"]

    tr.prepare, tr.predict = keep, spy
    assert tr.train_step() > 0
    x0, sig = seen["p"][0], seen["sigma"]
    s = sig.view(-1, 1, 1, 1, 1)
    noise = (seen["xt"] - (1 - s) * x0) / s
    assert torch.equal(sig[1::2], sig[0::2]) and not torch.equal(sig[0], sig[2])
    assert torch.allclose(noise[1::2], noise[0::2], atol=1e-5) and not torch.allclose(noise[0], noise[2])
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"kind": "image", "direction_pairs": True}))
    with pytest.raises(ValueError, match="direction_pairs needs a video model"):
        load_config(str(path))


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_motion_trail_lies_behind_the_shape(motion):
    spec = D.Spec("blue", "circle", motion, "plain")
    plain, trailed = D.render_video(spec, 5), D.render_video(spec, 5, trail=3)
    d = np.array(D.DIRECTIONS[motion], float)
    for f in (0, 8, 16):
        added = np.abs(trailed[f].astype(int) - plain[f].astype(int)).sum(-1) > 10  # where the trail was drawn
        shape = checker.shape_mask(plain[f])
        inner = shape
        for _ in range(2):  # two pixels in from the mask's edge: past the anti-aliased rim
            inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
        assert added.sum() > 20 and not (added & inner).any()  # the shape is drawn on top (only its AA rim blends)
        ys, xs = np.nonzero(added)
        sy, sx = np.nonzero(shape)
        offset = np.array([xs.mean() - sx.mean(), ys.mean() - sy.mean()])
        assert offset @ d < -2 and abs(offset @ d[::-1]) < 1  # behind the shape, along its path
    assert checker.check(trailed, spec.caption)["motion_ok"]
    grow = D.Spec("blue", "circle", "grow", "plain")
    assert np.array_equal(D.render_video(grow, 5, trail=0), D.render_video(grow, 5))
    assert D.render_video(grow, 5, num_frames=3, trail=4).shape == (3, 64, 64, 3)  # trail reaching back past size 0


def test_motion_trail_config_is_checked(tmp_path):
    from diffsparse.reference.train import Trainer, load_config

    for bad in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="motion_trail must be a whole number"):
            load_config(None, {"motion_trail": bad})
    with pytest.raises(ValueError, match="cannot be combined"):
        load_config(None, {"motion_trail": 2, "direction_pairs": True})
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"kind": "image", "motion_trail": 2}))
    with pytest.raises(ValueError, match="needs a video model"):
        load_config(str(path))
    cfg = load_config(None, {**TINY, "out": str(tmp_path / "tr"), "motion_trail": 2, "caption_dropout": 0.0})
    x0, _ = Trainer(cfg).prepare(0)  # the batch is drawn with the trail
    assert x0.shape[0] == TINY["batch_size"]
