"""Fan a grid's trials out: in-process one after another (``--local``) or through Ray Tune.

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
from pathlib import Path
from typing import Any

from bench.config import RunConfig, from_dict
from bench.grid import Grid, trial_id
from bench.rundir import trial_dir, write_rows
from bench.train import CHECKPOINT
from bench.trial import checkpoint_step, error_rows, finished_rows, run_trial_safe



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
            dst.mkdir(parents=True, exist_ok=True)
            tmp = dst / f".{tid}_{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst / f"{tid}_{f.name}")


def run_local(trials: list[RunConfig], run_dir: Path, collector: Collector, threads: int | None = None) -> None:
    import torch

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
    import torch
    from ray import tune

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
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = workdir / f".{CHECKPOINT}.restore.tmp"
            shutil.copyfile(theirs, tmp)
            os.replace(tmp, workdir / CHECKPOINT)


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
    import pandas as pd

    from bench.rundir import ROWS

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
