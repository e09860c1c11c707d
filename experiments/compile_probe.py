"""How torch.compile sees a patched transformer (issue: fullgraph=True with sparse attention on).

Compiles the tiny Wan pipeline's transformer (stock, or with radial enabled) with Inductor and runs
one 3-step pipeline call, then a call at a new resolution; prints whether it ran, the graphs dynamo
captured, the recompiles and the graph breaks with their reasons (counted by torch._dynamo's
counters), and how far the compiled call's frames are from the same call run eagerly.

    python experiments/compile_probe.py            # stock and radial, fullgraph False and True
"""
import subprocess
import sys

if len(sys.argv) == 1:
    for mode in ("stock", "radial"):
        for full in ("partial", "full"):
            subprocess.run([sys.executable, __file__, mode, full], check=False)
    sys.exit(0)

import torch  # noqa: E402

import diffsparse  # noqa: E402

sys.path.insert(0, "tests")
from pipeline_helpers import BUILDERS, CALLS  # noqa: E402

from diffsparse.pipelines import adapter_for_family  # noqa: E402

mode, full = sys.argv[1], sys.argv[2] == "full"
pipe = BUILDERS["wan"]()
if mode != "stock":
    diffsparse.enable_sparse_attention(pipe, method=mode, block_size=4, dense_steps=1, dense_layers=0)
torch._dynamo.config.recompile_limit = 64
from torch._dynamo.utils import counters  # noqa: E402

kw = dict(CALLS["wan"], **adapter_for_family("wan").tiny_inputs(), num_inference_steps=3)
eager = pipe(generator=torch.Generator().manual_seed(0), **kw).frames[0]
pipe.transformer = torch.compile(pipe.transformer, fullgraph=full)
label = f"{mode:<7} fullgraph={str(full):<5}"
try:
    diff = abs(pipe(generator=torch.Generator().manual_seed(0), **kw).frames[0] - eager).max()
    first = dict(counters["stats"])
    pipe(**dict(kw, height=kw["height"] + 16))
    breaks = counters["graph_break"]
    import re

    reasons = sorted({m.group(1) for r in breaks for m in [re.search(r"function `?<function ([\w.]+)", r)] if m})
    print(f"{label} ran; first call: {first.get('unique_graphs', 0)} graphs; after a new resolution: "
          f"{counters['stats'].get('unique_graphs', 0)} graphs; graph breaks {sum(breaks.values())}; "
          f"max |compiled - eager| {diff:.1e}"
          + (f" (torch.compiler.disable'd: {', '.join(reasons)})" if reasons else ""), flush=True)
except Exception as e:  # fullgraph=True fails at the first break
    print(f"{label} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
