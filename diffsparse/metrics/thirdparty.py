"""VBench's own model code, imported from the optional `vbench` and `pyiqa` packages (never vendored).

    pip install 'diffsparse[vbench]'                      # scipy, pyyaml: what the imported modules need
    pip install --no-deps vbench==0.1.5 pyiqa==0.1.16     # their pinned dependencies conflict with ours

- RAFT (dynamic degree, static filter): `vbench.third_party.RAFT.core.raft.RAFT` and its `InputPadder`.
- AMT-S (motion smoothness): `vbench.third_party.amt.networks.AMT-S.Model`, built from the `AMT-S.yaml` that
  the wheel ships, plus the wheel's `img2tensor` / `tensor2img` / `check_dim_and_resize` / `InputPadder`.
- MUSIQ (imaging quality): `pyiqa.archs.musiq_arch.MUSIQ` (pyiqa imports torchvision, which must match the
  installed torch build).

Both packages' top-level `__init__` pull in much more than these modules need (vbench: decord, CLIP, detectron
helpers, and a `logging.basicConfig` call; pyiqa: its whole metric zoo), so unless the package is already
imported we load the submodules under a bare parent package that skips that `__init__`, then take the bare
parent out of `sys.modules` again. Every function raises ImportError with a one-line reason when the package
or one of the modules' own imports is missing or fails to load.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, Tuple

VBENCH_VERSION = "0.1.5"
INSTALL_HINT = ("pip install 'diffsparse[vbench]' && pip install --no-deps vbench==0.1.5 pyiqa==0.1.16")


def import_submodule(name: str) -> types.ModuleType:
    """Import `name` (e.g. "vbench.third_party.RAFT.core.raft") without running its top package's `__init__`."""
    top = name.split(".")[0]
    if top in sys.modules:  # the real package is already imported: use it as is
        return importlib.import_module(name)
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the optional package {top!r} is not installed ({INSTALL_HINT})")
    bare = types.ModuleType(top)
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__package__ = top
    sys.modules[top] = bare
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a dependency that fails while loading (a torchvision of another torch)
        missing = getattr(e, "name", None) if isinstance(e, ImportError) else None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if missing == "torchvision" or "torchvision" in first:
            why = f"it imports torchvision, which is missing or does not load ({first}); install a build matching torch"
        elif missing:
            why = f"it imports {missing!r}, which is not installed ({INSTALL_HINT})"
        else:
            why = f"{type(e).__name__}: {first} ({INSTALL_HINT})"
        raise ImportError(f"cannot import {name}: {why}") from e
    finally:
        if sys.modules.get(top) is bare:
            del sys.modules[top]  # submodules stay cached; a later `import top` runs the real __init__


def _check_vbench_version() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("vbench")
    except PackageNotFoundError:
        raise ImportError(f"the optional package 'vbench' is not installed ({INSTALL_HINT})") from None
    if found != VBENCH_VERSION:
        raise ImportError(f"vbench {found} is installed; the exact paths are checked against vbench {VBENCH_VERSION}")


def raft() -> Tuple[Any, Any]:
    """(RAFT class, InputPadder class) from the vbench wheel."""
    _check_vbench_version()
    mod = import_submodule("vbench.third_party.RAFT.core.raft")
    utils = import_submodule("vbench.third_party.RAFT.core.utils_core.utils")
    return mod.RAFT, utils.InputPadder


def amt() -> Tuple[Any, types.ModuleType, Dict[str, Any]]:
    """(AMT-S model class, the wheel's amt `utils.utils` module, the network params of its AMT-S.yaml)."""
    import yaml

    _check_vbench_version()
    utils = import_submodule("vbench.third_party.amt.utils.utils")
    cfg_path = Path(utils.__file__).resolve().parents[1] / "cfgs" / "AMT-S.yaml"
    network = yaml.safe_load(cfg_path.read_text())["network"]
    module, cls = network["name"].rsplit(".", 1)  # "networks.AMT-S", "Model"
    model = getattr(import_submodule(f"vbench.third_party.amt.{module}"), cls)
    return model, utils, dict(network.get("params") or {})


def musiq() -> Tuple[Any, Any]:
    """(MUSIQ class, pyiqa's clean_state_dict) from pyiqa."""
    mod = import_submodule("pyiqa.archs.musiq_arch")
    util = import_submodule("pyiqa.archs.arch_util")
    return mod.MUSIQ, util.clean_state_dict
