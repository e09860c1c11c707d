"""Model adapters, chosen from the transformer's class. A new model is one adapter file plus a line here."""

from __future__ import annotations

from typing import List, Type

import torch

from .base import AttentionHandle, ModelAdapter
from .flux import FluxAdapter
from .hunyuan import HunyuanVideoAdapter
from .wan import WanAdapter

ADAPTERS: List[Type[ModelAdapter]] = [WanAdapter, HunyuanVideoAdapter, FluxAdapter]


def supported_models() -> List[str]:
    return [a.transformer_class.__name__ for a in ADAPTERS]


def adapter_for_family(family: str) -> Type[ModelAdapter]:
    """The adapter of a model family name ("wan", "hunyuan", "flux")."""
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise ValueError(f"unknown model family {family!r}; choose one of {sorted(a.family for a in ADAPTERS)}")


def find_adapter(transformer: torch.nn.Module) -> Type[ModelAdapter]:
    for adapter in ADAPTERS:
        if adapter.matches(transformer):
            return adapter
    raise TypeError(
        f"unsupported model {type(transformer).__name__}; diffsparse supports pipelines built on {supported_models()}"
    )


__all__ = ["ADAPTERS", "AttentionHandle", "ModelAdapter", "adapter_for_family", "find_adapter", "supported_models"]
