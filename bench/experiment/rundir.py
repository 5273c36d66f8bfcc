"""The run directory contract (DESIGN.md section 2): grid.toml, env.json, rows.csv, _work/.

Only the driver writes ``rows.csv``, always atomically (temp file + rename), so a run killed at
any moment leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from bench.env import environment
from bench.experiment.config import RunConfig, trial_id
from bench.experiment.grid import Grid, grid_of_record, read_toml
from bench.files import (
    LockBusy,
    atomic_write,
    check_writable,
    exclusive_lock,
    lock_holder,
    remove_stale_temps,
    write_text_atomic,
)
from bench.registry import InputError

ROWS = "rows.csv"
GRID = "grid.toml"
ENV = "env.json"
FLOORS = "floors.csv"
LOCK = "_work/run.lock"  # held (flock) by the driver of a run for as long as it runs
INTERPRETATION = ("\n[[claims]]\n", "\n[[reference_ranks]]\n")  # grid.toml's last tables: not part of any trial
STATUSES = ("ok", "diverged", "error")


def default_run_dir(grid: Grid, root: Path = Path("results")) -> Path:
    return root / grid.name / f"{grid.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run_dir(grid: Grid, root: Path = Path("results")) -> Path | None:
    runs = sorted((root / grid.name).glob(f"{grid.preset}-*"))
    return runs[-1] if runs else None


def check(run_dir: Path, grid: Grid, resume: bool, probe_lock: bool = True) -> None:
    """Refuse a run dir that holds another grid, or this grid resolved differently, or (without
    --resume) an earlier run, or one that another bench process is running right now, or a place
    where nothing can be written: runs are never mixed or overwritten. Writes nothing."""
    problem = check_writable(run_dir, "--out")
    if problem:
        raise InputError(f"{problem}: use another --out")
    holder = lock_holder(run_dir / LOCK) if probe_lock else None
    if holder is not None:
        raise InputError(busy_message(run_dir, holder))
    existing = run_dir / GRID
    if existing.exists():
        old = read_toml(existing)
        if old.get("name") != grid.name:
            raise InputError(f"{run_dir} holds a run of grid {old.get('name')!r}, not {grid.name!r}: use another --out")
        if trial_part(existing.read_text()) != trial_part(grid.to_toml()) and extension(run_dir, grid) is None:
            raise InputError(
                f"{run_dir} holds a run of {grid.name!r} with a different resolved grid (preset or --set differ; a "
                f"--resume may only add trials, keeping every earlier one): compare {existing} with this command's "
                f"--dry-run, or use another --out"
            )
        if not resume:
            raise InputError(f"{run_dir} already holds a run of {grid.name!r}: add --resume to continue it, or use another --out")
    elif run_dir.exists() and any(p.name != "_work" for p in run_dir.iterdir()):
        raise InputError(f"{run_dir} exists and is not a bench run directory: use another --out")
    elif resume and not run_dir.exists():  # a mistyped --out would otherwise start a fresh run in silence
        raise InputError(f"--resume: {run_dir} does not exist, so there is nothing to resume: check --out, "
                         f"or drop --resume to start a new run there")


def extension(run_dir: Path, grid: Grid) -> list[RunConfig] | None:
    """The trials ``grid`` adds to the run recorded in ``run_dir/grid.toml`` when it keeps every one of that
    run's trials (the same trial ids: an arm or an axis value added, a note reworded), [] when it adds none;
    None when it drops or changes one (a trial id is its whole config: a kept id is the same trial, so its
    finished rows stay valid and nothing is mixed). A --resume then runs the added trials beside the rest."""
    if not (run_dir / GRID).exists():  # a directory a run was killed in before it wrote grid.toml: nothing to keep
        return []
    try:
        recorded = read_toml(run_dir / GRID)
        old = {trial_id(c) for c in grid_of_record(recorded).trials()}
    except InputError:  # a grid.toml of an older format: not this grid (check's message says what to do)
        return None
    if recorded.get("preset", "full") != grid.preset:  # the same trials under another preset's name: another run
        return None
    new = grid.trials()
    if not old <= {trial_id(c) for c in new}:
        return None
    return [c for c in new if trial_id(c) not in old]


def trial_part(grid_toml: str) -> str:
    """A resolved grid without its ``[[claims]]`` and ``[[reference_ranks]]`` tables (written last by
    ``Grid.to_toml``): they are the published results a report reads the run against, not part of any trial,
    so a ``--resume`` may add or correct them (``prepare`` writes them) while every trial-defining line must
    match. (Strings are written on one line, so a header can only be a table's.)"""
    cut = min((grid_toml.find(h) for h in INTERPRETATION if h in grid_toml), default=len(grid_toml))
    return grid_toml[:cut].rstrip("\n")


def busy_message(run_dir: Path, holder: str) -> str:
    return (f"{run_dir} is in use by another bench run ({holder or 'a process that is starting'}): "
            f"wait for it to end (then --resume continues it), or use another --out")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (``_work/run.lock``) while the block runs: a second ``bench run``
    into the same directory is refused with the first one's pid and command (InputError). The kernel
    drops the lock when this process ends in any way, so a killed run never leaves a stale lock."""
    owner = f"pid {os.getpid()}, `python -m bench {' '.join(sys.argv[1:])}`, since {time.strftime('%H:%M:%S')}"
    try:
        with exclusive_lock(run_dir / LOCK, owner):
            yield
    except LockBusy as e:
        raise InputError(busy_message(run_dir, e.holder)) from None


def check_space(run_dir: Path, need_bytes: int) -> None:
    """InputError when the file system of ``run_dir`` has less than ``need_bytes`` free."""
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise InputError(f"{run_dir}: {free / 2**20:.0f} MB free on its file system, the run needs about "
                         f"{need_bytes / 2**20:.0f} MB (checkpoints, samples, rows): free some space or use another --out")


def prepare(run_dir: Path, grid: Grid) -> None:
    """Create the run dir and write the resolved grid (after ``check``). Temp files that a killed
    earlier run left mid-write (``.NAME.PID.tmp``; the real file is intact) are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    write_text_atomic(run_dir / GRID, grid.to_toml())


def finish(run_dir: Path, env: dict[str, Any], wall_s: float, fanout_s: float) -> dict[str, Any]:
    """Record the run's wall time in env.json, and the part of it spent fanning the trials out
    (``--local`` loop or Ray Tune, start-up included; without floors and report), which
    ``bench perf`` compares between the two runners. After resumes, ``wall_s`` and ``fanout_s`` are
    the sums over every session (each session in ``sessions``) and ``started`` the first start."""
    session = {"started": env.get("session_started", env.get("started")), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "wall_s": round(wall_s, 1), "fanout_s": round(fanout_s, 2), "command": env.get("command"),
               "git": env.get("git")}  # each session's code: a resume may run another commit
    if env.get("grid_extended"):  # this session's --resume added trials to the grid (``extension``)
        session["grid_extended"] = env["grid_extended"]
    earlier = list(env.get("sessions", []))
    out = {**{k: v for k, v in env.items() if k != "grid_extended"}, "finished": session["finished"],
           "sessions": earlier + [session],
           "wall_s": round(wall_s + sum(s.get("wall_s") or 0 for s in earlier), 1),
           "fanout_s": round(fanout_s + sum(s.get("fanout_s") or 0 for s in earlier), 2)}
    out.pop("session_started", None)
    if not earlier:
        out.pop("sessions")
    write_text_atomic(run_dir / ENV, json.dumps(out, indent=1))
    return out


def real_grid(dataset: str) -> str:
    """The file name (under samples/) of a run's grid of held-out real images of ``dataset``."""
    return f"real_{dataset}.png"


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
    """rows.csv for the report: InputError (one line) when it is missing, not a rows table, empty,
    or has a row cut short."""
    path = run_dir / ROWS
    if not path.exists():
        raise InputError(f"{path} does not exist: is {run_dir} a bench run directory?")
    _, bad, problem = parse_rows(run_dir)
    if problem or bad:
        raise InputError(f"{problem or next(iter(bad.values()))}: `python -m bench run ... --out {run_dir} --resume` "
                         f"rebuilds it from the trials' results (or restore it from git)")
    try:
        rows = pd.read_csv(path, dtype={"trial_id": str}, keep_default_na=True)  # "7e05622055" is no number
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise InputError(f"{path} is not a readable rows table ({str(e).splitlines()[0][:100]})") from None
    return rows


def check_readable(run_dir: Path) -> None:
    """InputError naming the first of grid.toml, env.json, floors.csv, rows.csv that exists but
    cannot be parsed (what ``bench report`` reads), so it fails in one line instead of a traceback."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder: pass a run directory (results/GRID/PRESET-TIME)")
    if (run_dir / GRID).exists():
        read_toml(run_dir / GRID)
    if (run_dir / ENV).exists():
        try:
            if not isinstance(json.loads((run_dir / ENV).read_text()), dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{run_dir / ENV} is not valid JSON ({str(e)[:80]}): restore it from git, or delete it "
                             f"(the report then says the provenance is unrecorded)") from None
    floors = run_dir / FLOORS
    if floors.exists() and floors.stat().st_size:
        try:
            pd.read_csv(floors)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{floors} is not a readable CSV ({str(e).splitlines()[0][:80]}): delete it, and "
                             f"`bench run ... --resume` writes it again") from None
    read_rows(run_dir)


def write_env(run_dir: Path, extra: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """env.json: git commit (+dirty), versions, Python, devices — no hostname. On ``resume`` the
    earlier sessions are kept (``sessions``: each one's start, finish, wall time, command and git
    commit; the top-level ``started`` stays the first start), never overwritten."""
    env = {**environment(), **(extra or {})}
    earlier = read_env(run_dir) if resume else {}
    if earlier:
        sessions = list(earlier.get("sessions") or [])
        if not sessions and earlier.get("started"):
            sessions = [{k: earlier.get(k) for k in ("started", "finished", "wall_s", "fanout_s", "command", "git")}]
        if earlier.get("session_started"):  # a resume killed before finish(): keep it, with no end
            sessions.append({"started": earlier["session_started"], "finished": None, "wall_s": None, "fanout_s": None,
                             "command": earlier.get("command"), "git": earlier.get("git"),
                             **({"grid_extended": earlier["grid_extended"]} if earlier.get("grid_extended") else {})})
        env = {**env, "session_started": env["started"], "started": earlier.get("started", env["started"]),
               "sessions": sessions}
    write_text_atomic(run_dir / ENV, json.dumps(env, indent=1))
    return env


def read_env(run_dir: Path) -> dict[str, Any]:
    """env.json as a dict; {} when it is missing or unreadable (a garbled one is replaced, its text
    kept in env.json.unreadable)."""
    path = run_dir / ENV
    try:
        env = json.loads(path.read_text())
        if isinstance(env, dict):
            return env
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError):
        shutil.copyfile(path, path.with_name(ENV + ".unreadable"))
    return {}


def parse_rows(run_dir: Path) -> tuple[pd.DataFrame, dict[str, str], str]:
    """rows.csv of an earlier session, read for --resume without trusting it: (the complete rows,
    {trial_id: why its rows cannot be used}, a problem with the whole file or "").

    A row is complete when it has exactly the header's number of fields and a known status; a row cut
    short (a file truncated mid-write by something other than this package, or edited) marks its
    trial as not finished. A file that is not a rows table at all (binary, no trial_id/status header)
    gives the third value; an empty file is no rows."""
    path = run_dir / ROWS
    empty = pd.DataFrame(columns=["trial_id", "status"])
    if not path.exists():
        return empty, {}, ""
    try:
        text = path.read_bytes().decode("utf-8")
        if "\x00" in text:
            raise ValueError("it holds NUL bytes")
        records = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, ValueError, csv.Error) as e:
        return empty, {}, f"{path} is not a readable CSV ({str(e)[:80]})"
    records = [r for r in records if r]
    if not records:
        return empty, {}, ""
    header = records[0]
    if "trial_id" not in header or "status" not in header:
        return empty, {}, f"{path} has no trial_id and status columns (header {','.join(header)[:60]!r}...)"
    i_tid, i_status = header.index("trial_id"), header.index("status")
    good, bad = [header], {}
    for n, rec in enumerate(records[1:], 2):
        tid = rec[i_tid] if len(rec) > i_tid else ""
        if len(rec) != len(header):
            bad.setdefault(tid, f"row {n} of rows.csv has {len(rec)} of {len(header)} fields (cut short)")
        elif rec[i_status] not in STATUSES:
            bad.setdefault(tid, f"row {n} of rows.csv has status {rec[i_status]!r}")
        else:
            good.append(rec)
    buf = io.StringIO()
    csv.writer(buf).writerows(good)
    df = pd.read_csv(io.StringIO(buf.getvalue()), dtype={"trial_id": str}, keep_default_na=True)
    return df, bad, ""
