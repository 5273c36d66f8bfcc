"""``bench perf``'s time-to-FD case: how many seconds of training each arm of a run needs to reach a
given score, read from the run's learning curves (``bench perf --only time_to_fd --from-run RUN``).

Images/s says how fast a model trains, not how fast it learns: a wider UNet, a larger learning rate
or a smaller batch changes both. The number that decides a budget is the training wall time to a
fixed FD. Each trial's learning curve (``eval_at``) and final evaluation carry ``train_seconds``, the
training wall time to that step without the evaluations (``bench.train``); ``time_to_reach``
interpolates the time at which the curve first falls to the target.

Targets: the baseline arm's (the run's first arm) mean score at the end of its training and at its
curve point nearest half of it — "the time to reach what the baseline reaches". Per arm and target:
the seconds over seeds (median, min-max, how many seeds reached it) and the speed-up, baseline
seconds / arm seconds, per seed (paired: the same training seed in both arms) and its median. The
trials of a run share the machine as the runner packed them, so the times are comparable within a
run, not across machines; the table says which run and machine they come from.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import InputError

SECTION = "time_to_fd"
#: a metric of the learning curves, in order of preference
METRICS = ("fd_mnist_clf", "fid", "fd_pixels")


def load(run_dir: Path):
    """The run (``bench.report.tables.Run``), checked to have learning curves with training seconds."""
    from bench.report.tables import load_run

    run_dir = Path(run_dir)
    if not (run_dir / "rows.csv").is_file():
        raise InputError(f"--from-run {run_dir}: no rows.csv there (a run directory of bench run)")
    run = load_run(run_dir)
    if not len(run.curve) or "train_seconds" not in run.curve.columns or not run.curve["train_seconds"].notna().any():
        raise InputError(f"--from-run {run_dir}: no learning-curve rows with train_seconds "
                         f"(a run whose grid sets eval_at, made with bench at or after the train_seconds field)")
    return run


def pick_metric(run) -> tuple[str, str]:
    """(dataset, metric): the first dataset with curve points of the preferred metric."""
    from bench.report.curves import curve_datasets, curve_metrics

    have = curve_metrics(run)
    for metric in [m for m in METRICS if m in have] + have:
        datasets = curve_datasets(run, metric)
        if datasets:
            return datasets[0], metric
    raise InputError(f"--from-run {run.dir}: its learning curves score no metric")


def targets(points: pd.DataFrame, baseline: str) -> list[tuple[str, float]]:
    """The baseline arm's mean score at its end and at its curve step nearest half of its training."""
    base = points[points["label"] == baseline]
    end = base[base["final"].astype(bool)]
    out = [("its end", float(end["value"].mean()))] if len(end) else []
    curve = base[~base["final"].astype(bool)]
    if len(curve) and len(end):
        half = float(end["train_step"].max()) / 2
        step = min(curve["train_step"].unique(), key=lambda s: abs(s - half))
        out.append((f"step {int(step)}", float(curve.loc[curve["train_step"] == step, "value"].mean())))
    return sorted(out, key=lambda t: -t[1])  # the easier target first


def measure(run_dir: Path) -> tuple[list[dict[str, Any]], pd.DataFrame, list[str]]:
    """Rows for perf.csv (one per arm and target, one per arm for images/s), the points behind them
    (for the figure) and notes for perf.md."""
    from bench.report.curves import time_to_reach, trial_points

    run = load(run_dir)
    dataset, metric = pick_metric(run)
    pts = trial_points(run, dataset, metric)
    labels = list(dict.fromkeys(pts["label"]))
    baseline = labels[0]
    goals = targets(pts, baseline)
    env = run.env if isinstance(run.env, dict) else {}
    machine = (f"{env.get('platform', '?')}, {env.get('cpu_count', '?')} CPU cores, runner {env.get('runner', '?')}, "
               f"{env.get('cpus_per_trial') or 'all'} CPU(s) per trial")
    common = {"run": run.id, "dataset": dataset, "score": metric, "baseline": baseline}
    rows: list[dict[str, Any]] = []
    for label in labels:
        per_seed = {seed: g.sort_values("train_step") for seed, g in pts[pts["label"] == label].groupby("seed")}
        rate = [float(g["images"].iloc[-1] / g["train_seconds"].iloc[-1]) for g in per_seed.values()
                if g["train_seconds"].iloc[-1] > 0]
        rows.append(_spread_row(f"{label}: training images/s", "images/s", rate, arm=label, target_of="", **common))
        for what, goal in goals:
            secs = {seed: time_to_reach(g["train_seconds"], g["value"], goal) for seed, g in per_seed.items()}
            rows.append(_time_row(label, what, goal, secs, _baseline_times(pts, baseline, goal), common))
    notes = [f"time_to_fd: run {run.id} ({machine}), {metric} on {dataset}; targets = "
             f"the baseline arm ({baseline})'s mean {metric} at " + ", ".join(f"{w} ({g:.4g})" for w, g in goals)]
    return rows, pts, notes


def _baseline_times(pts: pd.DataFrame, baseline: str, goal: float) -> dict[Any, tuple[float, bool]]:
    from bench.report.curves import time_to_reach

    base = pts[pts["label"] == baseline]
    return {seed: time_to_reach(g.sort_values("train_step")["train_seconds"], g.sort_values("train_step")["value"], goal)
            for seed, g in base.groupby("seed")}


def _spread_row(case: str, metric: str, values: list[float], **extra) -> dict[str, Any]:
    v = [x for x in values if math.isfinite(x)]
    med = statistics.median(v) if v else math.nan
    return {"section": SECTION, "case": case, "metric": metric, "median": med, "lo": min(v, default=math.nan),
            "hi": max(v, default=math.nan), "reps": len(v), **extra}


def _time_row(label: str, what: str, goal: float, secs: dict, base: dict, common: dict) -> dict[str, Any]:
    """Seconds to ``goal`` over seeds, and the speed-up baseline / arm per seed where both reached it."""
    reached = [s for s, (t, _) in secs.items() if math.isfinite(t)]
    speedups = [base[s][0] / secs[s][0] for s in reached if s in base and math.isfinite(base[s][0]) and secs[s][0] > 0]
    bound = any(secs[s][1] for s in reached)
    row = _spread_row(f"{label}: seconds to {common['score']} <= {goal:.4g} (baseline's value at {what})",
                      "training seconds", [secs[s][0] for s in reached], arm=label, target_of=what, target=goal, **common)
    row.update(seeds=len(secs), ratio=statistics.median(speedups) if speedups else math.nan,
               ratio_lo=min(speedups, default=math.nan), ratio_hi=max(speedups, default=math.nan),
               note=f"reached by {len(reached)} of {len(secs)} seeds" + ("; first curve point already there (an upper "
                                                                       "bound)" if bound else ""))
    return row


def plot(pts: pd.DataFrame, score: str, path: Path) -> None:
    """The learning curves against training seconds, one line per trial, coloured by arm (log y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, g) in enumerate(pts.groupby("label", sort=False)):
        for j, (_, t) in enumerate(g.groupby("seed")):
            t = t.sort_values("train_step")
            ax.plot(t["train_seconds"], t["value"], marker="o", ms=3, lw=1.2, color=colours[i % len(colours)],
                    ls=("-", "--", ":")[i // len(colours) % 3], label=label if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("training wall time, s (without evaluations)")
    ax.set_ylabel(f"{score} (log scale; lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{score} against training seconds, one line per trial", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

