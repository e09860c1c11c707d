"""Offline metrics on synthetic clips: they move the right way, follow VBench's rules (each test states the rule
independently), and the exact paths' plumbing works: local weights verified before loading, random weights."""

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
    static_filter,
    subject_consistency_proxy,
    temporal_flickering,
    to_uint8,
)
from diffsparse.metrics import exact as exact_mod
from diffsparse.metrics.exact import (
    WeightsRefused,
    _clip_state_dict,
    _first_and_previous,
    _resize_short,
    sha256,
)
from diffsparse.metrics.models import AlexLPIPS, ClipVision, DinoViT
from diffsparse.metrics.fidelity import ssim_frame
from diffsparse.metrics.temporal import PairFlows

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


# VBench's motion smoothness: keep frames 0, 2, 4, ..., rebuild each odd frame from its two even neighbours,
# score (255 - mean |odd - rebuilt|) / 255. `ideal_smoothness` writes that rule out with an interpolator that
# knows where everything truly is halfway; the proxy must order clips as it does.
S = 256


def ideal_smoothness(frames, ideal_midpoints):
    errs = [np.abs(frames[i].astype(float) - ideal_midpoints[i]).mean() for i in range(1, len(frames) - 1, 2)]
    return (255 - np.mean(errs)) / 255


def big_pan(speed=24, n=7):
    tex = cv2.GaussianBlur((np.random.default_rng(5).random((S, S + speed * n, 3)) * 255).astype(np.uint8), (9, 9), 3)
    return np.stack([tex[:, speed * t : speed * t + S] for t in range(n)])


def square_clip(xs):
    frames = np.zeros((len(xs), S, S, 3), np.uint8)
    for t, x in enumerate(xs):
        frames[t, 112:144, x : x + 32] = 255
    return frames


def test_motion_smoothness_proxy_orders_clips_like_vbenchs_rule():
    pan = big_pan()  # 24 px per frame: 48 px between the frames the odd ones are rebuilt from
    jerk_x = [16, 16, 32, 32, 48, 48, 64]  # moves 0 / 16 px on alternate frames
    jerky = square_clip(jerk_x)
    flick = flicker(np.stack([big_pan()[0]] * 7), 40)
    # the ideal interpolator: the pan's odd frames are exact midpoints; the square sits halfway between its even
    # positions (8 px from where the odd frame has it); a flicker cannot be predicted from the even frames
    ideal = {
        "pan": ideal_smoothness(pan, {i: pan[i] for i in range(7)}),
        "jerky": ideal_smoothness(jerky, {i: square_clip([(jerk_x[i - 1] + jerk_x[i + 1]) // 2])[0] for i in (1, 3, 5)}),
        "flicker": ideal_smoothness(flick, {i: flick[0] for i in (1, 3, 5)}),
    }
    proxy = {"pan": motion_smoothness(pan), "jerky": motion_smoothness(jerky), "flicker": motion_smoothness(flick)}
    assert ideal["pan"] == 1.0 and ideal["jerky"] == pytest.approx(0.9922, abs=1e-4)
    assert ideal["pan"] > ideal["jerky"] > ideal["flicker"]
    assert proxy["pan"] > proxy["jerky"] > proxy["flicker"]
    for k in ideal:
        assert proxy[k] == pytest.approx(ideal[k], abs=2e-3), (k, proxy, ideal)


def test_motion_smoothness_proxy_handles_occlusion_by_a_moving_object():
    rng = np.random.default_rng(7)
    bg = cv2.GaussianBlur((rng.random((S, S, 3)) * 255).astype(np.uint8), (5, 5), 1)
    obj = cv2.GaussianBlur((rng.random((48, 48, 3)) * 255).astype(np.uint8), (5, 5), 1)

    def mover(steps):
        frames, x = [], 10
        for t in range(7):
            f = bg.copy()
            f[100:148, x : x + 48] = obj
            frames.append(f)
            x += steps[t % len(steps)]
        return np.stack(frames)

    smooth, jerky = mover([20]), mover([0, 40])  # same average speed; the jerky one stops on every other frame
    # an ideal interpolator scores the smooth clip 1.0; the proxy leaves a residue where the object uncovers or
    # covers textured background (about 0.0015 here), well under what the jerk costs
    assert 0.998 < motion_smoothness(smooth) < 1.0
    assert motion_smoothness(smooth) > motion_smoothness(jerky) + 0.003


def test_dynamic_degree_follows_vbenchs_rule():
    # VBench: interval = max(1, round(fps / 8)) with Python's round (half to even), needed = round(4 * n / 16)
    clip = np.zeros((9, 32, 48, 3), np.uint8)
    for fps, interval in ((4, 1), (8, 1), (12, 2), (20, 2), (24, 3), (30, 4)):
        assert dynamic_degree(clip, fps=fps)["interval"] == interval
    over = {(0, 1), (1, 2), (2, 3)}  # three of the eight pairs move 2 px everywhere, threshold 6 * 32 / 256 = 0.75

    class Fake(PairFlows):
        def scores(self, i, j):
            return (2.0, 2.0) if (i, j) in over else (0.5, 0.5)

    d = dynamic_degree(clip, 8, Fake(clip))
    assert (d["needed"], d["pairs_over"], d["threshold"]) == (2.0, 3.0, 0.75) and d["dynamic"] == 1.0
    over = {(0, 1)}
    assert dynamic_degree(clip, 8, Fake(clip))["dynamic"] == 0.0
    # two sampled frames: round(0.5) = 0 pairs needed, so VBench counts any such video as dynamic
    assert dynamic_degree(clip[:2], 8, Fake(clip[:2]))["dynamic"] == 1.0


def test_static_filter_follows_vbenchs_rule():
    # VBench's StaticFilter: T = 16 frames -> allowed = round(2 * 16 / 16) = 2 adjacent pairs over
    # 3 * min(H, W) / 256 (= 0.375 px for 32 px); first<->last pairs may not exceed that times 2 * allowed.
    clip = np.zeros((16, 32, 40, 3), np.uint8)
    moving, loop = set(), 0.0

    class Fake(PairFlows):
        def scores(self, i, j):
            if abs(i - j) > 1:
                return (loop, loop)
            return (1.0, 1.0) if (i, j) in moving else (0.0, 0.0)

    r = static_filter(clip, Fake(clip))
    assert r["static"] == 1.0 and (r["allowed"], r["threshold"], r["loop_threshold"]) == (2.0, 0.375, 1.5)
    moving = {(0, 1), (5, 6)}
    assert static_filter(clip, Fake(clip))["static"] == 1.0
    moving = {(0, 1), (5, 6), (9, 10)}
    assert static_filter(clip, Fake(clip))["static"] == 0.0
    moving, loop = set(), 1.6
    assert static_filter(clip, Fake(clip))["static"] == 0.0
    # with real (DIS) flow: a still clip is static, a pan is not
    assert static_filter(static_clip())["static"] == 1.0 and static_filter(pan_clip())["static"] == 0.0


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


def _trust(monkeypatch, root):
    """Random test weights cannot have the published SHA-256: accept the digests of the files under `root`."""
    for f in root.rglob("*"):
        if f.is_file() and f.name in exact_mod.KNOWN_SHA256:
            monkeypatch.setitem(exact_mod.KNOWN_SHA256, f.name, sha256(f))


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
    _trust(monkeypatch, tmp_path)
    clip = pan_clip()
    r = evaluate([(clip, flicker(clip))], weights_dir=str(tmp_path))
    m = r["metrics"]
    for name in ("subject_consistency", "background_consistency", "aesthetic_quality", "lpips"):
        assert m[name]["impl"] == "exact" and m[name]["reason"] is None, (name, m[name])
        assert isinstance(m[name]["value"], float) and isinstance(m[name].get("reference", 0.0), float)
        for w in m[name]["weights"]:
            assert w["path"].startswith(str(tmp_path)) and w["sha256"] == sha256(w["path"])
            assert len(w["sha256"]) == 64
            # DINO has no published digest; the others were checked (against the digests `_trust` set)
            assert w["verified"] == (None if w["path"].endswith("dino_vitbase16_pretrain.pth") else "sha256")
    assert 0.0 <= m["subject_consistency"]["value"] <= 1.0
    assert m["subject_consistency"]["value"] != m["subject_consistency"]["reference"]  # the model sees the flicker
    assert m["lpips"]["value"] > 0
    assert m["imaging_quality"]["impl"] == "skipped"  # no MUSIQ weights
    assert "fp32" in m["background_consistency"]["precision"] and "fp16 on CUDA" in m["aesthetic_quality"]["precision"]
    assert "CLIP in fp32 on cpu" in format_table(r)
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


def test_missing_file_means_proxy_or_skip_with_the_path(tmp_path, monkeypatch):
    _write_weights(tmp_path)
    _trust(monkeypatch, tmp_path)
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


# ----------------------------------------------------------------------------- weights are verified before loading
def test_corrupted_weight_file_is_refused_with_both_digests(tmp_path, monkeypatch):
    _write_weights(tmp_path)
    _trust(monkeypatch, tmp_path)
    good = exact_mod.KNOWN_SHA256["ViT-B-32.pt"]
    path = tmp_path / "clip_model" / "ViT-B-32.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    found = sha256(path)
    m = evaluate([(pan_clip(), None)], weights_dir=str(tmp_path))["metrics"]["background_consistency"]
    assert m["impl"] == "proxy" and isinstance(m["value"], float)  # falls back to its proxy...
    for fragment in (f"refused {path}", f"expected SHA-256 {good}", f"found SHA-256 {found}"):
        assert fragment in m["reason"], m["reason"]  # ...and says why
    with pytest.raises(WeightsRefused, match="expected SHA-256"):  # nothing reaches torch.load
        ExactMetrics(str(tmp_path)).background_consistency(pan_clip())


def test_published_digests_are_checked_without_any_test_override(tmp_path):
    # Random files under the real names: the CLIP digest comes from OpenAI's URL, AlexNet's prefix from its name.
    _write_weights(tmp_path)
    r = evaluate([(pan_clip(), pan_clip())], weights_dir=str(tmp_path))["metrics"]
    assert "expected SHA-256 40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af" in \
        r["background_consistency"]["reason"]
    assert r["lpips"]["impl"] == "skipped"
    assert "expected SHA-256 prefix (from the file name) 7be5be79" in r["lpips"]["reason"]
    assert str(tmp_path / "lpips" / "alexnet-owt-7be5be79.pth") in r["lpips"]["reason"]
    assert r["subject_consistency"]["impl"] == "exact"  # no published digest for DINO: recorded, not verified


def test_unloadable_file_without_a_digest_falls_back_with_the_error(tmp_path):
    (tmp_path / "dino_model").mkdir()
    (tmp_path / "dino_model" / "dino_vitbase16_pretrain.pth").write_bytes(b"truncated download")
    m = evaluate([(pan_clip(), None)], weights_dir=str(tmp_path))["metrics"]["subject_consistency"]
    assert m["impl"] == "proxy" and f"cannot load {tmp_path / 'dino_model'}" in m["reason"]


def test_missing_optional_packages_are_named_in_the_reason():
    from diffsparse.metrics import thirdparty

    try:
        thirdparty.raft()
    except ImportError:
        pass
    else:
        pytest.skip("vbench's model code is installed here")
    m = evaluate([(pan_clip(), None)], weights_dir="/nonexistent")["metrics"]
    for name in ("dynamic_degree", "motion_smoothness"):
        assert "'vbench' is not installed" in m[name]["reason"] and "pip install" in m[name]["reason"]
    assert m["temporal_flickering"]["static_filter"]["impl"] == "proxy"
    assert "RAFT" in m["temporal_flickering"]["static_filter"]["reason"]


# ----------------------------------------------------------------------------- VBench's preprocessing and pooling
def test_resize_keeps_float_values_like_vbench():
    # VBench's load_video returns torch.Tensor(frames) (float32), so torchvision's Resize neither rounds nor clamps:
    # bicubic overshoot around a hard edge stays below 0 and above 255.
    x = torch.zeros(1, 3, 100, 150)
    x[..., 75:] = 255.0
    out = _resize_short(x, 224, "bicubic")
    assert out.shape[-2:] == (224, 336)  # short side 224, long side int(224 * 150 / 100)
    assert torch.equal(out, torch.nn.functional.interpolate(x, size=(224, 336), mode="bicubic", align_corners=False))
    assert out.min() < -1 and out.max() > 256 and not torch.equal(out, out.round())
    assert _resize_short(torch.zeros(1, 3, 131, 97), 224, "bilinear").shape[-2:] == (int(224 * 131 / 97), 224)


def test_consistency_is_pooled_over_all_frame_pairs_of_all_videos():
    short, long = pan_clip()[:3], flicker(pan_clip(), 25)  # 2 and 16 frame pairs
    r = evaluate([(short, None), (long, None)])
    y = [0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2] for v in (short.astype(float), long.astype(float))]
    pair_scores = [(max(0, ssim_frame(v[i - 1], v[i])) + max(0, ssim_frame(v[0], v[i]))) / 2
                   for v in y for i in range(1, len(v))]
    assert len(pair_scores) == 18
    assert r["metrics"]["subject_consistency"]["value"] == pytest.approx(np.mean(pair_scores), rel=1e-12)
    per_video = [v["subject_consistency"] for v in r["per_video"]]
    assert abs(np.mean(per_video) - np.mean(pair_scores)) > 1e-3  # the mean of per-video scores would differ


def test_dino_interpolates_positions_for_square_grids_of_non_square_pixels():
    # DINO's interpolate_pos_encoding keeps its table only if the patch count matches AND the input's H == W;
    # otherwise it resamples the 14x14 table with scale factors (grid + 0.1) / 14, which is not an identity.
    torch.manual_seed(0)
    model = DinoViT(dim=64, depth=1, heads=1).eval()
    torch.nn.init.normal_(model.pos_embed, std=0.5)
    x = torch.randn(1, 3, 224, 227)  # a 14x14 patch grid

    def dino_reference(img):
        h, w = img.shape[-2:]
        t = model.patch_embed.proj(img).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls_token, t], 1)
        pos = model.pos_embed
        if not (t.shape[1] - 1 == 196 and h == w):
            grid = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
            grid = torch.nn.functional.interpolate(grid, scale_factor=((h // 16 + 0.1) / 14, (w // 16 + 0.1) / 14),
                                                   mode="bicubic")
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], 1)
        t = t + pos
        for blk in model.blocks:
            t = blk(t)
        return model.norm(t)[:, 0]

    with torch.no_grad():
        assert torch.allclose(model(x), dino_reference(x), atol=1e-6)
        assert torch.allclose(model(x[..., :224]), dino_reference(x[..., :224]), atol=1e-6)
        resampled = model._pos(14, 14, 224, 227)
        assert (resampled - model.pos_embed).abs().max() > 1e-3 and model._pos(14, 14, 224, 224) is model.pos_embed


def test_clip_openai_fp16_casts_like_openais_convert_weights():
    torch.manual_seed(2)
    model = _TinyOpenAIClip(32).visual.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        half = ClipVision.from_state_dict({f"visual.{k}": v for k, v in model.state_dict().items()}).openai_fp16()
        out = half(x)
    assert half.conv1.weight.dtype == half.proj.dtype == torch.float16
    blk = half.transformer.resblocks[0]
    assert blk.attn.in_proj_weight.dtype == blk.attn.out_proj.weight.dtype == blk.mlp.c_fc.weight.dtype == torch.float16
    assert half.ln_pre.weight.dtype == blk.ln_1.weight.dtype == half.positional_embedding.dtype == torch.float32
    assert out.dtype == torch.float16 and torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- dynamic degree margin in the table
def test_table_shows_the_flow_score_next_to_the_dynamic_decision():
    r = evaluate([(pan_clip(3), pan_clip(1))])
    m = r["metrics"]["dynamic_degree"]
    assert m["value"] == 1.0 and m["reference"] == 0.0 and m["threshold"] == 1.5
    assert m["flow_score"] == r["per_video"][0]["dynamic_degree_detail"]["flow_score"] > 1.5 > m["flow_score_reference"]
    lines = format_table(r).splitlines()
    row = next(line for line in lines if line.startswith("  flow score px (thr 1.50)"))
    assert f"{m['flow_score']:.4f}" in row and f"{m['flow_score_reference']:.4f}" in row and "proxy*" in row
    assert any("flip with lossy encoding" in line for line in lines)
    assert any(line.startswith("  static videos only (0|0 of 1)") for line in lines)


def test_tiny_frames_do_not_crash_the_flow():
    # OpenCV's DIS segfaults below 16 px a side; frames are padded for it (SSIM still needs 11x11)
    rng = np.random.default_rng(0)
    for shape in ((3, 12, 12, 3), (4, 11, 40, 3), (3, 40, 11, 3)):
        v = rng.integers(0, 255, shape).astype(np.uint8)
        m = evaluate([(v, v[::-1].copy())])["metrics"]
        assert isinstance(m["motion_smoothness"]["value"], float) and isinstance(m["dynamic_degree"]["value"], float)
