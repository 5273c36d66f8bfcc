"""The run's first phase: the real-vs-real floors (floors.csv), which compute and cache every
reference statistic the trials score against, the reference moments the report's bootstrap reads,
and the held-out image grids the report shows beside the arms' samples."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from bench.data.datasets import DATASETS, load_dataset
from bench.env import pick_device
from bench.experiment import rundir
from bench.experiment.config import RunConfig
from bench.files import save_npz_atomic, write_text_atomic
from bench.images import save_grid
from bench.progress import say
from bench.run.trial import PER_IMAGE_MAX_DIM
from bench.scoring.features import FEATURES
from bench.scoring.metrics import METRICS, floor, reference_stats, release_extractors


def write_floors(run_dir: Path, trials: list[RunConfig]) -> None:
    """floors.csv: real-vs-real (train vs held-out) metrics at each trial sample size, so a table
    shows what a perfect model would score with the same number of images.

    Written before the fan-out: computing the floors computes (and caches) every reference
    statistic the trials will score against, here with all cores (or the GPU that runs the grid),
    instead of in the first trial with its one thread while the others wait on the cache lock."""
    t0 = time.time()
    rows = []
    keys = sorted({(c.dataset, c.data_root, c.image_size, c.n_samples, c.metric_names, c.n_reference) for c in trials})
    first = sorted({FEATURES.get(METRICS.get(m).feature).label for k in keys for m in k[4]})
    say(f"real-vs-real floors and reference statistics ({len(keys)} set{'s' if len(keys) > 1 else ''}, features: "
         f"{', '.join(first)}; a first run computes and caches them, and trains the MNIST classifier if it uses it: "
         f"minutes on a CPU, with progress below)")
    for dataset, root, size, n, metrics, n_ref in keys:
        t1 = time.time()
        res = floor(list(metrics), dataset, n, data_root=root, image_size=size, n_reference=n_ref or None,
                    progress=True, device=pick_device())  # a bar on a terminal, a line every 30 s in a log
        rows.append({"dataset": dataset, "image_size": size, "n_samples": n, **res, "floor_s": time.time() - t1})
    write_text_atomic(run_dir / rundir.FLOORS, pd.DataFrame(rows).to_csv(index=False))
    write_references(run_dir, trials)
    release_extractors()
    say(f"real-vs-real floors and reference statistics ready ({time.time() - t0:.0f} s)")


def write_references(run_dir: Path, trials: list[RunConfig]) -> None:
    """references/<dataset>-<size>px-<feature>-n<n>.npz: mean and covariance (float64) of the reference
    features of every small extractor the trials score with, so that the report can recompute a
    Fréchet distance from the committed per-image features (its two-level bootstrap)."""
    for c in {c.canonical() for c in trials}:
        for feature in sorted({METRICS.get(m).feature for m in c.metric_names}):
            if FEATURES.get(feature).dim > PER_IMAGE_MAX_DIM:
                continue
            ref = reference_stats(c.dataset, "train", feature, c.n_reference or None, c.data_root, c.image_size,
                                  device=pick_device())
            size = c.image_size or DATASETS.get(c.dataset).size
            path = run_dir / "references" / f"{c.dataset}-{size}px-{feature}-n{ref['keys']['n_images']}.npz"
            if not path.exists():
                save_npz_atomic(path, {"mu": ref["mu"].numpy(), "sigma": ref["sigma"].numpy()})


def write_real_grids(run_dir: Path, trials: list[RunConfig]) -> None:
    """samples/real_<dataset>.png: the first 64 held-out images of each dataset at the trials' size,
    the report's "by eye" reference beside the arms' samples (``bench.report.montage``)."""
    for dataset, root, size in dict.fromkeys((c.dataset, c.data_root, c.image_size) for c in trials):
        path = run_dir / "samples" / rundir.real_grid(dataset)
        if not path.exists():  # the first size of a dataset (grids of one dataset at two sizes are rare)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_grid(load_dataset(dataset, "heldout", root, size)[:64], path)
