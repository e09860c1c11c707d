"""Sparse methods and their registry. A new method is one file plus one line here."""

from __future__ import annotations

from typing import Dict, List, Type

from .adaspa import AdaSpa
from .base import SparseMethod
from .dense import Dense
from .grat import Grat
from .paro import Paro
from .radial import Radial
from .sliding_window import SlidingWindow

#: name -> method class (a constant table; methods hold no state of their own)
METHODS: Dict[str, Type[SparseMethod]] = {cls.name: cls for cls in (Dense, Radial, SlidingWindow, Grat, AdaSpa, Paro)}


def list_methods() -> List[str]:
    """Names accepted by `enable_sparse_attention(..., method=...)`."""
    return list(METHODS)


def get_method(name: str) -> Type[SparseMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list_methods()}")
    return METHODS[name]


__all__ = ["METHODS", "SparseMethod", "get_method", "list_methods"]
