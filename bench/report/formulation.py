"""Figures of the formulation axis (DESIGN.md section 6): each arm's effective weighting over log-SNR,
and lambda(t) of every path and shift (``bench plot-schedules``).

**Effective weighting** (Kingma & Gao 2023, "Understanding Diffusion Objectives", sec. 3): whatever the
path, density, shift, target and weighting, the expected loss is an integral over lambda of
p(lambda) w_eps(lambda) times the eps-loss at lambda, where p is the training time density pushed to
lambda (through the path and the training shift) and w_eps the eps-equivalent weight (the weighting
in eps form; ``none`` on the v loss is (SNR + 1)/SNR, on the flow loss (1 + sigma~)^2). Two arms whose
normalised p w_eps coincide train the same objective, whatever their names say.

p(lambda) is exact: the density's CDF over the time interval each log-SNR bin of ``EDGES`` maps to
(``Diffusion.log_snr_mass``; tests/test_formulations.py checks it against the trainer's own draws and
against closed forms). A histogram of draws would be noisy exactly where a weighting is large and the
density small (EDM's weight 1 + e^(-lambda)/sd^2 at low lambda).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.style import Plot, arm_styles, fig_legend, figure, save, theme, write_figure

EDGES = np.linspace(-15.0, 15.0, 121)  # log-SNR bins, 0.25 nats wide
#: RunConfig fields that change what the trainer draws or weighs over log-SNR: the figure is drawn when arms differ in one
#: (the beta schedule too: Kingma & Gao's point is that a schedule acts as a weighting)
FORMULATION_FIELDS = ("path", "t_density", "train_shift", "prediction", "weighting", "zero_terminal_snr", "schedule")


def effective_weighting(cfg, edges: np.ndarray = EDGES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, p(lambda), p(lambda) w_eps(lambda) normalised to integrate to 1 over ``edges``) of
    one trial config; p is the training density's exact mass per bin over its width
    (``Diffusion.log_snr_mass``), w_eps at the bin centre."""
    from bench.experiment.config import build_process
    from bench.process.diffusion import eps_equivalent

    d = build_process(cfg).diffusion
    width = np.diff(edges)
    p = d.log_snr_mass(torch.as_tensor(edges, dtype=torch.float64)).numpy() / width
    centres = (edges[:-1] + edges[1:]) / 2
    w = eps_equivalent(d.weighting, torch.exp(torch.as_tensor(centres, dtype=torch.float64)), d.prediction).numpy()
    eff = np.where(p > 0, p * np.nan_to_num(w, nan=0.0), 0.0)
    total = (eff * width).sum()
    return centres, p, eff / total if total > 0 else eff


def wants_effective_weighting(run) -> bool:
    """Drawn for runs whose arms differ in a field that changes the effective weighting (a grid over
    seeds or noise types alone has one curve)."""
    rows = run.trials()
    return any(f in rows.columns and rows[f].astype(str).nunique() > 1 for f in FORMULATION_FIELDS)


def plot_effective_weighting(run, out_dir: Path) -> Plot | None:
    """One line per arm (the first trial of each label) whose process has the VE view (blur and
    cold_blur act on x_0 by an operator: no single log-SNR per time, left out): p(lambda) and the
    normalised p w_eps."""
    from bench.experiment.config import build_process, config_from_row

    if not wants_effective_weighting(run):
        return None
    curves, left_out = {}, []
    for r in run.trials().to_dict("records"):
        if r["label"] in curves or r["label"] in left_out:
            continue
        cfg = config_from_row(r)
        if build_process(cfg).diffusion.has_ve_view:
            curves[r["label"]] = effective_weighting(cfg)
        else:
            left_out.append(r["label"])
    if len(curves) < 2:
        return None
    styles = arm_styles(list(curves))
    with theme():
        fig, axes = figure(1, 2, 4.4, 3.2)
        for label, (x, p, eff) in curves.items():
            kw = {**styles[label], "markevery": 8, "ms": 4, "lw": 1.3}
            axes[0][0].plot(x, p, label=label, **kw)
            axes[0][1].plot(x, eff, **kw)
        axes[0][1].set_yscale("log")  # the weights span decades (v's (SNR + 1)/SNR, rf's sigma~ at low lambda)
        axes[0][1].set_ylim(1e-4, None)
        axes[0][0].set_title("training density pushed to log-SNR, p(λ)")
        axes[0][1].set_title("effective weighting p(λ) w_eps(λ), normalised (log scale)")
        for ax in axes[0]:
            ax.set_xlabel("log-SNR λ = log(α²/σ²) [nats] (noise ← → data)")
            ax.set_ylabel("density over λ")
        fig_legend(fig, axes, ncols=2)
        png = save(fig, out_dir / "effective_weighting.png")
    return Plot(png, "Each arm's effective weighting over log-SNR (Kingma & Gao 2023): its training time density pushed "
                     "to λ through its path and training shift (left; exact masses of 0.25-nat bins from the density's CDF) "
                     "times its eps-equivalent loss weight, normalised over the plotted λ range (right; a weighting that grows "
                     "without bound at low λ, as rf's σ~, depends on that window). Arms whose right-hand curves coincide "
                     "train the same objective, whatever their names." + _left_out(left_out))


def _left_out(labels: list[str]) -> str:
    if not labels:
        return ""
    return (f" Left out: {', '.join(labels)} (an operator on x_0 besides the noise: no single log-SNR per time, so no "
            f"weighting over it).")


def plot_paths(schedules: Sequence[str], T: int, shifts: Sequence[float], out_path: Path) -> Path:
    """lambda(t) of every path (vp: each named schedule at ``T`` steps) at each training shift."""
    from bench.process.paths import PATHS, shift_log_snr
    from bench.process.schedules import make_betas, shift_schedule

    t = np.linspace(0.0005, 0.9995, 400)
    curves = {}
    for a in shifts:
        tag = "" if a == 1 else f", shift {a:g}"
        for name in schedules:
            ab = torch.cumprod(1 - shift_schedule(make_betas(name, T), a), 0).numpy()
            with np.errstate(divide="ignore"):
                curves[f"vp {name}{tag}"] = (np.arange(1, T + 1) / T, np.log(ab) - np.log1p(-ab))
        for name in PATHS.names():
            path = PATHS.get(name)()
            if not path.discrete:
                lam = shift_log_snr(path.log_snr(torch.as_tensor(t, dtype=torch.float64)), a).numpy()
                curves[f"{name}{tag}"] = (t, lam)
    styles = arm_styles(list(curves))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with theme():
        fig, axes = figure(1, 1, 6.0, 4.0)
        ax = axes[0][0]
        for label, (x, lam) in curves.items():
            fin = np.isfinite(lam)
            ax.plot(x[fin], lam[fin], label=label, **{**styles[label], "markevery": max(1, fin.sum() // 8), "ms": 4, "lw": 1.3})
        ax.set_ylim(-20, 20)
        ax.set_title("log-SNR λ(t) of every path; a shift a moves it down by 2 log a")
        ax.set_xlabel("t (0 = data, 1 = noise; vp: i/T; edm: σ/(1+σ), so edm's λ(t) is rf's)")
        ax.set_ylabel("λ(t) [nats]")
        fig_legend(fig, axes, ncols=3)
        write_figure(fig, out_path)
    return out_path
