"""PARO (calibrated): per-head token reordering + static block masks from a calibration file.

At run time each head's Q/K/V are permuted into the axis order chosen for it at calibration
(FHW, FWH, HWF, HFW, WHF or WFH), block-sparse attention runs with the mask of the current
timestep bucket, and the output is permuted back (`quantize="int8"`, shared by every method, runs
QK^T in INT8). Make the
plan with `diffsparse.calibrate(pipe, method="paro", ...)` (see calibration.py). The plan fixes
the block size and refuses another model or another latent grid with a clear error.
PAROAttention, Zhao et al. 2025.
"""

from __future__ import annotations

import os

from ..dynamic import DynamicContext, DynamicLayout, DynamicMethod
from .base import SparseMethod
from .paro_plan import ParoPlan, load_plan


def plan_option(name, value):
    if isinstance(value, ParoPlan):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_plan(value)
    raise ValueError(f"option {name!r} must be a PARO plan (from diffsparse.calibrate) or its file path, got {value!r}")


class Paro(DynamicMethod, SparseMethod):
    name = "paro"
    options = {"plan": plan_option}
    # A fifth of the steps dense: calibrated masks miss the layout of the first, noisiest steps (on the reference
    # model +5 dB at density 0.3 and 0.5 against no warm-up; eval/results/frontier/).
    presets = {family: {"dense_steps": 0.2, "dense_layers": 0} for family in ("wan", "hunyuan", "flux")}

    def check(self):
        if self.plan is None:
            raise ValueError(
                "method 'paro' needs plan=...: make one with plan = diffsparse.calibrate(pipe, method='paro', "
                "**pipe_call_kwargs), then pass plan=plan or the file of plan.save(path)"
            )
        if self.plan.family != self.family:
            raise ValueError(f"this PARO plan was calibrated for a {self.plan.family} model, not {self.family}")

    def forced_settings(self):
        return {"block_size": self.plan.block_size}

    def check_model(self, family, transformers):
        self.plan.check_model(family, transformers)

    def check_call(self, grid):
        if grid is not None:
            self.plan.check_grid(grid)

    def dynamic_layout(self, ctx: DynamicContext) -> DynamicLayout:
        plan = self.plan
        if ctx.model_heads != plan.heads:
            raise ValueError(f"PARO plan has {plan.heads} heads per layer but this attention layer has {ctx.model_heads}")
        bucket = plan.bucket(ctx.step, ctx.num_steps)
        shard = None if ctx.shard is None else ctx.shard.start  # under Ulysses: this rank's heads only
        return DynamicLayout(
            mask=ctx.local_heads(plan.mask(bucket, ctx.layer)), order=ctx.local_heads(plan.head_orders(ctx.layer)),
            key=("paro", id(plan), bucket, ctx.layer, shard), persistent=True,
        )

    def video_layout(self, grid, block_q, block_k):
        raise ValueError(
            "PARO's layout differs per layer, head and timestep bucket: inspect plan.order_names(layer) and "
            "plan.mask(bucket, layer) of the calibration plan instead"
        )

    @property
    def key(self):
        return (self.name, id(self.plan))

    def describe(self):
        return {"method": self.name, "plan": self.plan.summary()}
