"""Exact paths that run VBench's own model code (optional `vbench` / `pyiqa` packages) with random weights.

Each test compares our metric with the library's own forward on the same random weights, and restates VBench's
rule around it independently. Skipped, with the reason, where the optional packages are not installed:
    pip install 'diffsparse[vbench]' && pip install --no-deps vbench==0.1.5 pyiqa==0.1.16
"""

import argparse
import sys
import types
import warnings

import cv2
import numpy as np
import pytest
import torch

from diffsparse.metrics import ExactMetrics, evaluate, exact as exact_mod, thirdparty
from diffsparse.metrics.exact import sha256
from diffsparse.metrics.temporal import top_mean

try:
    RAFT, RaftPadder = thirdparty.raft()
    AMT, AMT_UTILS, AMT_PARAMS = thirdparty.amt()
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"vbench's model code is not importable ({e})", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def textured(seed, h, w):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 2)


def pan(n, h, w, speed, seed=0):
    tex = textured(seed, h, w + speed * n)
    return np.stack([tex[:, speed * t : speed * t + w] for t in range(n)])


def trust(monkeypatch, root):
    for f in root.rglob("*"):
        if f.is_file() and f.name in exact_mod.KNOWN_SHA256:
            monkeypatch.setitem(exact_mod.KNOWN_SHA256, f.name, sha256(f))


@pytest.fixture(scope="module")
def raft_weights(tmp_path_factory):
    """A random RAFT saved like raft-things.pth: a DataParallel state dict ('module.' prefixes)."""
    torch.manual_seed(0)
    model = RAFT(argparse.Namespace(small=False, mixed_precision=False, alternate_corr=False)).eval()
    root = tmp_path_factory.mktemp("vbench_cache")
    (root / "raft_model" / "models").mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, root / "raft_model" / "models" / "raft-things.pth")
    return root, model


def test_raft_flow_is_the_librarys_forward_and_the_rules_are_vbenchs(raft_weights):
    root, model = raft_weights
    frames = pan(4, 128, 140, speed=3)  # 140 px: padded to 144 like VBench's InputPadder does
    ex = ExactMetrics(str(root))
    assert ex.available("dynamic_degree"), ex.reason("dynamic_degree")

    def library_magnitude(a, b):  # VBench's DynamicDegree.infer / get_score on one pair
        x1, x2 = (torch.from_numpy(f.astype(np.uint8)).permute(2, 0, 1).float()[None] for f in (a, b))
        x1, x2 = RaftPadder(x1.shape).pad(x1, x2)
        with torch.no_grad():
            _, flow_up = model(x1, x2, iters=20, test_mode=True)
        flo = flow_up[0].permute(1, 2, 0).numpy()
        return np.sqrt(np.square(flo[:, :, 0]) + np.square(flo[:, :, 1]))

    lib = {(i, j): library_magnitude(frames[i], frames[j]) for i, j in [(0, 1), (1, 2), (2, 3), (0, 3), (3, 0)]}
    assert lib[(0, 1)].shape == (128, 144)  # the padded field, as VBench scores it
    assert all(np.isfinite(v).all() for v in lib.values())
    np.testing.assert_array_equal(ex.raft_magnitude(frames[0], frames[1]), lib[(0, 1)])

    r = evaluate([(frames, None)], weights_dir=str(root), fps=8)
    m, rec = r["metrics"], r["per_video"][0]
    assert m["dynamic_degree"]["impl"] == "exact" and m["temporal_flickering"]["static_filter"]["impl"] == "exact"
    assert m["dynamic_degree"]["weights"][0]["verified"] is None  # no published digest for raft-things.pth

    def score(rad, frac):  # VBench: np.mean(abs(np.sort(-rad_flat))[:int(h * w * frac)])
        return np.mean(abs(np.sort(-rad.flatten()))[: int(rad.shape[0] * rad.shape[1] * frac)])

    # DynamicDegree at 8 fps: every frame, thres 6 * 128 / 256, count_num round(4 * 4 / 16) = 1
    tops = [score(lib[(i, i + 1)], 0.05) for i in range(3)]
    assert rec["dynamic_degree_detail"]["flow_score"] == pytest.approx(np.mean(tops), rel=1e-6)
    assert rec["dynamic_degree"] == float(sum(t > 3.0 for t in tops) >= 1)
    # StaticFilter: thres 3 * 128 / 256, count_num round(2 * 4 / 16) = 0 (half to even); loops against thres * 0 * 2
    adjacent = [score(lib[(i, i + 1)], 0.02) for i in range(3)]
    loops = [score(lib[(0, 3)], 0.02), score(lib[(3, 0)], 0.02)]
    static = sum(s > 1.5 for s in adjacent) <= 0 and all(s <= 0.0 for s in loops)
    assert rec["static"] == float(static)
    assert rec["static_filter_detail"]["loop_scores"] == pytest.approx(loops, rel=1e-6)


def test_amt_motion_smoothness_is_vbenchs_motion_score(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = AMT(**AMT_PARAMS).eval()
    (tmp_path / "amt_model").mkdir()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "amt_model" / "amt-s.pth")
    frames = pan(6, 120, 136, speed=4, seed=3)  # even length, sizes not multiples of 16 (padded, then unpadded)
    ex = ExactMetrics(str(tmp_path))
    assert ex.available("motion_smoothness"), ex.reason("motion_smoothness")

    # VBench's MotionSmoothness.motion_score written out with the wheel's helpers (CPU: scale 1, padding 16)
    u = AMT_UTILS
    inputs = [u.img2tensor(frames[i]) for i in (0, 2, 4)]
    padder = u.InputPadder(inputs[0].shape, 16)
    inputs = padder.pad(*inputs)
    outputs = [inputs[0]]
    with torch.no_grad():
        for a, b in zip(inputs[:-1], inputs[1:]):
            outputs += [model(a, b, torch.tensor(0.5).view(1, 1, 1, 1), scale_factor=1.0, eval=True)["imgt_pred"], b]
    outputs = [u.tensor2img(o) for o in padder.unpad(*outputs)]
    assert all(np.isfinite(o).all() for o in outputs)
    diffs = [np.mean(cv2.absdiff(frames[i], outputs[i])) for i in (1, 3)]
    want = (255.0 - np.mean(diffs)) / 255.0

    assert ex.motion_smoothness(frames) == pytest.approx(want, abs=1e-12)
    r = evaluate([(frames, None)], weights_dir=str(tmp_path))["metrics"]["motion_smoothness"]
    assert r["impl"] == "exact" and r["value"] == pytest.approx(want, abs=1e-12)


def test_videos_too_small_for_raft_or_amt_use_the_proxy_and_say_so(raft_weights, tmp_path):
    root, _ = raft_weights
    r = evaluate([(pan(4, 64, 72, 2), None)], weights_dir=str(root))
    m, rec = r["metrics"], r["per_video"][0]
    assert rec["fallbacks"] == ["dynamic_degree"] and rec["dynamic_degree_detail"]["flow"] == "dis"
    assert m["dynamic_degree"]["impl"] == "proxy" and "smaller than 121 px" in m["dynamic_degree"]["reason"]
    assert m["temporal_flickering"]["static_filter"]["impl"] == "proxy"
    assert m["dynamic_degree"]["weights"]  # the verified file is still named: bigger videos would use it
    with pytest.raises(ValueError, match="at least 121 px"):
        ExactMetrics(str(root)).raft_magnitude(np.zeros((64, 72, 3), np.uint8), np.zeros((64, 72, 3), np.uint8))


def test_amt_checkpoint_of_another_network_falls_back_to_the_proxy(tmp_path):
    (tmp_path / "amt_model").mkdir()
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "amt_model" / "amt-s.pth")
    m = evaluate([(pan(5, 48, 48, 2), None)], weights_dir=str(tmp_path))["metrics"]["motion_smoothness"]
    assert m["impl"] == "proxy" and "cannot load" in m["reason"] and "amt-s.pth" in m["reason"]


@pytest.fixture
def torchvision_stand_in(monkeypatch):
    """pyiqa imports torchvision at module level; where it cannot load (its PyPI wheels need CUDA torch), a stand-in
    with the names pyiqa's imports reach. MUSIQ's forward uses none of them."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    tv, tvt, tvf, tvu = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                         "torchvision.transforms.functional", "torchvision.utils"))
    tvt.functional, tv.transforms, tv.utils, tvu.make_grid = tvf, tvt, tvu, None
    tvt.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    for name, mod in (("torchvision", tv), ("torchvision.transforms", tvt),
                      ("torchvision.transforms.functional", tvf), ("torchvision.utils", tvu)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_musiq_imaging_quality_is_vbenchs_technical_quality(tmp_path, monkeypatch, torchvision_stand_in):
    try:
        MUSIQ, clean = thirdparty.musiq()
    except ImportError as e:
        pytest.skip(f"pyiqa's MUSIQ is not importable ({e})")
    torch.manual_seed(2)
    model = MUSIQ(pretrained=False).eval()
    (tmp_path / "pyiqa_model").mkdir()
    path = tmp_path / "pyiqa_model" / "musiq_spaq_ckpt-358bb6af.pth"
    torch.save(model.state_dict(), path)
    # the file name's digest prefix is checked first: random weights are refused...
    refused = evaluate([(pan(2, 32, 32, 1), None)], weights_dir=str(tmp_path))["metrics"]["imaging_quality"]
    assert refused["impl"] == "skipped" and "expected SHA-256 prefix (from the file name) 358bb6af" in refused["reason"]
    trust(monkeypatch, tmp_path)  # ...and accepted once we vouch for them

    small, wide = pan(2, 40, 56, 3, seed=4), pan(2, 24, 600, 3, seed=5)  # wide: long side > 512 -> resized
    ex = ExactMetrics(str(tmp_path))

    def technical_quality(frames):  # VBench: torch.Tensor(frames), 'longer' resize, /255, MUSIQ per frame, /100
        x = torch.Tensor(frames).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        if max(h, w) > 512:
            s = 512.0 / max(h, w)
            x = torch.nn.functional.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        x = x / 255.0
        with torch.no_grad():
            return np.mean([float(model(x[i : i + 1])) for i in range(len(x))]) / 100.0

    for frames in (small, wide):
        assert ex.imaging_quality(frames) == pytest.approx(technical_quality(frames), rel=1e-6)
    r = evaluate([(small, None)], weights_dir=str(tmp_path))["metrics"]["imaging_quality"]
    assert r["impl"] == "exact" and r["weights"][0]["verified"] == "sha256"


def test_clip_fp16_matches_openais_own_model():
    try:
        clip_model = thirdparty.import_submodule("clip.model")
    except ImportError as e:
        pytest.skip(f"openai-clip is not installed ({e})")
    from diffsparse.metrics.models import ClipVision

    torch.manual_seed(3)
    ref = clip_model.CLIP(embed_dim=64, image_resolution=224, vision_layers=2, vision_width=128, vision_patch_size=32,
                          context_length=8, vocab_size=16, transformer_width=64, transformer_heads=1, transformer_layers=1)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.05)
    sd = {k: v.half() for k, v in ref.state_dict().items()}  # the release archives hold fp16 tensors
    x = torch.randn(2, 3, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        openai_cuda = clip_model.build_model(dict(sd)).eval()  # what clip.load keeps on CUDA (convert_weights)
        openai_cpu = clip_model.build_model(dict(sd)).eval().float()  # clip.load on CPU: model.float()
        want16, want32 = openai_cuda.encode_image(x), openai_cpu.encode_image(x)
        ours32 = ClipVision.from_state_dict(sd).eval()
        got32 = ours32(x)
        got16 = ClipVision.from_state_dict(sd).eval().openai_fp16()(x)
    assert torch.allclose(got32, want32, atol=1e-5)
    assert got16.dtype == want16.dtype == torch.float16
    assert torch.allclose(got16.float(), want16.float(), atol=2e-4, rtol=0)  # a few fp16 ulps at these magnitudes
