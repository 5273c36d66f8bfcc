"""The report's montages of a run's images (sample grids and denoising strips), one panel per arm."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bench.report.tables import Run, labels_of
from bench.rundir import real_grid
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
