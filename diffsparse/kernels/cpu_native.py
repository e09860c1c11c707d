"""Our C++ CPU forward (`cpu_native.cpp`): built on this machine at its first use, held by its owner.

PyTorch's CPU flash kernel, which the PyTorch path (`torch_sparse.py`) calls on gathered keys, runs
128-query blocks at 0.76-0.82 of its rate on long query runs; compiled FlexAttention was 1.08-1.33x
faster than that path on the methods' layouts. This kernel walks each row's kept key blocks in place
with an online softmax, a run of consecutive kept blocks as one operand (BLAS sgemm, the `sgemm_`
libtorch_cpu exports), and runs level with or ahead of compiled Flex there, with the LSE (which Flex
on CPU lacks) and without Flex's compile per shape. Inference only (no backward), float32, last
dimension contiguous.

`NativeCpuKernel` compiles the source with the system C++ compiler (`$CXX`, else `c++`) into a
shared library cached on disk under `$DIFFSPARSE_CACHE_DIR` (default `~/.cache/diffsparse`), keyed
by the source, flags and torch version, then loads it with ctypes (no Python headers, no ninja).
The first build takes ~10-20 s; a failure (no compiler, a BLAS without `sgemm_`) is remembered in
`error` and its owner stays on the PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from .index import BlockIndex

SOURCE = Path(__file__).with_name("cpu_native.cpp")
_ISA = {  # what PyTorch's vectorized headers need to know to emit AVX code (as Inductor passes them)
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFSPARSE_CACHE_DIR") or Path.home() / ".cache" / "diffsparse")


def build_library() -> Path:
    """Compile `cpu_native.cpp` (once per source, flags and torch version) and return the library path."""
    from torch.utils.cpp_extension import include_paths, library_paths

    cxx = os.environ.get("CXX", "c++")
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp",
             *_ISA.get(torch.backends.cpu.get_cpu_capability(), []),
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    libs = library_paths()
    source = SOURCE.read_text()
    key = hashlib.sha256("\n".join([source, cxx, *flags, torch.__version__, *libs]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"cpu_native_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        cmd = [cxx, str(SOURCE), "-o", str(target), *flags, *(f"-I{p}" for p in include_paths()),
               *(f"-L{p}" for p in libs), *(f"-Wl,-rpath,{p}" for p in libs), "-ltorch_cpu", "-lc10"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed building {SOURCE.name}: {done.stderr.strip()[-400:]}")
        os.replace(target, out)  # atomic: concurrent builders each publish a whole file
    return out


class NativeCpuKernel:
    """The built kernel, held by its owner (the handle's executor; a benchmark) with what it learnt:
    `error` is set when building or loading failed on this machine, and then it is not tried again."""

    def __init__(self) -> None:
        self._fn = None  # built and loaded at the first call
        self.error: Optional[str] = None

    def _load(self):
        if self._fn is None:
            lib = ctypes.CDLL(str(build_library()))
            fn = lib.diffsparse_block_sparse_forward
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 20 + [ctypes.c_float, ctypes.c_int]
            self._fn = fn
        return self._fn

    def usable(self) -> bool:
        return self.error is None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex,
                 scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """q `(B, H, Sq, D)`, k `(B, H, Sk, D)`, v `(B, H, Sk, Dv)` float32 -> out `(B, H, Sq, Dv)`, lse `(B, H, Sq)`."""
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        B, H, Sq, D = q.shape
        Sk, Dv = k.shape[2], v.shape[-1]
        counts = index.counts.to(torch.int32).contiguous()
        indices = index.indices.to(torch.int32).contiguous()
        out = q.new_empty(B, H, Sq, Dv)
        lse = q.new_empty(B, H, Sq)
        strides = [s for x in (q, k, v) for s in x.stride()[:3]]
        rc = self._load()(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
                          counts.data_ptr(), indices.data_ptr(), B, H, Sq, Sk, D, Dv, *strides,
                          counts.shape[0], counts.shape[1], indices.shape[-1], index.block_q, index.block_k,
                          scale, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"cpu_native kernel returned {rc}")
        return out, lse
