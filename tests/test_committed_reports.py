"""`bench report` rebuilds every committed run's REPORT.md and tables byte for byte (issue 11's
acceptance: the restructuring changed no committed result)."""

import shutil
from pathlib import Path

import pytest

from bench.report import build_report

RESULTS = Path(__file__).resolve().parent.parent / "results"
RUNS = sorted(p.parent for p in RESULTS.rglob("rows.csv"))


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_report_of_a_committed_run_rebuilds_identically(run, tmp_path):
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("_work"))
    build_report(copy)
    committed = [p.relative_to(run) for p in [run / "REPORT.md", *sorted((run / "tables").glob("*"))]]
    assert committed and (run / "REPORT.md").exists()
    for rel in committed:
        assert (copy / rel).read_bytes() == (run / rel).read_bytes(), rel
