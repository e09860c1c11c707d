"""How much of the reference transformer's time is attention, per render size (dense, CPU).

    python -m diffsparse.reference.attention_share [--weights DIR] [--threads 1] [--sizes 64x17,128x17,...]

Times full pipeline calls and, inside them, the transformer forwards and the time spent in
`torch.nn.functional.scaled_dot_product_attention` (self- and cross-attention; the self-attention part
is reported separately by sequence length). Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def measure(pipe, size: int, frames: int, steps: int, guidance: float) -> dict:
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention
    acc = {"self": 0.0, "cross": 0.0}
    n_video = {}

    def timed(*args, **kwargs):
        names = ("query", "key", "value")
        q, k = (args[i] if len(args) > i else kwargs[names[i]] for i in range(2))
        if not tt.get("inside"):  # the text encoder's attention does not count
            return orig(*args, **kwargs)
        t = time.perf_counter()
        out = orig(*args, **kwargs)
        dt = time.perf_counter() - t
        acc["self" if q.shape[-2] == k.shape[-2] else "cross"] += dt
        n_video["tokens"] = max(n_video.get("tokens", 0), q.shape[-2])
        return out

    tr = pipe.transformer
    tt = {"s": 0.0}
    def _pre(*_):
        tt["inside"], tt["t0"] = True, time.perf_counter()

    def _post(*_):
        tt["inside"] = False
        tt["s"] += time.perf_counter() - tt["t0"]

    pre = tr.register_forward_pre_hook(_pre)
    post = tr.register_forward_hook(_post)
    F.scaled_dot_product_attention = timed
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt="a red square moving left on a plain background", num_frames=frames, height=size, width=size,
                 num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(0),
                 output_type="np")
        total = time.perf_counter() - t0
    finally:
        F.scaled_dot_product_attention = orig
        pre.remove()
        post.remove()
    return {
        "size": size, "frames": frames, "steps": steps, "guidance": guidance, "video_tokens": n_video.get("tokens"),
        "total_s": round(total, 2), "transformer_s": round(tt["s"], 2),
        "self_attention_s": round(acc["self"], 2), "cross_attention_s": round(acc["cross"], 2),
        "self_attention_share": round(acc["self"] / max(tt["s"], 1e-9), 3),
        "all_attention_share": round((acc["self"] + acc["cross"]) / max(tt["s"], 1e-9), 3),
    }


def main(argv=None) -> None:
    from . import VIDEO_WEIGHTS, load_video_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=VIDEO_WEIGHTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64x17,64x33,128x17,128x33")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_video_pipeline(args.weights)
    pipe.set_progress_bar_config(disable=True)  # many renders: the summary is the output
    for item in args.sizes.split(","):
        size, frames = (int(v) for v in item.split("x"))
        print(json.dumps({**measure(pipe, size, frames, args.steps, args.guidance), "threads": args.threads}),
              flush=True)


if __name__ == "__main__":
    main()
