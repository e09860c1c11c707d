"""AdaSpa (dynamic, online): per head, the key blocks of largest exact attention mass.

After the dense warm-up (`dense_steps`), at each search step the method measures the attention
mass of every video block (sum of its softmax weights, per query row) and keeps, per head, the
blocks of largest mass until the head's target sparsity:
- first search: one full attention pass that also returns each row's log-sum-exp (its output is
  this call's output), then one pass of block sums exp(q.k - LSE);
- later searches: the LSE cached at the first search is reused, so one pass (LSE-cached search);
  `renormalize=True` (ours, the preset; False is the paper's rule) rescales each query block's masses
  to sum to one at those searches: a row whose LSE drifted since the cached one has all its masses off by one factor,
  which skews the global ranking across rows (row-wise ranking is immune), and the rescaling cancels
  it (exactly when the block's tokens drifted alike);
- between searches the pattern is reused; a sparse step with no pattern yet searches.
Global selection keeps round((1 - s) * nq * nk) blocks per head, always including each query
row's best block; `row_wise` keeps the same number round((1 - s) * nk) in every query row.
`head_adaptive` (AdaSpa's rule): with n heads whose recall at sparsity s exceeds
`recall_threshold`, the n best heads get sparsity (1+s)/2 and the n worst (3s-1)/2.
Text tokens keep dense rows and columns (text sink), so the achieved density of a call with
text is above 1 - s. Search steps are fractions of the pipeline's steps (default {0.2, 0.6},
i.e. steps 10 and 30 of 50) or step indices. AdaSpa, Xia et al. 2025.
"""

from __future__ import annotations

import warnings

import torch

from ..blockmass import block_mass, recall, select_blocks, sparsity_from_recall
from ..dynamic import DynamicContext, DynamicLayout, DynamicMethod
from .base import SparseMethod, boolean


def fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"option {name!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def search_steps(name, value):
    """A tuple of step fractions in [0, 1) or of step indices >= 0 (not mixed)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"option {name!r} must be a non-empty tuple of step fractions or step indices, got {value!r}")
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    fracs = all(isinstance(v, float) and 0 <= v < 1 for v in value)
    if not (ints or fracs):
        raise ValueError(
            f"option {name!r} must hold either step fractions in [0, 1) (floats) or step indices >= 0 (ints), "
            f"got {value!r}"
        )
    return tuple(sorted(set(value)))


# The search schedule and budgets are the paper's (sparsity 0.8, searches at 20 % and 60 % of the steps, global
# head-adaptive budgets); the warm-up is the static presets' (a quarter of the steps, the first layer dense
# except on HunyuanVideo): +2.2 dB at the same density on the reference model; and the later, LSE-cached
# search renormalizes each query block's masses (ours; renormalize=False is the paper's rule): +2.8 dB at
# 161 frames, density 0.267, same cost (eval/results/frontier/).
_PRESET = {
    "sparsity": 0.8, "search_steps": (0.2, 0.6), "head_adaptive": True, "row_wise": False, "recall_threshold": 0.8,
    "renormalize": True, "block_size": 64, "dense_steps": 0.25, "dense_layers": 1,
}


class AdaSpa(DynamicMethod, SparseMethod):
    name = "adaspa"
    options = {
        "sparsity": fraction, "search_steps": search_steps, "head_adaptive": boolean, "row_wise": boolean,
        "recall_threshold": fraction, "renormalize": boolean,
    }
    presets = {"wan": dict(_PRESET), "hunyuan": dict(_PRESET, dense_layers=0), "flux": dict(_PRESET)}

    def check(self):
        for key in self.options:
            self.values.setdefault(key, _PRESET[key])

    def search_step_set(self, num_steps):
        spec = self.search_steps
        if isinstance(spec[0], int):
            return set(spec)
        if not num_steps:
            warnings.warn(
                "adaspa: search_steps are fractions of the pipeline's steps, but a bare transformer has no step "
                "count; searching only at the first sparse step (pass search_steps as step indices)",
                stacklevel=2,
            )
            return set()
        return {int(round(f * num_steps)) for f in spec}

    def dynamic_layout(self, ctx: DynamicContext) -> DynamicLayout:
        c = ctx.cache
        if "mask" in c and (ctx.step not in self.search_step_set(ctx.num_steps) or c["step"] == ctx.step):
            return DynamicLayout(mask=c["mask"], key=c["key"])
        q, k, v = ctx.qkv()
        nv = ctx.video_len
        output, lse = None, c.get("lse")
        if lse is None or lse.shape != q.shape[:3]:
            output, lse = ctx.full_attention()  # first search: full pass with LSE (this call's output)
            lse = c["lse"] = lse.detach()
        with torch.no_grad():
            mass = block_mass(q[:, :, :nv], k[:, :, :nv], lse[:, :, :nv], ctx.block_q, ctx.block_k)[0].cpu()
        if output is None and self.renormalize:  # LSE-cached search: cancel each row's stale scale
            mass = mass / mass.sum(-1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)
        if self.head_adaptive:
            # Ranked over all of the layer's heads: under Ulysses the recalls of every rank are gathered.
            rec = ctx.gather_heads(recall(mass, select_blocks(mass, 1.0 - self.sparsity, self.row_wise)))
            sparsity = ctx.local_heads(sparsity_from_recall(rec, self.sparsity, self.recall_threshold))
        else:
            sparsity = torch.full((mass.shape[0],), self.sparsity, dtype=torch.float64)
        keep = select_blocks(mass, 1.0 - sparsity, self.row_wise)
        c.update(mask=keep, key=("adaspa", ctx.forward_id), step=ctx.step)
        info = {
            "searched": True, "search_step": ctx.step, "lse_cached": output is None,
            "recall": [round(float(x), 6) for x in recall(mass, keep)],
            "sparsity": [round(float(x), 6) for x in sparsity],
        }
        return DynamicLayout(mask=keep, key=c["key"], output=output, info=info)

    def stats_extra(self, info):
        return {k: info[k] for k in ("search_step", "recall", "sparsity", "lse_cached") if k in info}
