"""VBench's learned metrics, run only from weight files already on disk (never downloaded).

Weights are looked up in VBench's own cache layout under the first of: `weights_dir`,
`$VBENCH_CACHE_DIR`, `~/.cache/vbench`; a folder prepared for VBench works unchanged. Before any
model code runs, each file must exist and, where a SHA-256 is published (`KNOWN_SHA256`), match it;
only then is it read, with `torch.load(weights_only=True)` on the local path. A metric whose file
is missing, refused (SHA-256 mismatch: the reason names the file, the expected and the found
digest) or unloadable falls back to its proxy or is skipped, with that reason.

| metric | files (under the weights root) | model |
|---|---|---|
| subject_consistency | dino_model/dino_vitbase16_pretrain.pth | DINO ViT-B/16 (models.py) |
| background_consistency | clip_model/ViT-B-32.pt | OpenAI CLIP ViT-B/32 image tower (models.py) |
| aesthetic_quality | clip_model/ViT-L-14.pt, aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth | CLIP ViT-L/14 + LAION linear head |
| lpips | lpips/alexnet-owt-7be5be79.pth (or $TORCH_HOME/hub/checkpoints/), lpips/alex.pth | AlexNet + LPIPS v0.1 heads |
| dynamic_degree (+ static filter) | raft_model/models/raft-things.pth | RAFT, the `vbench` wheel's code |
| motion_smoothness | amt_model/amt-s.pth | AMT-S, the `vbench` wheel's code and AMT-S.yaml |
| imaging_quality | pyiqa_model/musiq_spaq_ckpt-358bb6af.pth | MUSIQ, `pyiqa`'s code |

The last three need the optional packages (thirdparty.py); without them the metric is a proxy or
skipped and the reason says what to install.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import thirdparty
from .models import AlexLPIPS, ClipVision, DinoViT

FILES = {
    "subject_consistency": ["dino_model/dino_vitbase16_pretrain.pth"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "lpips": ["lpips/alexnet-owt-7be5be79.pth", "lpips/alex.pth"],
    "dynamic_degree": ["raft_model/models/raft-things.pth"],
    "motion_smoothness": ["amt_model/amt-s.pth"],
    "imaging_quality": ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
}
#: the model behind each metric, for reasons
MODEL_NAMES = {
    "subject_consistency": "DINO ViT-B/16", "background_consistency": "CLIP ViT-B/32",
    "aesthetic_quality": "CLIP ViT-L/14 + LAION head", "lpips": "LPIPS (AlexNet)", "dynamic_degree": "RAFT",
    "motion_smoothness": "AMT-S", "imaging_quality": "MUSIQ (SPAQ)",
}
#: published SHA-256 of the weight files, by file name. Full digests: OpenAI's download URLs for CLIP contain
#: them; the LPIPS v0.1 heads and the LAION head are files committed to their GitHub repositories
#: (richzhang/PerceptualSimilarity lpips/weights/v0.1/alex.pth, LAION-AI/aesthetic-predictor; neither file has
#: changed since it was added). Prefixes: torchvision's and pyiqa's file names carry the first 8 hex digits
#: (torch.hub's `name-<sha256 prefix>.pth` convention). DINO's, RAFT's and AMT-S's files have no published
#: digest: they are hashed and recorded, not verified.
KNOWN_SHA256 = {
    "ViT-B-32.pt": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "ViT-L-14.pt": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    "alex.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "sa_0_4_vit_l_14_linear.pth": "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba",
    "alexnet-owt-7be5be79.pth": "7be5be79",
    "musiq_spaq_ckpt-358bb6af.pth": "358bb6af",
}
#: metrics whose model code comes from an optional package
NEEDS_PACKAGE = {"dynamic_degree": thirdparty.raft, "motion_smoothness": thirdparty.amt,
                 "imaging_quality": thirdparty.musiq}
#: smallest frame side RAFT / AMT-S can take: below it their 4-level correlation pyramids reach a level 1 px wide,
#: where the sampler divides by (size - 1) and the flow turns NaN (in VBench as well). RAFT pads to a multiple of
#: 8 and AMT-S to a multiple of 16; both need 128 padded pixels.
MIN_SIDE = {"dynamic_degree": 121, "motion_smoothness": 113}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
CLIP_METRICS = ("background_consistency", "aesthetic_quality")


class WeightsRefused(RuntimeError):
    """A weight file that is missing, fails its SHA-256 check or cannot be loaded (the message says which)."""


def weights_root(weights_dir: Optional[str] = None) -> Path:
    """`weights_dir` -> `$VBENCH_CACHE_DIR` -> `~/.cache/vbench`."""
    return Path(weights_dir or os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, found: str) -> Optional[str]:
    """None if `path`'s digest `found` agrees with the published one (or none is published), else the refusal."""
    expected = KNOWN_SHA256.get(path.name)
    if expected is None or found.startswith(expected):
        return None
    kind = "SHA-256" if len(expected) == 64 else "SHA-256 prefix (from the file name)"
    return f"refused {path}: expected {kind} {expected}, found SHA-256 {found} (corrupted or not the published file)"


def find_files(metric: str, weights_dir: Optional[str] = None) -> Tuple[Optional[List[Path]], Optional[str]]:
    """(paths, None) if every file of `metric` exists, else (None, reason naming the first missing path)."""
    root = weights_root(weights_dir)
    paths = []
    for rel in FILES[metric]:
        p = root / rel
        if not p.is_file() and rel.startswith("lpips/alexnet"):  # torchvision's own cache also works
            alt = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / p.name
            p = alt if alt.is_file() else p
        if not p.is_file():
            return None, f"missing {p}"
        paths.append(p)
    return paths, None


def _load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _clip_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Weights of an OpenAI CLIP file: a TorchScript archive (their release) or a plain state dict."""
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):  # not a TorchScript archive
        return _load_tensors(path)


# ----------------------------------------------------------------------------- preprocessing
def _tensor255(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` -> float `(T, 3, H, W)` on the 0..255 scale (VBench's `torch.Tensor(frames)`)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _resize_short(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """torchvision `Resize(size, antialias=False)` on a *float* tensor, as VBench applies it (its `load_video`
    returns `torch.Tensor(frames)`, float32): short side to `size`, long side int(size * long / short), and no
    rounding or clamping afterwards, so bicubic overshoot below 0 and above 255 is kept."""
    h, w = x.shape[-2:]
    out = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if out != (h, w):
        x = F.interpolate(x, size=out, mode=mode, align_corners=False)
    return x


def _normalize(x: torch.Tensor, stats) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return (x - mean) / std


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's CenterCrop offsets
    return x[..., top : top + size, left : left + size]


def _first_and_previous(feats: torch.Tensor) -> float:
    """VBench: mean over i >= 1 of (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i))) / 2.

    Normalisation and cosine run in the features' dtype (fp16 for CLIP on CUDA, as in VBench), the clamping and
    averaging in Python floats."""
    feats = F.normalize(feats, dim=-1, p=2)
    prev = F.cosine_similarity(feats[:-1], feats[1:], dim=-1).double().clamp(min=0)
    first = F.cosine_similarity(feats[:1].expand_as(feats[1:]), feats[1:], dim=-1).double().clamp(min=0)
    return float(((prev + first) / 2).mean())


# ----------------------------------------------------------------------------- metrics
class ExactMetrics:
    """Finds, verifies and loads each metric's weights once per instance, and scores videos with them.

    `status(metric)` decides whether a metric can run exactly, in this order: its optional package imports,
    its files exist, their SHA-256 match the published digests, the model loads. It caches the answer and the
    model, so `plan()` can call it before any video is scored.
    """

    def __init__(self, weights_dir: Optional[str] = None, device: str = "cpu", batch: int = 32) -> None:
        self.weights_dir, self.device, self.batch = weights_dir, device, batch
        self._models: Dict[str, Any] = {}
        self._status: Dict[str, Tuple[bool, Optional[str]]] = {}
        self._sha: Dict[Path, str] = {}
        self.files: Dict[str, Tuple[Optional[List[Path]], Optional[str]]] = {
            m: find_files(m, weights_dir) for m in FILES}

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def precision(self, metric: str) -> Optional[str]:
        """How the CLIP metrics run here, compared with VBench (None for the other metrics)."""
        if metric not in CLIP_METRICS:
            return None
        if self.cuda:
            return "CLIP in fp16 on CUDA, as VBench (OpenAI's clip.load precision)"
        return f"CLIP in fp32 on {self.device}: VBench runs CLIP in fp16 on CUDA (fp32 only on CPU)"

    def _digest(self, p: Path) -> str:
        if p not in self._sha:
            self._sha[p] = sha256(p)
        return self._sha[p]

    def status(self, metric: str) -> Tuple[bool, Optional[str]]:
        """(True, None) when `metric` runs exactly here, else (False, reason)."""
        if metric not in FILES:
            return False, "no exact implementation"
        if metric not in self._status:
            self._status[metric] = self._check(metric)
        return self._status[metric]

    def _check(self, metric: str) -> Tuple[bool, Optional[str]]:
        problems = []
        if metric in NEEDS_PACKAGE:
            try:
                NEEDS_PACKAGE[metric]()
            except ImportError as e:
                problems.append(f"{MODEL_NAMES[metric]} code not available: {e}")
        paths, missing = self.files[metric]
        if paths is None:
            problems.append(missing)
        if problems:
            return False, "; ".join(problems)
        for p in paths:
            refusal = check_sha256(p, self._digest(p))
            if refusal:
                return False, refusal
        try:
            self._model(metric)
        except Exception as e:  # torch.load / load_state_dict errors of a file without a published digest
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return False, f"cannot load {', '.join(str(p) for p in paths)}: {first}"
        return True, None

    def available(self, metric: str) -> bool:
        return self.status(metric)[0]

    def reason(self, metric: str) -> Optional[str]:
        """Why `metric` has no exact value here (None when it has one)."""
        return self.status(metric)[1]

    def provenance(self, metric: str) -> List[Dict[str, Any]]:
        """[{"path", "sha256", "verified"}] of the files an exact metric was computed from; `verified` is
        "sha256" / "sha256-prefix" when a published digest was checked, None when none is published."""
        out = []
        for p in self.files[metric][0] or []:
            expected = KNOWN_SHA256.get(p.name)
            verified = None if expected is None else ("sha256" if len(expected) == 64 else "sha256-prefix")
            out.append({"path": str(p), "sha256": self._digest(p), "verified": verified})
        return out

    def _model(self, metric: str):
        if metric in self._models:
            return self._models[metric]
        paths = self.files[metric][0]
        if paths is None:
            raise WeightsRefused(self.files[metric][1])
        for p in paths:
            refusal = check_sha256(p, self._digest(p))
            if refusal:
                raise WeightsRefused(refusal)
        if metric == "subject_consistency":
            m = DinoViT.from_state_dict(_load_tensors(paths[0])).float()
        elif metric in CLIP_METRICS:
            m = ClipVision.from_state_dict(_clip_state_dict(paths[0])).float()
            if self.cuda:
                m = m.openai_fp16()
            if metric == "aesthetic_quality":
                head = _load_tensors(paths[1])
                lin = torch.nn.Linear(head["weight"].shape[1], 1)
                lin.load_state_dict({k: v.float() for k, v in head.items()}, strict=True)
                m = torch.nn.Sequential(m, _L2Norm(), lin)
        elif metric == "lpips":
            m = AlexLPIPS().load(_load_tensors(paths[0]), _load_tensors(paths[1])).float()
        elif metric == "dynamic_degree":
            raft_cls, padder = thirdparty.raft()
            m = raft_cls(argparse.Namespace(small=False, mixed_precision=False, alternate_corr=False))
            ckpt = _load_tensors(paths[0])
            m.load_state_dict({k.replace("module.", ""): v for k, v in ckpt.items()})  # as VBench's DynamicDegree
            m = _Wrapped(m.eval().to(self.device), padder=padder)
        elif metric == "motion_smoothness":
            model_cls, utils, params = thirdparty.amt()
            m = model_cls(**params)
            m.load_state_dict(_load_tensors(paths[0])["state_dict"])
            m = _Wrapped(m.eval().to(self.device), utils=utils)
        else:  # imaging_quality
            musiq_cls, clean = thirdparty.musiq()
            m = musiq_cls(pretrained=False)  # VBench's MUSIQ(pretrained_model_path=...): same net (1 output)
            m.load_state_dict(clean(_load_tensors(paths[0])), strict=True)
            m = _Wrapped(m.eval().to(self.device))
        if not isinstance(m, _Wrapped):
            m = m.eval().to(self.device)
        self._models[metric] = m
        return m

    def _batched(self, model, x: torch.Tensor) -> torch.Tensor:
        chunks = [x[i : i + self.batch] for i in range(0, len(x), self.batch)]
        return torch.cat([model(c.to(self.device)).cpu() for c in chunks])

    def _clip_images(self, frames: np.ndarray) -> torch.Tensor:
        """VBench's clip_transform(224) on float frames: Resize(224, bicubic) -> CenterCrop(224) -> /255 -> CLIP
        mean/std."""
        x = _center_crop(_resize_short(_tensor255(frames), 224, "bicubic"), 224)
        return _normalize(x / 255.0, CLIP_NORM)

    @torch.no_grad()
    def subject_consistency(self, frames: np.ndarray) -> float:
        """DINO CLS features of `(T, H, W, 3)` uint8 frames (dino_transform: short side 224, bilinear, no crop)."""
        x = _normalize(_resize_short(_tensor255(frames), 224, "bilinear") / 255.0, IMAGENET)
        return _first_and_previous(self._batched(self._model("subject_consistency"), x))

    @torch.no_grad()
    def background_consistency(self, frames: np.ndarray) -> float:
        return _first_and_previous(self._batched(self._model("background_consistency"), self._clip_images(frames)))

    @torch.no_grad()
    def aesthetic_quality(self, frames: np.ndarray) -> float:
        """LAION head on L2-normalised CLIP-L/14 embeddings, /10, mean over frames."""
        scores = self._batched(self._model("aesthetic_quality"), self._clip_images(frames)).squeeze(-1)
        return float(torch.mean(scores / 10))

    @torch.no_grad()
    def lpips(self, candidate: np.ndarray, reference: np.ndarray) -> float:
        """Mean over frames of LPIPS(candidate_t, reference_t), inputs scaled to [-1, 1]."""
        model = self._model("lpips")
        a, b = (_tensor255(v) / 127.5 - 1 for v in (candidate, reference))
        d = [model(a[i : i + self.batch].to(self.device), b[i : i + self.batch].to(self.device)).cpu()
             for i in range(0, len(a), self.batch)]
        return float(torch.cat(d).mean())

    def fits(self, metric: str, frames: np.ndarray) -> bool:
        """Whether `frames` are large enough for `metric`'s model (`MIN_SIDE`)."""
        return min(frames.shape[1:3]) >= MIN_SIDE.get(metric, 0)

    def _check_size(self, metric: str, frames: np.ndarray) -> None:
        if not self.fits(metric, frames):
            raise ValueError(f"{MODEL_NAMES[metric]} needs frames of at least {MIN_SIDE[metric]} px a side, got "
                             f"{frames.shape[1]}x{frames.shape[2]} (its correlation pyramid would give NaN)")

    @torch.no_grad()
    def raft_magnitude(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """|RAFT flow| from uint8 frame a to b, as VBench's DynamicDegree / StaticFilter compute it: float frames
        on 0..255, padded to a multiple of 8 (replicate, 'sintel' split), 20 iterations, magnitude of the *padded*
        upsampled flow (VBench's top-k fractions count the padding)."""
        self._check_size("dynamic_degree", a[None])
        w = self._model("dynamic_degree")
        x1, x2 = (torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float()[None].to(self.device)
                  for f in (a, b))
        x1, x2 = w.padder(x1.shape).pad(x1, x2)
        with warnings.catch_warnings():  # RAFT's torch.cuda.amp.autocast and meshgrid deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            _, flow_up = w.model(x1, x2, iters=20, test_mode=True)
        flo = flow_up[0].permute(1, 2, 0).cpu().numpy()
        return np.sqrt(np.square(flo[:, :, 0]) + np.square(flo[:, :, 1]))

    def _amt_scale(self, h: int, w: int) -> float:
        """VBench's MotionSmoothness scale: 1 on CPU; on CUDA it shrinks frames that would not fit its VRAM model."""
        if self.cuda:
            anchor_res, anchor_mem, bias = 1024 * 512, 1500 * 1024**2, 2500 * 1024**2
            vram = torch.cuda.get_device_properties(torch.device(self.device)).total_memory
        else:
            anchor_res, anchor_mem, bias, vram = 8192 * 8192, 1, 0, 1
        scale = anchor_res / (h * w) * np.sqrt((vram - bias) / anchor_mem)
        scale = 1 if scale > 1 else scale
        return 1 / np.floor(1 / np.sqrt(scale) * 16) * 16

    @torch.no_grad()
    def motion_smoothness(self, frames: np.ndarray) -> float:
        """VBench's MotionSmoothness.motion_score with AMT-S: keep frames 0, 2, 4, ..., interpolate each
        neighbouring pair at t = 1/2 with the wheel's own helpers, compare the odd frames as uint8 (truncated, as
        tensor2img does); (255 - mean |diff|) / 255."""
        import cv2

        self._check_size("motion_smoothness", frames)
        w = self._model("motion_smoothness")
        u = w.utils
        inputs = [u.img2tensor(frames[i]).to(self.device) for i in range(0, len(frames), 2)]
        if len(inputs) < 2:
            raise ValueError(f"motion smoothness needs at least 3 frames, got {len(frames)}")
        inputs = u.check_dim_and_resize(inputs)
        h, wd = inputs[0].shape[-2:]
        scale = self._amt_scale(h, wd)
        padder = u.InputPadder(inputs[0].shape, int(16 / scale))
        inputs = padder.pad(*inputs)
        embt = torch.tensor(1 / 2).float().view(1, 1, 1, 1).to(self.device)
        outputs = [inputs[0]]
        for in_0, in_1 in zip(inputs[:-1], inputs[1:]):
            pred = w.model(in_0, in_1, embt, scale_factor=scale, eval=True)["imgt_pred"]
            outputs += [pred.cpu(), in_1.cpu()]
        outputs = [u.tensor2img(o) for o in padder.unpad(*outputs)]
        ori, rebuilt = frames[1::2], outputs[1::2]
        vfi = np.mean(np.array([np.mean(cv2.absdiff(ori[i], rebuilt[i])) for i in range(len(rebuilt))]))
        return float((255.0 - vfi) / 255.0)

    @torch.no_grad()
    def imaging_quality(self, frames: np.ndarray) -> float:
        """VBench's technical_quality (preprocess 'longer'): float frames, long side resized to 512 when larger
        (bilinear, no antialias), /255, MUSIQ per frame, mean over frames, /100."""
        model = self._model("imaging_quality").model
        images = _tensor255(frames)
        h, w = images.shape[-2:]
        if max(h, w) > 512:
            s = 512.0 / max(h, w)
            images = F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False,
                                   antialias=False)
        images = images / 255.0
        acc = 0.0
        for i in range(len(images)):
            acc += float(model(images[i].unsqueeze(0).to(self.device)))
        return acc / len(images) / 100.0


class _Wrapped:
    """A third-party model plus the helpers it is used with (not an nn.Module: nothing to cast or move)."""

    def __init__(self, model: torch.nn.Module, **helpers: Any) -> None:
        self.model = model
        self.__dict__.update(helpers)


class _L2Norm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)
