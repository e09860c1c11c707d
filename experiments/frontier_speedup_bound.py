"""Speed-up vs the bound 1/((1-f) + f*d_all) per frontier point (eval/results/frontier/speedup_vs_bound.txt).

f = the dense self-attention share of DiT time at that length (`python -m diffsparse.reference.attention_share
--sizes 128x97,128x161 --steps 16 --threads 2`); d_all = the attention work of all calls: dense layers and warm-up
steps count 1 (and AdaSpa's first sparse step, whose search runs full attention), sparse calls their density.

    python experiments/frontier_speedup_bound.py 97=0.756 161=0.843
"""
import json
import os
import sys
share = {int(k): float(v) for k, v in (a.split("=") for a in sys.argv[1:])}
rows = json.load(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "results", "frontier", "results.json")))
PRESET = {"radial": (1, 0.25), "sliding_window": (1, 0.25), "grat": (1, 0.25), "adaspa": (1, 0.25), "paro": (0, 0.2)}
L, S = 4, 16
print(f"{'frames':>6} {'point':<70} {'density':>7} {'d_all':>6} {'bound':>6} {'speed-up':>8} {'ratio':>6}")
for r in rows:
    if "cache" in r["options"]:
        continue
    dl, ds = PRESET[r["method"]]
    dl = r["options"].get("dense_layers", dl)
    ds = r["options"].get("dense_steps", ds)
    nds = ds if isinstance(ds, int) else int(round(ds * S))
    if r["method"] == "adaspa":
        nds += 1  # the first search step runs full attention (its output is that call's)
    sf = (L - dl) / L * (S - nds) / S
    d_all = 1 - sf + sf * r["density"]
    f = share[r["frames"]]
    bound = 1 / ((1 - f) + f * d_all)
    print(f"{r['frames']:>6} {r['label']:<70} {r['density']:>7.3f} {d_all:>6.3f} {bound:>6.2f} {r['speedup']:>8.2f} "
          f"{r['speedup'] / bound:>6.2f}")
