"""``bench perf``'s time-to-FD case: how many seconds of training each arm of a run needs to reach a
given score, read from the run's learning curves (``bench perf --only time_to_fd --from-run RUN``).

Images/s says how fast a model trains, not how fast it learns: a wider UNet, a larger learning rate
or a smaller batch changes both. The number that decides a budget is the training wall time to a
fixed FD. Each trial's learning curve (``eval_at``) and final evaluation carry ``train_seconds``, the
training wall time to that step (optimizer steps, checkpoints and logs; not the evaluations;
``bench.training.train``); ``bench.report.curves.time_to_reach`` interpolates the time at which a curve first
falls to a target.

Targets, per training seed: the baseline arm's (the run's first arm) score at the end of its training
and at its curve step nearest half of it, in that seed — "the time to reach what the baseline reaches".
Per arm and target: the seconds over seeds (median, min-max, how many seeds reached it) and the
speed-up, baseline seconds / arm seconds to the same seed's target (paired: same training seed, same
target; the baseline's own speed-up is 1 by construction), with its median and min-max. The score is
a lower-is-better one (FD); the curves are the baseline's curve evaluation (sampler, steps). The
trials of a run share the machine as the runner packed them, so times compare within a run, not
across machines; the notes say which run, machine and dataset they come from. The same is read in
optimizer steps: where the arms cost the same per step (a learning-rate schedule, a weight average),
the steps carry the answer and the seconds add how the trials happened to share the cores.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import InputError

SECTION = "time_to_fd"
#: what the curves are read against: the wall time, and the optimizer steps (arms that cost the same per step,
#: e.g. a learning-rate schedule or a weight average, differ in seconds also by how the runner packed them)
UNITS = {"train_seconds": "training seconds", "train_step": "training steps"}
#: a lower-is-better metric of the learning curves, in order of preference
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


def pick_metric(run) -> tuple[str, str, list[str]]:
    """(dataset, metric, other datasets): the first dataset with curve points of the preferred
    lower-is-better metric (time_to_reach counts a curve as arrived when it falls to the target)."""
    from bench.report.curves import curve_datasets, curve_metrics
    from bench.report.tables import higher_is_better

    have = [m for m in curve_metrics(run) if not higher_is_better(m)]
    for metric in [m for m in METRICS if m in have] + have:
        datasets = curve_datasets(run, metric)
        if datasets:
            return datasets[0], metric, datasets[1:]
    raise InputError(f"--from-run {run.dir}: its learning curves score no lower-is-better metric (an FD)")


def goals(base: pd.DataFrame) -> list[tuple[str, dict[Any, float]]]:
    """Per point of the baseline's training (its end; its curve step nearest half of it): the baseline's
    score there in each seed. The easier target (higher mean score) first."""
    final = base[base["final"].astype(bool)]
    out = [("its end", dict(zip(final["seed"], final["value"])))] if len(final) else []
    curve = base[~base["final"].astype(bool)]
    if len(curve) and len(final):
        half = float(final["train_step"].max()) / 2
        step = min(curve["train_step"].unique(), key=lambda s: abs(s - half))
        at = curve[curve["train_step"] == step]
        out.append((f"step {int(step)}", dict(zip(at["seed"], at["value"]))))
    return sorted(out, key=lambda g: -statistics.mean(g[1].values()))


def measure(run_dir: Path) -> tuple[list[dict[str, Any]], pd.DataFrame, list[str]]:
    """Rows for perf.csv (per arm: training images/s, and the seconds to each target), the points
    behind them (for the figure) and notes for perf.md. Bad input (no curves, no finished baseline):
    InputError, so ``run_perf`` can call this before any other section runs."""
    from bench.report.curves import time_to_reach, trial_points

    run = load(run_dir)
    dataset, metric, others = pick_metric(run)
    pts = trial_points(run, dataset, metric)
    baseline = run.labels[0]
    base = pts[pts["label"] == baseline]
    if not (~base["final"].astype(bool)).any():
        raise InputError(f"--from-run {run_dir}: the run's first arm ({baseline}) has no finished trial with a "
                         f"learning curve of {metric} on {dataset}: it is the baseline of the speed-ups")
    curve_eval = base[~base["final"].astype(bool)].iloc[0]
    pts = pts[(pts["sampler"] == curve_eval["sampler"]) & (pts["sample_steps"] == curve_eval["sample_steps"])]
    base = pts[pts["label"] == baseline]
    targets = goals(base)
    base_at = {(x, what): {seed: time_to_reach(*_series(base, seed, x), goal[seed])[0] for seed in goal}
               for x in UNITS for what, goal in targets}
    common = {"run": run.id, "dataset": dataset, "score": metric, "baseline": baseline,
              "evaluation": f"{curve_eval['sampler']}:{int(curve_eval['sample_steps'])}"}
    rows: list[dict[str, Any]] = []
    for label in run.labels:
        mine = pts[pts["label"] == label]
        seeds = list(dict.fromkeys(mine["seed"]))
        rate = [r for r in (_images_per_s(mine, seed) for seed in seeds) if math.isfinite(r)]
        rows.append(_spread_row(f"{label}: training images/s", "images/s", rate, arm=label, target_of="",
                                seeds=len(seeds), **common))
        for x in UNITS:
            for what, goal in targets:
                reach = {seed: time_to_reach(*_series(mine, seed, x), goal[seed]) for seed in seeds if seed in goal}
                rows.append(_time_row(label, what, goal, reach, base_at[x, what], len(seeds), common, UNITS[x]))
    env = run.env if isinstance(run.env, dict) else {}
    machine = (f"{env.get('platform', '?')}, {env.get('cpu_count', '?')} CPU cores, runner {env.get('runner', '?')}, "
               f"{env.get('cpus_per_trial') or 'all'} CPU(s) per trial")
    notes = [f"time_to_fd: run {run.id} ({machine}); {metric} at {common['evaluation']} on {dataset}"
             + (f" (not measured: {', '.join(others)})" if others else "")
             + f"; targets per seed = the baseline arm ({baseline})'s {metric} at "
             + ", ".join(f"{w} (mean {statistics.mean(g.values()):.4g})" for w, g in targets)]
    adopted = len(run.adopted_trials())
    if adopted:  # their train_seconds include a source trial's, timed under that run's load
        notes.append(f"time_to_fd: {adopted} trial(s) of this run adopted or continued another run's model "
                     f"(reuse_training): their seconds include the source's, timed on that run's machine and load; "
                     f"read their steps")
    return rows, pts, notes


def _series(points: pd.DataFrame, seed, x: str = "train_seconds") -> tuple[pd.Series, pd.Series]:
    """(x, value) of one trial's curve and final point, in order of training (x: train_seconds or train_step)."""
    t = points[points["seed"] == seed].sort_values("train_step")
    return t[x], t["value"]


def _images_per_s(points: pd.DataFrame, seed) -> float:
    end = points[(points["seed"] == seed)].sort_values("train_step").iloc[-1]
    return float(end["images"] / end["train_seconds"]) if end["train_seconds"] > 0 else math.nan


def _spread_row(case: str, metric: str, values: list[float], **extra) -> dict[str, Any]:
    v = [x for x in values if math.isfinite(x)]
    return {"section": SECTION, "case": case, "metric": metric, "median": statistics.median(v) if v else math.nan,
            "lo": min(v, default=math.nan), "hi": max(v, default=math.nan), "reps": len(v), **extra}


def _time_row(label: str, what: str, goal: dict, reach: dict, base: dict, n_seeds: int, common: dict,
              unit: str = "training seconds") -> dict[str, Any]:
    """Seconds (or steps) to the per-seed target over seeds, and the speed-up baseline / arm per seed where both got there."""
    reached = [s for s, (t, _) in reach.items() if math.isfinite(t)]
    paired = [s for s in reached if math.isfinite(base.get(s, math.nan)) and reach[s][0] > 0]
    speedups = [base[s] / reach[s][0] for s in paired]
    bound = [s for s in reached if reach[s][1]]
    note = f"reached by {len(reached)} of {n_seeds} seeds"
    note += f"; {len(bound)} already there at the first curve point (an upper bound on the time)" if bound else ""
    row = _spread_row(f"{label}: {unit.split()[-1]} to {common['score']} <= the baseline's at {what}", unit,
                      [reach[s][0] for s in reached], arm=label, target_of=what,
                      target=statistics.mean(goal.values()), seeds=n_seeds, **common)
    row.update(ratio=statistics.median(speedups) if speedups else math.nan, ratio_lo=min(speedups, default=math.nan),
               ratio_hi=max(speedups, default=math.nan), paired=len(speedups), bounds=len(bound), note=note)
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

