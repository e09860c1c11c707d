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
    from diffsparse.tiny import example_inputs, tiny_flux_pipeline, tiny_hunyuan_pipeline, tiny_wan_pipeline

    options = dict(options)
    calls = options.pop("calls", 1)  # dynamic methods: the first call searches, later ones reuse
    if options.pop("calibrate", False):  # PARO: calibrate on the pipeline whose transformer is tested
        pipe = tiny_wan_pipeline(heads=2)
        kw = dict(example_inputs("wan", seed=1), height=48, width=80, num_frames=13, num_inference_steps=2,
                  output_type="np", generator=torch.Generator().manual_seed(1))
        options["plan"] = diffsparse.calibrate(pipe, method="paro", density=0.5, block_size=4, **kw)
    if family == "hunyuan":
        model = tiny_hunyuan_pipeline().transformer
        g = torch.Generator().manual_seed(0)
        text_mask = torch.ones(1, 8, dtype=torch.long)
        text_mask[:, 5:] = 0  # three padded text tokens, all in rank 1's text chunk
        args = ()
        kwargs = dict(hidden_states=torch.randn(1, 4, 3, 6, 8, generator=g), timestep=torch.tensor([500]),
                      encoder_hidden_states=torch.randn(1, 8, 16, generator=g), encoder_attention_mask=text_mask,
                      pooled_projections=torch.randn(1, 8, generator=g), guidance=torch.tensor([3500.0]))
    elif family == "wan":
        model = pipe.transformer if "plan" in options else tiny_wan_pipeline(heads=2).transformer
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
    parallel_first = options.pop("parallel_first", False)  # which of the two is enabled first
    handle = diffsparse.enable_sparse_attention(model, method=method, dense_steps=0, dense_layers=0, **options)
    for i in range(calls):
        single = model(*_at_step(args, i), **kwargs, return_dict=False)[0]
    if parallel_first:
        diffsparse.disable_sparse_attention(model)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                             cp_plan=diffsparse.context_parallel_plan(model))
    if parallel_first:
        handle = diffsparse.enable_sparse_attention(model, method=method, dense_steps=0, dense_layers=0, **options)
    handle.reset_stats()
    for i in range(calls):
        parallel = model(*_at_step(args, i), **kwargs, return_dict=False)[0]
    return (parallel - single).abs().max().item(), handle.stats()


def _at_step(args, i):
    """Wan's positional (latents, timestep, text) with the timestep of denoising step i: a new
    timestep is a new step (the same one again would be a second CFG branch of the same step)."""
    return args if i == 0 else (args[0], args[1] - 100 * i) + tuple(args[2:])
