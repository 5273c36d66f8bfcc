"""A picture of the forward processes: the same image at several t under each noise type and
corruption, one row each (the figure a reader expects first in a study of non-Gaussian forward
processes). PNG + PDF, byte-stable (``bench.style``).

Every row is a ``RunConfig`` built by the one builder (``config.build_process``), and
x_t = ``diffusion.q_sample(x_0, t, eps)`` with eps = ``noise.sample`` from one seed shared by every
row (common random numbers: rows differ only in their process). A column is a fraction t/T of each
row's own T (cold_blur has T = 20).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from bench.data.datasets import load_dataset
from bench.experiment.config import RunConfig, build_process
from bench.style import Plot, figure, save, theme, wrap

#: t / T of the columns (0 is x_0 itself)
FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)

#: sigma_blur_max of the "mild" and "strong" blur rows (strong = the paper's default 20)
MILD_SIGMA_BLUR, STRONG_SIGMA_BLUR = 2.0, 20.0


def default_rows(schedule: str = "linear", timesteps: int = 1000) -> dict[str, RunConfig]:
    """label -> config of the rows of ``bench plot-noises``: gaussian, gamma (theta_0 0.01 and 0.1),
    blur (mild and strong sigma_blur_max) under ``schedule`` / ``timesteps``, and cold_blur (T = 20)."""
    base = RunConfig(schedule=schedule, timesteps=timesteps)
    return {
        "gaussian": base,
        "gamma, θ₀ = 0.01": base.replace(noise="gamma", theta_0=0.01),
        "gamma, θ₀ = 0.1": base.replace(noise="gamma", theta_0=0.1),
        f"blur, σ_B,max = {MILD_SIGMA_BLUR:g} (mild)": base.replace(corruption="blur", sigma_blur_max=MILD_SIGMA_BLUR),
        f"blur, σ_B,max = {STRONG_SIGMA_BLUR:g} (strong)": base.replace(corruption="blur", sigma_blur_max=STRONG_SIGMA_BLUR),
        "cold_blur (T = 20)": RunConfig(timesteps=20, corruption="cold_blur", prediction="x0", loss="l1", evals="cold:20"),
    }


def _column_t(fraction: float, T: int) -> int:
    """The paper's t (0 = x_0, T = the end) nearest to fraction * T."""
    return min(T, max(0, round(fraction * T)))


@torch.no_grad()
def forward_cells(rows: Mapping[str, RunConfig], x0: torch.Tensor, fractions: Sequence[float] = FRACTIONS,
                  seed: int = 0) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """label -> [(t, x_t [C, H, W])] for each fraction: x_t = q_sample(x_0, t - 1, eps) (0-based index),
    x_0 at t = 0; eps from ``noise.sample`` with a generator seeded ``seed`` per column, the same in every row."""
    x0 = x0.float()[None] if x0.ndim == 3 else x0.float()[:1]
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for label, cfg in rows.items():
        _, diffusion, noise = build_process(cfg)
        cells = []
        for j, f in enumerate(fractions):
            t = _column_t(f, diffusion.T)
            if t == 0:
                cells.append((0, x0[0]))
                continue
            tt = diffusion.times_on(x0, diffusion.time_of_index(t - 1))  # vp: index t - 1; rf, edm: t/T
            eps = noise.sample(tuple(x0.shape), diffusion.noise_index(tt), torch.Generator().manual_seed(seed + j)).float()
            cells.append((t, diffusion.q_sample(x0, tt, eps)[0]))
        out[label] = cells
    return out


def plot_forward(out_path: Path, rows: Mapping[str, RunConfig] | None = None, x0: torch.Tensor | None = None,
                 dataset: str = "mnist", data_root: str = "", index: int = 0,
                 fractions: Sequence[float] = FRACTIONS, seed: int = 0) -> Path:
    """The figure: one row per forward process (``rows``, default ``default_rows()``), one column per
    t/T in ``fractions``, the same image in every row (``x0`` [C, H, W] in [-1, 1], default image
    ``index`` of ``dataset``'s held-out split). Writes ``out_path`` (.png) and the PDF beside it;
    returns the PNG path. Values are clamped to [-1, 1] for display only (x_t of a noisy process
    leaves that range)."""
    rows = dict(rows or default_rows())
    if x0 is None:
        x0 = load_dataset(dataset, "heldout", data_root)[index]
    cells = forward_cells(rows, x0, fractions, seed)
    n_rows, n_cols = len(cells), len(fractions)
    with theme(seaborn=False):
        fig, axes = figure(n_rows, n_cols, 1.05, 1.15)
        for i, (label, row) in enumerate(cells.items()):
            T = rows[label].timesteps
            for j, (t, img) in enumerate(row):
                ax = axes[i, j]
                shown = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(f"t = {t}/{T}", fontsize=6, labelpad=1)
                if i == 0:
                    ax.set_title(f"t/T = {fractions[j]:g}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(wrap(label, 16), fontsize=7)
        fig.suptitle("The forward processes: the same image x_0 at t/T (eps from one seed in every row; "
                     "display clamped to [-1, 1])", fontsize=8)
        out_path = Path(out_path).with_suffix(".png")
        save(fig, out_path)
    return out_path


def caption(rows: Mapping[str, RunConfig] | None = None) -> str:
    """What the figure shows, for a report (each row's process and its parameters)."""
    rows = dict(rows or default_rows())
    parts = [f"{label}{'' if label == cfg.process_label() else ': ' + cfg.process_label()}, T = {cfg.timesteps}"
             for label, cfg in rows.items()]
    corruptions = {cfg.corruption for cfg in rows.values()}
    notes = ["Noise types add noise of the schedule's variance, each with its own distribution"]
    if "blur" in corruptions:
        notes.append("blur adds noise to a DCT-frequency-wise damped image (Hoogeboom & Salimans 2023)")
    if "cold_blur" in corruptions:
        notes.append("cold_blur only blurs (Bansal et al. 2022) and ends at nearly the constant image of the channel "
                     "means, which is why its generation needs a stochastic start")
    return ("The same held-out image x_0 under each forward process at fractions t/T of its own T: "
            + "; ".join(parts) + ". x_t = q_sample(x_0, t, eps) with eps from one seed shared by every row. "
            + "; ".join(notes) + ".")


def run_forward_rows(run) -> dict[str, RunConfig]:
    """process label -> config of the distinct forward processes (noise, corruption and their
    parameters) of a run's trials, each from the first trial that has it (its schedule); empty when
    the run does not vary the noise or the corruption (then the figure would say nothing new)."""
    from bench.experiment.config import config_from_row

    rows: dict[tuple, RunConfig] = {}
    for r in run.trials().to_dict("records"):
        try:
            cfg = config_from_row(r)
        except Exception:  # noqa: BLE001 - an older run's unknown component: left out, not fatal
            continue
        key = (cfg.noise, tuple(cfg.noise_kwargs().items()), cfg.corruption, tuple(cfg.corruption_kwargs().items()))
        rows.setdefault(key, cfg)
    return {cfg.process_label(): cfg for cfg in rows.values()} if len(rows) > 1 else {}


def plot_run_forward(run, out_dir: Path, notes: list[str]):
    """The forward-process figure of a run whose grid varies the noise or corruption (None otherwise),
    on a held-out image of the run's first dataset."""
    rows = run_forward_rows(run)
    if not rows:
        return None
    first = next(iter(rows.values()))
    try:
        png = plot_forward(Path(out_dir) / "forward.png", rows, dataset=first.dataset, data_root=first.data_root)
    except Exception as e:  # noqa: BLE001 - e.g. the data are not on this machine: the report still builds
        notes.append(f"forward-process figure not drawn ({type(e).__name__}: {e})")
        return None
    return Plot(png, caption(rows))
