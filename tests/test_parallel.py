"""Sparse attention under Diffusers Ulysses context parallelism: 2 CPU processes over gloo."""

import socket
import types

import pytest
import torch.multiprocessing as mp

from cp_worker import run_ulysses
from diffsparse.parallel import check_parallel_support

CONFIGS = [
    ("wan", "radial", {"block_size": 4, "decay_factor": 0.5}),
    ("wan", "sliding_window", {"block_size": 4, "tile": (1, 2, 2), "window_tiles": (1, 1, 1)}),
    ("wan", "grat", {"block_size": 4, "group_size": (1, 2, 2), "variant": "block", "radius": 0}),
    ("flux", "sliding_window", {"block_size": 4, "tile": (1, 2, 2), "window_tiles": (1, 1, 1)}),
    ("flux", "grat", {"block_size": 4, "group_size": (1, 2, 2), "parallel_first": True}),
    # HunyuanVideo: diffsparse's CP plan, and the text key-padding mask made rank-local.
    ("hunyuan", "sliding_window", {"block_size": 4, "tile": (1, 2, 2), "window_tiles": (1, 1, 1)}),
    ("hunyuan", "radial", {"block_size": 4, "decay_factor": 0.5}),
    # Dynamic methods: per-head layouts sliced to each rank's heads; AdaSpa ranks heads over all ranks.
    ("wan", "adaspa", {"block_size": 4, "search_steps": (0,), "sparsity": 0.6, "head_adaptive": True,
                       "recall_threshold": 0.3, "calls": 2}),
    ("wan", "paro", {"calibrate": True}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ulysses_equals_single_process(tmp_path):
    mp.spawn(run_ulysses, args=(2, free_port(), CONFIGS, str(tmp_path)), nprocs=2)
    for i, (family, method, _) in enumerate(CONFIGS):
        rows = [(tmp_path / f"rank{r}_{i}.txt").read_text().split() for r in range(2)]
        for err, density, sparse_calls, fallbacks in rows:
            assert float(err) < 1e-5, (family, method, err)
            assert 0 < float(density) < 1, (family, method, density)
            assert int(sparse_calls) > 0 and int(fallbacks) == 0, (family, method, rows)


def test_ring_attention_is_refused_clearly():
    ring = types.SimpleNamespace(context_parallel_config=types.SimpleNamespace(ring_degree=2, ulysses_degree=1))
    with pytest.raises(NotImplementedError, match="ring attention.*ulysses_degree"):
        check_parallel_support(ring)
    tensor_parallel = types.SimpleNamespace(context_parallel_config=None)
    with pytest.raises(NotImplementedError, match="tensor parallelism"):
        check_parallel_support(tensor_parallel)
    check_parallel_support(None)  # no parallelism: fine
