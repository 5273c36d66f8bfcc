"""Run a grid: ``run_grid`` (what ``bench run`` calls) validates, writes the run directory, computes
the floors, fans the trials out in-process one after another (``local``) or through Ray Tune, and
writes the report.

Both paths call the same ``run_trial_safe`` per trial and hand its rows to the driver, which alone
writes ``rows.csv`` (atomically, after every finished trial, so a killed driver loses nothing that
finished). Resume: a trial whose work dir holds a finished ``result.json`` is not run again; an
unfinished one resumes from its last training checkpoint. Under Ray the checkpoints also go
through Ray (``tune.report(..., checkpoint=...)``), so a trial whose worker died is retried by
``FailureConfig`` and restarts from its last checkpoint, not from step 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench import rundir
from bench.config import RunConfig, from_dict, trial_id
from bench.files import copy_atomic, write_text_atomic
from bench.grid import Grid, load_grid, validate_trials
from bench.metrics import floor, release_extractors
from bench.registry import InputError
from bench.report import build_report
from bench.rundir import trial_dir, write_rows
from bench.train import CHECKPOINT
from bench.trial import checkpoint_step, error_rows, finished_rows, run_trial_safe


@dataclass(frozen=True)
class Fanout:
    """How the trials are spread: in this process (``local``) or over Ray (a fresh local cluster, or
    ``address``), with the resources of one trial."""

    local: bool = False
    address: str | None = None
    cpus_per_trial: float | None = None  # default: 1 under Ray; every core with local
    gpus_per_trial: float | None = None  # default: 1 when CUDA is visible, else 0
    max_concurrent: int | None = None

    def check(self) -> None:
        if (self.cpus_per_trial is not None and self.cpus_per_trial <= 0) or (
                self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise InputError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise InputError("--max-concurrent must be >= 1")
        if self.local and self.address:
            raise InputError("--local runs in this process; it cannot be combined with --address")


@dataclass
class Plan:
    """A validated grid, ready to run: its trials and the run directory they write."""

    grid: Grid
    trials: list[RunConfig]
    run_dir: Path
    resume: bool


def plan_grid(grid: str | Path | Grid, preset: str = "full", overrides: dict[str, Any] | None = None,
              out: Path | None = None, resume: bool = False) -> Plan:
    """Load and validate every trial of a grid and check its run directory: all bad input raises
    InputError here, before any work."""
    grid = grid if isinstance(grid, Grid) else load_grid(str(grid), preset, overrides)
    trials = grid.trials()
    validate_trials(trials)
    run_dir = Path(out) if out else (rundir.latest_run_dir(grid) if resume else None) or rundir.default_run_dir(grid)
    rundir.check(run_dir, grid, resume)
    return Plan(grid, trials, run_dir, resume)


def run_grid(plan: Plan, fanout: Fanout = Fanout()) -> list[dict[str, Any]]:
    """Run a planned grid: floors first (they compute every reference statistic once, with all
    cores), then every trial not finished earlier, then the report. Returns the rows (also in
    rows.csv). A trial that raises becomes error rows; the others still run."""
    fanout.check()
    run_dir, trials = plan.run_dir, plan.trials
    rundir.prepare(run_dir, plan.grid)
    t0 = time.time()
    gpus = fanout.gpus_per_trial if fanout.gpus_per_trial is not None else (1.0 if torch.cuda.is_available() else 0.0)
    cpus = fanout.cpus_per_trial or (None if fanout.local else 1.0)
    env = rundir.write_env(run_dir, {"runner": "local" if fanout.local else "ray", "address": fanout.address,
                                     "cpus_per_trial": cpus, "gpus_per_trial": gpus})
    collector = Collector(run_dir, trials)
    done = preload_finished(trials, run_dir, collector) if plan.resume else 0
    _say(f"{len(trials)} trials of grid {plan.grid.name!r} ({plan.grid.preset}) -> {run_dir}"
         + (f" ({done} finished earlier)" if done else ""))
    _guarded("floors", run_dir, lambda: write_floors(run_dir, trials))
    t_fan = time.time()
    if fanout.local:
        run_local(trials, run_dir, collector, threads=int(cpus) if cpus else None)
    else:
        run_ray(plan.grid, trials, run_dir, collector, fanout.address, cpus, gpus, fanout.max_concurrent)
    rundir.finish(run_dir, env, time.time() - t0, fanout_s=time.time() - t_fan)
    _guarded("report", run_dir, lambda: build_report(run_dir))
    rows = [r for rs in collector.rows.values() for r in rs]
    statuses = {r["trial_id"]: r["status"] for r in rows}
    n_err, n_div = sum(s == "error" for s in statuses.values()), sum(s == "diverged" for s in statuses.values())
    _say(f"done in {time.time() - t0:.0f} s: {len(trials) - n_err - n_div} ok, {n_div} diverged, {n_err} error; "
         f"rows in {run_dir / rundir.ROWS}")
    return rows


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _guarded(step: str, run_dir: Path, fn) -> None:
    """Floors and report: a failure is reported and never loses rows.csv (a trial that needs a
    missing reference computes it itself, or reports its own error)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the rows matter more than the step
        _say(f"warning: {step} failed ({type(e).__name__}: {e}); rows.csv is intact, "
             f"rerun `python -m bench report {run_dir}`")
        traceback.print_exc(file=sys.stderr)


def write_floors(run_dir: Path, trials: list[RunConfig]) -> None:
    """floors.csv: real-vs-real (train vs held-out) metrics at each trial sample size, so a table
    shows what a perfect model would score with the same number of images.

    Written before the fan-out: computing the floors computes (and caches) every reference
    statistic the trials will score against, here with all cores, instead of in the first trial
    with its one thread while the others wait on the cache lock."""
    t0 = time.time()
    rows = []
    keys = sorted({(c.dataset, c.data_root, c.image_size, c.n_samples, c.metric_names, c.n_reference) for c in trials})
    for dataset, root, size, n, metrics, n_ref in keys:
        t1 = time.time()
        res = floor(list(metrics), dataset, n, data_root=root, image_size=size, n_reference=n_ref or None)
        rows.append({"dataset": dataset, "image_size": size, "n_samples": n, **res, "floor_s": time.time() - t1})
    write_text_atomic(run_dir / rundir.FLOORS, pd.DataFrame(rows).to_csv(index=False))
    release_extractors()
    _say(f"real-vs-real floors and reference statistics ready ({time.time() - t0:.0f} s)")



class Collector:
    """The driver's table of rows, keyed by trial; rewrites rows.csv whenever a trial finishes."""

    def __init__(self, run_dir: Path, trials: list[RunConfig]):
        self.run_dir, self.trials = run_dir, trials
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, rows: list[dict[str, Any]]) -> None:
        tid = rows[0]["trial_id"]
        self.rows[tid] = rows
        publish_artifacts(self.run_dir, self.run_dir / "_work" / "trials" / tid, tid)
        self.flush()

    def flush(self) -> None:
        ordered = [r for cfg in self.trials for r in self.rows.get(trial_id(cfg), [])]
        if ordered:
            write_rows(self.run_dir, ordered)

    def missing(self) -> list[RunConfig]:
        return [cfg for cfg in self.trials if trial_id(cfg) not in self.rows]


def publish_artifacts(run_dir: Path, workdir: Path, tid: str) -> None:
    """Copy a trial's light artifacts out of _work (never committed) into the run dir, so the report
    can be rebuilt from the run's own files: sample grids and denoising strips -> samples/, loss logs -> logs/."""
    for src, dst in [(workdir / "samples", run_dir / "samples"), (workdir, run_dir / "logs")]:
        pattern = "*.png" if src.name == "samples" else "loss*.csv"
        for f in sorted(src.glob(pattern)) if src.is_dir() else []:
            copy_atomic(f, dst / f"{tid}_{f.name}")


def run_local(trials: list[RunConfig], run_dir: Path, collector: Collector, threads: int | None = None) -> None:
    if threads:
        torch.set_num_threads(threads)
    for i, cfg in enumerate(trials, 1):
        if trial_id(cfg) in collector.rows:  # finished in an earlier run (--resume)
            continue
        wd = trial_dir(run_dir, cfg)
        rows = finished_rows(wd)
        state = "done already" if rows else "running"
        print(f"[{i}/{len(trials)}] {cfg.arm()} | {cfg.dataset} | seed {cfg.seed} | {state}", file=sys.stderr, flush=True)
        collector.add(rows or run_trial_safe(cfg, wd, progress=None))


# --- Ray Tune --------------------------------------------------------------------------------
def _trainable(config: dict[str, Any], run_dir: str, threads: int) -> None:
    """The Ray Tune function trainable: one trial, reporting progress and checkpoints to Tune."""
    from ray import tune  # Ray loads only where it runs (the local path and the report never need it)

    cfg = from_dict(config).canonical()  # the driver's trial (see run_ray: unset parameters are dropped)
    wd = trial_dir(Path(run_dir), cfg)
    rows = finished_rows(wd)
    if rows is None:
        torch.set_num_threads(max(1, threads))
        _restore_checkpoint(tune.get_checkpoint(), wd)
        rows = run_trial_safe(cfg, wd, progress=False, report=_Reporter(wd))
    tune.report({"step": rows[0].get("train_steps_done", 0), "status": rows[0]["status"], "rows_json": json.dumps(rows, default=str)})


class _Reporter:
    """Called by the trainer every few steps: metrics to Tune, plus the trainer's checkpoint file
    whenever it has been rewritten since the last report (Ray persists it in its storage)."""

    def __init__(self, workdir: Path):
        self.ckpt, self.last = workdir / CHECKPOINT, 0.0

    def __call__(self, metrics: dict[str, Any]) -> None:
        import tempfile

        from ray import tune

        stamp = self.ckpt.stat().st_mtime if self.ckpt.exists() else 0.0
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if stamp <= self.last:
            tune.report(clean)
            return
        self.last = stamp
        with tempfile.TemporaryDirectory() as d:
            shutil.copyfile(self.ckpt, Path(d) / CHECKPOINT)
            tune.report(clean, checkpoint=tune.Checkpoint.from_directory(d))


def _restore_checkpoint(checkpoint, workdir: Path) -> None:
    """Put Ray's latest checkpoint of this trial into its work dir unless the work dir already has
    one at least as recent (a retried trial on another node has no local copy)."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as src:
        theirs = Path(src) / CHECKPOINT
        if theirs.exists() and checkpoint_step(theirs) > checkpoint_step(workdir / CHECKPOINT):
            copy_atomic(theirs, workdir / CHECKPOINT)


def run_ray(grid: Grid, trials: list[RunConfig], run_dir: Path, collector: Collector, address: str | None,
            cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None, max_failures: int = 2) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    class Collect(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "rows_json" in result:
                collector.add(json.loads(result["rows_json"]))

    # "local": always a fresh cluster of this machine, never one that another run happens to have started
    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=True, ignore_reinit_error=True)
    try:
        # Each axis is a param_space key; the trials are the grid's own deduplicated list, given as
        # points to evaluate (a plain grid_search would also run gaussian x every theta_0). A point
        # leaves out parameters that do not apply to it; whatever Tune puts there is dropped again
        # by RunConfig.canonical() in the trainable.
        param_space = {**grid.base, **{k: tune.choice(v) for k, v in grid.axes.items()}}
        pending = [cfg for cfg in trials if trial_id(cfg) not in collector.rows]  # --resume skips the finished
        points = [{k: getattr(cfg, k) for k in grid.axes if getattr(cfg, k) is not None} for cfg in pending]
        if not points:
            return
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, run_dir=str(run_dir.resolve()), threads=int(max(1, cpus_per_trial))),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=points), num_samples=len(points),
                                        max_concurrent_trials=max_concurrent or None, reuse_actors=False),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str((run_dir / "_work" / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[Collect()],
                verbose=1,
            ),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    for cfg in collector.missing():  # Ray gave up on it (e.g. the worker died more than max_failures times)
        wd = trial_dir(run_dir, cfg)
        collector.add(finished_rows(wd) or error_rows(cfg, RuntimeError(f"Ray trial failed; see {wd} and {run_dir / '_work' / 'ray'}")))


def preload_finished(trials: list[RunConfig], run_dir: Path, collector: Collector) -> int:
    """Resume: rows of trials that finished in an earlier run of this run dir, from their work dirs'
    result.json or, where _work is gone (a fresh checkout of committed results), from rows.csv."""
    ROWS = rundir.ROWS
    earlier = (pd.read_csv(run_dir / ROWS, dtype={"trial_id": str}) if (run_dir / ROWS).exists()
               else pd.DataFrame(columns=["trial_id", "status"]))
    n = 0
    for cfg in trials:
        tid = trial_id(cfg)
        rows = finished_rows(trial_dir(run_dir, cfg))
        if rows is None:
            mine = earlier[earlier["trial_id"] == tid]
            done = len(mine) and mine["status"].isin(["ok", "diverged"]).all()
            rows = [{k: v for k, v in r.items() if pd.notna(v)} for r in mine.to_dict("records")] if done else None
        if rows:
            collector.rows[tid] = rows
            n += 1
    collector.flush()
    return n
