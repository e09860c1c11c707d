"""The frontier script's sweep, table and plots (the sweep itself runs in eval/, not in CI)."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("frontier", os.path.join(ROOT, "eval", "frontier.py"))
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


def test_sweep_covers_every_method_with_preset_variants():
    pts = frontier.points()
    methods = {m for m, _ in pts}
    assert methods == {"radial", "sliding_window", "grat", "adaspa", "paro"}
    for m in methods - {"paro"}:
        assert (m, {}) in pts and (m, {"cache": "flashblock"}) in pts and (m, {"quantize": "int8"}) in pts
    assert all(o.get("density") for m, o in pts if m == "paro")
    assert frontier.points(["radial"], variants=False) == [p for p in frontier.POINTS if p[0] == "radial"]


def test_every_point_is_a_valid_configuration():
    import diffsparse
    from diffsparse.tiny import tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    for method, opts in frontier.points():
        if method == "paro":
            continue
        diffsparse.enable_sparse_attention(pipe, method=method, block_size=frontier.BLOCK, **opts)
    diffsparse.disable_sparse_attention(pipe)


def test_table_and_plots_from_results(tmp_path):
    pytest.importorskip("matplotlib")
    results = [
        dict(method=m, options=o, label=frontier.label(m, o), frames=f, density=d, effective_density=None,
             dit_seconds=1.0, speedup=s, psnr=p, ssim=0.9, temporal_flickering=0.97, motion_smoothness=0.98)
        for m, o, f, d, s, p in [("radial", {}, 97, 0.5, 1.2, 30.0), ("radial", {"decay_factor": 1.0}, 97, 0.7, 1.1, 35.0),
                                 ("adaspa", {}, 161, 0.3, 1.5, None)]
    ]
    text = frontier.markdown(results, ["# t"])
    assert "radial decay_factor=1.0" in text and "identical" in text
    paths = frontier.plots(results, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["psnr_vs_density.png", "psnr_vs_speedup.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)
    json.dumps(results)


def test_update_keeps_earlier_points_and_replaces_remeasured_ones(tmp_path, monkeypatch):
    def row(method, opts, frames, psnr):
        return dict(method=method, options=opts, label=frontier.label(method, opts), frames=frames, density=0.5,
                    effective_density=None, dit_seconds=1.0, speedup=1.2, psnr=psnr, ssim=0.9,
                    temporal_flickering=0.97, motion_smoothness=0.98)

    earlier = [row("radial", {}, 97, 30.0), row("paro", {"density": 0.5}, 97, 20.0)]
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    measured = [row("paro", {"density": 0.5}, 97, 24.0), row("adaspa", {"row_wise": True}, 97, 26.0)]

    def fake_run(args, on_length=None, done=frozenset()):
        assert args.update and args.missing
        on_length(list(measured))
        return list(measured)

    monkeypatch.setattr(frontier, "run", fake_run)
    monkeypatch.setattr(frontier, "plots", lambda results, out: [])
    assert frontier.main(["--missing", "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert [(r["label"], r["psnr"]) for r in merged] == [("radial", 30.0), ("adaspa row_wise=True", 26.0),
                                                         ("paro density=0.5", 24.0)]
    assert merged[0]["command"] == "python eval/frontier.py"  # an earlier run's point keeps its origin
    assert merged[1]["command"].endswith("--missing --out " + str(tmp_path))


def test_the_plotted_line_is_each_methods_frontier():
    pts = [(0.3, 25.0), (0.5, 30.0), (0.5, 28.0), (0.7, 29.0), (0.2, 20.0)]
    assert frontier._front(pts, lower_x_is_better=True) == [(0.2, 20.0), (0.3, 25.0), (0.5, 30.0)]
    assert frontier._front([(1.2, 30.0), (1.5, 25.0), (1.1, 29.0)], lower_x_is_better=False) == [(1.2, 30.0), (1.5, 25.0)]
