"""VBench's learned metrics, run only from weight files already on disk (never downloaded).

Weights are looked up in VBench's own cache layout under the first of: `weights_dir`,
`$VBENCH_CACHE_DIR`, `~/.cache/vbench`; a folder prepared for VBench works unchanged. Every file
is checked for existence *before* any code that could touch the network runs, and its SHA-256 is
recorded in the result. A metric whose files are missing is reported as skipped with the path.

| metric | files (under the weights root) | model |
|---|---|---|
| subject_consistency | dino_model/dino_vitbase16_pretrain.pth | DINO ViT-B/16, defined here (strict key match) |
| background_consistency | clip_model/ViT-B-32.pt | OpenAI CLIP TorchScript archive (`encode_image`) |
| aesthetic_quality | clip_model/ViT-L-14.pt, aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth | CLIP ViT-L/14 + LAION linear head |
| lpips | lpips/alexnet-owt-7be5be79.pth (or $TORCH_HOME/hub/checkpoints/), lpips/alex.pth | AlexNet + LPIPS v0.1 heads, defined here |

MUSIQ (imaging_quality), RAFT (dynamic_degree) and AMT (motion_smoothness) architectures are
not implemented: imaging_quality is skipped, the other two use the DIS-flow proxies.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

FILES = {
    "subject_consistency": ["dino_model/dino_vitbase16_pretrain.pth"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "lpips": ["lpips/alexnet-owt-7be5be79.pth", "lpips/alex.pth"],
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


# ----------------------------------------------------------------------------- models
class _Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = torch.nn.Module()
        self.attn.qkv, self.attn.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Module()
        self.mlp.fc1, self.mlp.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.attn.qkv(self.norm1(x)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, N, C)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoViT(torch.nn.Module):
    """DINO's ViT (key names of its released checkpoints); returns the final-norm CLS feature."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 16, grid: int = 14) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, dim, patch, patch)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = torch.nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state_dict(cls, sd: Dict[str, torch.Tensor]) -> "DinoViT":
        """Build the ViT the checkpoint describes (64-dim heads, as DINO's ViTs) and load it strictly."""
        if "pos_embed" not in sd or "patch_embed.proj.weight" not in sd:
            raise RuntimeError("Error(s) in loading state_dict for DinoViT: not a DINO ViT checkpoint "
                               f"(keys {sorted(sd)[:4]}...)")
        dim, patch = sd["pos_embed"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        grid = int(math.sqrt(sd["pos_embed"].shape[1] - 1))
        model = cls(dim=dim, depth=depth, heads=max(1, dim // 64), patch=patch, grid=grid)
        model.load_state_dict(sd, strict=True)
        return model

    def _pos(self, rows: int, cols: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        if rows == cols == side:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINO's interpolation: bicubic with a +0.1 scale offset against floating-point rounding
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2] // self.patch, x.shape[3] // self.patch
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self._pos(rows, cols)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


class AlexLPIPS(torch.nn.Module):
    """LPIPS (v0.1, AlexNet): torchvision AlexNet feature keys + LPIPS `lin{i}.model.1.weight` heads."""

    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        c = self.CHANNELS
        self.features = torch.nn.ModuleDict({
            "0": torch.nn.Conv2d(3, 64, 11, 4, 2), "3": torch.nn.Conv2d(64, 192, 5, 1, 2),
            "6": torch.nn.Conv2d(192, 384, 3, 1, 1), "8": torch.nn.Conv2d(384, 256, 3, 1, 1),
            "10": torch.nn.Conv2d(256, 256, 3, 1, 1),
        })
        self.lins = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(1, ch, 1, 1)) for ch in c)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def load(self, alexnet: Dict[str, torch.Tensor], heads: Dict[str, torch.Tensor]) -> "AlexLPIPS":
        feats = {k[len("features."):]: v for k, v in alexnet.items() if k.startswith("features.")}
        self.features.load_state_dict(feats, strict=True)
        for i, p in enumerate(self.lins):
            p.data.copy_(heads[f"lin{i}.model.1.weight"])
        return self

    def _taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        f = self.features
        out = []
        x = F.relu(f["0"](x)); out.append(x)  # noqa: E702
        x = F.relu(f["3"](F.max_pool2d(x, 3, 2))); out.append(x)  # noqa: E702
        x = F.relu(f["6"](F.max_pool2d(x, 3, 2))); out.append(x)  # noqa: E702
        x = F.relu(f["8"](x)); out.append(x)  # noqa: E702
        x = F.relu(f["10"](x)); out.append(x)  # noqa: E702
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b `(N, 3, H, W)` in [-1, 1] -> distance `(N,)`."""
        fa, fb = self._taps((a - self.shift) / self.scale), self._taps((b - self.shift) / self.scale)
        d = 0
        for x, y, w in zip(fa, fb, self.lins):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            d = d + (((x - y) ** 2) * w).sum(1).mean((1, 2))
        return d


# ----------------------------------------------------------------------------- preprocessing
def _tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _resize_short(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = size / min(h, w)
    return F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode=mode, align_corners=False)


def _normalize(x: torch.Tensor, stats) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return (x - mean) / std


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _first_and_previous(feats: torch.Tensor) -> float:
    feats = F.normalize(feats.float(), dim=-1)
    s = [(max(0.0, float(feats[i - 1] @ feats[i])) + max(0.0, float(feats[0] @ feats[i]))) / 2 for i in range(1, len(feats))]
    return float(np.mean(s))


# ----------------------------------------------------------------------------- metrics
class ExactMetrics:
    """Loads each available model once (per instance) and scores videos with it."""

    def __init__(self, weights_dir: Optional[str] = None, device: str = "cpu") -> None:
        self.weights_dir, self.device = weights_dir, device
        self._models: Dict[str, object] = {}
        self.files: Dict[str, Tuple[Optional[List[Path]], Optional[str]]] = {m: find_files(m, weights_dir) for m in FILES}

    def provenance(self, metric: str) -> Dict[str, object]:
        paths, reason = self.files[metric]
        if paths is None:
            return {"impl": "skipped", "reason": reason}
        return {"impl": "exact", "weights": [{"path": str(p), "sha256": sha256(p)} for p in paths]}

    def available(self, metric: str) -> bool:
        return self.files[metric][0] is not None

    def _model(self, metric: str):
        if metric not in self._models:
            paths = self.files[metric][0]
            if metric == "subject_consistency":
                m = DinoViT.from_state_dict(torch.load(paths[0], map_location="cpu", weights_only=True))
            elif metric in ("background_consistency", "aesthetic_quality"):
                m = torch.jit.load(str(paths[0]), map_location="cpu").float()
                if metric == "aesthetic_quality":
                    head = torch.load(paths[1], map_location="cpu", weights_only=True)
                    m = (m, head)
            else:
                m = AlexLPIPS().load(torch.load(paths[0], map_location="cpu", weights_only=True),
                                     torch.load(paths[1], map_location="cpu", weights_only=True))
            if isinstance(m, torch.nn.Module):
                m = m.eval().to(self.device)
            self._models[metric] = m
        return self._models[metric]

    @torch.no_grad()
    def subject_consistency(self, frames: np.ndarray) -> float:
        x = _normalize(_resize_short(_tensor(frames), 224, "bilinear"), IMAGENET).to(self.device)
        return _first_and_previous(self._model("subject_consistency")(x).cpu())

    def _clip_images(self, frames: np.ndarray) -> torch.Tensor:
        x = _center_crop(_resize_short(_tensor(frames), 224, "bicubic").clamp(0, 1), 224)
        return _normalize(x, CLIP_NORM).to(self.device)

    @torch.no_grad()
    def background_consistency(self, frames: np.ndarray) -> float:
        return _first_and_previous(self._model("background_consistency").encode_image(self._clip_images(frames)).cpu())

    @torch.no_grad()
    def aesthetic_quality(self, frames: np.ndarray) -> float:
        clip, head = self._model("aesthetic_quality")
        feats = F.normalize(clip.encode_image(self._clip_images(frames)).float().cpu(), dim=-1)
        scores = feats @ head["weight"].float().t() + head["bias"].float()
        return float(scores.mean()) / 10.0

    @torch.no_grad()
    def lpips(self, candidate: np.ndarray, reference: np.ndarray) -> float:
        model = self._model("lpips")
        a, b = (_tensor(v).to(self.device) * 2 - 1 for v in (candidate, reference))
        return float(model(a, b).mean())
