"""Architectures of VBench's learned metrics, defined here so that local weight files load into them.

Each model is built from the shapes in its state dict and loaded with a strict key match, so a
foreign checkpoint is an error rather than silently wrong numbers.

- `DinoViT`: DINO's ViT (subject consistency), keys of `dino_vitbase16_pretrain.pth`.
- `ClipVision`: OpenAI CLIP's image tower (`visual.*` keys of `ViT-B-32.pt` / `ViT-L-14.pt`). We
  read only the archive's *weights*: OpenAI's TorchScript graphs were traced on CUDA in fp16 and do
  not run unpatched on a CPU. `openai_fp16()` reproduces the precision of `clip.load(..., device="cuda")`
  (what VBench runs on a GPU): convolutions, linear layers, attention and the projection in fp16,
  LayerNorms computed in fp32 and cast back; on a CPU `clip.load` (and we) run everything in fp32.
- `AlexLPIPS`: LPIPS v0.1 (torchvision AlexNet feature keys + LPIPS `lin{i}.model.1.weight` heads).
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F


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

    def _pos(self, rows: int, cols: int, height: int, width: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        # DINO's rule: keep the table only when the patch count matches *and the input is square in pixels*;
        # e.g. a 224x227 input (a 14x14 grid) still goes through the interpolation below, which is not an identity
        if rows * cols == n and height == width:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINO's interpolation: bicubic with a +0.1 scale offset against floating-point rounding
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2] // self.patch, x.shape[3] // self.patch
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self._pos(rows, cols, x.shape[2], x.shape[3])
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


class _LayerNorm32(torch.nn.LayerNorm):
    """CLIP's LayerNorm: computed in fp32 whatever the input dtype, result cast back (a no-op in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class _ClipBlock(torch.nn.Module):
    """OpenAI CLIP residual attention block (pre-norm, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1, self.ln_2 = _LayerNorm32(width), _LayerNorm32(width)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU, as CLIP was trained


class ClipVision(torch.nn.Module):
    """OpenAI CLIP ViT image encoder: `(N, 3, S, S)` normalised pixels -> `(N, out_dim)` embedding."""

    def __init__(self, width: int, layers: int, heads: int, patch: int, grid: int, out_dim: int) -> None:
        super().__init__()
        self.patch, self.grid = patch, grid
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.zeros(width))
        self.positional_embedding = torch.nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre, self.ln_post = _LayerNorm32(width), _LayerNorm32(width)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList(_ClipBlock(width, heads) for _ in range(layers))
        self.proj = torch.nn.Parameter(torch.zeros(width, out_dim))

    @classmethod
    def from_state_dict(cls, sd: Dict[str, torch.Tensor]) -> "ClipVision":
        """Build from a full CLIP state dict (`visual.*` keys; text-tower keys are ignored), heads = width / 64."""
        vis = {k[len("visual."):]: v.float() for k, v in sd.items() if k.startswith("visual.")}
        if "conv1.weight" not in vis or "proj" not in vis:
            raise RuntimeError("Error(s) in loading state_dict for ClipVision: not an OpenAI CLIP ViT checkpoint "
                               f"(keys {sorted(sd)[:4]}...)")
        width, patch = vis["conv1.weight"].shape[0], vis["conv1.weight"].shape[-1]
        layers = len({k.split(".")[2] for k in vis if k.startswith("transformer.resblocks.")})
        grid = int(math.sqrt(vis["positional_embedding"].shape[0] - 1))
        model = cls(width, layers, max(1, width // 64), patch, grid, vis["proj"].shape[1])
        model.load_state_dict(vis, strict=True)
        return model

    def openai_fp16(self) -> "ClipVision":
        """Cast like OpenAI's `convert_weights` (what `clip.load` leaves on CUDA): conv, linear, attention and
        `proj` to fp16; LayerNorms and the class/position embeddings stay fp32 (cast to fp16 where used)."""
        for m in self.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.half()
            elif isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_weight.data, m.in_proj_bias.data = m.in_proj_weight.data.half(), m.in_proj_bias.data.half()
        self.proj.data = self.proj.data.half()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.patch * self.grid or x.shape[-2] != self.patch * self.grid:
            raise ValueError(f"CLIP expects {self.patch * self.grid}px square input, got {tuple(x.shape[-2:])}")
        t = self.conv1(x.to(self.dtype)).flatten(2).transpose(1, 2)  # CLIP's encode_image: image.type(self.dtype)
        cls = self.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], 1) + self.positional_embedding.to(t.dtype)
        t = self.ln_pre(t)
        for blk in self.transformer.resblocks:
            t = blk(t)
        return self.ln_post(t[:, 0]) @ self.proj


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
