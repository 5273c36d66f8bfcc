"""Pictures a trial takes of its model while it is in memory: the denoising strip (held-out x_0, x_t
and the model's predicted x_0 at several t). The report's montages put these side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.style import figure, theme, write_figure

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
    pred x_0 = ``diffusion.split(model(x_t, t), x_t, t, clip_x0=True)[0]`` (any prediction target). ``ts`` are
    0-based indices (index i is the paper's t = i + 1); ``eps_model`` should be in eval mode (the EMA
    model). Writes a labelled PNG to ``path`` and returns the cells [k, 1 + 2 len(ts), C, H, W]
    (CPU, float32; x_t unclamped) so that callers and tests can read the exact values.
    """
    bad = [t for t in ts if not 0 <= int(t) < diffusion.T]
    if bad or not len(ts):
        raise ValueError(f"denoise_strip: ts must be non-empty 0-based indices in 0..{diffusion.T - 1}, got {list(ts)}")
    cols = [x0.float()]
    for t in ts:
        tt = diffusion.times_on(x0, diffusion.time_of_index(int(t)))  # vp: the index itself; rf, edm: t = (i + 1)/T
        eps = noise.sample(tuple(x0.shape), diffusion.noise_index(tt.cpu()), generator, device=x0.device).float()
        x_t = diffusion.q_sample(x0.float(), tt, eps)
        pred = diffusion.split(eps_model(*diffusion.model_input(x_t, tt)).float(), x_t, tt, clip_x0=True)[0]
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
    with theme(seaborn=False):
        fig, axes = figure(1, 1, img.shape[1] * scale / 100 + 0.3, img.shape[0] * scale / 100 + 0.9)
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
        write_figure(fig, path)
    return path
