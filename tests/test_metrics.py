"""Offline metrics on synthetic clips: they move the right way, and the exact paths' plumbing works."""

import cv2
import numpy as np
import pytest
import torch

from diffsparse.metrics import (
    ExactMetrics,
    dynamic_degree,
    evaluate,
    format_table,
    motion_smoothness,
    psnr,
    ssim,
    temporal_flickering,
)
from diffsparse.metrics.exact import AlexLPIPS, DinoViT, sha256
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


def test_shape_mismatch_and_short_video_are_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate([(pan_clip(), pan_clip()[:5])])
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate([(pan_clip()[:1], None)])


def test_no_reference_run_skips_fidelity_and_labels_proxies():
    r = evaluate([(pan_clip(), None)], weights_dir="/nonexistent")
    m = r["metrics"]
    assert m["psnr"]["impl"] == "skipped" and "reference" in m["psnr"]["reason"]
    assert m["temporal_flickering"]["impl"] == "exact"
    assert m["dynamic_degree"]["impl"] == m["motion_smoothness"]["impl"] == "proxy"
    assert m["subject_consistency"]["impl"] == "proxy" and m["background_consistency"]["impl"] == "proxy"
    assert m["aesthetic_quality"]["impl"] == "skipped" and "/nonexistent/clip_model/ViT-L-14.pt" in m["aesthetic_quality"]["reason"]
    assert "proxy*" in format_table(r)


class _TinyClip(torch.nn.Module):
    """Stands in for an OpenAI CLIP TorchScript archive: same `encode_image` entry point."""

    def __init__(self, dim=768):
        super().__init__()
        self.proj = torch.nn.Linear(3, dim)

    @torch.jit.export
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def _write_weights(root):
    torch.manual_seed(0)
    (root / "dino_model").mkdir(parents=True)
    torch.save(DinoViT(dim=128, depth=2, heads=2).state_dict(), root / "dino_model" / "dino_vitbase16_pretrain.pth")
    (root / "clip_model").mkdir()
    torch.jit.save(torch.jit.script(_TinyClip()), str(root / "clip_model" / "ViT-B-32.pt"))
    torch.jit.save(torch.jit.script(_TinyClip()), str(root / "clip_model" / "ViT-L-14.pt"))
    (root / "aesthetic_model" / "emb_reader").mkdir(parents=True)
    torch.save(torch.nn.Linear(768, 1).state_dict(), root / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth")
    (root / "lpips").mkdir()
    lp = AlexLPIPS()
    torch.save({f"features.{k}": v for k, v in lp.features.state_dict().items()}, root / "lpips" / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(AlexLPIPS.CHANNELS)},
               root / "lpips" / "alex.pth")


def test_exact_paths_load_local_weights_and_record_sha256(tmp_path, monkeypatch):
    _write_weights(tmp_path)
    clip = pan_clip()
    r = evaluate([(clip, flicker(clip))], weights_dir=str(tmp_path))
    m = r["metrics"]
    for name in ("subject_consistency", "background_consistency", "aesthetic_quality", "lpips"):
        assert m[name]["impl"] == "exact", (name, m[name])
        assert isinstance(m[name]["value"], float)
        for w in m[name]["weights"]:
            assert len(w["sha256"]) == 64 and w["sha256"] == sha256(tmp_path / w["path"].split(str(tmp_path) + "/")[1])
    assert 0.0 <= m["subject_consistency"]["value"] <= 1.0
    assert m["lpips"]["value"] > 0
    same = evaluate([(clip, clip.copy())], weights_dir=str(tmp_path))["metrics"]["lpips"]["value"]
    assert same == pytest.approx(0.0, abs=1e-6)
    # The weights root also comes from $VBENCH_CACHE_DIR.
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path))
    assert ExactMetrics().available("lpips")


def test_dino_strict_key_match_rejects_a_foreign_checkpoint(tmp_path):
    (tmp_path / "dino_model").mkdir()
    torch.save({"not_a_vit.weight": torch.zeros(1)}, tmp_path / "dino_model" / "dino_vitbase16_pretrain.pth")
    with pytest.raises(RuntimeError, match="state_dict"):
        ExactMetrics(str(tmp_path)).subject_consistency(pan_clip())
