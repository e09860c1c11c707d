"""Why a reference video model does or does not follow a caption word: two probes of its denoiser.

- `text_attention_share`: how much of each cross-attention's mass lands on the prompt's tokens rather
  than on `WanPipeline`'s zero padding (all 500-odd padded positions share one key, an attention sink).
- `direction_rendering`: what the sampler draws for each direction word: mean displacement (dx, dy) and
  start position of the rendered object, and the checker's reading. Tells a model that reads a word's axis
  but not its sign ("moving down" drawn moving up) from one that reads neither.
- `direction_sensitivity`: how far the denoiser's clean-video estimate moves along the caption's
  direction ("moving left/right/up/down"), with the true caption and with the opposite direction. A
  model that reads its direction words moves further with the true one; one that does not moves the
  same either way (it reads the motion off the noisy input only).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from . import checker
from . import data as D
from .text import encode



def _clips(pipe, specs: List[D.Spec], seed: int) -> torch.Tensor:
    """Normalised latents `(B, C, F', H', W')` of ground-truth clips of `specs` (17 frames, 64x64)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([D.render_video(s, int(rng.integers(2**31))) for s in specs])).float()
    return pipe.vae.normalize(pipe.vae.encode(x.movedim(-1, 1) / 127.5 - 1.0).latent_dist.mode())


@torch.no_grad()
def text_attention_share(pipe, sigmas=(0.95, 0.6), n: int = 8, seed: int = 0) -> Dict[str, List[float]]:
    """Per sigma, per transformer block: the mean share (over heads, video queries and `n` training clips)
    of cross-attention mass on the prompt's own tokens, the rest being on the padding."""
    from diffusers.models.transformers.transformer_wan import _get_qkv_projections

    rng = np.random.default_rng(seed)
    pool = D.train_specs()
    specs = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    x0 = _clips(pipe, specs, seed)
    tok = pipe.tokenizer([s.caption for s in specs], padding="max_length", max_length=512, return_tensors="pt")
    text = tok.attention_mask.bool()  # (B, 512)
    emb = encode(pipe.tokenizer, pipe.text_encoder, [s.caption for s in specs], 512)
    shares: List[float] = []

    def probe(attn, args):
        q, k, _ = _get_qkv_projections(attn, args[0], args[1])
        q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
        p = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        shares.append(float((p * text[:, None, None, :]).sum(-1).mean()))

    hooks = [b.attn2.register_forward_pre_hook(probe) for b in pipe.transformer.blocks]
    out = {}
    try:
        for i, sig in enumerate(sigmas):
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
            shares.clear()
            pipe.transformer(hidden_states=(1 - sig) * x0 + sig * noise, timestep=torch.full((n,), sig * 1000.0),
                             encoder_hidden_states=emb, return_dict=False)
            out[f"sigma_{sig}"] = [round(s, 4) for s in shares]
    finally:
        for h in hooks:
            h.remove()
    return out


def _centroids(video: np.ndarray) -> List[np.ndarray]:
    """The shape's mean (x, y) in pixels in each frame where the checker finds at least 5 shape pixels."""
    return [np.argwhere(m)[:, ::-1].mean(0) for m in map(checker.shape_mask, video) if m.sum() >= 5]


def _displacement(video: np.ndarray) -> np.ndarray:
    """(dx, dy) in pixels between the shape's mean position in the first and last quarter of the frames."""
    pts = _centroids(video)
    if len(pts) < 4:
        return np.zeros(2)
    k = max(1, len(pts) // 4)
    return np.mean(pts[-k:], 0) - np.mean(pts[:k], 0)


@torch.no_grad()
def direction_sensitivity(pipe, sigmas=(0.98, 0.95, 0.9, 0.8), seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Per sigma: the mean displacement (fraction of the frame) of the denoiser's one-step clean estimate
    along each clip's true direction, given the true caption and given the opposite direction's caption,
    over 24 plain-background translation clips (3 colours x 2 shapes x 4 directions)."""
    specs = [D.Spec(c, s, m, "plain") for c in ("red", "blue", "yellow") for s in ("square", "circle")
             for m in D.DIRECTIONS]
    x0 = _clips(pipe, specs, seed)
    embs = {name: encode(pipe.tokenizer, pipe.text_encoder,
                         [D.Spec(s.color, s.shape, D.OPPOSITE_DIRECTION[s.motion] if flip else s.motion, "plain").caption
                          for s in specs], 512)
            for name, flip in (("true", False), ("opposite", True))}
    out = {}
    for i, sig in enumerate(sigmas):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
        xt = (1 - sig) * x0 + sig * noise
        row = {}
        for name, emb in embs.items():
            v = pipe.transformer(hidden_states=xt, timestep=torch.full((len(specs),), sig * 1000.0),
                                 encoder_hidden_states=emb, return_dict=False)[0]
            video = pipe.vae.decode(pipe.vae.denormalize(xt - sig * v)).sample
            frames = ((video.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
            row[name] = round(float(np.mean([_displacement(f) @ np.array(D.DIRECTIONS[s.motion], float) / f.shape[2]
                                             for s, f in zip(specs, frames)])), 4)
        out[f"sigma_{sig}"] = row
    return out


def _start(video: np.ndarray) -> np.ndarray:
    """Mean (x, y) of the shape over the first three frames, as fractions of the frame; NaN if not found."""
    pts = _centroids(video[:3])
    return np.mean(pts, 0) / np.array(video.shape[2:0:-1], float) if pts else np.full(2, np.nan)


@torch.no_grad()
def direction_rendering(pipe, n: int = 8, steps: int = 20, guidance: float = 4.0, size: int = 64,
                        seed: int = 500) -> Dict[str, Dict[str, object]]:
    """Per direction word: render `n` plain-background clips ("a <colour> <shape> moving <word>"; the same seeds
    for every word) and report the object's mean displacement (dx, dy) and mean start (x, y), both as fractions
    of the frame (y down), and how often the checker reads each motion. A model that reads the word's sign moves
    left for "left" and right for "right"; one that reads only the axis moves the same way for both."""
    combos = [(c, s) for c in ("red", "blue", "green", "yellow", "white") for s in D.SHAPES][:n]
    out: Dict[str, Dict[str, object]] = {}
    for word in D.DIRECTIONS:
        disp, start, reads = [], [], []
        for i, (c, s) in enumerate(combos):
            v = pipe(prompt=D.Spec(c, s, word, "plain").caption, num_frames=17, height=size, width=size,
                     num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                     generator=torch.Generator().manual_seed(seed + i)).frames[0]
            v = (np.clip(v, 0, 1) * 255).round().astype(np.uint8)
            disp.append(_displacement(v) / np.array([v.shape[2], v.shape[1]], float))
            start.append(_start(v))
            reads.append(str(checker.predict_motion(v)))
        start_mean = np.nanmean(start, 0) if not np.isnan(start).all() else np.full(2, np.nan)
        out[word] = {"displacement_xy": [round(float(x), 3) for x in np.mean(disp, 0)],
                     "start_xy": [round(float(x), 3) for x in start_mean],
                     "checker": {r: reads.count(r) for r in sorted(set(reads))}}
    return out
