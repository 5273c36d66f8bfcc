"""Every check that must pass before any work starts, in one place: ``check_before_work`` runs them
once, for the plan (``bench.run.plan.plan_grid``), in the order a user would fix them. Each failure
is an ``InputError``: one line, exit 2, nothing started."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import torch

from bench.data.datasets import DATASETS, load_dataset
from bench.experiment import claims, reference_ranks, rundir
from bench.experiment.config import RunConfig
from bench.experiment.grid import Grid, check_params_apply, validate_trials
from bench.files import cache_dir, check_writable
from bench.models.unet import build_model, count_params
from bench.registry import InputError
from bench.run import tracking
from bench.run.fanout import Fanout, available_cpus
from bench.run.resources import check_memory
from bench.run.resume import resume_state


def check_before_work(grid: Grid, trials: list[RunConfig], overrides: dict[str, Any] | None, run_dir: Path,
                      resume: bool, fanout: Fanout) -> tuple[dict[tuple[str, str, int, str], int], list[str]]:
    """Every rule a run must meet before any work, each written once below, in the order a user would
    fix them: the fan-out's resources (cores, GPUs, a reachable cluster, the trackers), the memory one
    trial needs, the grid (parameters that apply, valid trials, what used to fail late), its claims,
    the run directory (free, or resumable from readable rows), the disk, the data and the cache.
    Returns (images per dataset split, the grid's claims this preset cannot measure)."""
    check_fanout(fanout)
    check_memory(trials)  # before anything allocates what the config implies (validation builds schedules)
    check_params_apply(grid, trials, overrides)
    validate_trials(trials)
    unmeasured = check_claims(grid, trials, overrides)
    check_late_failures(trials)
    rundir.check(run_dir, grid, resume)
    if resume:
        resume_state(run_dir, trials)  # an unrecoverable rows.csv: exit 2 now, before anything is written
    rundir.check_space(run_dir, disk_needed(trials, ray=not fanout.local))
    return check_data(trials), unmeasured


def check_fanout(fanout: Fanout) -> None:
    """Resources that cannot be had are bad input (exit 2) here, before any work: a Ray trial
    that asks for more cores or GPUs than the cluster has would wait for ever, and an
    unreachable --address would retry for ever."""
    for name, v in (("--cpus-per-trial", fanout.cpus_per_trial), ("--gpus-per-trial", fanout.gpus_per_trial)):
        if v is not None and not math.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v}")
    if (fanout.cpus_per_trial is not None and fanout.cpus_per_trial <= 0) or (
            fanout.gpus_per_trial is not None and fanout.gpus_per_trial < 0):
        raise InputError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if fanout.max_concurrent is not None and fanout.max_concurrent < 1:
        raise InputError("--max-concurrent must be >= 1")
    if fanout.local and fanout.address:
        raise InputError("--local runs in this process; it cannot be combined with --address")
    if fanout.local and fanout.track:
        raise InputError("--track goes through Ray Tune's callbacks; drop --local (the TensorBoard files of a Ray "
                         "run need no --track)")
    for name in fanout.track:
        tracking.TRACKERS.get(name).check(name)
    if fanout.local and fanout.gpus_per_trial is not None:
        raise InputError("--gpus-per-trial applies to Ray trials; --local runs every trial in this process on "
                         f"{'the GPU' if torch.cuda.is_available() else 'the CPU'} (drop --local to fan out)")
    if fanout.address:
        check_reachable(fanout.address)
        return
    cores, gpus = available_cpus(), torch.cuda.device_count()
    if fanout.cpus_per_trial is not None and fanout.cpus_per_trial > cores:
        raise InputError(f"--cpus-per-trial {fanout.cpus_per_trial:g}: this machine has {cores} cores, so no trial "
                         f"could ever start; use at most {cores}")
    if fanout.gpus_per_trial and fanout.gpus_per_trial > gpus:
        raise InputError(f"--gpus-per-trial {fanout.gpus_per_trial:g}: this machine has {gpus} CUDA GPU"
                         f"{'s' if gpus != 1 else ''}, so no trial could ever start"
                         + ("; use --gpus-per-trial 0 (or leave it out) to run on the CPU" if not gpus else ""))


def check_claims(grid: Grid, trials: list[RunConfig], overrides: dict[str, Any] | None) -> list[str]:
    """The grid's [[claims]] and [[reference_ranks]] against its trials (strict for the full preset as written);
    the smaller presets narrow the evaluations on purpose, so the claims and reference ranks they cannot measure are
    left out and returned as notes (the dry run prints them)."""
    unmeasured: list[str] = []
    strict = grid.preset == "full" and not overrides
    grid.claims = claims.check(grid.claims, trials, f"grid {grid.name!r}", strict=strict, notes=unmeasured)
    grid.reference_ranks = reference_ranks.check(grid.reference_ranks, trials, f"grid {grid.name!r}", strict=strict, notes=unmeasured)
    grid.notes += unmeasured
    return unmeasured


def check_data(trials: list[RunConfig]) -> dict[tuple[str, str, int, str], int]:
    """Load both splits of every dataset the grid uses once, so that a missing or corrupt file
    (also a held-out image, which only the floors and the denoising strip read, after training) is
    exit 2 before any work; and check that the cache folder can be written. Returns the number of
    images per (dataset, data_root, image_size, split)."""
    problem = check_writable(cache_dir(create=False), "the cache folder ($BENCH_CACHE)")
    if problem:
        raise InputError(f"{problem}: set BENCH_CACHE to a writable folder")
    sizes = {}
    for dataset, root, size in sorted({(c.dataset, c.data_root, c.image_size) for c in trials}):
        for split in ("train", "heldout"):
            sizes[(dataset, root, size, split)] = len(load_dataset(dataset, split, root, size))
    return sizes


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
