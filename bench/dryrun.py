"""The dry run: data checks and the trial plan with a measured time estimate (``bench run --dry-run``)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from bench.config import RunConfig
from bench.data import DATASETS, load_dataset
from bench.env import device_name, pick_device
from bench.features import FEATURES
from bench.grid import Grid
from bench.metrics import METRICS
from bench.sample import SAMPLERS
from bench.timing import measure
from bench.train import BenchStep


def check_data(trials: list[RunConfig]) -> None:
    """Load every dataset the grid uses once, so a missing one is exit 2 before any training."""
    for key in sorted({(c.dataset, c.data_root, c.image_size) for c in trials}):
        load_dataset(key[0], "train", key[1], key[2])


def print_plan(grid: Grid, trials: list[RunConfig], run_dir: Path) -> None:
    out = sys.stdout
    print(f"grid {grid.name!r} preset {grid.preset}: {len(trials)} trials -> {run_dir}", file=out)
    if grid.description:
        print(f"  {grid.description}", file=out)
    for k, v in grid.axes.items():
        print(f"  axis {k:<14} {len(v)} x {v}", file=out)
    varying = set(grid.axes)
    fixed = {k: v for k, v in trials[0].to_dict().items() if k not in varying}
    budget = ("train_steps", "batch_size", "model", "timesteps", "evals", "n_samples", "metrics")
    print("  budget per trial: " + ", ".join(f"{k}={fixed[k]}" for k in budget if k in fixed), file=out)
    for note in grid.notes:
        print(f"  note: {note}", file=out)
    est = estimate_seconds(trials)
    total = sum(est.values())
    print(f"  estimate on this machine ({device_name(pick_device())}): {total / 60:.1f} min for all trials one after another "
          f"({min(est.values()):.0f}-{max(est.values()):.0f} s per trial); concurrent trials divide this by "
          f"at most the number that fit", file=out)


def estimate_seconds(trials: list[RunConfig]) -> dict[int, float]:
    """Per trial: measured train-step and model-forward times x the trial's step counts, plus a
    measured scoring rate. Measured once per distinct (dataset, model, size, batch)."""
    cache: dict[tuple, tuple[float, float]] = {}
    out = {}
    for i, cfg in enumerate(trials):
        spec = DATASETS.get(cfg.dataset)
        size = cfg.image_size or spec.size
        key = (cfg.model, spec.channels, size, cfg.batch_size, min(cfg.n_samples, 256))
        if key not in cache:
            cache[key] = _time_model(*key)
        step_s, fwd_s = cache[key]
        nfe = sum(steps * SAMPLERS.get(s).evals_per_step for s, steps in cfg.evaluations)  # model evaluations
        batches = -(-cfg.n_samples // min(cfg.n_samples, 256))
        score_s = len(cfg.evaluations) * cfg.n_samples / _scoring_rate(cfg)
        out[i] = cfg.train_steps * step_s + nfe * batches * fwd_s + score_s
    return out


def _time_model(model: str, channels: int, size: int, batch: int, sample_batch: int) -> tuple[float, float]:
    """Seconds of one real training step (``bench.train.BenchStep``) and of one
    forward pass at the sampling batch: medians of 3 after a warm-up call."""

    device = torch.device(pick_device())
    step = BenchStep(model, channels, size, batch, device, dropout=0.0)
    net = step.trainer.model
    xs = torch.randn(sample_batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    ts = torch.randint(0, 100, (sample_batch,), device=device)

    def forward():
        with torch.inference_mode():
            net.eval()
            net(xs, ts)
            net.train()

    rates = measure({"step": (step, 1), "forward": (forward, 1)}, device, reps=3)
    return 1 / statistics.median(rates["step"]), 1 / statistics.median(rates["forward"])


def _scoring_rate(cfg: RunConfig) -> float:
    """Images/s of the slowest feature extractor the trial's metrics use (their declared rough CPU
    rate; a GPU is taken as ~80x faster)."""
    rate = min(FEATURES.get(METRICS.get(m).feature).cpu_images_per_s for m in cfg.metric_names)
    return rate * (80.0 if torch.cuda.is_available() else 1.0)
