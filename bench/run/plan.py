"""The run's plan: a grid's trials, checked, with the run directory they write and how they fan out.
``plan_grid`` is the only way to one, so every plan has passed ``bench.run.checks``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.experiment import rundir
from bench.experiment.config import RunConfig
from bench.experiment.grid import Grid, load_grid
from bench.registry import InputError
from bench.run.checks import check_before_work
from bench.run.fanout import Fanout


@dataclass
class Plan:
    """A checked grid, ready to run: its trials, the run directory they write, how they fan out."""

    grid: Grid
    trials: list[RunConfig]
    run_dir: Path
    resume: bool
    fanout: Fanout = Fanout()
    sizes: dict[tuple[str, str, int, str], int] = field(default_factory=dict)  # images per dataset split (the dry run)
    unmeasured: list[str] = field(default_factory=list)  # the grid's claims this preset cannot measure
    problems: list[str] = field(default_factory=list)  # run_grid: what could not be saved (the CLI exits 1)

    def resume_command(self) -> str:
        """The command that continues this run (the same grid, preset and --set; the run dir)."""
        sets = [shlex.quote(n[len("--set "):]) for n in self.grid.notes if n.startswith("--set ")]
        return " ".join(["python -m bench run --grid", shlex.quote(self.grid.source or self.grid.name), "--preset",
                         self.grid.preset, *[f"--set {x}" for x in sets], "--out", shlex.quote(str(self.run_dir)), "--resume"])


def plan_grid(grid: str | Path | Grid, preset: str = "full", overrides: dict[str, Any] | None = None,
              out: Path | None = None, resume: bool = False, fanout: Fanout = Fanout()) -> Plan:
    """Load a grid, list its trials, pick the run directory, and run every check before work
    (``check_before_work``): all bad input raises InputError here, before anything is written."""
    grid = grid if isinstance(grid, Grid) else load_grid(str(grid), preset, overrides)
    if not grid.base and not grid.axes and not grid.arms:
        raise InputError(f"grid {grid.name!r} has neither [base] nor [axes] nor [[arms]]: it would run one trial of the defaults; "
                         f"see experiments/schedules.toml for the format")
    trials = grid.trials()
    run_dir = Path(out) if out else (rundir.latest_run_dir(grid) if resume else None) or rundir.default_run_dir(grid)
    sizes, unmeasured = check_before_work(grid, trials, overrides, run_dir, resume, fanout)
    return Plan(grid, trials, run_dir, resume, fanout, sizes, unmeasured)
