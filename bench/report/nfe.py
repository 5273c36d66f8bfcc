"""Samplers side by side at equal cost: a metric against model evaluations (NFE), one panel per arm,
one line per solver (DESIGN.md section 6: sampler comparisons are made at equal NFE).

Drawn where a run evaluates two or more of the VE-view solvers (euler, heun, dpmpp_2m): there the
number of steps is not the cost (heun takes 2N - 1 evaluations for N steps), and the question a
reader has is "which solver at this budget". Runs of ddpm / ddim alone keep their steps figure
(``plots.plot_metric_vs_steps``), whose steps are their NFE.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.report.tables import Run, aggregate, datasets_with, direction, floor_value
from bench.sampling.sample import SAMPLERS
from bench.style import Plot, arm_styles, fig_legend, figure, safe, save, theme, wrap


def solvers_of(run: Run) -> list[str]:
    """The run's VE-view solvers, in the order they first appear, where there are two or more (else [])."""
    names = [s for s in dict.fromkeys(s for s, _ in run.evals) if s in SAMPLERS and SAMPLERS.get(s).needs_ve_view]
    return names if len(names) >= 2 else []


def metric_by_nfe(run: Run, metric: str) -> pd.DataFrame:
    """``aggregate`` (mean, std, n over seeds per arm and evaluation) with the evaluation's ``nfe`` (the rows'
    own: one value per arm and evaluation, since the path fixes it)."""
    agg = aggregate(run, metric)
    nfe = (run.rows.dropna(subset=["sampler"]).assign(sample_steps=lambda r: r["sample_steps"].astype(int))
           .groupby(["dataset", "label", "sampler", "sample_steps"], sort=False)["nfe"].first().reset_index())
    return agg.merge(nfe, on=["dataset", "label", "sampler", "sample_steps"], how="left")


def _spread(ticks: list[int]) -> list[int]:
    """Ticks at least 15% apart on the log axis (heun's 2N - 2 on rf sits next to the others' 2N - 1)."""
    out: list[int] = []
    for t in ticks:
        if not out or t > 1.15 * out[-1]:
            out.append(t)
    return out


def plot_metric_vs_nfe(run: Run, metric: str, out_dir: Path) -> Plot | None:
    """metric vs NFE (log x), one panel per (dataset, arm), one line per solver (mean ± std over seeds)."""
    solvers, datasets = solvers_of(run), datasets_with(run, metric)
    if not solvers or not datasets:
        return None
    df = metric_by_nfe(run, metric)
    df = df[df.sampler.isin(solvers) & (df.n > 0)]
    labels = list(dict.fromkeys(df.label))
    styles = arm_styles(solvers)
    cols = min(len(labels), 4)
    rows = len(datasets) * math.ceil(len(labels) / cols)
    with theme():
        fig, axes = figure(rows, cols, 3.2, 2.7)
        for ax in axes.ravel():
            ax.set_visible(False)
        for i, ds in enumerate(datasets):
            for k, lb in enumerate(labels):
                ax = axes[i * math.ceil(len(labels) / cols) + k // cols, k % cols]
                ax.set_visible(True)
                for s in solvers:
                    a = df[(df.dataset == ds) & (df.label == lb) & (df.sampler == s)].sort_values("nfe")
                    if len(a):
                        ax.errorbar(a["nfe"].astype(float), a["mean"], yerr=a["std"].fillna(0), capsize=3, ms=5,
                                    label=s, **styles[s])
                fv = floor_value(run, metric, ds)
                if fv is not None:
                    ax.axhline(fv, color="0.3", ls=":", lw=1.2, label="real-vs-real floor")
                here = df[(df.dataset == ds) & (df.label == lb)]
                ticks = _spread(sorted({int(v) for v in here["nfe"].dropna()}))
                ax.set_xscale("log")
                if len(here) and here["mean"].min() > 0 and here["mean"].max() > 4 * here["mean"].min():
                    ax.set_yscale("log")  # a solver that breaks down (heun from a huge sigma~) would flatten the rest
                ax.set_xticks(ticks, [str(v) for v in ticks])
                ax.minorticks_off()
                ax.set_title(wrap(f"{ds}: {lb}", 40))
                ax.set_xlabel("model evaluations, NFE (log scale)")
                ax.set_ylabel(f"{metric} ({direction(metric)}{', log' if ax.get_yscale() == 'log' else ''})")
        fig_legend(fig, axes, ncols=len(solvers) + 1)
        png = save(fig, out_dir / f"{safe(metric)}_vs_nfe.png")
    n = int(df["n"].max()) if len(df) else 0
    return Plot(png, f"{metric} against model evaluations (NFE) for each arm, one line per solver "
                     f"({', '.join(solvers)}): mean ± std over seeds (up to {n} per point); the steps behind each point "
                     f"are in the tables (heun: 2N - 1 evaluations for N steps, 2N - 2 where its grid starts at sigma~ = inf, "
                     f"as rf's from t = 1).")
