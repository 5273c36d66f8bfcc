"""The report's montages of a run's images (sample grids, denoising strips, nearest training images), one panel per arm."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from bench.experiment.rundir import real_grid
from bench.report import kept
from bench.report.tables import Run, labels_of, metric_obj
from bench.style import Plot, figure, safe, save, theme, wrap


# --- montages of a run's images ------------------------------------------------------------------------
def main_eval(run: Run) -> tuple[str, int] | None:
    """The evaluation shown in the sample montage: the one with the most steps (first sampler on a tie)."""
    return max(run.evals, key=lambda e: e[1]) if run.evals else None


def _first_seed(run: Run, ds: str, label: str) -> pd.Series:
    t = run.trials()
    t = t[(t["dataset"] == ds) & (t["label"] == label)]
    ok = t[t["status"] == "ok"]
    return (ok if len(ok) else t).sort_values("seed").iloc[0]


def _image_montage(run: Run, ds: str, png: Path, name: Callable[[pd.Series], str], ncols: int, w: float, h: float,
                   notes: list[str], real: Path | None = None) -> None:
    """One panel per arm of dataset ``ds``: the arm's first-seed image ``samples/<name(trial)>``; first,
    where ``real`` is given, a panel of held-out real images."""
    from PIL import Image

    labels = labels_of(run, ds)
    n = len(labels) + (real is not None)
    ncols = min(ncols, n)
    with theme():
        fig, axes = figure(-(-n // ncols), ncols, w, h)
        for ax in axes.ravel():
            ax.axis("off")
        panels = iter(axes.ravel())
        if real is not None:
            ax = next(panels)
            with Image.open(real) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            ax.set_title("held-out real images", fontsize=8)
        for ax, lb in zip(panels, labels):
            t = _first_seed(run, ds, lb)
            path = run.dir / "samples" / name(t)
            if path.exists():
                with Image.open(path) as im:
                    ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            else:
                notes.append(f"samples/{path.name} missing ({lb}, {ds}, seed {t['seed']}, status {t['status']})")
                ax.text(0.5, 0.5, f"no image\n(status {t['status']})", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{wrap(lb, 36)} (seed {t['seed']})", fontsize=8)
        fig.suptitle(ds, fontsize=10)
        save(fig, png)


def montage_samples(run: Run, out_dir: Path, notes: list[str]) -> list[Plot]:
    """Per dataset: the main evaluation's sample grid of every arm, side by side."""
    ev = main_eval(run)
    out = []
    for ds in run.datasets if ev else []:
        png = out_dir / f"samples_{safe(ds)}.png"
        if committed := kept.figure(run, "samples", png):
            out.append(committed)
            continue
        real = run.dir / "samples" / real_grid(ds)
        real = real if real.exists() else None  # runs before the runner wrote it have none
        _image_montage(run, ds, png, lambda t: f"{t['trial_id']}_{ev[0]}-{ev[1]}.png", 4, 2.6, 2.9, notes, real)
        out.append(Plot(png, f"{ds}: samples of every arm ({ev[0]}, {ev[1]} steps; the first seed's model; image i "
                             f"starts from the same seed in every arm)"
                             + (", after held-out real images for comparison by eye." if real else ".")))
    return out


def montage_denoise(run: Run, out_dir: Path, notes: list[str]) -> list[Plot]:
    """Per dataset: the denoising strip of every arm, one above the other."""
    from PIL import Image

    committed = [kept.figure(run, "samples", out_dir / f"denoise_{safe(ds)}.png") for ds in run.datasets]
    if all(committed):
        return committed
    strips = [run.dir / "samples" / f"{t}_denoise.png" for t in dict.fromkeys(run.rows["trial_id"])]
    strips = [p for p in strips if p.exists()]
    if not strips:
        notes.append("no denoising strips (samples/<trial_id>_denoise.png) in this run")
        return []
    with Image.open(strips[0]) as first:
        w, h = first.size
    out = []
    for ds in run.datasets:
        png = out_dir / f"denoise_{safe(ds)}.png"
        _image_montage(run, ds, png, lambda t: f"{t['trial_id']}_denoise.png", 1, 8.0, 8.0 * h / w + 0.4, notes)
        out.append(Plot(png, f"{ds}: denoising strip of every arm: held-out x_0, then x_t and the model's predicted "
                             f"x_0 at several t (same images and noise seeds in every arm)."))
    return out


# --- the memorization check by eye ----------------------------------------------------------------------
NEAREST_SHOWN = 8  # samples per arm (and held-out images) shown above their nearest training images


def grid_tiles(png: Path, size: int, n: int) -> torch.Tensor:
    """The first ``n`` images (uint8 [n, 3, size, size]) of a grid written by ``bench.images.save_grid``
    (ceil(sqrt(N)) per row for its N <= 64 images, 2-pixel padding): image k sits at row k // nrow,
    column k % nrow, its corner at 2 + (size + 2) * (row, column). nrow is read off the grid's width;
    slots past the grid's N images are blank, so ``n`` should not exceed N."""
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"))
    nrow = (a.shape[1] - 2) // (size + 2)
    if nrow < 1 or (a.shape[1] - 2) % (size + 2):
        raise ValueError(f"{png.name}: {a.shape[1]} pixels wide is no grid of {size}-pixel images")
    n = min(n, nrow * ((a.shape[0] - 2) // (size + 2)))
    tiles = [a[2 + (size + 2) * (k // nrow):][:size, 2 + (size + 2) * (k % nrow):][:, :size] for k in range(n)]
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def nearest_training(images: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each uint8 image's nearest training image (uint8) in memorization_pixels'
    space (8x8-pooled pixels, ``bench.scoring.fidelity.nearest_neighbours``), in the training images' channels:
    grid tiles of grey images come back as 3 equal channels (``grid_tiles``), of which the first is
    compared, so the distances are the metric's (not sqrt(3) times them)."""
    from bench.scoring.features import extract_features
    from bench.scoring.fidelity import nearest_neighbours

    return nearest_neighbours(extract_features("pixels", images[:, :train.shape[1]]), extract_features("pixels", train))


def montage_nearest(run: Run, out_dir: Path, notes: list[str]) -> list[Plot]:
    """Per dataset of a run scored with a metric that warns below a value (``Metric.warns_below``: the
    memorization ratios, whose warning asks to look at this figure): held-out real images, then each
    arm's first samples (the montage's evaluation, first seed), each above its nearest training image
    and their distance. Copies show as identical pairs; a model that generalizes pairs its samples as
    loosely as the held-out images are paired. Needs the training images (``BENCH_DATA_ROOT``)."""
    from bench.data.datasets import DATASETS, load_dataset
    from bench.images import to_uint8

    ev = main_eval(run)
    if not ev or not any((mo := metric_obj(m)) is not None and mo.warns_below is not None for m in run.metrics):
        return []
    out = []
    for ds in run.datasets:
        if committed := kept.figure(run, "samples", out_dir / f"nearest_{safe(ds)}.png"):
            out.append(committed)
            continue
        rows = run.rows[run.rows["dataset"] == ds]
        size = int(rows["image_size"].iloc[0] or 0) or DATASETS.get(ds).size
        shown = min(NEAREST_SHOWN, int(rows["n_samples"].min()))
        root = str(rows["data_root"].iloc[0]) if "data_root" in rows and pd.notna(rows["data_root"].iloc[0]) else ""
        try:
            train = to_uint8(load_dataset(ds, "train", root, size))
        except Exception as e:  # noqa: BLE001 - a report rebuilt without the data keeps every other figure
            notes.append(f"no nearest-training-image montage for {ds}: its training images cannot be loaded ({e})")
            continue
        grids = [("held-out real images", run.dir / "samples" / real_grid(ds))]
        for lb in labels_of(run, ds):
            t = _first_seed(run, ds, lb)
            grids.append((f"{lb} (seed {t['seed']})", run.dir / "samples" / f"{t['trial_id']}_{ev[0]}-{ev[1]}.png"))
        groups = []
        for title, png in (g for g in grids if g[1].exists()):
            try:
                groups.append((title, grid_tiles(png, size, shown)))
            except ValueError as e:  # not a grid of this size (one image, another image_size): leave it out, say so
                notes.append(f"nearest-training-image montage without {title}: {e}")
        if not groups:
            continue
        png = out_dir / f"nearest_{safe(ds)}.png"
        _pairs_figure(groups, train, png, ds)
        out.append(Plot(png, f"{ds}: the memorization check by eye: held-out real images, then each arm's first "
                             f"{shown} samples ({ev[0]}, {ev[1]} steps; the first seed's model), each above its "
                             f"nearest of the {len(train)} training images in 8x8-pooled pixels (memorization_pixels' "
                             f"space) with their distance; copies would show as identical pairs."))
    return out


def _pairs_figure(groups: list[tuple[str, torch.Tensor]], train: torch.Tensor, png: Path, ds: str) -> None:
    cols = max(len(x) for _, x in groups)
    with theme():
        fig, axes = figure(2 * len(groups), cols, 1.1, 1.25)
        for ax in axes.ravel():
            ax.axis("off")
        for g, (title, x) in enumerate(groups):
            dist, idx = nearest_training(x, train)
            for k in range(len(x)):
                for r, img in ((2 * g, x[k]), (2 * g + 1, train[idx[k]])):
                    rgb = img.expand(3, -1, -1).permute(1, 2, 0).numpy()  # uint8 RGB: shown as stored, never rescaled
                    axes[r, k].imshow(rgb, interpolation="nearest")
                axes[2 * g + 1, k].set_title(f"{dist[k]:.2f}", fontsize=7)
            axes[2 * g, 0].set_title(wrap(title, 60), fontsize=8, loc="left")
        fig.suptitle(f"{ds}: each image above its nearest training image (L2 in 8x8-pooled pixels)", fontsize=10)
        save(fig, png)
