"""The driver's table of finished trials (``Collector``): it alone writes rows.csv, after every
finished trial, and copies each trial's light artifacts out of _work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.experiment import rundir
from bench.experiment.config import RunConfig, trial_id
from bench.experiment.rundir import write_rows
from bench.files import copy_atomic
from bench.progress import say


class Collector:
    """The driver's table of rows, keyed by trial; rewrites rows.csv whenever a trial finishes. A
    write that fails (a full disk) keeps the rows in memory, says so once, and is tried again at the
    next trial and at the end (``unsaved`` holds the reason until a write succeeds)."""

    def __init__(self, run_dir: Path, trials: list[RunConfig]):
        self.run_dir, self.trials = run_dir, trials
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.unsaved = ""

    def add(self, rows: list[dict[str, Any]]) -> None:
        tid = rows[0]["trial_id"]
        self.rows[tid] = rows
        try:
            publish_artifacts(self.run_dir, self.run_dir / "_work" / "trials" / tid, tid)
        except OSError as e:
            say(f"warning: samples/logs of trial {tid} not copied to {self.run_dir} ({e.strerror or e})")
        self.flush()

    def ordered(self) -> list[dict[str, Any]]:
        """Every row so far, trial by trial in plan order."""
        return [r for cfg in self.trials for r in self.rows.get(trial_id(cfg), [])]

    def flush(self) -> None:
        ordered = self.ordered()
        if not ordered:
            return
        try:
            write_rows(self.run_dir, ordered)
        except OSError as e:
            if not self.unsaved:
                say(f"warning: cannot write {self.run_dir / rundir.ROWS} ({e.strerror or e}); the rows are kept and "
                     f"written as soon as that works")
            self.unsaved = e.strerror or str(e)
        else:
            self.unsaved = ""

    def missing(self) -> list[RunConfig]:
        return [cfg for cfg in self.trials if trial_id(cfg) not in self.rows]


def publish_artifacts(run_dir: Path, workdir: Path, tid: str) -> None:
    """Copy a trial's light artifacts out of _work (never committed) into the run dir, so the report
    can be rebuilt from the run's own files: sample grids and denoising strips -> samples/, loss logs -> logs/,
    per-image features -> per_image/."""
    for src, dst, pattern in [(workdir / "samples", run_dir / "samples", "*.png"), (workdir, run_dir / "logs", "loss*.csv"),
                              (workdir / "per_image", run_dir / "per_image", "*.npz")]:
        for f in sorted(src.glob(pattern)) if src.is_dir() else []:
            copy_atomic(f, dst / f"{tid}_{f.name}")
