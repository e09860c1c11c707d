"""Benchmarks that ship with the package, so `diffsparse bench` runs from an installed wheel too:
`attention` (ours vs compiled FlexAttention vs SDPA on the methods' layouts) and `transformer` (a whole
Wan denoiser step, stock vs each method). `eval/bench_attention.py` / `eval/bench_transformer.py` are
the same programs for a source checkout."""
