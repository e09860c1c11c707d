"""VBench's learned metrics, run only from weight files already on disk (never downloaded).

Weights are looked up in VBench's own cache layout under the first of: `weights_dir`,
`$VBENCH_CACHE_DIR`, `~/.cache/vbench`; a folder prepared for VBench works unchanged. Every file
is checked for existence *before* any code that could touch the network runs (we only ever call
`torch.load` / `torch.jit.load` on local paths), and its SHA-256 is recorded in the result. A
metric whose files are missing falls back to its proxy or is skipped, with the missing path.

| metric | files (under the weights root) | model (see models.py) |
|---|---|---|
| subject_consistency | dino_model/dino_vitbase16_pretrain.pth | DINO ViT-B/16 |
| background_consistency | clip_model/ViT-B-32.pt | OpenAI CLIP ViT-B/32 image tower |
| aesthetic_quality | clip_model/ViT-L-14.pt, aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth | CLIP ViT-L/14 + LAION linear head |
| lpips | lpips/alexnet-owt-7be5be79.pth (or $TORCH_HOME/hub/checkpoints/), lpips/alex.pth | AlexNet + LPIPS v0.1 heads |

MUSIQ (imaging_quality), RAFT (dynamic_degree) and AMT-S (motion_smoothness) are not implemented
(`UNIMPLEMENTED`): imaging_quality is skipped, the other two use DIS-flow proxies, whatever is on disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .models import AlexLPIPS, ClipVision, DinoViT

FILES = {
    "subject_consistency": ["dino_model/dino_vitbase16_pretrain.pth"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "lpips": ["lpips/alexnet-owt-7be5be79.pth", "lpips/alex.pth"],
}
#: VBench's files for models whose architectures are not implemented here (named in the reasons)
UNIMPLEMENTED = {
    "imaging_quality": ("MUSIQ (SPAQ)", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"),
    "dynamic_degree": ("RAFT", "raft_model/models/raft-things.pth"),
    "motion_smoothness": ("AMT-S", "amt_model/amt-s.pth"),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def weights_root(weights_dir: Optional[str] = None) -> Path:
    """`weights_dir` -> `$VBENCH_CACHE_DIR` -> `~/.cache/vbench`."""
    return Path(weights_dir or os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def unimplemented_reason(metric: str, weights_dir: Optional[str] = None) -> str:
    """Why a metric without an implemented architecture has no exact value (names VBench's file)."""
    model, rel = UNIMPLEMENTED[metric]
    p = weights_root(weights_dir) / rel
    found = f"found {p}" if p.is_file() else f"{p} not present either"
    return f"{model} architecture is not implemented in diffsparse ({found})"


def _clip_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Weights of an OpenAI CLIP file: a TorchScript archive (their release) or a plain state dict."""
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):  # not a TorchScript archive
        return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- preprocessing
def _tensor255(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` -> float `(T, 3, H, W)` on the 0..255 scale."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _resize_short(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """torchvision `Resize(size, antialias=False)` on a uint8 tensor, as VBench applies it: short side to
    `size`, long side int(size * long / short), result clamped and rounded back to 8 bits."""
    h, w = x.shape[-2:]
    out = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if out != (h, w):
        x = F.interpolate(x, size=out, mode=mode, align_corners=False)
    return x.clamp(0, 255).round()


def _normalize(x: torch.Tensor, stats) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return (x - mean) / std


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's CenterCrop offsets
    return x[..., top : top + size, left : left + size]


def _first_and_previous(feats: torch.Tensor) -> float:
    """VBench: mean over i >= 1 of (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i))) / 2."""
    feats = F.normalize(feats.float(), dim=-1)
    prev = (feats[:-1] * feats[1:]).sum(-1).clamp(min=0)
    first = (feats[:1] * feats[1:]).sum(-1).clamp(min=0)
    return float(((prev + first) / 2).mean())


# ----------------------------------------------------------------------------- metrics
class ExactMetrics:
    """Finds the weight files once per instance, loads each model on first use and scores videos with it."""

    def __init__(self, weights_dir: Optional[str] = None, device: str = "cpu", batch: int = 32) -> None:
        self.weights_dir, self.device, self.batch = weights_dir, device, batch
        self._models: Dict[str, object] = {}
        self.files: Dict[str, Tuple[Optional[List[Path]], Optional[str]]] = {
            m: find_files(m, weights_dir) for m in FILES}
        self._sha: Dict[Path, str] = {}

    def available(self, metric: str) -> bool:
        return metric in self.files and self.files[metric][0] is not None

    def reason(self, metric: str) -> Optional[str]:
        """Why `metric` has no exact value here (None when it has one)."""
        if self.available(metric):
            return None
        if metric in UNIMPLEMENTED:
            return unimplemented_reason(metric, self.weights_dir)
        return self.files[metric][1] if metric in self.files else "no exact implementation"

    def provenance(self, metric: str) -> List[Dict[str, str]]:
        """[{"path", "sha256"}] of the files an exact metric was computed from."""
        paths = self.files[metric][0] or []
        for p in paths:
            if p not in self._sha:
                self._sha[p] = sha256(p)
        return [{"path": str(p), "sha256": self._sha[p]} for p in paths]

    def _model(self, metric: str):
        if metric not in self._models:
            paths = self.files[metric][0]
            if paths is None:
                raise FileNotFoundError(self.files[metric][1])
            if metric == "subject_consistency":
                m = DinoViT.from_state_dict(torch.load(paths[0], map_location="cpu", weights_only=True))
            elif metric in ("background_consistency", "aesthetic_quality"):
                m = ClipVision.from_state_dict(_clip_state_dict(paths[0]))
                if metric == "aesthetic_quality":
                    head = torch.load(paths[1], map_location="cpu", weights_only=True)
                    lin = torch.nn.Linear(head["weight"].shape[1], 1)
                    lin.load_state_dict({k: v.float() for k, v in head.items()}, strict=True)
                    m = torch.nn.Sequential(m, _L2Norm(), lin)
            else:
                m = AlexLPIPS().load(torch.load(paths[0], map_location="cpu", weights_only=True),
                                     torch.load(paths[1], map_location="cpu", weights_only=True))
            self._models[metric] = m.float().eval().to(self.device)
        return self._models[metric]

    def _batched(self, model, x: torch.Tensor) -> torch.Tensor:
        chunks = [x[i : i + self.batch] for i in range(0, len(x), self.batch)]
        return torch.cat([model(c.to(self.device)).float().cpu() for c in chunks])

    def _clip_images(self, frames: np.ndarray) -> torch.Tensor:
        """VBench's clip_transform(224): Resize(224, bicubic) -> CenterCrop(224) -> /255 -> CLIP mean/std."""
        x = _center_crop(_resize_short(_tensor255(frames), 224, "bicubic"), 224)
        return _normalize(x / 255.0, CLIP_NORM)

    @torch.no_grad()
    def subject_consistency(self, frames: np.ndarray) -> float:
        """DINO CLS features of `(T, H, W, 3)` uint8 frames (dino_transform: short side 224, bilinear)."""
        x = _normalize(_resize_short(_tensor255(frames), 224, "bilinear") / 255.0, IMAGENET)
        return _first_and_previous(self._batched(self._model("subject_consistency"), x))

    @torch.no_grad()
    def background_consistency(self, frames: np.ndarray) -> float:
        return _first_and_previous(self._batched(self._model("background_consistency"), self._clip_images(frames)))

    @torch.no_grad()
    def aesthetic_quality(self, frames: np.ndarray) -> float:
        """LAION head on L2-normalised CLIP-L/14 embeddings, /10, mean over frames."""
        return float(self._batched(self._model("aesthetic_quality"), self._clip_images(frames)).mean()) / 10.0

    @torch.no_grad()
    def lpips(self, candidate: np.ndarray, reference: np.ndarray) -> float:
        """Mean over frames of LPIPS(candidate_t, reference_t), inputs scaled to [-1, 1]."""
        model = self._model("lpips")
        a, b = (_tensor255(v) / 127.5 - 1 for v in (candidate, reference))
        d = [model(a[i : i + self.batch].to(self.device), b[i : i + self.batch].to(self.device)).cpu()
             for i in range(0, len(a), self.batch)]
        return float(torch.cat(d).mean())


class _L2Norm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)
