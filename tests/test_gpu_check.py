"""The prepared GPU check must still run end to end for the next lent GPU: its dry run drives every
stage (kernel check, attention benchmark, Wan benchmark, launch sweep) on tiny shapes, with the
kernels in Triton's CPU interpreter, and every stage must finish ok."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_stage(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), TRITON_INTERPRET="1")
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "eval", "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "gpu_check_dry" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:]
    for stage in ("kernel_check", "bench_attention", "bench_wan1.3b", "kernel_tune"):
        line = next(row for row in summary.splitlines() if row.startswith(stage))
        assert " ok " in line, line
    assert "kernel check: 32/32 ok" in summary
