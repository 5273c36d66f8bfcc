"""The run's second phase: the trials fanned out in this process one after another (``run_local``)
or through Ray Tune (``run_ray``). Both call the same ``run_trial_safe`` per trial and hand its rows
to the driver's ``Collector``. Under Ray the checkpoints also go through Ray (``tune.report(...,
checkpoint=...)``), so a trial whose worker died is retried by ``FailureConfig`` and restarts from
its last checkpoint, not from step 0."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.experiment.config import RunConfig, from_dict, trial_id
from bench.experiment.grid import Grid
from bench.experiment.labels import trial_labels
from bench.experiment.rundir import trial_dir
from bench.files import copy_atomic
from bench.progress import say
from bench.registry import InputError
from bench.run import tracking
from bench.run.collect import Collector
from bench.run.eta import Progress, SharedFailure
from bench.run.trial import checkpoint_step, error_rows, finished_rows, run_trial_safe
from bench.training.train import CHECKPOINT


def available_cpus() -> int:
    """The cores this process may use (its CPU affinity), which a fresh local Ray cluster is given."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Fanout:
    """How the trials are spread: in this process (``local``) or over Ray (a fresh local cluster, or
    ``address``), with the resources of one trial."""

    local: bool = False
    address: str | None = None
    cpus_per_trial: float | None = None  # default: 1 under Ray; every core with local
    gpus_per_trial: float | None = None  # default: 1 when CUDA is visible, else 0
    max_concurrent: int | None = None
    track: tuple[str, ...] = ()  # experiment trackers (bench.run.tracking): Ray Tune callbacks
    verbose: bool = False  # Ray Tune's status tables too (bench's own progress lines always)

    def resources(self) -> tuple[float | None, float]:
        """(cpus per trial: None = every core with --local, gpus per trial) as the run uses them."""
        gpus = self.gpus_per_trial if self.gpus_per_trial is not None else (1.0 if torch.cuda.is_available() else 0.0)
        return self.cpus_per_trial or (None if self.local else 1.0), (0.0 if self.local else gpus)

    def slots(self) -> tuple[int, int]:
        """(torch threads per trial, trials at once) on this machine."""
        cpus, gpus = self.resources()
        cores = available_cpus()
        if self.local:
            return (int(cpus) if cpus and cpus >= 1 else cores), 1
        at_once = int(cores // cpus)
        if gpus:
            at_once = min(at_once, int(torch.cuda.device_count() // gpus))
        return int(max(1, cpus)), max(1, min(at_once, self.max_concurrent or at_once))


def run_local(trials: list[RunConfig], run_dir: Path, collector: Collector, threads: int | None = None,
              progress: Progress | None = None) -> None:
    if threads:
        torch.set_num_threads(threads)
    progress = progress or Progress(len(trials), len(collector.rows), 1)
    show_bar = sys.stderr.isatty()
    labels = trial_labels(trials)
    for i, cfg in enumerate(trials, 1):
        tid = trial_id(cfg)
        if tid in collector.rows:  # finished in an earlier run (--resume)
            continue
        wd = trial_dir(run_dir, cfg)
        label = labels[tid]
        rows = finished_rows(wd)
        say(f"[{i}/{len(trials)}] {label} | {'done already' if rows else 'running'}")
        t0 = time.time()
        if rows is None:
            progress.begin(tid, checkpoint_step(wd / CHECKPOINT), cfg.train_steps)
            def report(m: dict[str, Any], tid=tid, label=label, steps=cfg.train_steps) -> None:
                progress.note(tid, label, steps, m)

            rows = run_trial_safe(cfg, wd, progress=None, report=None if show_bar else report)
        collector.add(rows)
        progress.trial_done(label, rows, time.time() - t0)
        if progress.shared_failure():
            raise SharedFailure(progress.shared_failure())


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
    tune.report({"step": rows[0].get("train_steps_done", 0), "status": rows[0]["status"], **final_scores(rows),
                 "rows_json": json.dumps(rows, default=str)})


def final_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The trial's scores as flat numbers for Tune's loggers (TensorBoard, MLflow, W&B), keyed
    ``SAMPLER:STEPS/METRIC``, e.g. ``ddim:10/fd_mnist_clf``."""
    out = {}
    for row in rows:
        for metric in str(row.get("metrics") or "").split(","):
            v = row.get(metric.strip())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{row.get('sampler')}:{row.get('sample_steps')}/{metric.strip()}"] = float(v)
    return out


class _Reporter:
    """Called by the trainer every few steps: metrics to Tune, plus the trainer's checkpoint file
    whenever it has been rewritten since the last report (Ray persists it in its storage)."""

    def __init__(self, workdir: Path):
        self.ckpt, self.last = workdir / CHECKPOINT, 0.0

    def __call__(self, metrics: dict[str, Any]) -> None:
        import tempfile

        from ray import tune

        stamp = self.ckpt.stat().st_mtime if self.ckpt.exists() else 0.0
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}  # str: "eval"
        if stamp <= self.last:
            tune.report(clean)
            return
        self.last = stamp
        with tempfile.TemporaryDirectory() as d:
            copy_atomic(self.ckpt, Path(d) / CHECKPOINT)  # with its checksum
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
            cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None, max_failures: int = 2,
            progress: Progress | None = None, track: tuple[str, ...] = (), verbose: bool = False) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    # Ctrl-C: a KeyboardInterrupt here (ray.shutdown, then run_grid says --resume), not Tune's own
    # handler, which marks the running trials as errored and points to Tuner.restore
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    progress = progress or Progress(len(trials), len(collector.rows), 1)
    labels = trial_labels(trials)
    steps = {trial_id(c): c.train_steps for c in trials}

    class Collect(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            progress.launched(trial_id(from_dict(trial.config).canonical()))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = trial_id(from_dict(trial.config).canonical()) if "rows_json" not in result else None
            if "rows_json" in result:
                rows = json.loads(result["rows_json"])
                collector.add(rows)
                progress.trial_done(labels.get(rows[0]["trial_id"], rows[0]["trial_id"]), rows)
            elif tid in labels:
                progress.note(tid, labels[tid], steps[tid], result)

    # "local": always a fresh cluster of this machine (with the cores Fanout.check counted), never
    # one that another run happens to have started
    init = {"address": address} if address else {"address": "local", "num_cpus": available_cpus()}
    on_term = signal.getsignal(signal.SIGTERM)
    ray.init(**init, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=True, ignore_reinit_error=True)
    if callable(on_term):  # ray.init puts its own SIGTERM handler in (it aborts the driver: exit 134, no
        signal.signal(signal.SIGTERM, on_term)  # --resume line); `kill` must end a Ray run like Ctrl-C
    try:
        if address:  # an existing cluster: a trial it cannot place would wait for ever
            have = ray.cluster_resources()
            if cpus_per_trial > have.get("CPU", 0) or gpus_per_trial > have.get("GPU", 0):
                raise InputError(f"the Ray cluster at {address} has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} "
                                 f"GPUs in all; a trial asks for {cpus_per_trial:g} and {gpus_per_trial:g}")
        # The trials are the grid's own deduplicated list, given as points to evaluate (a plain
        # grid_search would also run gaussian x every theta_0); see search_space.
        pending = [cfg for cfg in trials if trial_id(cfg) not in collector.rows]  # --resume skips the finished
        base, choices, points = search_space(grid, trials, pending)
        param_space = {**base, **{k: tune.choice(v) for k, v in choices.items()}}
        if not points:
            return
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, run_dir=str(run_dir.resolve()), threads=int(max(1, cpus_per_trial))),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        # --max-concurrent goes to the search algorithm itself: Tune ignores TuneConfig's
        # max_concurrent_trials when a search algorithm is given
        search = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_concurrent or 0)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search, num_samples=len(points), reuse_actors=False),
            run_config=tune.RunConfig(
                name="tune",
                stop=shared_failure_stopper(progress),
                storage_path=str((run_dir / "_work" / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                # a retried trial needs only Ray's newest checkpoint; keeping every one filled the disk
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[Collect(), *tracking.callbacks(track, run_dir, grid.name)],
                verbose=1 if verbose else 0,  # 0: Tune's tables off, so bench's progress lines stand out
            ),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    if progress.shared_failure():  # the trials it stopped are left to --resume, not recorded as failed
        raise SharedFailure(progress.shared_failure())
    for cfg in collector.missing():  # Ray gave up on it (e.g. the worker died more than max_failures times)
        wd = trial_dir(run_dir, cfg)
        rows = finished_rows(wd) or error_rows(cfg, RuntimeError(f"Ray trial failed; see {wd} and {run_dir / '_work' / 'ray'}"))
        collector.add(rows)
        progress.trial_done(labels[trial_id(cfg)], rows, 0.0)


def shared_failure_stopper(progress: Progress):
    """A Tune stopper that ends the whole grid once ``progress.shared_failure()`` says so."""
    from ray.tune.stopper import Stopper

    class _Stop(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return bool(progress.shared_failure())

    return _Stop()


def search_space(grid: Grid, trials: list[RunConfig], pending: list[RunConfig]) -> tuple[dict, dict, list[dict]]:
    """Tune's view of a grid: (fixed fields, {varied field: its values over ``trials``}, one point per
    pending trial). A point sets every varied field, None included: a field left to Tune would be
    drawn from the choices, and an arm that leaves a parameter at its default (None) would then run
    with another arm's value."""
    varied = grid.varied()  # the axes and the [[arms]] fields
    choices = {k: list(dict.fromkeys(getattr(c, k) for c in trials)) for k in varied}
    points = [{k: getattr(cfg, k) for k in varied} for cfg in pending]
    return grid.base, choices, points
