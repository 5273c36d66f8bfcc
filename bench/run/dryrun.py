"""The dry run: data checks and the trial plan with a measured time estimate (``bench run --dry-run``).

How the estimate is made, bounded in memory and time (under a minute and ~2 GB on a 2-core CPU, also
for the full grids; the old dry run timed the base UNet at 64x64, batch 128 on the CPU and was
killed for memory at ~22 GB):

- training: the real training step (``bench.training.benchstep.BenchStep``) is timed at a *small batch*: it starts
  at 1 image and doubles while one step takes under ``TIMING_STEP_S`` seconds, up to the trial's
  batch. Seconds per step = seconds per image at the largest batch timed x the trial's batch
  (linear scaling: close on a CPU, where a convolution costs per image; on a GPU, which small
  batches leave idle, it errs high). The tiny UNet at batch 32 is timed at 32; the base UNet at
  64x64 at 1 or 2 images, so activations stay small.
- sampling: the model's forward pass timed the same way (up to the sampling batch), times the
  model evaluations (sampler steps x evaluations per step) x images of every evaluation, and of
  the learning-curve evaluations (``eval_at``).
- scoring: for each feature extractor the trial's metrics use (features are computed once per
  extractor), images / (its declared ``cpu_images_per_s`` x the trial's threads), x80 on CUDA. The
  declared rates are per CPU thread and were calibrated on the 2-core CPU of the committed runs:
  Inception's 5 img/s is what the quick runs measured (39 s to score 200 images per evaluation, one
  thread per trial, two trials at once), and ``bench perf`` measures 13 img/s with 2 threads alone.
- evaluation-only trials (``reuse_training``) that will adopt a trained model (one indexed by
  ``bench.training.trained``, or one an earlier trial of the plan trains) cost no training time.
- reference statistics and floors that are not cached yet: their images at the rates above with
  every thread (the driver computes them before the fan-out).
- every time is taken with the threads one trial gets (1 under Ray by default, every core with
  ``--local``); the trials then run ``concurrent`` at a time (cores / --cpus-per-trial, capped by
  --max-concurrent) in plan order, each into the slot that frees first, plus Ray's start-up and a
  per-trial overhead (``RAY_START_S``, ``TRIAL_OVERHEAD_S``; from the committed runs' fan-out times).
- each timing is the fastest of two calls after a warm-up call (one call where the warm-up took over
  a second), and on a CPU it is the call's CPU seconds divided by the threads (when below its
  wall-clock time): other processes slow a call's wall-clock time down more than its CPU time, so
  the estimate is closer to this machine when the run has it to itself.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.data.datasets import DATASETS
from bench.env import device_name, pick_device
from bench.experiment.config import RunConfig, build_process
from bench.experiment.grid import Grid
from bench.experiment.labels import arm_labels_of
from bench.progress import duration
from bench.run.checks import check_data
from bench.sampling.sample import SAMPLERS, sampler_options
from bench.scoring.features import FEATURES
from bench.scoring.metrics import DEFAULT_N_REFERENCE, METRICS, reference_cached
from bench.timing import sync
from bench.training import trained
from bench.training.benchstep import BenchStep

TIMING_STEP_S = 0.5  # the timing batch doubles while one call takes less than this
GPU_SPEEDUP = 80.0  # declared CPU feature rates x this on CUDA
RAY_START_S = 10.0  # a fresh local Ray cluster and Tune's set-up
TRIAL_OVERHEAD_S = 3.0  # per trial: process, data load, model build, result hand-back


@dataclass
class Estimate:
    """Seconds: per trial (at ``threads`` threads each), the reference statistics still to compute,
    and the whole run with ``concurrent`` trials at a time."""

    trial_s: list[float]
    references_s: float
    threads: int
    concurrent: int
    ray: bool
    device: str
    timings: dict[tuple, tuple[float, float, int, int]] = field(default_factory=dict)  # per model key: s/img train, fwd; batches timed

    @property
    def fanout_s(self) -> float:
        slots = [RAY_START_S if self.ray else 0.0] * max(1, self.concurrent)
        for t in self.trial_s:  # in plan order, each trial into the slot that frees first
            i = slots.index(min(slots))
            slots[i] += t + TRIAL_OVERHEAD_S
        return max(slots)

    @property
    def total_s(self) -> float:
        return self.references_s + self.fanout_s

    def line(self) -> str:
        lo, hi = (duration(min(self.trial_s)), duration(max(self.trial_s))) if self.trial_s else ("-", "-")
        per = lo if lo == hi else f"{lo} to {hi}"
        refs = (f"; first-run work not cached yet (reference statistics, the MNIST classifier's training; estimated, "
                f"not run): {duration(self.references_s)}" if self.references_s >= 1 else "")
        n = len(self.trial_s)
        return (f"estimate on this machine ({self.device}): {duration(self.total_s)} in all — {n} trial{'s' if n != 1 else ''} "
                f"of {per} each at {self.threads} thread{'s' if self.threads > 1 else ''}, {self.concurrent} at a time{refs}")


def print_plan(grid: Grid, trials: list[RunConfig], run_dir: Path, threads: int | None = None, concurrent: int = 1,
               ray: bool = False, sizes: dict | None = None) -> Estimate:
    out = sys.stdout
    print(f"grid {grid.name!r} preset {grid.preset}: {len(trials)} trials -> {run_dir}", file=out)
    if grid.description:
        print(f"  {grid.description}", file=out)
    for k, v in grid.axes.items():
        print(f"  axis {k:<14} {len(v)} x {v}", file=out)
    for i, arm in enumerate(grid.arms, 1):
        print(f"  arm {i:<15} " + ", ".join(f"{k}={v}" for k, v in arm.items()), file=out)
    names = list(dict.fromkeys(arm_labels_of([{**asdict(c), "arm": c.arm()} for c in trials])))
    print(f"  labels            {', '.join(names)} (as the report and [[reference_ranks]] name the arms)", file=out)
    varying = set(grid.varied())
    fixed = {k: v for k, v in trials[0].to_dict().items() if k not in varying}
    budget = ("train_steps", "batch_size", "model", "timesteps", "evals", "n_samples", "metrics")
    print("  budget per trial: " + ", ".join(f"{k}={fixed[k]}" for k in budget if k in fixed), file=out)
    for note in grid.notes:
        print(f"  note: {note}", file=out)
    est = estimate(trials, threads, concurrent, ray, sizes)
    print(f"  {est.line()}", file=out)
    return est


def steps_to_train(cfg: RunConfig, keys: set[str]) -> int:
    """The steps a trial will train: none where ``reuse_training`` will adopt a model (one already
    indexed, or one an earlier trial of the plan trains: ``keys`` collects them), those beyond the source's
    where it will continue a shorter indexed training (``bench.training.trained``), else all."""
    if not cfg.reuse_training:
        return cfg.train_steps
    key = trained.train_key(cfg)
    if key in keys:
        return 0
    keys.add(key)
    found = trained.source(cfg, pick_device())
    return cfg.train_steps - (found[1] if found is not None else 0)


def estimate(trials: list[RunConfig], threads: int | None = None, concurrent: int = 1, ray: bool = False,
             sizes: dict | None = None) -> Estimate:
    """The run's time on this machine (see the module docstring for how)."""
    threads = max(1, int(threads or os.cpu_count() or 1))
    device = torch.device(pick_device())
    sizes = sizes if sizes is not None else check_data(trials)
    speedup = GPU_SPEEDUP if device.type == "cuda" else 1.0
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    timings: dict[tuple, tuple[float, float, int, int]] = {}
    trained_keys: set[str] = set()
    try:
        per_trial = []
        for cfg in trials:
            spec = DATASETS.get(cfg.dataset)
            size = cfg.image_size or spec.size
            batch, sample_batch = cfg.batch_size, min(cfg.n_samples, 256)
            key = (cfg.model, spec.channels, size, batch, sample_batch)
            if key not in timings:
                timings[key] = _time_model(*key, device)
            step_img_s, fwd_img_s, _, _ = timings[key]
            diffusion = build_process(cfg).diffusion
            costs = [SAMPLERS.get(s).nfe(steps, diffusion, sampler_options(s, cfg)) for s, steps in cfg.evaluations]
            first_nfe, nfe = costs[0], sum(costs)
            curve = len(cfg.curve_steps)
            sample_s = (nfe + curve * first_nfe) * cfg.n_samples * fwd_img_s
            score_s = (len(cfg.evaluations) * _scoring_s(cfg.metric_names, cfg.n_samples, spec.channels, size)
                       + curve * _scoring_s(cfg.curve_metric_names, cfg.n_samples, spec.channels, size)) / (threads * speedup)
            train_s = steps_to_train(cfg, trained_keys) * batch * step_img_s
            per_trial.append(train_s + sample_s + score_s)
    finally:
        torch.set_num_threads(before)
    refs = _references_s(trials, sizes) / ((os.cpu_count() or 1) * speedup)  # the driver, on this device
    return Estimate(per_trial, refs, threads, device_slots(concurrent, device), ray, device_name(device), timings)


def device_slots(concurrent: int, device: torch.device) -> int:
    """Trials that run side by side *in time*: on CUDA, trials packed onto one GPU (``--gpus-per-trial``
    below 1) share its compute, so their work adds up; each trial is timed alone on the whole device,
    and the gain of packing (a GPU a small UNet leaves idle; ``bench perf``'s packing section measures
    it) is not counted: an upper bound. On a CPU, one slot per ``concurrent`` trial (each has its cores)."""
    if device.type == "cuda":
        return max(1, min(concurrent, torch.cuda.device_count()))
    return max(1, concurrent)


def _time_model(model: str, channels: int, size: int, batch: int, sample_batch: int,
                device: torch.device) -> tuple[float, float, int, int]:
    """Seconds per image of one real training step (``bench.training.benchstep.BenchStep``) and of one forward
    pass, each at the largest batch (doubling from 1, up to ``batch`` / ``sample_batch``) whose call
    takes under ``TIMING_STEP_S``; and those two batches."""
    step = BenchStep(model, channels, size, 1, device, dropout=0.0)
    net = step.trainer.model

    def train_at(b: int) -> Callable[[], Any]:
        step.trainer.cfg = step.trainer.cfg.replace(batch_size=b)
        return step

    def forward_at(b: int) -> Callable[[], Any]:
        xs = torch.randn(b, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
        ts = torch.randint(0, 100, (b,), device=device)

        def forward():
            with torch.inference_mode():
                net.eval()
                net(xs, ts)
                net.train()

        return forward

    train_s, bt = _per_image_s(train_at, batch, device)
    fwd_s, bf = _per_image_s(forward_at, sample_batch, device)
    return train_s, fwd_s, bt, bf


def _per_image_s(make: Callable[[int], Callable[[], Any]], batch: int, device: torch.device) -> tuple[float, int]:
    b = 1
    while True:
        fn = make(b)
        t0 = time.perf_counter()
        fn()  # warm-up: allocations, kernel selection
        slow = time.perf_counter() - t0 > 2 * TIMING_STEP_S  # a long call: one timed repetition is enough
        times = []
        for _ in range(1 if slow else 2):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # on a CPU: this process's CPU seconds per thread, which other processes do not inflate
            times.append(wall if device.type == "cuda" else min(wall, cpu / torch.get_num_threads()))
        t = min(times)
        if b >= batch or t > TIMING_STEP_S:
            return t / b, b
        b = min(2 * b, batch)


def _scoring_s(metric_names, n: int, channels: int, size: int) -> float:
    """Single-thread CPU seconds to extract the features of ``n`` images for these metrics (each
    extractor once; those that do not support the images are skipped by the trial too)."""
    feats = {METRICS.get(m).feature for m in metric_names}
    return sum(n / FEATURES.get(f).cpu_images_per_s for f in feats if not FEATURES.get(f).supports(channels, size))


def _references_s(trials: list[RunConfig], sizes: dict) -> float:
    """Single-thread CPU seconds of the reference statistics and floors not in the cache yet, and of
    preparing the extractors a first run prepares (training the MNIST classifier): estimated, never run."""
    todo: set[tuple] = set()
    used = {METRICS.get(m).feature for c in trials for m in (*c.metric_names, *c.curve_metric_names)}
    prepare = {f for f in used if not FEATURES.get(f).ready()}  # once per extractor (ready() may read a file)
    for c in trials:
        spec = DATASETS.get(c.dataset)
        size = c.image_size or spec.size
        n_train = sizes[(c.dataset, c.data_root, c.image_size, "train")]
        n_held = sizes[(c.dataset, c.data_root, c.image_size, "heldout")]
        for f in {METRICS.get(m).feature for m in (*c.metric_names, *c.curve_metric_names)}:
            if FEATURES.get(f).supports(spec.channels, size):
                continue
            for split, n, avail in (("train", c.n_reference or None, n_train), ("heldout", min(c.n_samples, n_held), n_held)):
                if not reference_cached(c.dataset, split, f, n, size, avail):
                    todo.add((c.dataset, split, f, min(n or DEFAULT_N_REFERENCE, avail)))
    return (sum(n / FEATURES.get(f).cpu_images_per_s for _, _, f, n in todo)
            + sum(FEATURES.get(f).prepare_cpu_s for f in prepare))
