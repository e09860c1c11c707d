"""Worker for the context-parallel tests: runs in each of N gloo processes (CPU)."""

import os

import torch
import torch.distributed as dist


def run_ulysses(rank: int, world: int, port: int, configs: list, result_dir: str) -> None:
    """For each (family, method, options): sparse output without and with Ulysses; writes the max difference."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # CPU-only: let Diffusers build a CPU mesh
    try:
        for i, (family, method, options) in enumerate(configs):
            err, stats = _compare(world, family, method, options)
            with open(os.path.join(result_dir, f"rank{rank}_{i}.txt"), "w") as f:
                f.write(f"{err} {stats['density']} {stats['sparse_calls']} {len(stats['fallbacks'])}\n")
    finally:
        dist.destroy_process_group()


def _compare(world, family, method, options):
    import diffsparse
    from diffusers import ContextParallelConfig
    from diffsparse.tiny import tiny_flux_pipeline, tiny_wan_pipeline

    if family == "wan":
        model = tiny_wan_pipeline(heads=2).transformer
        g = torch.Generator().manual_seed(0)
        args = (torch.randn(1, 16, 4, 6, 10, generator=g), torch.tensor([500]), torch.randn(1, 8, 32, generator=g))
        kwargs = {}
    else:
        model = tiny_flux_pipeline().transformer
        g = torch.Generator().manual_seed(0)
        ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(6.0), torch.arange(8.0), indexing="ij"), -1).reshape(-1, 3)
        args = ()
        kwargs = dict(hidden_states=torch.randn(1, 48, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                      pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                      img_ids=ids, txt_ids=torch.zeros(8, 3))
    options = dict(options)
    parallel_first = options.pop("parallel_first", False)  # which of the two is enabled first
    handle = diffsparse.enable_sparse_attention(model, method=method, dense_steps=0, dense_layers=0, **options)
    single = model(*args, **kwargs, return_dict=False)[0]
    if parallel_first:
        diffsparse.disable_sparse_attention(model)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    if parallel_first:
        handle = diffsparse.enable_sparse_attention(model, method=method, dense_steps=0, dense_layers=0, **options)
    handle.reset_stats()
    parallel = model(*args, **kwargs, return_dict=False)[0]
    return (parallel - single).abs().max().item(), handle.stats()
