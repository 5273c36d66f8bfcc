"""Image figures: the denoising strip of one trained model (``denoise_strip``, called by the trial
while the model is in memory) and the report's montages of sample grids and strips, one panel per arm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from bench.plots import Plot, _figure, _metadata, _safe, _theme, _wrap, save
from bench.tables import Run, labels_of

#: where the strip looks, as fractions of T (the last is t = T: x_T, what the sampler starts from)
STRIP_FRACTIONS = (0.05, 0.25, 0.5, 0.75, 1.0)


def strip_timesteps(T: int, fractions: Sequence[float] = STRIP_FRACTIONS) -> list[int]:
    """0-based timestep indices for a denoising strip: round(f T) - 1 for each fraction, distinct, ascending."""
    return sorted({min(T - 1, max(0, round(f * T) - 1)) for f in fractions})


@torch.no_grad()
def denoise_strip(eps_model, diffusion, noise, x0: torch.Tensor, ts: Sequence[int], generator: torch.Generator,
                  path: Path) -> torch.Tensor:
    """A strip per held-out image: x_0 | for each t in ``ts``: x_t and the model's predicted x_0.

    x_t = q_sample(x_0, t, eps) with eps = ``noise.sample(shape, t, generator)`` (the run's noise type);
    pred x_0 = ``diffusion.predict_x0(x_t, t, eps_model(x_t, t))`` clamped to [-1, 1]. ``ts`` are
    0-based indices (index i is the paper's t = i + 1); ``eps_model`` should be in eval mode (the EMA
    model). Writes a labelled PNG to ``path`` and returns the cells [k, 1 + 2 len(ts), C, H, W]
    (CPU, float32; x_t unclamped) so that callers and tests can read the exact values.
    """
    k = x0.shape[0]
    bad = [t for t in ts if not 0 <= int(t) < diffusion.T]
    if bad or not len(ts):
        raise ValueError(f"denoise_strip: ts must be non-empty 0-based indices in 0..{diffusion.T - 1}, got {list(ts)}")
    cols = [x0.float()]
    for t in ts:
        tt = torch.full((k,), int(t), dtype=torch.long, device=x0.device)
        eps = noise.sample(tuple(x0.shape), tt.cpu(), generator, device=x0.device).float()
        x_t = diffusion.q_sample(x0.float(), tt, eps)
        pred = diffusion.predict_x0(x_t, tt, eps_model(x_t, tt).float()).clamp(-1.0, 1.0)
        cols += [x_t, pred]
    cells = torch.stack(cols, 1).cpu()
    save_strip(cells, [int(t) for t in ts], diffusion.T, Path(path))
    return cells


def _tile(cells: torch.Tensor, pad: int = 2) -> np.ndarray:
    """[k, n, C, H, W] in [-1, 1] -> one [rows*(H+pad), cols*(W+pad), 3] image in [0, 1], grey padding."""
    k, n, c, h, w = cells.shape
    img = np.full((k * (h + pad) + pad, n * (w + pad) + pad, 3), 0.5)
    x = ((cells.clamp(-1, 1) + 1) / 2).expand(k, n, 3 if c == 1 else c, h, w).permute(0, 1, 3, 4, 2).numpy()
    for i in range(k):
        for j in range(n):
            img[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = x[i, j]
    return img


def save_strip(cells: torch.Tensor, ts: Sequence[int], T: int, path: Path) -> Path:
    """The strip as a PNG: columns labelled x_0, x_t, pred x_0 (bottom) and t = i+1 of T (top)."""
    k, n, _, h, w = cells.shape
    img = _tile(cells)
    scale = max(1.0, 72 / w)  # small images are drawn larger so the labels fit
    with _theme(seaborn=False):
        fig, axes = _figure(1, 1, img.shape[1] * scale / 100 + 0.3, img.shape[0] * scale / 100 + 0.9)
        ax = axes[0, 0]
        ax.imshow(img, interpolation="nearest")
        ax.grid(False)
        centre = [2 + j * (w + 2) + w / 2 for j in range(n)]
        ax.set_xticks(centre, ["$x_0$"] + ["$x_t$", "pred $x_0$"] * len(ts), fontsize=8)
        ax.set_yticks([])
        top = ax.secondary_xaxis("top")
        top.set_xticks([(centre[1 + 2 * i] + centre[2 + 2 * i]) / 2 for i in range(len(ts))],
                       [f"t = {t + 1}/{T}" for t in ts], fontsize=8)
        top.tick_params(length=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, metadata=_metadata(path))
    return path


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
                   notes: list[str]) -> None:
    """One panel per arm of dataset ``ds``: the arm's first-seed image ``samples/<name(trial)>``."""
    from PIL import Image

    labels = labels_of(run, ds)
    ncols = min(ncols, len(labels))
    with _theme():
        fig, axes = _figure(-(-len(labels) // ncols), ncols, w, h)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, lb in zip(axes.ravel(), labels):
            t = _first_seed(run, ds, lb)
            path = run.dir / "samples" / name(t)
            if path.exists():
                ax.imshow(np.asarray(Image.open(path).convert("RGB")), interpolation="nearest")
            else:
                notes.append(f"samples/{path.name} missing ({lb}, {ds}, seed {t['seed']}, status {t['status']})")
                ax.text(0.5, 0.5, f"no image\n(status {t['status']})", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{_wrap(lb, 36)} (seed {t['seed']})", fontsize=8)
        fig.suptitle(ds, fontsize=10)
        save(fig, png)


def montage_samples(run: Run, out_dir: Path, notes: list[str]) -> list[Plot]:
    """Per dataset: the main evaluation's sample grid of every arm, side by side."""
    ev = main_eval(run)
    out = []
    for ds in run.datasets if ev else []:
        png = out_dir / f"samples_{_safe(ds)}.png"
        _image_montage(run, ds, png, lambda t: f"{t['trial_id']}_{ev[0]}-{ev[1]}.png", 4, 2.6, 2.9, notes)
        out.append(Plot(png, f"{ds}: samples of every arm ({ev[0]}, {ev[1]} steps; the first seed's model; image i "
                             f"starts from the same seed in every arm)."))
    return out


def montage_denoise(run: Run, out_dir: Path, notes: list[str]) -> list[Plot]:
    """Per dataset: the denoising strip of every arm, one above the other."""
    from PIL import Image

    strips = [run.dir / "samples" / f"{t}_denoise.png" for t in dict.fromkeys(run.rows["trial_id"])]
    strips = [p for p in strips if p.exists()]
    if not strips:
        notes.append("no denoising strips (samples/<trial_id>_denoise.png) in this run")
        return []
    w, h = Image.open(strips[0]).size
    out = []
    for ds in run.datasets:
        png = out_dir / f"denoise_{_safe(ds)}.png"
        _image_montage(run, ds, png, lambda t: f"{t['trial_id']}_denoise.png", 1, 8.0, 8.0 * h / w + 0.4, notes)
        out.append(Plot(png, f"{ds}: denoising strip of every arm: held-out x_0, then x_t and the model's predicted "
                             f"x_0 at several t (same images and noise seeds in every arm)."))
    return out
