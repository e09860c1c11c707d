"""Tiny random-weight pipelines built from configs, fully offline (no hub, no downloads).

Used by the tests, the benchmarks and the block-diffusion demo. Each family's builder and example
inputs live on its adapter (`pipelines/<family>.py`: `tiny_pipeline`, `tiny_inputs`); these are
the names the rest of the code calls. Text encoders are left out: pass `prompt_embeds`
(see `example_inputs`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .pipelines import adapter_for_family
from .pipelines.flux import tiny_pipeline as tiny_flux_pipeline
from .pipelines.hunyuan import tiny_pipeline as tiny_hunyuan_pipeline
from .pipelines.wan import tiny_pipeline as tiny_wan_pipeline


def tiny_pipeline(family: str, **kwargs: Any):
    """The tiny pipeline of a model family (`adapter.tiny_pipeline`)."""
    return adapter_for_family(family).tiny_pipeline(**kwargs)


def example_inputs(family: str, seed: int = 0, text_len: int = 8, valid_text: Optional[int] = None) -> Dict[str, Any]:
    """Prompt embeddings for the tiny pipelines (CFG for Wan; Hunyuan's padding mask keeps `valid_text`)."""
    return adapter_for_family(family).tiny_inputs(seed=seed, text_len=text_len, valid_text=valid_text)


__all__ = ["example_inputs", "tiny_flux_pipeline", "tiny_hunyuan_pipeline", "tiny_pipeline", "tiny_wan_pipeline"]
