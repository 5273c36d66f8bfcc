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
import math
import os
import shlex
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.data.datasets import DATASETS, load_dataset
from bench.experiment import claims, rundir
from bench.experiment.config import RunConfig, from_dict, trial_id, trial_labels
from bench.experiment.grid import Grid, check_params_apply, load_grid, validate_trials
from bench.experiment.rundir import trial_dir, write_rows
from bench.files import copy_atomic, save_npz_atomic, write_text_atomic
from bench.images import save_grid
from bench.models.unet import build_model, count_params
from bench.progress import PROGRESS_EVERY_S, duration
from bench.registry import InputError
from bench.report import build_report
from bench.run import tracking
from bench.run.resources import check_memory
from bench.run.trial import PER_IMAGE_MAX_DIM, checkpoint_step, error_rows, finished_rows, run_trial_safe
from bench.scoring.features import FEATURES
from bench.scoring.metrics import METRICS, floor, reference_stats, release_extractors
from bench.training import trained
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

    def check(self) -> None:
        """Resources that cannot be had are bad input (exit 2) here, before any work: a Ray trial
        that asks for more cores or GPUs than the cluster has would wait for ever, and an
        unreachable --address would retry for ever."""
        for name, v in (("--cpus-per-trial", self.cpus_per_trial), ("--gpus-per-trial", self.gpus_per_trial)):
            if v is not None and not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v}")
        if (self.cpus_per_trial is not None and self.cpus_per_trial <= 0) or (
                self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise InputError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise InputError("--max-concurrent must be >= 1")
        if self.local and self.address:
            raise InputError("--local runs in this process; it cannot be combined with --address")
        if self.local and self.track:
            raise InputError("--track goes through Ray Tune's callbacks; drop --local (the TensorBoard files of a Ray "
                             "run need no --track)")
        for name in self.track:
            tracking.TRACKERS.get(name).check(name)
        if self.local and self.gpus_per_trial is not None:
            raise InputError("--gpus-per-trial applies to Ray trials; --local runs every trial in this process on "
                             f"{'the GPU' if torch.cuda.is_available() else 'the CPU'} (drop --local to fan out)")
        if self.address:
            check_reachable(self.address)
            return
        cores, gpus = available_cpus(), torch.cuda.device_count()
        if self.cpus_per_trial is not None and self.cpus_per_trial > cores:
            raise InputError(f"--cpus-per-trial {self.cpus_per_trial:g}: this machine has {cores} cores, so no trial "
                             f"could ever start; use at most {cores}")
        if self.gpus_per_trial and self.gpus_per_trial > gpus:
            raise InputError(f"--gpus-per-trial {self.gpus_per_trial:g}: this machine has {gpus} CUDA GPU"
                             f"{'s' if gpus != 1 else ''}, so no trial could ever start"
                             + ("; use --gpus-per-trial 0 (or leave it out) to run on the CPU" if not gpus else ""))

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


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """InputError unless something listens at ``address`` (HOST:PORT, also ray://HOST:PORT)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise InputError(f"cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}): start one there "
                         f"with `ray start --head --port={port}`, or leave out --address to use this machine") from None


@dataclass
class Plan:
    """A validated grid, ready to run: its trials and the run directory they write."""

    grid: Grid
    trials: list[RunConfig]
    run_dir: Path
    resume: bool
    problems: list[str] = field(default_factory=list)  # run_grid: what could not be saved (the CLI exits 1)
    unmeasured: list[str] = field(default_factory=list)  # the grid's claims this preset cannot measure


def plan_grid(grid: str | Path | Grid, preset: str = "full", overrides: dict[str, Any] | None = None,
              out: Path | None = None, resume: bool = False) -> Plan:
    """Load and validate every trial of a grid and check its run directory: all bad input raises
    InputError here, before any work."""
    grid = grid if isinstance(grid, Grid) else load_grid(str(grid), preset, overrides)
    if not grid.base and not grid.axes and not grid.arms:
        raise InputError(f"grid {grid.name!r} has neither [base] nor [axes] nor [[arms]]: it would run one trial of the defaults; "
                         f"see experiments/schedules.toml for the format")
    trials = grid.trials()
    check_memory(trials)  # before anything allocates what the config implies (validation builds schedules)
    check_params_apply(grid, trials, overrides)
    validate_trials(trials)
    # the smaller presets narrow the evaluations on purpose: claims they cannot measure are left out
    unmeasured: list[str] = []
    grid.claims = claims.check(grid.claims, trials, f"grid {grid.name!r}", strict=grid.preset == "full" and not overrides,
                               notes=unmeasured)
    grid.notes += unmeasured  # the dry run prints them
    check_late_failures(trials)
    run_dir = Path(out) if out else (rundir.latest_run_dir(grid) if resume else None) or rundir.default_run_dir(grid)
    rundir.check(run_dir, grid, resume)
    if resume:
        resume_state(run_dir, trials)  # unrecoverable rows.csv: exit 2 now, before anything is written
    return Plan(grid, trials, run_dir, resume, unmeasured=unmeasured)


def check_late_failures(trials: list[RunConfig]) -> None:
    """What used to fail only after a trial had trained (exit 1 after minutes), as InputError now:
    an image size the model cannot take, fewer than 2 generated or reference images (no
    covariance), no metric, the same evaluation twice."""
    seen: set[tuple] = set()
    for i, cfg in enumerate(trials):
        spec = DATASETS.get(cfg.dataset)
        key = (cfg.model, spec.channels, cfg.image_size or spec.size, cfg.n_samples, cfg.n_reference, cfg.metrics, cfg.evals)
        if key in seen:
            continue
        seen.add(key)
        where = f"trial {i} (schedule={cfg.schedule}, noise={cfg.noise}, dataset={cfg.dataset}, seed={cfg.seed})"
        try:
            with torch.device("meta"):
                build_model(cfg.model, spec.channels, cfg.image_size or spec.size)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        if not cfg.metric_names:
            raise InputError(f"{where}: metrics is empty: name at least one (python -m bench ls metrics)")
        if cfg.n_samples < 2:
            raise InputError(f"{where}: n_samples={cfg.n_samples}: the metrics need at least 2 generated images")
        if cfg.n_reference == 1:
            raise InputError(f"{where}: n_reference=1: the metrics need at least 2 reference images (0 = the default)")
        dup = sorted({e for e in cfg.evaluations if cfg.evaluations.count(e) > 1})
        if dup:
            raise InputError(f"{where}: evals lists {', '.join(f'{s}:{n}' for s, n in dup)} twice")


def run_grid(plan: Plan, fanout: Fanout = Fanout()) -> list[dict[str, Any]]:
    """Run a planned grid: floors first (they compute every reference statistic once, with all
    cores), then every trial not finished earlier, then the report. Returns the rows (also in
    rows.csv). A trial that raises becomes error rows; the others still run.

    The run directory is locked for the whole run (a second run into it is refused, naming this
    one). On --resume the earlier rows are checked before anything is written; env.json keeps the
    earlier sessions. Ctrl-C stops cleanly: finished trials are kept, the interrupted ones are left
    to --resume (never recorded as failed), and KeyboardInterrupt is re-raised."""
    fanout.check()
    run_dir, trials = plan.run_dir, plan.trials
    rundir.check_space(run_dir, disk_needed(trials, ray=not fanout.local))
    with rundir.locked(run_dir):
        rundir.check(run_dir, plan.grid, plan.resume, probe_lock=False)  # again, now that no other run can write
        finished, notes = resume_state(run_dir, trials) if plan.resume else ({}, [])
        rundir.prepare(run_dir, plan.grid)
        t0 = time.time()
        cpus, gpus = fanout.resources()
        env = rundir.write_env(run_dir, {"runner": "local" if fanout.local else "ray", "address": fanout.address,
                                         "cpus_per_trial": cpus, "gpus_per_trial": gpus}, resume=plan.resume)
        collector = Collector(run_dir, trials)
        collector.rows.update(finished)
        collector.flush()
        for note in notes:
            _say(f"warning: {note}")
        done = len(finished)
        _say(f"{len(trials)} trials of grid {plan.grid.name!r} ({plan.grid.preset}) -> {run_dir}"
             + (f" ({done} finished earlier)" if done else ""))
        for note in plan.unmeasured:
            _say(note)
        _guarded("floors", run_dir, lambda: write_floors(run_dir, trials))
        _guarded("held-out image grids", run_dir, lambda: write_real_grids(run_dir, trials))
        t_fan = time.time()
        progress = Progress(len(trials), done, fanout.slots()[1])
        try:
            if fanout.local:
                run_local(trials, run_dir, collector, threads=fanout.slots()[0], progress=progress)
            else:
                run_ray(plan.grid, trials, run_dir, collector, fanout.address, cpus, gpus, fanout.max_concurrent,
                        progress=progress, track=fanout.track, verbose=fanout.verbose)
        except SharedFailure as e:
            collector.flush()
            _finish(run_dir, env, t0, t_fan, plan)
            plan.problems.append(f"stopped: the first trials failed alike ({e})")
            _say(f"error: stopped after the first {SHARED_AFTER} trials failed with the same error, which every trial would "
                 f"meet: {e}. No report was written. Fix the cause, then continue with: {resume_command(plan)}")
            return [r for cfg in trials for r in collector.rows.get(trial_id(cfg), [])]
        except KeyboardInterrupt:
            collector.flush()
            _finish(run_dir, env, t0, t_fan, plan)
            n_done = sum(1 for cfg in trials if trial_id(cfg) in collector.rows)
            _say(f"interrupted: {n_done} of {len(trials)} trials finished and kept in {run_dir / rundir.ROWS}; the "
                 f"interrupted ones resume from their checkpoints with: {resume_command(plan)}")
            raise
        _finish(run_dir, env, t0, t_fan, plan)
        index_trained(trials, run_dir, collector)
        if any(r.get("status") in ("ok", "diverged") for rs in collector.rows.values() for r in rs):
            _guarded("report", run_dir, lambda: build_report(run_dir))
        else:  # a report "scored with none" would read as a run
            _say("no trial finished: no report written (the errors are in rows.csv and each trial's error.txt)")
        if collector.unsaved:
            collector.flush()
        if collector.unsaved:
            plan.problems.append(f"rows.csv could not be written ({collector.unsaved})")
            _say(f"error: {run_dir / rundir.ROWS} could not be written ({collector.unsaved}); the trials' results are in "
                 f"{run_dir / '_work' / 'trials'}/*/result.json: free space, then {resume_command(plan)} rebuilds it")
        rows = [r for cfg in trials for r in collector.rows.get(trial_id(cfg), [])]
        statuses = {r["trial_id"]: r["status"] for r in rows}
        n_err, n_div = sum(s == "error" for s in statuses.values()), sum(s == "diverged" for s in statuses.values())
        _say(f"done in {time.time() - t0:.0f} s: {len(trials) - n_err - n_div} ok, {n_div} diverged, {n_err} error; "
             + (f"rows in {run_dir / rundir.ROWS}" if not collector.unsaved else "rows NOT saved (see above)"))
    return rows


def index_trained(trials: list[RunConfig], run_dir: Path, collector: Collector) -> None:
    """Point the trained-model index (bench.training.trained) at every trial of the run that trained to the
    end, also those finished in an earlier session or before the index existed, so that an
    evaluation-only grid (reuse_training) can adopt them."""
    for cfg in trials:
        rows = collector.rows.get(trial_id(cfg)) or []
        wd = trial_dir(run_dir, cfg)
        if rows and rows[0].get("status") == "ok" and rows[0].get("train_steps_done") == cfg.train_steps \
                and (wd / CHECKPOINT).exists():
            trained.register(cfg, wd, trial_id(cfg))


def _finish(run_dir: Path, env: dict, t0: float, t_fan: float, plan: Plan) -> None:
    try:
        rundir.finish(run_dir, env, time.time() - t0, fanout_s=time.time() - t_fan)
    except OSError as e:
        plan.problems.append(f"env.json could not be written ({e.strerror or e})")
        _say(f"warning: {run_dir / rundir.ENV} could not be written ({e.strerror or e})")


def resume_command(plan: Plan) -> str:
    """The command that continues this run (the same grid, preset and --set; the run dir)."""
    sets = [shlex.quote(n[len("--set "):]) for n in plan.grid.notes if n.startswith("--set ")]
    return " ".join(["python -m bench run --grid", shlex.quote(plan.grid.source or plan.grid.name), "--preset", plan.grid.preset,
                     *[f"--set {x}" for x in sets], "--out", shlex.quote(str(plan.run_dir)), "--resume"])


def disk_needed(trials: list[RunConfig], ray: bool) -> int:
    """Bytes a run needs at least: each trial's checkpoint (model, EMA, two Adam moments: 16 bytes
    a parameter; under Ray also the two copies Ray keeps), written through a temp file, plus ~1 MB
    of samples and logs a trial."""
    params: dict[tuple, int] = {}
    total = 20 * 2**20
    for cfg in trials:
        spec = DATASETS.get(cfg.dataset)
        key = (cfg.model, spec.channels)
        if key not in params:
            with torch.device("meta"):
                params[key] = count_params(build_model(cfg.model, spec.channels, cfg.image_size or spec.size))
        total += params[key] * 16 * (3 if ray else 1) + 2**20
    return total


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
        if not isinstance(e, OSError):  # a full disk needs no traceback
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
    first = sorted({FEATURES.get(METRICS.get(m).feature).label for k in keys for m in k[4]})
    _say(f"real-vs-real floors and reference statistics ({len(keys)} set{'s' if len(keys) > 1 else ''}, features: "
         f"{', '.join(first)}; a first run computes and caches them, and trains the MNIST classifier if it uses it: "
         f"minutes on a CPU, with progress below)")
    for dataset, root, size, n, metrics, n_ref in keys:
        t1 = time.time()
        res = floor(list(metrics), dataset, n, data_root=root, image_size=size, n_reference=n_ref or None,
                    progress=True)  # a bar on a terminal, a line every 30 s in a log
        rows.append({"dataset": dataset, "image_size": size, "n_samples": n, **res, "floor_s": time.time() - t1})
    write_text_atomic(run_dir / rundir.FLOORS, pd.DataFrame(rows).to_csv(index=False))
    write_references(run_dir, trials)
    release_extractors()
    _say(f"real-vs-real floors and reference statistics ready ({time.time() - t0:.0f} s)")



def write_real_grids(run_dir: Path, trials: list[RunConfig]) -> None:
    """samples/real_<dataset>.png: the first 64 held-out images of each dataset at the trials' size,
    the report's "by eye" reference beside the arms' samples (``bench.report.montage``)."""
    for dataset, root, size in dict.fromkeys((c.dataset, c.data_root, c.image_size) for c in trials):
        path = run_dir / "samples" / rundir.real_grid(dataset)
        if not path.exists():  # the first size of a dataset (grids of one dataset at two sizes are rare)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_grid(load_dataset(dataset, "heldout", root, size)[:64], path)


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
            _say(f"warning: samples/logs of trial {tid} not copied to {self.run_dir} ({e.strerror or e})")
        self.flush()

    def flush(self) -> None:
        ordered = [r for cfg in self.trials for r in self.rows.get(trial_id(cfg), [])]
        if not ordered:
            return
        try:
            write_rows(self.run_dir, ordered)
        except OSError as e:
            if not self.unsaved:
                _say(f"warning: cannot write {self.run_dir / rundir.ROWS} ({e.strerror or e}); the rows are kept and "
                     f"written as soon as that works")
            self.unsaved = e.strerror or str(e)
        else:
            self.unsaved = ""

    def missing(self) -> list[RunConfig]:
        return [cfg for cfg in self.trials if trial_id(cfg) not in self.rows]


SHARED_AFTER = 2  # trials failing alike before the grid stops
SHARED_CAUSES = ("DataError", "ModuleNotFoundError", "ImportError", "PermissionError", "FileNotFoundError")


class SharedFailure(RuntimeError):
    """Every trial so far failed with the same data or environment error (``Progress.shared_failure``)."""


class Progress:
    """What the driver says while trials run: a line per finished trial with its time and the grid's
    ETA, and, between them, at most one line every ``PROGRESS_EVERY_S`` seconds (on a terminal the
    trainer's bar shows the steps instead under --local).

    ETA = (pending trials x T + the running trials' step fraction left x T) / trials at once, and at
    least the longest running trial's time left (T once any trial is pending). T is the mean
    duration of the trials this session trained from their start: a --resume restarts trials from
    their checkpoints, and an adopted (``reuse_training``) trial only evaluates, so a trial counts
    in T only if its attempt began at most ``FRESH`` into its steps (the trainer's ``start_step``,
    or ``begin``) and it trained here. Until one such trial has finished, T is the running trials'
    step rate (from when this session first saw them to their latest reported step, so that an
    evaluation in progress does not slow it; earlier curve evaluations still count) x their steps:
    training only, a lower bound."""

    FRESH = 0.05  # a trial whose attempt began at most this far into its steps ran from its start

    def __init__(self, total: int, done_before: int, at_once: int):
        self.total, self.done_before, self.at_once = total, done_before, max(1, at_once)
        self.t0 = self.last = time.time()
        self.finished: list[str] = []  # statuses of trials finished in this session
        self.errors: list[str] = []  # their error messages ("" for a trial that did not raise)
        self.stopped_by = ""  # the shared error that stopped the grid (shared_failure)
        self.durations: list[float] = []  # seconds of the trials finished in this session that trained from their start
        self.running: dict[str, tuple[int, int]] = {}  # trial id -> (step, of steps)
        self.first_seen: dict[str, tuple[int, float]] = {}  # trial id -> (step, time) when this session first saw it
        self.stepped_at: dict[str, float] = {}  # trial id -> when its step last advanced (its evaluations take no steps)
        self.start: dict[str, int] = {}  # trial id -> the step its latest attempt began at
        self.started: set[str] = set()  # trials started and not finished, training or only evaluating (⊇ running)
        self.sampled_by: dict[str, float] = {}  # trial id -> when its sampling under way should end, at its rate

    def begin(self, tid: str, start: int, steps: int) -> None:
        """A trial's attempt starts at step ``start`` (its checkpoint's; 0 for a new trial), silently."""
        self.running[tid], self.start[tid] = (start, steps), start
        self.first_seen[tid] = (start, time.time())
        self.started.add(tid)

    def launched(self, tid: str) -> None:
        """A trial started whose steps are not known yet (Ray: before its first report; an adopted
        trial never reports steps, it only evaluates): counted as running, not in the ETA."""
        self.started.add(tid)

    def _training_s(self, tid: str, step: int, steps: int) -> float | None:
        """A running trial's whole training time at its step rate since first seen (None: no rate yet)."""
        s0, t0 = self.first_seen.get(tid, (0, self.t0))
        rate = (step - s0) / max(self.stepped_at.get(tid, time.time()) - t0, 1e-9)
        return steps / rate if rate > 0 else None

    def eta(self) -> str:
        left = self.total - self.done_before - len(self.finished)
        if not left:
            return "all finished"
        if self.durations:
            per_trial, bound = sum(self.durations) / len(self.durations), ""
        else:
            estimates = [t for tid, (s, n) in self.running.items() if (t := self._training_s(tid, s, n))]
            if not estimates:
                return "ETA after the first trial trained from its start" if self.finished else "ETA after the first trial"
            per_trial, bound = sum(estimates) / len(estimates), "> "
        fractions_left = [1 - s / n for s, n in self.running.values() if n]
        todo = left - sum(1 - f for f in fractions_left)
        longest = max([*fractions_left, 1.0 if left > len(self.running) else 0.0])  # a slot cannot split a trial
        eta_s = max(todo / self.at_once, longest) * per_trial
        if not bound:
            return f"ETA {duration(eta_s)}"
        sampling_s = max((t - time.time() for t in self.sampled_by.values()), default=0.0)
        if sampling_s > eta_s:  # every running trial has trained: what is known is the sampling under way
            return f"ETA > {duration(sampling_s)} (the sampling under way only, until a trial finishes)"
        return f"ETA > {duration(eta_s)} (training only, until a trial finishes)"

    def shared_failure(self) -> str:
        """The error every trial of this session has met so far, when it is one that every other
        trial would meet too (``SHARED_CAUSES``: data, environment) and at least ``SHARED_AFTER``
        trials met it; else "". Then the grid stops instead of failing each trial after its minutes
        of work (issue 31: 20 trials failed one by one on a data root the workers could not see)."""
        if not self.stopped_by and len(self.errors) >= SHARED_AFTER and len(set(self.errors)) == 1:
            error = self.errors[0]
            self.stopped_by = error if error.split(":", 1)[0] in SHARED_CAUSES else ""
        return self.stopped_by  # latched: a trial finishing after the stop does not undo it

    def counts(self) -> str:
        failed = sum(s == "error" for s in self.finished)
        done = self.done_before + len(self.finished)
        return f"{done} finished ({failed} failed), {len(self.started)} running of {self.total}"

    def trial_done(self, label: str, rows: list[dict[str, Any]], seconds: float | None = None) -> None:
        status = rows[0]["status"]
        tid = rows[0]["trial_id"]
        _, steps = self.running.pop(tid, (0, 0))
        self.first_seen.pop(tid, None)
        self.stepped_at.pop(tid, None)
        self.sampled_by.pop(tid, None)
        self.started.discard(tid)
        start = self.start.pop(tid, None)  # None: never seen starting or training (adopted, failed early, ...)
        self.finished.append(status)
        self.errors.append(str(rows[0].get("error", "")) if status == "error" else "")
        seconds = seconds if seconds is not None else max((r.get("trial_s") or 0 for r in rows), default=0)
        trained_here = start is not None and steps > 0 and start <= self.FRESH * steps and not rows[0].get("trained_in")
        if status == "ok" and seconds > 0 and trained_here:
            self.durations.append(seconds)
        extra = f": {rows[0].get('error', '')}" if status == "error" else ""  # whole: a cut message hides its cause
        _say(f"[{self.done_before + len(self.finished)}/{self.total}] {label}: {status} in {duration(seconds)}{extra}; "
             f"{self.counts()}; {self.eta()}")
        self.last = time.time()

    def note(self, tid: str, label: str, steps: int, m: dict[str, Any]) -> None:
        """A running trial's report (the trainer's or, while it samples, ``bench.run.trial.sampling_ticks``'),
        to ``step`` or ``evaluating``; anything else (Tune's own results) is ignored."""
        if "eval_step" in m:
            self.evaluating(tid, label, str(m.get("eval", "")), int(m["eval_step"]), int(m["eval_steps"]),
                            float(m.get("eval_s") or 0.0))
        elif "step" in m:
            self.step(tid, label, int(m["step"]), steps, m.get("images_per_s"), start=m.get("start_step"))

    def evaluating(self, tid: str, label: str, what: str, done: int, total: int, seconds: float) -> None:
        """A running trial samples for an evaluation (``what``, e.g. ddpm:1000; ``done`` of ``total``
        sampler steps over all batches, ``seconds`` in): at most one line per ``PROGRESS_EVERY_S`` with the
        rate and this sampling's ETA = (total - done) / rate; scoring follows it."""
        self.started.add(tid)
        rate = done / seconds if seconds > 0 else 0.0
        if rate > 0:
            self.sampled_by[tid] = time.time() + (total - done) / rate
        if time.time() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.time()
        left = f"ETA {duration((total - done) / rate)}" if rate > 0 else "ETA unknown"
        _say(f"running {label}: sampling {what}, step {done}/{total}, {rate:.2f} steps/s, {left}; {self.counts()}; "
             f"{self.eta()}")

    def step(self, tid: str, label: str, step: int, steps: int, rate: float | None = None, force: bool = False,
             start: int | None = None) -> None:
        """A progress report of a running trial; ``start``: where its attempt began (the latest attempt
        wins: a Ray retry from a checkpoint is not a trial trained from its start)."""
        self.running[tid] = (step, steps)
        self.started.add(tid)
        self.first_seen.setdefault(tid, (step, time.time()))
        self.stepped_at[tid] = time.time()  # the trainer reports only as its steps advance
        if start is not None:
            self.start[tid] = int(start)
        else:
            self.start.setdefault(tid, step)
        if not force and time.time() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.time()
        rate_s = f", {rate:.0f} img/s" if rate else ""
        _say(f"running {label}: step {step}/{steps}{rate_s}; {self.counts()}; {self.eta()}")


def write_references(run_dir: Path, trials: list[RunConfig]) -> None:
    """references/<dataset>-<size>px-<feature>-n<n>.npz: mean and covariance (float64) of the reference
    features of every small extractor the trials score with, so that the report can recompute a
    Fréchet distance from the committed per-image features (its two-level bootstrap)."""
    for c in {c.canonical() for c in trials}:
        for feature in sorted({METRICS.get(m).feature for m in c.metric_names}):
            if FEATURES.get(feature).dim > PER_IMAGE_MAX_DIM:
                continue
            ref = reference_stats(c.dataset, "train", feature, c.n_reference or None, c.data_root, c.image_size)
            size = c.image_size or DATASETS.get(c.dataset).size
            path = run_dir / "references" / f"{c.dataset}-{size}px-{feature}-n{ref['keys']['n_images']}.npz"
            if not path.exists():
                save_npz_atomic(path, {"mu": ref["mu"].numpy(), "sigma": ref["sigma"].numpy()})


def publish_artifacts(run_dir: Path, workdir: Path, tid: str) -> None:
    """Copy a trial's light artifacts out of _work (never committed) into the run dir, so the report
    can be rebuilt from the run's own files: sample grids and denoising strips -> samples/, loss logs -> logs/,
    per-image features -> per_image/."""
    for src, dst, pattern in [(workdir / "samples", run_dir / "samples", "*.png"), (workdir, run_dir / "logs", "loss*.csv"),
                              (workdir / "per_image", run_dir / "per_image", "*.npz")]:
        for f in sorted(src.glob(pattern)) if src.is_dir() else []:
            copy_atomic(f, dst / f"{tid}_{f.name}")


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
        _say(f"[{i}/{len(trials)}] {label} | {'done already' if rows else 'running'}")
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


def preload_finished(trials: list[RunConfig], run_dir: Path, collector: Collector) -> int:
    """Resume: put the rows of the trials that finished in an earlier run of this run dir into the
    collector (see ``resume_state``); returns how many."""
    finished, notes = resume_state(run_dir, trials)
    for note in notes:
        _say(f"warning: {note}")
    collector.rows.update(finished)
    collector.flush()
    return len(finished)


def resume_state(run_dir: Path, trials: list[RunConfig]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The rows of the trials that finished in an earlier session of ``run_dir`` and notes on what
    was not usable. Writes nothing.

    rows.csv is a derived file: a trial's rows come from its work dir's result.json when there is
    one, and from rows.csv only where _work is gone (a fresh checkout of committed results) — and
    then only if they are complete (every field of every row, every evaluation, every metric
    present or skipped with a reason); a trial whose rows are cut short runs again. A rows.csv
    that is not a rows table at all is rebuilt from the results in _work; with _work gone too,
    nothing can be recovered and that is an InputError."""
    df, bad, problem = rundir.parse_rows(run_dir)
    finished: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for cfg in trials:
        tid = trial_id(cfg)
        wd = trial_dir(run_dir, cfg)
        rows = finished_rows(wd)
        if rows is None and not problem and not wd.exists():  # a work dir, when there is one, is the truth
            rows, why = _complete_rows(cfg, df[df["trial_id"] == tid], bad.get(tid, ""))
            if why:
                notes.append(f"trial {tid} ({cfg.arm()}, seed {cfg.seed}): {why}; it runs again")
        if rows:
            finished[tid] = rows
    if problem:
        if not (run_dir / "_work" / "trials").is_dir():
            raise InputError(f"{problem}, and {run_dir / '_work'} is gone, so the finished trials cannot be recovered: "
                             f"restore it (e.g. `git checkout -- {run_dir / rundir.ROWS}`), or move it aside to run the grid again")
        notes.append(f"{problem}: rebuilt from the {len(finished)} finished trials in {run_dir / '_work' / 'trials'}; "
                     f"the other {len(trials) - len(finished)} run")
    return finished, notes


def _complete_rows(cfg: RunConfig, mine: pd.DataFrame, bad: str) -> tuple[list[dict[str, Any]] | None, str]:
    """A trial's rows from rows.csv if they show it finished (ok or diverged) completely, else None
    and why not ("" when it simply has not finished)."""
    if bad:
        return None, bad
    if mine.empty or not mine["status"].isin(["ok", "diverged"]).all():
        return None, ""
    rows = [{k: v for k, v in r.items() if pd.notna(v)} for r in mine.to_dict("records")]
    final: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        try:
            key = (str(r["sampler"]), int(float(r["sample_steps"])))
        except (KeyError, TypeError, ValueError):
            return None, "a row of rows.csv has no sampler or sample_steps"
        if key not in final or float(r.get("train_step", 0)) >= float(final[key].get("train_step", 0)):
            final[key] = r
    for key in cfg.evaluations:
        r = final.get((key[0], key[1]))
        if r is None:
            return None, f"rows.csv has no row for its evaluation {key[0]}:{key[1]}"
        if r["status"] == "ok":
            lost = [m for m in cfg.metric_names if m not in r and f"{m}_skipped" not in r]
            if lost:
                return None, f"rows.csv has no {', '.join(lost)} for {key[0]}:{key[1]} (a row cut short?)"
    return rows, ""
