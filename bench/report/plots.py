"""Figures of a run (``plots/``, PNG + PDF), the schedules figure, and the denoising strip.

Every figure is built on a bare ``matplotlib.figure.Figure`` (no pyplot: no global state, works in
Ray workers and threads, Agg rendering) inside a seaborn theme. Arms keep one style across every
figure, and a style is a marker + line style + colour, so the figures read in greyscale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.process.diffusion import PREDICTIONS
from bench.report import kept
from bench.report.tables import Run, aggregate, datasets_with, direction, floor_value, labels_of
from bench.style import Plot, arm_styles, fig_legend, figure, metadata, safe, save, theme, wrap, write_figure  # noqa: F401


# --- metrics ---------------------------------------------------------------------------------------
def _seed_values(run: Run, metric: str) -> pd.DataFrame:
    r = run.rows[(run.rows["status"] == "ok") & run.rows["sampler"].notna()]
    return r.assign(_v=pd.to_numeric(r[metric], errors="coerce")).dropna(subset=["_v"])


def plot_metric_by_arm(run: Run, metric: str, out_dir: Path) -> Plot | None:
    """One panel per (dataset, evaluation): arms down, metric across; mean ± std, seeds as open dots."""
    agg, seeds, styles = aggregate(run, metric), _seed_values(run, metric), arm_styles(run.labels)
    datasets = datasets_with(run, metric)
    if not datasets:
        return None
    n_arms = max(len(labels_of(run, ds)) for ds in datasets)
    with theme():
        fig, axes = figure(len(datasets), len(run.evals), 3.0, 0.45 * n_arms + 1.2)
        for (i, ds), (j, (s, k)) in ((a, b) for a in enumerate(datasets) for b in enumerate(run.evals)):
            ax, labels = axes[i, j], labels_of(run, ds)
            for y, lb in enumerate(labels):
                a, v, st = _at(agg, ds, lb, s, k), _at(seeds, ds, lb, s, k)["_v"], styles[lb]
                ax.scatter(v, y + np.linspace(-0.15, 0.15, len(v)), s=14, facecolors="none", edgecolors=st["color"],
                           marker=st["marker"], linewidths=0.8, zorder=2)
                if len(a) and a["n"].iloc[0] > 0:
                    ax.errorbar(a["mean"], [y], xerr=a["std"].fillna(0), fmt=st["marker"], color=st["color"],
                                ms=7, capsize=3, zorder=3)
                else:
                    ax.text(0.02, y, "no result" if not len(a) else _lost_text(a.iloc[0]),
                            transform=ax.get_yaxis_transform(), va="center", fontsize=7, style="italic")
            fv = floor_value(run, metric, ds)
            if fv is not None:
                ax.axvline(fv, color="0.3", ls=":", lw=1.2, label="real-vs-real floor")
            ax.set_yticks(range(len(labels)), [wrap(lb) for lb in labels] if j == 0 else [])
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.margins(x=0.12)
            ax.set_title(f"{ds}: {s}, {k} steps")
            ax.set_xlabel(f"{metric} ({direction(metric)})")
        fig_legend(fig, axes)
        fig.suptitle(f"{metric} by arm: mean ± std over seeds (filled), individual seeds (open)", fontsize=9)
        png = save(fig, out_dir / f"{safe(metric)}_by_arm.png")
    return Plot(png, f"{metric} (dimensionless) of every arm at every evaluation: mean ± std over seeds, each seed "
                     f"an open marker; dotted line: the real-vs-real floor.")


def _at(df: pd.DataFrame, ds: str, label: str, sampler: str, steps: int) -> pd.DataFrame:
    return df[(df.dataset == ds) & (df.label == label) & (df.sampler == sampler) & (df.sample_steps == steps)]


def _lost_text(a) -> str:
    parts = [f"{int(a[k])} {k}" for k in ("diverged", "error") if a[k]]
    return "no result: " + (", ".join(parts) if parts else "missing")


def plot_metric_vs_steps(run: Run, metric: str, out_dir: Path) -> Plot | None:
    """metric vs sampling steps (log x), one line per arm; a panel per (dataset, sampler)."""
    agg, styles, datasets = aggregate(run, metric), arm_styles(run.labels), datasets_with(run, metric)
    samplers = list(dict.fromkeys(s for s, _ in run.evals))
    if not datasets:
        return None
    with theme():
        fig, axes = figure(len(datasets), len(samplers), max(3.6, 7.0 / len(samplers)), 2.8)
        for (i, ds), (j, s) in ((a, b) for a in enumerate(datasets) for b in enumerate(samplers)):
            ax = axes[i, j]
            for n, lb in enumerate(run.labels):
                a = agg[(agg.dataset == ds) & (agg.label == lb) & (agg.sampler == s) & (agg.n > 0)]
                a = a.sort_values("sample_steps")
                dodge = math.exp(0.03 * (n - (len(run.labels) - 1) / 2))  # arms side by side, not on top of each other
                if len(a):
                    ax.errorbar(a["sample_steps"] * dodge, a["mean"], yerr=a["std"].fillna(0), capsize=3, ms=6,
                                label=lb, **styles[lb])
            fv = floor_value(run, metric, ds)
            if fv is not None:
                ax.axhline(fv, color="0.3", ls=":", lw=1.2, label="real-vs-real floor")
            ax.set_xscale("log")
            steps = sorted({k for s2, k in run.evals if s2 == s})
            ax.set_xticks(steps, [str(k) for k in steps])
            ax.minorticks_off()
            ax.margins(x=0.1)
            ax.set_title(f"{ds}: {s}")
            ax.set_xlabel("sampling steps (log scale)")
            ax.set_ylabel(f"{metric} ({direction(metric)})")
        fig_legend(fig, axes, ncols=2)
        png = save(fig, out_dir / f"{safe(metric)}_vs_steps.png")
    return Plot(png, f"{metric} against the number of sampling steps, one line per arm (mean ± std over seeds).")


def plot_forest(run: Run, metric: str, dataset: str, table: pd.DataFrame, out_dir: Path) -> Plot | None:
    """Forest plot of ``dataset``: each arm's paired difference to the best arm (arm - best, mean over
    seeds) with its 95% t-interval, one panel per evaluation, a line at zero. ``table``: the metric's
    ``bench.report.paired.paired_table``. None where no evaluation has two arms to compare."""
    from bench.report.paired import vs_best

    rows = {ev: vs_best(table, dataset, ev) for ev in run.evals}
    if not any(len(r) for r in rows.values()):
        return None
    labels, styles = labels_of(run, dataset), arm_styles(run.labels)
    with theme():
        fig, axes = figure(1, len(run.evals), 3.4, 0.45 * len(labels) + 1.4)
        for j, ev in enumerate(run.evals):
            _forest_panel(axes[0, j], rows[ev], labels, styles, first=j == 0)
            axes[0, j].set_title(f"{dataset}: {ev[0]}, {ev[1]} steps")
            axes[0, j].set_xlabel(wrap(forest_xlabel(metric), 36))
        fig.suptitle(f"{metric}: paired difference to the best arm per evaluation (mean over seeds, 95% t-interval)",
                     fontsize=9)
        png = save(fig, out_dir / f"forest_{safe(metric)}_{safe(dataset)}.png")
    return Plot(png, f"{dataset}, {metric} ({direction(metric)}): each arm minus the best arm of the evaluation, "
                     f"paired by training seed, mean difference with its 95% t-interval (no bar: fewer than 2 paired "
                     f"seeds); the best arm sits at 0 (hollow marker). An interval that excludes 0 is a difference at the "
                     f"5% level before Holm's correction.")


def forest_xlabel(metric: str) -> str:
    """The forest plot's x-axis label: what the difference is and which way is better."""
    return f"{metric} difference to best arm ({direction(metric)})"


def _forest_panel(ax, rows: pd.DataFrame, labels: list[str], styles: dict, first: bool) -> None:
    """One evaluation: a row per arm (in ``labels`` order), the reference at 0, a zero line."""
    ax.axvline(0, color="0.3", lw=1, zorder=1)
    by_arm = rows.set_index("arm")
    ref = rows["reference"].iloc[0] if len(rows) else None
    for y, lb in enumerate(labels):
        st = styles[lb]
        if lb == ref:
            ax.plot([0], [y], marker=st["marker"], mfc="none", mec=st["color"], mew=1.5, ms=8, ls="none", zorder=3)
            ax.text(0, y + 0.32, "best arm", ha="center", va="center", fontsize=6, style="italic")
        elif lb in by_arm.index:
            r = by_arm.loc[lb]
            err = [[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]] if np.isfinite(r["lo"]) else None
            ax.errorbar([r["diff"]], [y], xerr=err, fmt=st["marker"], color=st["color"], ms=6, capsize=3, zorder=3)
        else:
            ax.text(0.02, y, "no result", transform=ax.get_yaxis_transform(), va="center", fontsize=7, style="italic")
    ax.set_yticks(range(len(labels)), [wrap(lb) for lb in labels] if first else [])
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.margins(x=0.15)


# --- schedules -------------------------------------------------------------------------------------
def plot_schedules(names: Sequence[str], T: int, out_path: Path) -> Path:
    """alpha_bar(t), log-SNR(t) and beta(t) of the named registered schedules at ``T`` steps, written to
    ``out_path`` (format from its suffix); schedules whose x_T is not pure noise are marked."""
    from bench.process.schedules import make_betas

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with theme():
        fig = _schedule_figure({n: make_betas(n, T) for n in names})
        write_figure(fig, out_path)
    return out_path


def _schedule_figure(curves: dict) -> Figure:
    """Call inside ``theme()``. A schedule with zero terminal SNR (alpha_bar_T = 0, log-SNR_T = -inf)
    has its last log-SNR point drawn at the bottom edge of the axis, marked "SNR = 0"."""
    from bench.process.schedules import PURE_NOISE_ALPHA_BAR, terminal_report

    styles = arm_styles(list(curves))
    fig, axes = figure(1, 3, 3.6, 3.0)
    ax_ab, ax_snr, ax_beta = axes[0]
    zero_snr = []
    for name, betas in curves.items():
        b = betas.double().numpy()
        ab = np.cumprod(1 - b)
        u = np.arange(1, len(b) + 1) / len(b)
        rep = terminal_report(betas)
        label = name if rep.pure_noise else f"{name}: x_T NOT pure noise (ᾱ_T = {rep.alpha_bar_T:.2g})"
        if not np.isfinite(rep.log_snr_T):
            label = f"{name} (zero terminal SNR: ᾱ_T = 0)"
        kw = {**styles[name], "markevery": max(1, len(b) // 8), "ms": 5, "lw": 1.4}
        ax_ab.plot(u, ab, label=label, **kw)
        with np.errstate(divide="ignore"):  # log(0) = -inf at t = T under zero terminal SNR: not drawn
            snr = np.log(ab) - np.log1p(-ab)
        fin = np.isfinite(snr)
        ax_snr.plot(u[fin], snr[fin], **kw)
        ax_beta.plot(u, b, **kw)
        if not rep.pure_noise:
            ax_snr.plot([1.0], [rep.log_snr_T], marker="o", ms=12, mfc="none", mec="black", mew=1.5)
        if not np.isfinite(rep.log_snr_T):
            zero_snr.append(name)
    thr = math.log(PURE_NOISE_ALPHA_BAR / (1 - PURE_NOISE_ALPHA_BAR))
    ax_snr.axhline(thr, color="0.3", ls=":", lw=1, label=f"pure-noise threshold (ᾱ_T = {PURE_NOISE_ALPHA_BAR:g})")
    if zero_snr:  # log-SNR_T = -inf: a marker on the bottom edge at t = T (x in data, y in axes coordinates)
        edge = ax_snr.get_xaxis_transform()
        for name in zero_snr:
            ax_snr.plot([1.0], [0.0], transform=edge, clip_on=False, zorder=4, ls="none", ms=9, mfc="none", mew=1.5,
                        marker="v", mec=styles[name]["color"])
        ax_snr.annotate("SNR = 0\n(log-SNR = -∞)", xy=(1.0, 0.0), xycoords=edge, xytext=(-4, 8),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7)
    ax_beta.set_yscale("log")
    for ax, title, unit in ((ax_ab, "signal variance kept, ᾱ(t)", "ᾱ(t)"),
                            (ax_snr, "log-SNR(t) = log(ᾱ / (1 - ᾱ))", "log-SNR(t) [nats]"),
                            (ax_beta, "noise variance added per step, β(t)", "β(t) (log scale)")):
        ax.set_title(title)
        ax.set_xlabel("t / T (fraction of the forward process)")
        ax.set_ylabel(unit)
    fig_legend(fig, axes, ncols=2)
    return fig


def run_schedule_curves(run: Run) -> dict:
    """{schedule label: betas} of the distinct schedules of the run's arms (noise does not matter),
    each rebuilt from its trial's config."""
    from bench.experiment.config import config_from_row
    from bench.process.paths import PATHS
    from bench.process.schedules import make_betas

    curves = {}
    several_T = run.rows["timesteps"].nunique() > 1
    for r in run.trials().to_dict("records"):
        try:
            cfg = config_from_row(r)
            if not PATHS.get(cfg.path).discrete:  # rf, edm: no beta schedule (the effective-weighting figure shows them)
                continue
            label = cfg.schedule_label() + (f" (T={cfg.timesteps})" if several_T else "")
            if label not in curves:
                curves[label] = make_betas(cfg.schedule, cfg.timesteps, cfg.zero_terminal_snr, **cfg.schedule_kwargs())
        except Exception:  # noqa: BLE001 - an unknown schedule (older run) is left out, not fatal
            continue
    return curves


def plot_run_schedules(run: Run, out_dir: Path) -> Plot | None:
    curves = run_schedule_curves(run)
    if not curves:
        return None
    with theme():
        png = save(_schedule_figure(curves), out_dir / "schedules.png")
    from bench.process.schedules import terminal_report

    zero = any(not np.isfinite(terminal_report(b).log_snr_T) for b in curves.values())
    return Plot(png, "The schedules compared: ᾱ(t), log-SNR(t) and β(t) against t/T; a circled end point is "
                     "a schedule whose x_T is not pure noise" + ("; a triangle on the bottom edge at t = T marks a schedule "
                                                                 "with zero terminal SNR (log-SNR = -∞ there)." if zero else "."))


# --- training ----------------------------------------------------------------------------------------
def _read_log(run: Run, tid: str, kind: str) -> pd.DataFrame | None:
    path = run.dir / "logs" / f"{tid}_{kind}.csv"
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return df if len(df) else None


def plot_loss_curves(run: Run, out_dir: Path, notes: list[str]) -> Plot | None:
    """Training loss against step per dataset: each seed a thin line, the seeds' mean smoothed thick."""
    if committed := kept.figure(run, "logs", out_dir / "loss_curves.png"):
        return committed
    styles, found = arm_styles(run.labels), False
    with theme():
        fig, axes = figure(1, len(run.datasets), 4.5, 3.2)
        for j, ds in enumerate(run.datasets):
            ax = axes[0, j]
            for lb, trials in _trials_by_label(run, ds):
                logs = _logs(run, trials, "loss", notes)
                if not logs:
                    continue
                found = True
                st = styles[lb]
                for df in logs:
                    ax.plot(df["step"], df["loss"], color=st["color"], lw=0.5, alpha=0.35)
                mean = pd.concat(logs).groupby("step")["loss"].mean()
                smooth = mean.rolling(max(1, len(mean) // 20), center=True, min_periods=1).mean()
                ax.plot(smooth.index, smooth.values, lw=1.8, label=lb, markevery=max(1, len(smooth) // 8), **st)
            ax.set_title(f"{ds}: training loss")
            ax.set_xlabel("training step")
            ax.set_ylabel(loss_label(run) + _log_if_wide(ax))
        fig_legend(fig, axes, ncols=2)
        png = save(fig, out_dir / "loss_curves.png") if found else None
    return Plot(png, f"Training loss, {loss_what(run)} (thin: each seed; thick: mean over seeds, smoothed)."
                + loss_scale_note(run)) if png else None


def _log_if_wide(ax) -> str:
    """Log y axis when the plotted (positive) data span more than a decade; returns the label suffix."""
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if lo > 0 and np.isfinite(hi) and hi / lo > 10:
        ax.set_yscale("log")
        return " (log)"
    return ""


def _trials_by_label(run: Run, ds: str):
    trials = run.trials()
    return trials[trials["dataset"] == ds].groupby("label", sort=False)


def _loss_kind(run: Run) -> str:
    kinds = run.rows["loss"].dropna().unique() if "loss" in run.rows.columns else []
    return "/".join(map(str, kinds)).upper() or "loss"


#: the prediction target's symbol in labels (bench.experiment.config ``prediction``)
TARGETS = {"eps": "eps", "x0": "x_0", "v": "v"}


def _distinct(run: Run, col: str, default: str) -> list[str]:
    return [str(v) for v in dict.fromkeys(run.rows[col].dropna())] if col in run.rows.columns else [default]


def loss_label(run: Run) -> str:
    """The y-label of the loss plots: '<LOSS> loss on <target>', read from the run's ``loss`` and
    ``prediction`` columns (eps for runs made before the prediction target was a field); 'weighted'
    when a loss weighting other than none was used."""
    targets = _distinct(run, "prediction", "eps") or ["eps"]
    weighted = [w for w in _distinct(run, "weighting", "none") if w != "none"]
    what = "/".join(TARGETS.get(t, t) for t in targets)
    return f"{'weighted ' if weighted else ''}{_loss_kind(run)} loss on {what}" + (" (per arm)" if len(targets) > 1 else "")


def loss_what(run: Run) -> str:
    """What the training loss measures, in words, from the run's ``loss``, ``prediction`` and ``weighting``."""
    targets = _distinct(run, "prediction", "eps") or ["eps"]
    weights = [w for w in _distinct(run, "weighting", "none") if w != "none"]
    what = " or ".join((PREDICTIONS.get(t).words if t in PREDICTIONS.names() else "") or f"the prediction target {t}"
                       for t in targets)
    text = f"the per-element {_loss_kind(run)} loss on {what}" + (", each arm's own target" if len(targets) > 1 else "")
    return text + (f", weighted per example ({', '.join(weights)})" if weights else "")


def loss_scale_note(run: Run) -> str:
    """A caption's warning where arms' losses are on different scales (different targets or weightings)."""
    if len(_distinct(run, "prediction", "eps")) > 1 or len(_distinct(run, "weighting", "none")) > 1:
        return (" The arms differ in prediction target or loss weighting, so their loss values are on different "
                "scales: compare each arm's shape over training, not the levels between arms.")
    return ""


def _logs(run: Run, trials: pd.DataFrame, kind: str, notes: list[str]) -> list[pd.DataFrame]:
    out = []
    for _, t in trials.iterrows():
        df = _read_log(run, t["trial_id"], kind)
        if df is None:
            notes.append(f"logs/{t['trial_id']}_{kind}.csv missing ({t['label']}, {t['dataset']}, seed {t['seed']}, "
                         f"status {t['status']})")
        else:
            out.append(df)
    return out


#: of a loss_by_t.csv with a ``window`` column (bench.training.train: all | second_half), the window plotted
LOSS_BY_T_WINDOW = "second_half"


def bin_log_snr(lo: pd.Series, hi: pd.Series) -> pd.Series:
    """The log-SNR centre of each timestep bin: the mean of its ends where both are finite; a bin that
    reaches zero terminal SNR (log_snr_hi = -inf at t = T) is centred at the log-SNR of its lowest t
    (its finite end), so it is drawn rather than dropped; NaN only where neither end is finite."""
    lo, hi = pd.to_numeric(lo, errors="coerce").astype(float), pd.to_numeric(hi, errors="coerce").astype(float)
    both = np.isfinite(lo) & np.isfinite(hi)
    return ((lo + hi) / 2).where(both, lo.where(np.isfinite(lo), hi.where(np.isfinite(hi))))


def loss_by_t_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A per-timestep-bin loss log as columns x (bin centre in t, or the bin index), log_snr (bin centre,
    ``bin_log_snr``; NaN if not logged), loss, zero_snr (the bin reaches log-SNR = -inf at t = T).
    Accepts t_lo/t_hi, t/t_mid or bin columns; keeps one ``window`` (the second half of training if
    logged) and, for a log with a ``step`` column, the last step."""
    if "window" in df.columns:
        df = df[df["window"] == (LOSS_BY_T_WINDOW if (df["window"] == LOSS_BY_T_WINDOW).any() else df["window"].iloc[-1])]
    if "step" in df.columns:
        df = df[df["step"] == df["step"].max()]
    loss = next((c for c in ("loss", "mean_loss", "loss_mean") if c in df.columns), df.columns[-1])
    if {"t_lo", "t_hi"} <= set(df.columns):
        x = (df["t_lo"] + df["t_hi"]) / 2
    else:
        x = next((df[c] for c in ("t_mid", "t_center", "t", "bin") if c in df.columns),
                 pd.Series(range(len(df)), index=df.index))
    snr = bin_log_snr(df["log_snr_lo"], df["log_snr_hi"]) if {"log_snr_lo", "log_snr_hi"} <= set(df.columns) else np.nan
    zero = (np.isneginf(pd.to_numeric(df["log_snr_hi"], errors="coerce").astype(float)).to_numpy()
            if "log_snr_hi" in df.columns else False)
    out = pd.DataFrame({"x": x.astype(float).to_numpy(), "log_snr": snr if np.isscalar(snr) else snr.to_numpy(),
                        "loss": df[loss].astype(float).to_numpy(), "zero_snr": zero})
    return out.dropna(subset=["loss"])


def plot_loss_by_t(run: Run, out_dir: Path, notes: list[str]) -> Plot | None:
    """Loss per timestep bin, one line per arm (mean ± std over seeds), against t and, when logged,
    against the bin's log-SNR (which puts different schedules on one axis)."""
    if committed := kept.figure(run, "logs", out_dir / "loss_by_t.png"):
        return committed
    styles = arm_styles(run.labels)
    frames = {ds: [(lb, [loss_by_t_frame(df) for df in _logs(run, trials, "loss_by_t", notes)])
                   for lb, trials in _trials_by_label(run, ds)] for ds in run.datasets}
    if not any(logs for per in frames.values() for _, logs in per):
        return None
    by_snr = all(np.isfinite(f["log_snr"]).any() for per in frames.values() for _, logs in per for f in logs)
    with theme():
        fig, axes = figure(2 if by_snr else 1, len(run.datasets), 4.5, 3.2)
        for j, ds in enumerate(run.datasets):
            for i, (xcol, xlabel) in enumerate([("x", "timestep t (bin centre; small t = little noise)"),
                                                 ("log_snr", "log-SNR at the bin centre [nats] (high = little noise)")]
                                                [: 2 if by_snr else 1]):
                ax = axes[i, j]
                for lb, logs in frames[ds]:
                    if logs:
                        both = pd.concat(logs)
                        g = both[np.isfinite(both[xcol].astype(float))].groupby(xcol)["loss"]
                        ax.errorbar(g.mean().index, g.mean().values, yerr=g.std().fillna(0).values, capsize=2, ms=5,
                                    label=lb, **styles[lb])
                ax.set_title(f"{ds}: training loss by timestep bin")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(loss_label(run) + _log_if_wide(ax))
        fig_legend(fig, axes, ncols=2)
        png = save(fig, out_dir / "loss_by_t.png")
    zero = any(f["zero_snr"].any() for per in frames.values() for _, logs in per for f in logs)
    return Plot(png, f"Training loss per timestep bin ({loss_what(run)}; late training where logged), per arm, mean ± "
                     f"std over seeds; against t and against the bin's log-SNR" + (
                         " (the last bin reaches zero SNR at t = T, log-SNR = -∞: it is placed at the log-SNR of its lowest t)"
                         if zero else "") + "." + loss_scale_note(run))


# --- learning curves -----------------------------------------------------------------------------------
def plot_learning_curves(run: Run, out_dir: Path) -> list[Plot]:
    """Per (dataset, curve metric): the metric against training images (train_step x batch_size), one
    line per arm (mean over seeds) with a band from the min to the max over seeds; the final
    evaluation is the last point where it used the curve's sampler, steps and metric."""
    from bench.report.curves import curve_datasets, curve_frame, curve_metrics

    styles, out = arm_styles(run.labels), []
    for metric in curve_metrics(run):
        for ds in curve_datasets(run, metric):
            frame = curve_frame(run, ds, metric)
            if not len(frame):
                continue
            evs = list(dict.fromkeys(zip(frame["sampler"], frame["sample_steps"])))
            with theme():
                fig, axes = figure(1, len(evs), 4.8, 3.4)
                for j, (s, k) in enumerate(evs):
                    ax = axes[0, j]
                    for lb, f in frame[(frame["sampler"] == s) & (frame["sample_steps"] == k)].groupby("label", sort=False):
                        st = styles[lb]
                        ax.fill_between(f["images"], f["min"], f["max"], color=st["color"], alpha=0.15, lw=0)
                        ax.plot(f["images"], f["mean"], label=lb, ms=6, **st)
                        end = f[f["final"]]
                        if len(end):  # the final evaluation: filled marker, the curve's points open
                            ax.plot(end["images"], end["mean"], ls="none", marker=st["marker"], color=st["color"], ms=7)
                    fv = floor_value(run, metric, ds)
                    if fv is not None:
                        ax.axhline(fv, color="0.3", ls=":", lw=1.2, label="real-vs-real floor")
                    ax.set_title(f"{ds}: {metric}, {s} {k} steps")
                    ax.set_xlabel("training images (train_step × batch size)")
                    ax.set_ylabel(f"{metric} ({direction(metric)})")
                    ax.margins(x=0.05)
                fig_legend(fig, axes, ncols=2)
                png = save(fig, out_dir / f"curve_{safe(metric)}_{safe(ds)}.png")
            n = sorted({int(x) for x in frame["n"]})
            out.append(Plot(png, f"{ds}: learning curve of {metric} ({direction(metric)}) against training images "
                                 f"(train_step × batch size): each arm's mean over seeds (line) and the min-max range "
                                 f"over seeds (band; n = {', '.join(map(str, n))} seeds per point); the last point of "
                                 f"each line is the final evaluation (same sampler, steps and metric)."))
    return out


# --- brightness ----------------------------------------------------------------------------------------
def brightness_metrics(run: Run) -> list[str]:
    """The run's metrics that record the samples' and the data's mean intensity (``<m>_mean_fake``)."""
    return [m for m in run.metrics if {f"{m}_mean_fake", f"{m}_mean_ref"} <= set(run.rows.columns)
            and np.isfinite(pd.to_numeric(run.rows[f"{m}_mean_fake"], errors="coerce")).any()]


def plot_brightness(run: Run, metric: str, out_dir: Path) -> Plot | None:
    """The brightness diagnostic (Lin et al. 2023): per (dataset, evaluation), each arm's per-image mean
    intensities pooled over seeds (box: quartiles, whiskers 5-95%) where per-image data were kept,
    each seed's mean as an open marker; the data's mean (line) ± 1 sd (band, where kept)."""
    from bench.report.perimage import brightness_samples, reference_sd

    if committed := kept.figure(run, "per_image", out_dir / f"brightness_{safe(metric)}.png"):
        return committed
    seeds, styles = _seed_values(run, f"{metric}_mean_fake"), arm_styles(run.labels)
    datasets = list(dict.fromkeys(seeds["dataset"]))
    if not datasets:
        return None
    n_arms = max(len(labels_of(run, ds)) for ds in datasets)
    boxes = False
    with theme():
        fig, axes = figure(len(datasets), len(run.evals), 3.2, 0.5 * n_arms + 1.3)
        for (i, ds), (j, (s, k)) in ((a, b) for a in enumerate(datasets) for b in enumerate(run.evals)):
            ax, labels = axes[i, j], labels_of(run, ds)
            at = seeds[(seeds.dataset == ds) & (seeds.sampler == s) & (seeds.sample_steps == k)]
            ref = pd.to_numeric(at[f"{metric}_mean_ref"], errors="coerce").dropna()
            if len(ref):
                mu, sd = float(ref.mean()), reference_sd(run, metric, ds)
                if sd is not None:
                    ax.axvspan(mu - sd, mu + sd, color="0.85", zorder=0, label="data: mean ± 1 sd")
                ax.axvline(mu, color="0.2", ls="--", lw=1.2, label="data: mean intensity")
            for y, lb in enumerate(labels):
                st, v = styles[lb], at.loc[at.label == lb, "_v"]
                x = brightness_samples(run, ds, lb, (s, k))
                if x is not None and len(x):
                    boxes = True
                    q5, q25, q50, q75, q95 = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
                    ax.barh([y], [q75 - q25], left=[q25], height=0.5, color=st["color"], alpha=0.35, ec=st["color"], zorder=2)
                    ax.vlines([q50], y - 0.25, y + 0.25, color=st["color"], lw=1.5, zorder=2)
                    ax.hlines([y, y], [q5, q75], [q25, q95], color=st["color"], lw=1, zorder=2)
                ax.scatter(v, y + np.linspace(-0.15, 0.15, len(v)), s=16, facecolors="none", edgecolors=st["color"],
                           marker=st["marker"], linewidths=0.9, zorder=3)
            ax.set_yticks(range(len(labels)), [wrap(lb) for lb in labels] if j == 0 else [])
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.set_title(f"{ds}: {s}, {k} steps")
            ax.set_xlabel(wrap("mean intensity of an image (0 = black, 1 = white)", 32))
        fig_legend(fig, axes, ncols=2)
        png = save(fig, out_dir / f"brightness_{safe(metric)}.png")
    what = ("boxes: the per-image mean intensities of each arm's samples pooled over seeds (quartiles, whiskers 5-95%); "
            if boxes else "")
    return Plot(png, f"Brightness diagnostic ({metric}; Lin et al. 2023's symptom of a schedule whose x_T is not pure "
                     f"noise): {what}open markers: each seed's mean intensity of its samples; dashed line: the training "
                     f"images' mean intensity, grey band ± 1 sd where the run kept it (references/).")
