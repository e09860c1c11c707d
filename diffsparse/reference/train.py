"""Flow-matching training of the reference video model (tiny `WanTransformer3DModel` + tiny T5 text encoder).

    python -m diffsparse.reference.train --config configs/reference_video.json [--device cuda] [--out DIR]
        [--steps N] [--resume] [--threads 1]
    python -m diffsparse.reference.train --config ... --export-only   # write safetensors from the last checkpoint

Objective as `FlowMatchEulerDiscreteScheduler` samples: x_t = (1 - s) x0 + s noise, the transformer
predicts (noise - x0) at timestep s * 1000, with s from a logit-normal shifted like the scheduler.
Captions are dropped (replaced by "") with probability `caption_dropout` so classifier-free guidance
works. Writes `OUT/ckpt.pt` (resumable: model, EMA, optimiser, step, RNG), `OUT/loss.jsonl` and, at the
end (or `--export-only`), the shippable weights folder `OUT/export/` (EMA weights, safetensors).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from copy import deepcopy
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .text import build_text_encoder, build_tokenizer, encode
from .vae import SpaceToDepthVAE

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "frames": 17,
    "height": 64,
    "width": 64,
    "batch_size": 8,
    "steps": 1000,
    "lr": 5e-4,
    "text_lr": 5e-4,
    "warmup": 50,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "ema_decay": 0.995,
    "caption_dropout": 0.1,
    "text_len": 512,
    "shift": 3.0,
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "vae": {"scale_factor_spatial": 4, "scale_factor_temporal": 4, "latent_channels": 32},
    "text_encoder": {"d_model": 64, "num_layers": 2, "num_heads": 2, "d_ff": 128},
    "transformer": {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4,
                    "freq_dim": 256, "rope_max_seq_len": 1024},
    "stats_samples": 256,
    "log_every": 10,
    "ckpt_every": 50,
    "out": "runs/reference_video",
}


def load_config(path: str | None, overrides: Dict[str, Any] | None = None) -> Dict[str, Any]:
    cfg = deepcopy(DEFAULTS)
    if path:
        with open(path) as fh:
            user = json.load(fh)
        for k, v in user.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg[k] = v
    return cfg


def build_transformer(cfg: Dict[str, Any], z_dim: int):
    from diffusers import WanTransformer3DModel

    t = cfg["transformer"]
    torch.manual_seed(cfg["seed"])
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=t["num_attention_heads"], attention_head_dim=t["attention_head_dim"],
        in_channels=z_dim, out_channels=z_dim, text_dim=cfg["text_encoder"]["d_model"], freq_dim=t["freq_dim"],
        ffn_dim=t["ffn_dim"], num_layers=t["num_layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=t["rope_max_seq_len"],
    )


def build_vae(cfg: Dict[str, Any]) -> SpaceToDepthVAE:
    """The (PCA-projected) space-to-depth autoencoder with latent statistics fitted on fixed samples."""
    vids = [D.sample(i, seed=10_000 + cfg["seed"], num_frames=cfg["frames"], height=cfg["height"],
                     width=cfg["width"])[0] for i in range(cfg["stats_samples"])]
    x = torch.from_numpy(np.stack(vids)).float() / 127.5 - 1.0  # b f h w c
    vcfg = dict(cfg["vae"])
    if vcfg.get("latent_channels"):
        vae = SpaceToDepthVAE(**vcfg)
        std = vae.fit_pca(x.permute(0, 4, 1, 2, 3))
        k = vae.config.latent_channels
        # one scale for all components (not whitening): high-variance, coarse components then keep a higher
        # SNR than fine detail at a given noise level, so layout is decided before detail. Whitened latents
        # (per-component std) gave fragmented, patch-wise samples at step 600 (eval/results/reference/).
        rms = float(np.sqrt(np.mean(np.square(std))))
        out = SpaceToDepthVAE(**vcfg, latents_mean=[0.0] * k, latents_std=[rms] * k)
        out.load_state_dict(vae.state_dict())
        return out
    vae = SpaceToDepthVAE(**vcfg)
    mean = x.mean(dim=(0, 1, 2, 3)).tolist()
    std = x.std(dim=(0, 1, 2, 3)).tolist()
    per = vae.config.z_dim // vae.config.in_channels
    return SpaceToDepthVAE(**vcfg, latents_mean=[m for m in mean for _ in range(per)],
                           latents_std=[s for s in std for _ in range(per)])


def batch(cfg: Dict[str, Any], step: int, rng: np.random.Generator):
    """Deterministic batch for `step`: (video tensor (B,3,F,H,W) in [-1,1], captions)."""
    vids, caps = [], []
    for j in range(cfg["batch_size"]):
        v, c, _ = D.sample(step * cfg["batch_size"] + j, seed=cfg["seed"], num_frames=cfg["frames"],
                           height=cfg["height"], width=cfg["width"])
        if rng.random() < cfg["caption_dropout"]:
            c = ""
        vids.append(v)
        caps.append(c)
    x = torch.from_numpy(np.stack(vids)).float().permute(0, 4, 1, 2, 3) / 127.5 - 1.0
    return x, caps


def sample_sigmas(n: int, cfg: Dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    u = torch.sigmoid(torch.randn(n, generator=gen) * cfg["logit_std"] + cfg["logit_mean"])
    s = cfg["shift"]
    return s * u / (1 + (s - 1) * u)


class Trainer:
    def __init__(self, cfg: Dict[str, Any], device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.out = cfg["out"]
        os.makedirs(self.out, exist_ok=True)
        torch.manual_seed(cfg["seed"])
        self.tokenizer = build_tokenizer()
        self.vae = build_vae(cfg).to(self.device)
        te = cfg["text_encoder"]
        self.text_encoder = build_text_encoder(len(self.tokenizer), seed=cfg["seed"], **te).to(self.device)
        self.transformer = build_transformer(cfg, self.vae.config.z_dim).to(self.device)
        self.ema = {k: v.detach().clone() for k, v in self._named_params()}
        self.opt = torch.optim.AdamW([
            {"params": list(self.transformer.parameters()), "lr": cfg["lr"]},
            {"params": list(self.text_encoder.parameters()), "lr": cfg["text_lr"]},
        ], betas=(0.9, 0.99), weight_decay=cfg["weight_decay"])
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        self.np_rng = np.random.default_rng(cfg["seed"])
        self.elapsed = 0.0

    def _named_params(self):
        for n, p in self.transformer.named_parameters():
            yield "transformer." + n, p
        for n, p in self.text_encoder.named_parameters():
            yield "text_encoder." + n, p

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.out, "ckpt.pt")

    def save(self) -> None:
        state = {
            "step": self.step, "cfg": self.cfg, "elapsed": self.elapsed,
            "transformer": self.transformer.state_dict(), "text_encoder": self.text_encoder.state_dict(),
            "ema": self.ema, "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
            "np_rng": self.np_rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "vae_config": dict(self.vae.config), "vae": self.vae.state_dict(),
        }
        tmp = self.ckpt_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def load(self) -> bool:
        if not os.path.exists(self.ckpt_path):
            return False
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        if "vae" in state:
            self.vae.load_state_dict(state["vae"])
        self.transformer.load_state_dict(state["transformer"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.np_rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = state["step"], state.get("elapsed", 0.0)
        return True

    def lr_scale(self) -> float:
        w, total = self.cfg["warmup"], self.cfg["steps"]
        if self.step < w:
            return (self.step + 1) / w
        frac = (self.step - w) / max(total - w, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))  # cosine to 10 %

    def train_step(self) -> float:
        cfg = self.cfg
        x, caps = batch(cfg, self.step, self.np_rng)
        x = x.to(self.device)
        with torch.no_grad():
            x0 = self.vae.normalize(self.vae.encode(x).latent_dist.mode())
        emb = encode(self.tokenizer, self.text_encoder, caps, cfg["text_len"])
        sig = sample_sigmas(x0.shape[0], cfg, self.gen).to(self.device)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        s = sig.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = self.transformer(hidden_states=xt, timestep=sig * 1000, encoder_hidden_states=emb,
                                return_dict=False)[0]
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * self.lr_scale()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.transformer.parameters()) + list(self.text_encoder.parameters()),
                                       cfg["grad_clip"])
        self.opt.step()
        d = min(cfg["ema_decay"], (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, p in self._named_params():
                self.ema[k].mul_(d).add_(p.detach(), alpha=1 - d)
        self.step += 1
        return float(loss.detach())

    def run(self, steps: int | None = None) -> None:
        total = steps if steps is not None else self.cfg["steps"]
        log = open(os.path.join(self.out, "loss.jsonl"), "a")
        t0 = time.time() - self.elapsed
        window: List[float] = []
        while self.step < total:
            loss = self.train_step()
            window.append(loss)
            self.elapsed = time.time() - t0
            if self.step % self.cfg["log_every"] == 0 or self.step == total:
                rec = {"step": self.step, "loss": sum(window) / len(window), "lr": self.opt.param_groups[0]["lr"],
                       "elapsed_s": round(self.elapsed, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
                window = []
            if self.step % self.cfg["ckpt_every"] == 0 or self.step == total:
                self.save()
        log.close()

    def export(self, path: str | None = None, use_ema: bool = True) -> str:
        """Write the shippable weights folder (safetensors + configs) that `load_pipeline` reads."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        path = path or os.path.join(self.out, "export")
        tr, te = deepcopy(self.transformer).cpu(), deepcopy(self.text_encoder).cpu()
        if use_ema:
            tr.load_state_dict({k[len("transformer."):]: v for k, v in self.ema.items() if k.startswith("transformer.")})
            missing, unexpected = te.load_state_dict(
                {k[len("text_encoder."):]: v for k, v in self.ema.items() if k.startswith("text_encoder.")}, strict=False)
            assert not unexpected and all(k.endswith("embed_tokens.weight") for k in missing), (missing, unexpected)
        tr.save_pretrained(os.path.join(path, "transformer"), safe_serialization=True)
        te.save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        self.vae.save_pretrained(os.path.join(path, "vae"), safe_serialization=True)
        FlowMatchEulerDiscreteScheduler(shift=self.cfg["shift"]).save_config(os.path.join(path, "scheduler"))
        meta = {"step": self.step, "train_seconds": round(self.elapsed, 1), "device": str(self.device),
                "ema": use_ema, "config": self.cfg, "torch_threads": torch.get_num_threads()}
        with open(os.path.join(path, "training.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
        return path


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--export-to", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, {"out": args.out, "steps": args.steps})
    tr = Trainer(cfg, args.device)
    resumed = tr.load() if (args.resume or args.export_only) else False
    if args.export_only:
        if not resumed:
            raise SystemExit(f"no checkpoint at {tr.ckpt_path}")
    else:
        print(f"{'resuming at step ' + str(tr.step) if resumed else 'starting'}; transformer "
              f"{sum(p.numel() for p in tr.transformer.parameters()) / 1e6:.2f} M params, text encoder "
              f"{sum(p.numel() for p in tr.text_encoder.parameters()) / 1e6:.2f} M", flush=True)
        tr.run()
    print("exported to", tr.export(args.export_to), flush=True)


if __name__ == "__main__":
    main()
