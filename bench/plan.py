"""Before and after the trials: data checks, the dry-run plan with a measured time estimate, the
real-vs-real floors, and sampling from a finished trial (``bench sample``)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


import torch

from bench.config import RunConfig, from_dict
from bench.grid import Grid


def check_data(trials: list[RunConfig]) -> None:
    """Load every dataset the grid uses once, so a missing one is exit 2 before any training."""
    from bench.data import load_dataset

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
    print(f"  estimate on this machine ({_device()}): {total / 60:.1f} min for all trials one after another "
          f"({min(est.values()):.0f}-{max(est.values()):.0f} s per trial); concurrent trials divide this by "
          f"at most the number that fit", file=out)


def _device() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"


def estimate_seconds(trials: list[RunConfig]) -> dict[int, float]:
    """Per trial: measured train-step and model-forward times x the trial's step counts, plus a
    measured scoring rate. Measured once per distinct (dataset, model, size, batch)."""
    from bench.data import DATASETS

    cache: dict[tuple, tuple[float, float]] = {}
    out = {}
    for i, cfg in enumerate(trials):
        spec = DATASETS.get(cfg.dataset)
        size = cfg.image_size or spec.size
        key = (cfg.model, spec.channels, size, cfg.batch_size, min(cfg.n_samples, 256))
        if key not in cache:
            cache[key] = _time_model(*key)
        step_s, fwd_s = cache[key]
        nfe = sum(steps for _, steps in cfg.eval_list())
        batches = -(-cfg.n_samples // min(cfg.n_samples, 256))
        score_s = len(cfg.eval_list()) * cfg.n_samples / _scoring_rate(cfg)
        out[i] = cfg.train_steps * step_s + nfe * batches * fwd_s + score_s
    return out


def _time_model(model: str, channels: int, size: int, batch: int, sample_batch: int) -> tuple[float, float]:
    """Seconds of one real training step (bench.train's, via bench.perf.BenchStep) and of one
    forward pass at the sampling batch: medians of 3 after a warm-up call."""
    from bench.perf import BenchStep, measure
    from bench.trial import pick_device

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
    """Images/s of the slowest feature extractor the trial's metrics use (rough, documented)."""
    inception = any(m in ("fid", "kid") or m.startswith("fid") or m.startswith("kid") for m in cfg.metric_list())
    if not inception:
        return 2000.0
    # Inception-v3 at 299x299, one thread per trial: 400 images in 76 s per trial of the quick
    # schedules grid on the 2-core CPU (results/schedules/quick-20261122-040615)
    return 400.0 if torch.cuda.is_available() else 5.0


def _release_extractors() -> None:
    """Drop the driver's feature networks (Inception: ~100 MB of weights) so that a GPU's memory
    goes to the trials during the fan-out."""
    from bench import features

    features._extractor.cache_clear()
    features._inception_net.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_floors(run_dir: Path, trials: list[RunConfig]) -> None:
    """floors.csv: real-vs-real (train vs held-out) metrics at each trial sample size, so a table
    shows what a perfect model would score with the same number of images.

    ``bench run`` writes it before the fan-out: computing the floors computes (and caches) every
    reference statistic the trials will score against, here with all cores, instead of in the first
    trial with its one thread while the others wait on the cache lock."""
    import pandas as pd

    from bench.metrics import floor
    from bench.rundir import FLOORS, write_text_atomic

    rows = []
    keys = sorted({(c.dataset, c.data_root, c.image_size, c.n_samples, c.metrics, c.n_reference) for c in trials})
    for dataset, root, size, n, metrics, n_ref in keys:
        t0 = time.time()
        res = floor([m.strip() for m in metrics.split(",") if m.strip()], dataset, n, data_root=root, image_size=size,
                    n_reference=n_ref or None)
        rows.append({"dataset": dataset, "image_size": size, "n_samples": n, **res, "floor_s": time.time() - t0})
    write_text_atomic(run_dir / FLOORS, pd.DataFrame(rows).to_csv(index=False))
    _release_extractors()


def sample_checkpoint(path: Path, sampler: str, steps: int, n: int, seed: int, out: Path) -> None:
    """Sample ``n`` images from a finished trial's EMA model and save a PNG grid."""
    from bench.diffusion import Diffusion
    from bench.noise import make_noise
    from bench.registry import InputError
    from bench.sample import SAMPLERS, sample_images, save_grid
    from bench.schedules import make_betas
    from bench.train import load_ema
    from bench.data import DATASETS

    workdir = path if path.is_dir() else path.parent
    cfg_file = workdir / "config.json"
    if not cfg_file.exists():
        raise InputError(f"{path} is not a trial work dir (no config.json): pass e.g. RUN/_work/trials/<id>")
    SAMPLERS.get(sampler)
    cfg = from_dict(json.loads(cfg_file.read_text()))
    if not 1 <= steps <= cfg.timesteps or n < 1:
        raise InputError(f"--steps must be in 1..{cfg.timesteps} and -n >= 1")
    spec = DATASETS.get(cfg.dataset)
    size = cfg.image_size or spec.size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_ema(workdir, cfg, spec.channels, size, device)
    diffusion = Diffusion(make_betas(cfg.schedule, cfg.timesteps, cfg.zero_terminal_snr, **cfg.schedule_kwargs()))
    noise = make_noise(cfg.noise, diffusion.alpha_bar, **cfg.noise_kwargs())
    x = sample_images(model, diffusion, noise, sampler, steps, n, (spec.channels, size, size), seed,
                      batch_size=min(n, 256), device=device, eta=cfg.ddim_eta, var_type=cfg.var_type, progress=True)
    save_grid(x.cpu(), out)


