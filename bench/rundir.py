"""The run directory contract (DESIGN.md section 2): grid.toml, env.json, rows.csv, _work/.

Only the driver writes ``rows.csv``, always atomically (temp file + rename), so a run killed at
any moment leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import RunConfig, trial_id
from bench.env import environment
from bench.files import atomic_write, remove_stale_temps, write_text_atomic
from bench.grid import Grid, read_toml
from bench.registry import InputError

ROWS = "rows.csv"
GRID = "grid.toml"
ENV = "env.json"
FLOORS = "floors.csv"


def default_run_dir(grid: Grid, root: Path = Path("results")) -> Path:
    return root / grid.name / f"{grid.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run_dir(grid: Grid, root: Path = Path("results")) -> Path | None:
    runs = sorted((root / grid.name).glob(f"{grid.preset}-*"))
    return runs[-1] if runs else None


def check(run_dir: Path, grid: Grid, resume: bool) -> None:
    """Refuse a run dir that holds another grid, or this grid resolved differently, or (without
    --resume) an earlier run: runs are never mixed or overwritten. Writes nothing."""
    existing = run_dir / GRID
    if existing.exists():
        old = read_toml(existing)
        if old.get("name") != grid.name:
            raise InputError(f"{run_dir} holds a run of grid {old.get('name')!r}, not {grid.name!r}: use another --out")
        if existing.read_text() != grid.to_toml():
            raise InputError(
                f"{run_dir} holds a run of {grid.name!r} with a different resolved grid (preset or --set differ): "
                f"compare {existing} with this command's --dry-run, or use another --out"
            )
        if not resume:
            raise InputError(f"{run_dir} already holds a run of {grid.name!r}: add --resume to continue it, or use another --out")
    elif run_dir.exists() and any(p.name != "_work" for p in run_dir.iterdir()):
        raise InputError(f"{run_dir} exists and is not a bench run directory: use another --out")


def prepare(run_dir: Path, grid: Grid) -> None:
    """Create the run dir and write the resolved grid (after ``check``). Temp files that a killed
    earlier run left mid-write (``.NAME.PID.tmp``; the real file is intact) are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    write_text_atomic(run_dir / GRID, grid.to_toml())


def finish(run_dir: Path, env: dict[str, Any], wall_s: float, fanout_s: float) -> None:
    """Record the run's wall time in env.json, and the part of it spent fanning the trials out
    (``--local`` loop or Ray Tune, start-up included; without floors and report), which
    ``bench perf`` compares between the two runners."""
    write_text_atomic(run_dir / ENV, json.dumps({**env, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "wall_s": round(wall_s, 1), "fanout_s": round(fanout_s, 2)}, indent=1))


def trial_dir(run_dir: Path, cfg) -> Path:
    return run_dir / "_work" / "trials" / trial_id(cfg)


def write_rows(run_dir: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """rows.csv, atomically. Columns: RunConfig fields first (in order), then the rest."""
    df = pd.DataFrame(rows)
    first = [f.name for f in fields(RunConfig)] + ["trial_id", "arm", "sampler", "sample_steps", "status", "error"]
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    df = df[cols]
    atomic_write(run_dir / ROWS, lambda tmp: df.to_csv(tmp, index=False))
    return df


def read_rows(run_dir: Path) -> pd.DataFrame:
    path = run_dir / ROWS
    if not path.exists():
        raise InputError(f"{path} does not exist: is {run_dir} a bench run directory?")
    return pd.read_csv(path, keep_default_na=True)


def write_env(run_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """env.json: git commit (+dirty), versions, Python, devices — no hostname."""
    env = {**environment(), **(extra or {})}
    write_text_atomic(run_dir / ENV, json.dumps(env, indent=1))
    return env
