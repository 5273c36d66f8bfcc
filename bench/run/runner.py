"""Run a planned grid: ``run_grid`` (what ``bench run`` calls) reads as the three phases of a run:
the floors and reference statistics (``bench.run.floors``), the trials fanned out in-process or
through Ray Tune (``bench.run.fanout``) with the driver's progress (``bench.run.eta``), and the
report (``bench.report``). The plan and every check before work are ``bench.run.plan`` and
``bench.run.checks``; what --resume keeps is ``bench.run.resume``.

The driver alone writes ``rows.csv`` (atomically, after every finished trial, so a killed driver
loses nothing that finished). Resume: a trial whose work dir holds a finished ``result.json`` is not
run again; an unfinished one resumes from its last training checkpoint.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.experiment import rundir
from bench.experiment.config import trial_id
from bench.progress import say
from bench.report import build_report
from bench.run.collect import Collector
from bench.run.eta import SHARED_AFTER, Progress, SharedFailure, earlier_seconds
from bench.run.fanout import run_local, run_ray
from bench.run.floors import write_floors, write_real_grids
from bench.run.plan import Plan
from bench.run.resume import index_trained, resume_state


def run_grid(plan: Plan) -> list[dict[str, Any]]:
    """Run a planned grid in three phases: floors first (they compute every reference statistic
    once, with all cores), then every trial not finished earlier, then the report. Returns the rows
    (also in rows.csv). A trial that raises becomes error rows; the others still run.

    The run directory is locked for the whole run (a second run into it is refused, naming this
    one). On --resume the earlier rows are checked before anything is written; env.json keeps the
    earlier sessions. Ctrl-C stops cleanly: finished trials are kept, the interrupted ones are left
    to --resume (never recorded as failed), and KeyboardInterrupt is re-raised."""
    with rundir.locked(plan.run_dir):
        # again, now that no other run can write into it (plan_grid checked it without the lock)
        rundir.check(plan.run_dir, plan.grid, plan.resume, probe_lock=False)
        session = _open(plan)
        _guarded("floors", plan.run_dir, lambda: write_floors(plan.run_dir, plan.trials))
        _guarded("held-out image grids", plan.run_dir, lambda: write_real_grids(plan.run_dir, plan.trials))
        if not _fan_out(plan, session):
            return session.collector.ordered()
        _report(plan, session.collector)
        return _close(plan, session)


@dataclass
class _Session:
    """One session of a run: its rows so far, env.json's record, when it started and when the fan-out did."""

    collector: Collector
    env: dict
    done_before: int
    t0: float
    t_fan: float = 0.0

    def finish(self, plan: Plan) -> None:
        """env.json's timings; a failure to write it is a problem (exit 1), not a lost run."""
        try:
            rundir.finish(plan.run_dir, self.env, time.time() - self.t0, fanout_s=time.time() - self.t_fan)
        except OSError as e:
            plan.problems.append(f"env.json could not be written ({e.strerror or e})")
            say(f"warning: {plan.run_dir / rundir.ENV} could not be written ({e.strerror or e})")


def _open(plan: Plan) -> _Session:
    """The run directory prepared for this session: the earlier sessions' finished rows (--resume), env.json."""
    run_dir, fanout = plan.run_dir, plan.fanout
    finished, notes = resume_state(run_dir, plan.trials) if plan.resume else ({}, [])
    added = rundir.extension(run_dir, plan.grid) if plan.resume else []  # before prepare rewrites grid.toml
    new_ids = {trial_id(c) for c in added or []}
    kept_arms = {c.arm() for c in plan.trials if trial_id(c) not in new_ids}  # the arms the run had
    t0 = time.time()
    cpus, gpus = fanout.resources()
    extended = {"grid_extended": extended_record(added, kept_arms)} if added else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    # env.json first: a kill between the two must not leave the grown grid.toml without its record
    env = rundir.write_env(run_dir, {"runner": "local" if fanout.local else "ray", "address": fanout.address,
                                     "cpus_per_trial": cpus, "gpus_per_trial": gpus, **extended}, resume=plan.resume)
    rundir.prepare(run_dir, plan.grid)
    collector = Collector(run_dir, plan.trials)
    collector.rows.update(finished)
    collector.flush()
    for note in notes:
        say(f"warning: {note}")
    done = len(finished)
    say(f"{len(plan.trials)} trials of grid {plan.grid.name!r} ({plan.grid.preset}) -> {run_dir}"
        + (f" ({done} finished earlier)" if done else ""))
    if added:
        say(f"this --resume adds {extended['grid_extended']} to the run; every earlier trial is kept (env.json "
            f"records the extension with this session)")
    for note in plan.unmeasured:
        say(note)
    return _Session(collector, env, done, t0)


def extended_record(added: list, kept_arms: set[str]) -> str:
    """What a --resume added to a run's grid, for env.json and the report: "5 trials of 1 new arm (ARM)", or
    of arms the run had (more seeds, another axis value), as the config's arm labels say."""
    arms = list(dict.fromkeys(c.arm() for c in added))
    new = [a for a in arms if a not in kept_arms]
    what = (f"{len(new)} new arm{'s' * (len(new) != 1)} ({'; '.join(new)})" if new else "")
    old = [a for a in arms if a in kept_arms]
    more = f"{len(old)} arm{'s' * (len(old) != 1)} the run had" if old else ""
    return f"{len(added)} trial{'s' * (len(added) != 1)} of " + " and of ".join(x for x in (what, more) if x)


def _fan_out(plan: Plan, session: _Session) -> bool:
    """The trials, in this process or through Ray; False when the first trials failed alike and the
    grid stopped (said, with the command that resumes it). Ctrl-C: said, and re-raised."""
    fanout, collector, trials = plan.fanout, session.collector, plan.trials
    session.t_fan = time.time()
    earlier = earlier_seconds(session.collector.rows)  # the trials finished before this session
    progress = Progress(len(trials), session.done_before, fanout.slots()[1], earlier)
    try:
        if fanout.local:
            run_local(trials, plan.run_dir, collector, threads=fanout.slots()[0], progress=progress)
        else:
            cpus, gpus = fanout.resources()
            run_ray(plan.grid, trials, plan.run_dir, collector, fanout.address, cpus, gpus, fanout.max_concurrent,
                    progress=progress, track=fanout.track, verbose=fanout.verbose)
    except SharedFailure as e:
        collector.flush()
        session.finish(plan)
        plan.problems.append(f"stopped: the first trials failed alike ({e})")
        say(f"error: stopped after the first {SHARED_AFTER} trials failed with the same error, which every trial would "
            f"meet: {e}. No report was written. Fix the cause, then continue with: {plan.resume_command()}")
        return False
    except KeyboardInterrupt:
        collector.flush()
        session.finish(plan)
        n_done = sum(1 for cfg in trials if trial_id(cfg) in collector.rows)
        say(f"interrupted: {n_done} of {len(trials)} trials finished and kept in {plan.run_dir / rundir.ROWS}; the "
            f"interrupted ones resume from their checkpoints with: {plan.resume_command()}")
        raise
    session.finish(plan)
    return True


def _report(plan: Plan, collector: Collector) -> None:
    """The trained-model index, then the report, when at least one trial finished."""
    index_trained(plan.trials, plan.run_dir, collector)
    if any(r.get("status") in ("ok", "diverged") for rs in collector.rows.values() for r in rs):
        _guarded("report", plan.run_dir, lambda: build_report(plan.run_dir))
    else:  # a report "scored with none" would read as a run
        say("no trial finished: no report written (the errors are in rows.csv and each trial's error.txt)")


def _close(plan: Plan, session: _Session) -> list[dict[str, Any]]:
    """rows.csv written at last (or the reason it could not be), and the run's one-line summary."""
    collector, run_dir = session.collector, plan.run_dir
    if collector.unsaved:
        collector.flush()
    if collector.unsaved:
        plan.problems.append(f"rows.csv could not be written ({collector.unsaved})")
        say(f"error: {run_dir / rundir.ROWS} could not be written ({collector.unsaved}); the trials' results are in "
            f"{run_dir / '_work' / 'trials'}/*/result.json: free space, then {plan.resume_command()} rebuilds it")
    rows = collector.ordered()
    statuses = {r["trial_id"]: r["status"] for r in rows}
    n_err, n_div = sum(s == "error" for s in statuses.values()), sum(s == "diverged" for s in statuses.values())
    say(f"done in {time.time() - session.t0:.0f} s: {len(plan.trials) - n_err - n_div} ok, {n_div} diverged, {n_err} error; "
        + (f"rows in {run_dir / rundir.ROWS}" if not collector.unsaved else "rows NOT saved (see above)"))
    return rows


def _guarded(step: str, run_dir: Path, fn) -> None:
    """Floors and report: a failure is reported and never loses rows.csv (a trial that needs a
    missing reference computes it itself, or reports its own error)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the rows matter more than the step
        say(f"warning: {step} failed ({type(e).__name__}: {e}); rows.csv is intact, "
             f"rerun `python -m bench report {run_dir}`")
        if not isinstance(e, OSError):  # a full disk needs no traceback
            traceback.print_exc(file=sys.stderr)
