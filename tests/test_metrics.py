"""Offline metrics on synthetic clips: they move the right way, and the exact paths' plumbing works."""

import cv2
import numpy as np
import pytest
import torch

from diffsparse.metrics import (
    METRICS,
    ExactMetrics,
    background_consistency_proxy,
    dynamic_degree,
    evaluate,
    format_table,
    motion_smoothness,
    psnr,
    ssim,
    subject_consistency_proxy,
    temporal_flickering,
    to_uint8,
)
from diffsparse.metrics.exact import _clip_state_dict, _first_and_previous, sha256
from diffsparse.metrics.models import AlexLPIPS, ClipVision, DinoViT
from diffsparse.metrics.fidelity import ssim_frame

T, H, W = 17, 64, 64


def texture(seed=0, size=(2 * H, 3 * W)):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random(size + (3,)) * 255).astype(np.uint8), (9, 9), 3)


def static_clip():
    return np.stack([texture()[:H, :W]] * T)


def pan_clip(speed=3):
    tex = texture()
    return np.stack([tex[:H, speed * t : speed * t + W] for t in range(T)])


def flicker(clip, amount=40):
    out = clip.astype(np.int16)
    out[1::2] += amount
    return np.clip(out, 0, 255).astype(np.uint8)


def test_static_clip_does_not_flicker_and_is_not_dynamic():
    clip = static_clip()
    assert temporal_flickering(clip) == 1.0
    assert dynamic_degree(clip, fps=8)["dynamic"] == 0.0
    assert motion_smoothness(clip) == 1.0


def test_pan_is_dynamic_per_the_rule_and_fps_matters():
    clip = pan_clip(speed=3)  # 3 px/frame at 8 fps, threshold 6 * 64 / 256 = 1.5 px
    d = dynamic_degree(clip, fps=8)
    assert d["dynamic"] == 1.0 and d["flow_score"] > 1.5
    slow = pan_clip(speed=1)  # 1 px per sampled pair: under the threshold
    assert dynamic_degree(slow, fps=8)["dynamic"] == 0.0
    # At 24 fps VBench samples every 3rd frame: 3 px per frame becomes 9 px per sampled pair.
    assert dynamic_degree(slow, fps=24)["flow_score"] > 2.5 * dynamic_degree(slow, fps=8)["flow_score"]


def test_brightness_flicker_lowers_flickering_and_smoothness():
    for clip in (static_clip(), pan_clip()):
        flick = flicker(clip)
        assert temporal_flickering(flick) < temporal_flickering(clip) - 0.05
        assert motion_smoothness(flick) < motion_smoothness(clip) - 0.05


def test_smooth_pan_scores_higher_smoothness_than_a_jerky_one():
    tex = texture()
    jerky = np.stack([tex[:H, (0 if t % 2 else 6 * t) : (0 if t % 2 else 6 * t) + W] for t in range(T)])
    assert motion_smoothness(pan_clip()) > motion_smoothness(jerky) + 0.02


def test_identical_videos_psnr_null_ssim_one():
    clip = pan_clip()
    assert psnr(clip, clip) is None
    assert ssim(clip, clip) == pytest.approx(1.0)
    r = evaluate([(clip, clip.copy())])
    assert r["metrics"]["psnr"]["value"] is None and r["metrics"]["psnr"]["identical"] is True
    assert r["metrics"]["ssim"]["value"] == pytest.approx(1.0)


def test_growing_noise_lowers_psnr_and_ssim_monotonically():
    ref = pan_clip()
    rng = np.random.default_rng(1)
    noise = rng.normal(size=ref.shape)
    scores = []
    for sigma in (2, 5, 10, 20, 40):
        noisy = np.clip(ref + sigma * noise, 0, 255).astype(np.uint8)
        scores.append((psnr(noisy, ref), ssim(noisy, ref)))
    for (p1, s1), (p2, s2) in zip(scores, scores[1:]):
        assert p2 < p1 and s2 < s1


def test_psnr_pools_the_mse_over_the_video():
    ref = np.zeros((2, 16, 16, 3), np.uint8)
    cand = ref.copy()
    cand[0] = 10  # MSE 100 in frame 0, 0 in frame 1 -> pooled 50
    assert psnr(cand, ref) == pytest.approx(10 * np.log10(255**2 / 50))


def test_ssim_matches_the_direct_formula_on_a_constant_shift():
    # For images a and a + c the SSIM map is (2 mu (mu + c) + C1) / (mu^2 + (mu + c)^2 + C1) per window
    # (variances and covariance are equal, so the contrast-structure term is 1).
    a = np.full((32, 32), 100.0)
    b = a + 20
    c1 = (0.01 * 255) ** 2
    want = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert ssim_frame(a, b) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="11x11"):
        ssim_frame(a[:8, :8], b[:8, :8])


def test_ssim_matches_a_direct_window_sum_on_a_small_image():
    # Wang et al. 2004 written out: every 11x11 window that fits, Gaussian weights (sigma 1.5, sum 1),
    # weighted means, population variances / covariance, then the mean of the SSIM map.
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (14, 15)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert len(vals) == 4 * 5
    assert ssim_frame(a, b) == pytest.approx(np.mean(vals), rel=1e-9)
    assert 0.0 < ssim_frame(a, b) < 0.99  # a non-trivial pair


def test_video_ssim_is_the_mean_of_per_frame_luma_ssim():
    ref, cand = pan_clip(), flicker(pan_clip(), 15)
    y = lambda v: 0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]  # noqa: E731
    want = np.mean([ssim_frame(y(cand[t].astype(float)), y(ref[t].astype(float))) for t in range(T)])
    assert ssim(cand, ref) == pytest.approx(want)


def test_to_uint8_scales_floats_but_not_integers():
    f = np.full((2, 12, 12, 3), 0.5)
    assert to_uint8(f).max() == 128 and to_uint8(f.astype(np.float32)).dtype == np.uint8
    i = np.full((2, 12, 12, 3), 200, np.int64)
    assert to_uint8(i).max() == 200  # integers are already 8-bit values
    assert to_uint8(np.zeros((2, 12, 12))).shape == (2, 12, 12, 3)  # gray -> RGB


def test_shape_mismatch_and_short_video_are_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate([(pan_clip(), pan_clip()[:5])])
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate([(pan_clip()[:1], None)])


def test_without_weights_every_metric_says_how_it_was_computed():
    r = evaluate([(pan_clip(), None)], weights_dir="/nonexistent")
    m = r["metrics"]
    assert set(m) == set(METRICS) and all(set(e) >= {"value", "impl", "reason", "better"} for e in m.values())
    assert m["psnr"]["impl"] == "skipped" and "reference" in m["psnr"]["reason"]
    assert m["temporal_flickering"]["impl"] == "exact" and m["temporal_flickering"]["reason"] is None
    assert m["dynamic_degree"]["impl"] == m["motion_smoothness"]["impl"] == "proxy"
    assert "RAFT" in m["dynamic_degree"]["reason"]
    assert "raft_model/models/raft-things.pth" in m["dynamic_degree"]["reason"]
    assert m["subject_consistency"]["impl"] == "proxy"
    assert "/nonexistent/dino_model/dino_vitbase16_pretrain.pth" in m["subject_consistency"]["reason"]
    assert m["background_consistency"]["impl"] == "proxy" and "ViT-B-32.pt" in m["background_consistency"]["reason"]
    assert m["aesthetic_quality"]["impl"] == "skipped" and m["aesthetic_quality"]["value"] is None
    assert "/nonexistent/clip_model/ViT-L-14.pt" in m["aesthetic_quality"]["reason"]
    assert m["imaging_quality"]["impl"] == "skipped" and "musiq_spaq" in m["imaging_quality"]["reason"]
    table = format_table(r)
    assert "proxy*" in table and "better-is" in table and "musiq_spaq" in table


def test_background_proxy_ignores_a_small_mover_more_than_a_pan():
    tex = texture()
    bg = np.stack([tex[:H, :W]] * T)
    mover = bg.copy()
    for t in range(T):  # an 8x8 white square crossing a static background
        mover[t, 28:36, 2 * t : 2 * t + 8] = 255
    assert subject_consistency_proxy(bg) == background_consistency_proxy(bg) == pytest.approx(1.0)
    assert background_consistency_proxy(mover) > background_consistency_proxy(pan_clip()) + 0.05
    assert subject_consistency_proxy(mover) < 1.0 and background_consistency_proxy(mover) < 1.0


# ----------------------------------------------------------------------------- exact paths (random weights)
class _TinyOpenAIClip(torch.nn.Module):
    """An OpenAI-CLIP-shaped model: `visual.*` image tower plus a text-side parameter (ignored by us)."""

    def __init__(self, patch):
        super().__init__()
        self.visual = ClipVision(width=64, layers=2, heads=1, patch=patch, grid=224 // patch, out_dim=768)
        for p in self.visual.parameters():
            torch.nn.init.normal_(p, std=0.05)
        self.token_embedding = torch.nn.Embedding(10, 8)

    def forward(self, x):
        return self.visual(x)


def _write_weights(root):
    torch.manual_seed(0)
    (root / "dino_model").mkdir(parents=True)
    dino = DinoViT(dim=128, depth=2, heads=2)
    torch.nn.init.normal_(dino.pos_embed, std=0.02)
    torch.save(dino.state_dict(), root / "dino_model" / "dino_vitbase16_pretrain.pth")
    (root / "clip_model").mkdir()
    example = torch.zeros(1, 3, 224, 224, dtype=torch.half)
    for name, patch in (("ViT-B-32.pt", 32), ("ViT-L-14.pt", 14)):  # fp16 TorchScript archives, like OpenAI's files
        torch.jit.save(torch.jit.trace(_TinyOpenAIClip(patch).eval().half(), example), str(root / "clip_model" / name))
    (root / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    head = root / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth"
    torch.save(torch.nn.Linear(768, 1).state_dict(), head)
    (root / "lpips").mkdir()
    lp = AlexLPIPS()
    alexnet = {f"features.{k}": v for k, v in lp.features.state_dict().items()}  # torchvision's key names
    torch.save(alexnet, root / "lpips" / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(AlexLPIPS.CHANNELS)},
               root / "lpips" / "alex.pth")


def test_feature_consistency_is_vbench_first_and_previous_formula():
    # i=1: cos(f0,f1)=0 twice; i=2: cos(f1,f2)=cos(f0,f2)=1/sqrt2; i=3: cos(f2,f3)<0 and cos(f0,f3)=-1 clamp to 0
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    assert _first_and_previous(feats) == pytest.approx((0 + 2**-0.5 + 0) / 3)


def test_exact_paths_load_local_weights_and_record_sha256(tmp_path, monkeypatch):
    _write_weights(tmp_path)
    clip = pan_clip()
    r = evaluate([(clip, flicker(clip))], weights_dir=str(tmp_path))
    m = r["metrics"]
    for name in ("subject_consistency", "background_consistency", "aesthetic_quality", "lpips"):
        assert m[name]["impl"] == "exact" and m[name]["reason"] is None, (name, m[name])
        assert isinstance(m[name]["value"], float) and isinstance(m[name].get("reference", 0.0), float)
        for w in m[name]["weights"]:
            assert w["path"].startswith(str(tmp_path)) and w["sha256"] == sha256(w["path"])
            assert len(w["sha256"]) == 64
    assert 0.0 <= m["subject_consistency"]["value"] <= 1.0
    assert m["subject_consistency"]["value"] != m["subject_consistency"]["reference"]  # the model sees the flicker
    assert m["lpips"]["value"] > 0
    assert m["imaging_quality"]["impl"] == "skipped"  # no MUSIQ, whatever is on disk
    same = evaluate([(clip, clip.copy())], weights_dir=str(tmp_path))["metrics"]["lpips"]["value"]
    assert same == pytest.approx(0.0, abs=1e-6)
    # The weights root also comes from $VBENCH_CACHE_DIR.
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    assert ExactMetrics().available("lpips")


def test_clip_tower_reads_the_archive_weights_and_matches_the_saved_model(tmp_path):
    torch.manual_seed(1)
    model = _TinyOpenAIClip(32).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), str(tmp_path / "ViT-B-32.pt"))
    x = torch.randn(2, 3, 224, 224)
    rebuilt = ClipVision.from_state_dict(_clip_state_dict(tmp_path / "ViT-B-32.pt")).eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def test_missing_file_means_proxy_or_skip_with_the_path(tmp_path):
    _write_weights(tmp_path)
    (tmp_path / "lpips" / "alex.pth").unlink()
    m = evaluate([(pan_clip(), pan_clip())], weights_dir=str(tmp_path))["metrics"]
    assert m["lpips"]["impl"] == "skipped" and m["lpips"]["value"] is None
    assert str(tmp_path / "lpips" / "alex.pth") in m["lpips"]["reason"]
    assert m["subject_consistency"]["impl"] == "exact"  # the others are still found


def test_dino_strict_key_match_rejects_a_foreign_checkpoint(tmp_path):
    (tmp_path / "dino_model").mkdir()
    torch.save({"not_a_vit.weight": torch.zeros(1)}, tmp_path / "dino_model" / "dino_vitbase16_pretrain.pth")
    with pytest.raises(RuntimeError, match="state_dict"):
        ExactMetrics(str(tmp_path)).subject_consistency(pan_clip())
