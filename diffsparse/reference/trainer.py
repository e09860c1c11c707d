"""The video reference model's trainer (tiny `WanTransformer3DModel` + T5); `train_image.py` subclasses it
for the image model and `train.py` is the command that runs either.

Objective as `FlowMatchEulerDiscreteScheduler` samples: x_t = (1 - s) x0 + s noise, the transformer
predicts (noise - x0) at timestep s * 1000, with s from a logit-normal shifted like the scheduler.
Captions are dropped (replaced by "") with probability `caption_dropout` so classifier-free guidance
works. Writes `OUT/ckpt.pt` (resumable: model, EMA, optimiser, step, RNG), `OUT/loss.jsonl` and, at the
end (or `--export-only`), the shippable weights folder `OUT/export/` (EMA weights, safetensors).
"""

from __future__ import annotations

import json
import math
import os
import time
from copy import deepcopy
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from . import compact_text
from .text import build_text_encoder, build_tokenizer, encode
from .vae import SpaceToDepthVAE

DEFAULTS: Dict[str, Any] = {
    "kind": "video",
    "seed": 0,
    "frames": 17,
    "height": 64,
    "width": 64,
    "batch_size": 8,
    "steps": 1000,
    "lr": 5e-4,
    "text_lr": 5e-4,
    "warmup": 50,
    "schedule_start": 0,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "ema_decay": 0.995,
    "caption_dropout": 0.1,
    "text_len": 512,
    "compact_text": True,  # cross-attention over the text + one padding key with a log-count bias (compact_text.py)
    "shift": 3.0,
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "vae": {"scale_factor_spatial": 4, "scale_factor_temporal": 4, "latent_channels": 32},
    "text_encoder": {"d_model": 64, "num_layers": 2, "num_heads": 2, "d_ff": 128},
    "transformer": {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4,
                    "freq_dim": 256, "rope_max_seq_len": 1024},
    "init_from": None,  # optional exported weights folder a fine-tune starts from (when there is no checkpoint)
    # optional factor for the cross-attention q/k RMSNorm gains at `init_from`, kept fixed in training (see
    # `sharpen_cross_attention`); None leaves the gains as loaded and trainable
    "cross_attn_gain": None,
    "sizes": None,  # optional [[height, width, batch_size], ...] cycled per step (mixed-resolution training)
    # fraction of video clips noised with an independent sigma per latent frame (a per-token timestep for Wan):
    # a cleaner frame next to noisier ones leaves the caption's motion words as the cue for where the object
    # goes, which a shared sigma hardly does (the noisy clip itself shows it). 0 = one sigma per clip
    "frame_sigma_prob": 0.0,
    # pair every even batch row's translation clip with itself played backwards under the opposite direction word
    # (and pan), noised with the same noise and sigma: the pair differs only in where the clip goes and in that
    # word, so its gradient is about the word's sign, which the model reads least ("moving up" and "moving down"
    # both drew upward motion, eval/results/reference/design_runs/direction_pairs/)
    "direction_pairs": False,
    # draw this many fading copies of the shape where it was 1.5, 3, ... frames earlier (`data.render_video`'s
    # `trail`): a single frame then shows which way the shape goes, a cue local to the object like its colour
    "motion_trail": 0,
    "stats_samples": 256,
    "log_every": 10,
    "ckpt_every": 50,
    "out": "runs/reference_video",
}


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


def batch_geometry(cfg: Dict[str, Any], step: int) -> Tuple[int, int, int]:
    """(height, width, batch size) of `step`: the config's, or the `step % n`-th entry of its optional
    `"sizes": [[h, w, batch], ...]` (mixed-resolution training, so the model also renders at those sizes)."""
    sizes = cfg.get("sizes")
    if sizes:
        h, w, b = sizes[step % len(sizes)]
        return int(h), int(w), int(b)
    return cfg["height"], cfg["width"], cfg["batch_size"]


def batch(cfg: Dict[str, Any], step: int, rng: np.random.Generator, sample=D.sample, **size):
    """Deterministic batch for `step` from a procedural `sample(index, seed=, height=, width=, **size)`:
    (pixels channel-first in [-1, 1]: video (B, 3, F, H, W) or image (B, 3, H, W), captions with dropout)."""
    height, width, bs = batch_geometry(cfg, step)
    stride = max([cfg["batch_size"]] + [int(s[2]) for s in cfg.get("sizes") or []])  # sample indices never repeat
    pix, caps, prev = [], [], None
    for j in range(bs):
        rev = D.time_reversed(prev[1]) if cfg.get("direction_pairs") and j % 2 and prev is not None else None
        if rev is not None and not D.is_held_out(rev):  # the even row's clip backwards, opposite direction word
            p, c = prev[0][::-1].copy(), rev.caption
        else:
            p, c, spec = sample(step * stride + j, seed=cfg["seed"], height=height, width=width, **size)
            prev = (p, spec)
        pix.append(p)
        caps.append("" if rng.random() < cfg["caption_dropout"] else c)
    return torch.from_numpy(np.stack(pix)).float().movedim(-1, 1) / 127.5 - 1.0, caps


def sample_sigmas(n: int, cfg: Dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    u = torch.sigmoid(torch.randn(n, generator=gen) * cfg["logit_std"] + cfg["logit_mean"])
    s = cfg["shift"]
    return s * u / (1 + (s - 1) * u)


class Trainer:
    """Flow-matching loop shared by the reference models: EMA, AdamW with warm-up and cosine decay,
    resumable checkpoints, loss log. Subclasses say what the models are (`build`), how a batch becomes
    (x0, model inputs) (`prepare`), how the transformer is called (`predict`) and what is shipped
    (`export_models`).
    This class is the video model (`WanTransformer3DModel` + tiny T5 + `SpaceToDepthVAE`)."""

    def __init__(self, cfg: Dict[str, Any], device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.out = cfg["out"]
        os.makedirs(self.out, exist_ok=True)
        torch.manual_seed(cfg["seed"])
        self.modules: Dict[str, torch.nn.Module] = self.build()  # the trained modules, by name
        for m in self.modules.values():
            m.to(self.device)
        self.vae.to(self.device)
        if cfg.get("cross_attn_gain"):
            for norm in self._cross_attn_norms():
                norm.weight.requires_grad_(False)
        self.reset_ema()
        self.opt = torch.optim.AdamW([  # text encoders take text_lr
            {"params": list(m.parameters()), "lr": cfg["lr"] if name == "transformer" else cfg["text_lr"]}
            for name, m in self.modules.items()
        ], betas=(0.9, 0.99), weight_decay=cfg["weight_decay"])
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        self.np_rng = np.random.default_rng(cfg["seed"])
        self.elapsed = 0.0

    # -- what the video model is --------------------------------------------------------------------
    def build(self) -> Dict[str, torch.nn.Module]:
        cfg = self.cfg
        self.tokenizer = build_tokenizer()
        self.tokenizers = {"tokenizer": self.tokenizer}  # shipped next to the models, by pipeline component name
        self.vae = build_vae(cfg)
        te = build_text_encoder(len(self.tokenizer), seed=cfg["seed"], **cfg["text_encoder"])
        transformer = build_transformer(cfg, self.vae.config.z_dim)
        self.text_bias = compact_text.install(transformer) if cfg.get("compact_text") else None
        return {"transformer": transformer, "text_encoder": te}

    def prepare(self, step: int):
        """(x0 normalised latents, keyword inputs of the transformer other than hidden_states/timestep)."""
        x, caps = batch(self.cfg, step, self.np_rng, num_frames=self.cfg["frames"],
                        trail=self.cfg.get("motion_trail") or 0)
        with torch.no_grad():
            x0 = self.vae.normalize(self.vae.encode(x.to(self.device)).latent_dist.mode())
        if self.text_bias is not None:  # same result as the padded text below, far fewer keys
            emb, self.text_bias.bias = compact_text.compact_prompt_embeds(
                self.tokenizer, self.modules["text_encoder"], caps, self.cfg["text_len"])
        else:
            emb = encode(self.tokenizer, self.modules["text_encoder"], caps, self.cfg["text_len"])
        return x0, {"encoder_hidden_states": emb}

    def predict(self, xt: torch.Tensor, sigma: torch.Tensor, inputs: Dict[str, Any]) -> torch.Tensor:
        return self.modules["transformer"](hidden_states=xt, timestep=sigma * 1000, return_dict=False, **inputs)[0]

    def export_models(self, path: str, models: Dict[str, torch.nn.Module]) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        for name, m in models.items():
            m.save_pretrained(os.path.join(path, name), safe_serialization=True)
        for name, tok in self.tokenizers.items():
            tok.save_pretrained(os.path.join(path, name))
        self.vae.save_pretrained(os.path.join(path, "vae"), safe_serialization=True)
        # a static shift (no resolution-dependent mu for FLUX): the one the model was trained with
        FlowMatchEulerDiscreteScheduler(shift=self.cfg["shift"], use_dynamic_shifting=False).save_config(
            os.path.join(path, "scheduler"))

    # -- the shared loop ----------------------------------------------------------------------------
    def _named_params(self):
        for name, m in self.modules.items():
            for n, p in m.named_parameters():
                yield f"{name}.{n}", p

    def reset_ema(self) -> None:
        """The EMA restarts at the current weights."""
        self.ema = {k: v.detach().clone() for k, v in self._named_params()}

    def _params(self) -> List[torch.nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters()]

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.out, "ckpt.pt")

    def save(self) -> None:
        state = {
            "step": self.step, "cfg": self.cfg, "elapsed": self.elapsed,
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
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
        self.vae.load_state_dict(state["vae"])
        for name, m in self.modules.items():
            m.load_state_dict(state["modules"][name])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.np_rng.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = state["step"], state.get("elapsed", 0.0)
        return True

    def init_from(self, path: str) -> None:
        """Start a fine-tune from an exported weights folder (`export`'s output, e.g. the shipped weights): its
        (EMA) weights become both the trained weights and the EMA, its autoencoder replaces the freshly fitted
        one, and the step counter starts at `schedule_start` so the data stream continues past what the
        folder's model has seen. The optimiser starts fresh (a warm restart)."""
        kw = {"local_files_only": True}
        for name, m in self.modules.items():
            src = type(m).from_pretrained(os.path.join(path, name), **kw)
            m.load_state_dict(src.state_dict())
        src = type(self.vae).from_pretrained(os.path.join(path, "vae"), **kw)
        # a fresh instance from the folder's config, without the `_name_or_path` diffusers records on loading:
        # an export must not carry the local folder it was fine-tuned from
        self.vae = type(self.vae).from_config({k: v for k, v in src.config.items() if k != "_name_or_path"})
        self.vae.load_state_dict(src.state_dict())
        self.vae.to(self.device)
        if self.cfg.get("cross_attn_gain"):
            self.sharpen_cross_attention(self.cfg["cross_attn_gain"])
        self.reset_ema()
        self.step = int(self.cfg.get("schedule_start", 0))

    def _cross_attn_norms(self) -> List[torch.nn.Module]:
        return [n for b in self.modules["transformer"].blocks for n in (b.attn2.norm_q, b.attn2.norm_k)]

    @torch.no_grad()
    def sharpen_cross_attention(self, gain: float) -> None:
        """Multiply the cross-attention's q/k RMSNorm gains by `gain` (its logits by `gain**2`).

        Why: Wan's query and key are RMS-normalised, so with these gains (~0.9) and 32-dim heads no text logit
        can exceed the padding's by more than ~9, while the pipeline's 500 identical zero-padded positions act
        as one key with +log(500) = +6.2. The trained model puts 80-99 % of its cross-attention on the padding
        and reads only the colour word; the gains, which alone set this temperature, had stopped moving.
        Larger gains give the text room to win; they stay fixed so the fine-tune cannot drift back."""
        for norm in self._cross_attn_norms():
            norm.weight.mul_(gain)

    def lr_scale(self) -> float:
        # `schedule_start` > 0 is a warm restart for a fine-tune from a checkpoint: warm-up and cosine count from it
        start = self.cfg.get("schedule_start", 0)
        w, total, step = self.cfg["warmup"], self.cfg["steps"] - start, self.step - start
        if step < w:
            return (step + 1) / w
        frac = (step - w) / max(total - w, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))  # cosine to 10 %

    def frame_sigmas(self, x0: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Noise levels for a batch `x0`: (sigma broadcastable to x0, the timestep input as sigma). One sigma per
        clip gives (B,); with `frame_sigma_prob`, video clips (B, C, F, H, W) drawn for it get one sigma per latent
        frame and the timestep is per token, (B, F * H/ph * W/pw), as Wan takes it."""
        b = x0.shape[0]
        sig = sample_sigmas(b, self.cfg, self.gen).to(self.device)
        one_per_clip = (sig.view(-1, *([1] * (x0.dim() - 1))), sig)
        if x0.dim() != 5 or not self.cfg.get("frame_sigma_prob"):
            return one_per_clip
        mixed = (torch.rand(b, generator=self.gen) < self.cfg["frame_sigma_prob"]).to(self.device)
        if not mixed.any():
            return one_per_clip
        f = x0.shape[2]
        per_frame = sig[:, None].repeat(1, f)
        per_frame[mixed] = sample_sigmas(int(mixed.sum()) * f, self.cfg, self.gen).to(self.device).view(-1, f)
        _, ph, pw = self.modules["transformer"].config.patch_size
        per_token = per_frame.repeat_interleave((x0.shape[3] // ph) * (x0.shape[4] // pw), dim=1)
        return per_frame.view(b, 1, f, 1, 1), per_token

    def train_step(self) -> float:
        cfg = self.cfg
        x0, inputs = self.prepare(self.step)
        s, sig = self.frame_sigmas(x0)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        if cfg.get("direction_pairs"):  # each odd row shares its even neighbour's noise and sigma (see DEFAULTS)
            n = x0.shape[0] // 2
            for t in (s, sig, noise):
                t[1 : 2 * n : 2] = t[0 : 2 * n : 2]
        xt = (1 - s) * x0 + s * noise
        pred = self.predict(xt, sig, inputs)
        # plain MSE on purpose: a loss weight that depends on the clean target (tried: extra weight on the
        # object's latent blocks) moves the optimum off E[x0 | x_t] and drew oversized objects
        # (eval/results/reference/design_runs/foreground_weight/)
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * self.lr_scale()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._params(), cfg["grad_clip"])
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
        path = path or os.path.join(self.out, "export")
        models = {name: deepcopy(m).cpu() for name, m in self.modules.items()}
        if use_ema:
            for name, m in models.items():
                own = {k[len(name) + 1:]: v for k, v in self.ema.items() if k.startswith(name + ".")}
                missing, unexpected = m.load_state_dict(own, strict=False)
                aliases = set(m.state_dict()) - {n for n, _ in m.named_parameters()}  # tied weights
                assert not unexpected and set(missing) <= aliases, (name, missing, unexpected)
        self.export_models(path, models)
        meta = {"step": self.step, "train_seconds": round(self.elapsed, 1), "device": str(self.device),
                "ema": use_ema, "config": self.cfg, "torch_threads": torch.get_num_threads()}
        with open(os.path.join(path, "training.json"), "w") as fh:
            json.dump(meta, fh, indent=2)
        return path
