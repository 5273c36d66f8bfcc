"""tools/gpu-check, the one prepared check for a CUDA machine, runs here on the CPU (issue 32): its
help, and all of its steps at toy size, so that it works unchanged the first time a GPU is at hand."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu-check"
STEPS = ("install", "env", "tests", "trials", "estimate", "smoke", "perf")


def test_help_names_every_step_and_works_without_a_gpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for step in STEPS:
        assert step in proc.stdout
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.slow(reason="every step of tools/gpu-check at toy size on the CPU: ~3 min on 2 idle cores")
@pytest.mark.timeout(2400)
def test_every_step_runs_on_the_cpu_at_toy_size(tmp_path):
    data = os.environ.get("BENCH_DATA_ROOT")
    if not data or not (Path(data) / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST raw files absent (set BENCH_DATA_ROOT)")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--data", data],
                          capture_output=True, text=True, timeout=2400, cwd=ROOT)  # a hang guard, not a time target
    summary = (out / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| step")}
    assert set(rows) == set(STEPS), summary
    assert all(status in ("ok", "degraded") for status in rows.values()), summary
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.md", "env.json", "trials.csv", "perf.md"} <= set(files), files
