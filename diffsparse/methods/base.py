"""What a sparse method is: validated options, per-model presets, and a video block layout.

A method turns (grid, block size) into an optional token order and a bool block mask over the
ordered video tokens. It knows nothing about Diffusers, text tokens or kernels: the plan layer
adds the text sink and the kernels execute the mask.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

import torch

from ..geometry import Grid

Validator = Callable[[str, Any], Any]


# ---- option validators: each returns the normalised value or raises naming the option ----

def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"option {name!r} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option {name!r} must be an int >= 0, got {value!r}")
    return value


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"option {name!r} must be a positive number, got {value!r}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be True or False, got {value!r}")
    return value


def choice(*allowed: str) -> Validator:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"option {name!r} must be one of {allowed}, got {value!r}")
        return value

    return check


def extent(name: str, value: Any) -> Tuple[int, int, int]:
    """A (t, h, w) size in tokens or tiles; an (h, w) pair means t = 1 (images)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise ValueError(f"option {name!r} must be a (t, h, w) or (h, w) tuple of positive ints, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise ValueError(f"option {name!r} must contain positive ints, got {value!r}")
    return tuple(value) if len(value) == 3 else (1, value[0], value[1])  # type: ignore[return-value]


def optional(validator: Validator) -> Validator:
    def check(name: str, value: Any) -> Any:
        return None if value is None else validator(name, value)

    return check


class SparseMethod:
    """Base class. Subclasses set `name`, `options`, `presets` and implement `video_layout`."""

    name: ClassVar[str]
    #: option name -> validator; the only options this method accepts
    options: ClassVar[Dict[str, Validator]] = {}
    #: model family ("wan", "hunyuan", "flux") -> defaults for options and shared settings
    presets: ClassVar[Dict[str, Dict[str, Any]]] = {}
    #: families whose geometry the method cannot use, with the reason
    unsupported: ClassVar[Dict[str, str]] = {}

    def __init__(self, family: str, preset: Optional[Dict[str, Any]] = None, **opts: Any) -> None:
        """`preset`: the family adapter's preset for this method (`ModelAdapter.presets`), used when
        this class has none for the family: a new model family brings its own presets for the
        existing methods, a new method its own for the existing families."""
        if family in self.unsupported:
            raise ValueError(f"method {self.name!r} does not support {family} models: {self.unsupported[family]}")
        self.family = family
        self.preset = self.preset_for(family, preset)
        values = {k: v for k, v in self.preset.items() if k in self.options}
        for key, val in opts.items():
            if key not in self.options:
                raise TypeError(
                    f"unknown option {key!r} for method {self.name!r}; its options are {sorted(self.options)}"
                )
            values[key] = val
        self.values = {k: self.options[k](k, v) for k, v in values.items()}
        self.check()

    @classmethod
    def preset_for(cls, family: str, adapter_preset: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The method options and shared settings `family` runs with by default: this class's preset for
        the family, else the family adapter's for this method; a method with presets but none from
        either place refuses the family (a new family must choose its defaults, not inherit none)."""
        if family in cls.presets:
            return dict(cls.presets[family])
        if adapter_preset is not None:
            return dict(adapter_preset)
        if cls.presets:
            raise ValueError(f"method {cls.name!r} has no preset for {family!r} models; it has presets for "
                             f"{sorted(cls.presets)} (give one in the method's `presets` or the adapter's `presets`)")
        return {}

    def check(self) -> None:
        """Cross-option validation; raise ValueError naming the options."""

    def __getattr__(self, item: str) -> Any:
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        if item in self.options:
            return None
        raise AttributeError(item)

    @property
    def key(self) -> Tuple:
        """Hashable identity of the layout this method produces (cache key part)."""
        return (self.name,) + tuple(sorted((k, v) for k, v in self.values.items()))

    def video_layout(self, grid: Grid, block_q: int, block_k: int) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Return (order, mask) for the video tokens of `grid`.

        order: LongTensor `(N,)` internal position -> raster token index, or None for raster order.
        mask: bool `(Hm, ceil(N/block_q), ceil(N/block_k))`, Hm = 1 for head-independent layouts.
        """
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"method": self.name, **self.values}
