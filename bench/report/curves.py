"""Learning curves of a run: the metric at intermediate points of training, and whether the final
ranking of the arms already held there.

A grid with ``eval_at`` evaluates each trial's EMA model at some steps before the end of training,
with the first evaluation of ``evals`` (sampler:steps) and the ``curve_metrics``; those rows carry
``train_step`` (``Run.curve``). Per dataset and curve metric, ``curve_frame`` lines them up with the
final evaluation (the last point, where it used the same sampler, steps and metric) against training
images = train_step x batch_size, one line per arm: the mean over the seeds that finished, and the
min and max over those seeds (the band). ``agreement`` compares each curve step's order of the arm
means with the final order: Kendall's tau (``scipy.stats.kendalltau``, tau-b) and the pairs of arms
that flip.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.tables import Run, higher_is_better, join, plural

#: the table of ``paired_along``, in the run's tables/
PAIRS = "curve_pairs"
#: the report's sentence gives every point of a curve up to this many, else its first and last
SHOWN_POINTS = 4
#: the columns of ``curve_frame``
COLUMNS = ["label", "sampler", "sample_steps", "train_step", "images", "final", "n", "mean", "sd", "min", "max"]


def curve_metrics(run: Run) -> list[str]:
    """The metrics of the learning-curve rows (``curve_metrics``, else ``metrics``) with a value there."""
    c = run.curve
    if not len(c):
        return []
    listed = []
    for col in ("curve_metrics", "metrics"):
        if col in c.columns:
            listed += [m.strip() for ms in c[col].dropna() for m in str(ms).split(",") if m.strip()]
    return [m for m in dict.fromkeys(listed)
            if m in c.columns and np.isfinite(pd.to_numeric(c[m], errors="coerce")).any()]


def curve_datasets(run: Run, metric: str) -> list[str]:
    c = run.curve
    if metric not in c.columns:
        return []
    return list(dict.fromkeys(c.loc[np.isfinite(pd.to_numeric(c[metric], errors="coerce")), "dataset"]))


def _points(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """label, seed, sampler, sample_steps, train_step, images, value of the finished trials' finite values."""
    if metric not in rows.columns or not len(rows):
        return pd.DataFrame(columns=["label", "seed", "sampler", "sample_steps", "train_step", "images", "train_seconds",
                                     "value"])
    r = rows[rows["status"] == "ok"]
    step = pd.to_numeric(r["train_step"], errors="coerce") if "train_step" in r.columns else pd.Series(np.nan, index=r.index)
    for col in ("train_steps_done", "train_steps"):  # a final row without train_step: the end of training
        if col in r.columns:
            step = step.where(step.notna(), pd.to_numeric(r[col], errors="coerce"))
    out = pd.DataFrame({"label": r["label"], "seed": r["seed"], "sampler": r["sampler"],
                        "sample_steps": pd.to_numeric(r["sample_steps"], errors="coerce"), "train_step": step,
                        "images": step * pd.to_numeric(r["batch_size"], errors="coerce"),
                        "train_seconds": pd.to_numeric(r["train_seconds"], errors="coerce") if "train_seconds" in r.columns
                        else np.nan,
                        "value": pd.to_numeric(r[metric], errors="coerce")})
    return out[np.isfinite(out["value"]) & out["train_step"].notna()]


def curve_frame(run: Run, dataset: str, metric: str) -> pd.DataFrame:
    """One row per (arm, curve evaluation, training step) of ``dataset`` with ``COLUMNS``: ``images`` =
    train_step x batch_size, mean / sd / min / max over the seeds with a value (n); the final
    evaluation at the curve's sampler and steps is the last point of each arm (``final`` True) where it
    scored ``metric``. Sorted by arm (run order), then step."""
    pts = trial_points(run, dataset, metric)
    if not (~pts["final"].astype(bool)).any():
        return pd.DataFrame(columns=COLUMNS)
    g = pts.groupby(["label", "sampler", "sample_steps", "train_step", "images", "final"], sort=False)["value"]
    out = g.agg(n="count", mean="mean", sd="std", min="min", max="max").reset_index()
    order = {lb: i for i, lb in enumerate(run.labels)}
    out = out.assign(_o=out["label"].map(order)).sort_values(["_o", "sampler", "sample_steps", "train_step", "final"],
                                                             kind="stable")
    out["sample_steps"] = out["sample_steps"].astype(int)
    return out.drop(columns="_o").reset_index(drop=True)[COLUMNS]


def trial_points(run: Run, dataset: str, metric: str) -> pd.DataFrame:
    """Every learning-curve point and final evaluation of ``dataset`` that scored ``metric``, one row per
    trial and point (label, seed, sampler, sample_steps, train_step, images, train_seconds, value, final),
    at the curve's sampler and steps; sorted by arm (run order), seed and step."""
    curve = _points(run.curve[run.curve["dataset"] == dataset], metric).assign(final=False)
    final = _points(run.rows[run.rows["dataset"] == dataset], metric).assign(final=True)
    evs = set(zip(curve["sampler"], curve["sample_steps"]))
    final = final[[ev in evs for ev in zip(final["sampler"], final["sample_steps"])]]
    pts = pd.concat([curve, final], ignore_index=True)
    order = {lb: i for i, lb in enumerate(run.labels)}
    return (pts.assign(_o=pts["label"].map(order)).sort_values(["_o", "seed", "train_step"], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


def time_to_reach(seconds, values, target: float) -> tuple[float, bool]:
    """When a learning curve first reaches ``target`` (a lower-is-better score such as FD): the training
    seconds at which it first falls to ``target`` or below, by linear interpolation between the last
    point above and the first point at or below (points in order of training). Returns (seconds, bound):
    ``bound`` is True where the first point already is at or below the target, so its time is only an
    upper bound; (nan, False) where the curve never reaches it."""
    s, v = np.asarray(seconds, float), np.asarray(values, float)
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    below = np.flatnonzero(v <= target)
    if not len(below):
        return float("nan"), False
    i = int(below[0])
    if i == 0:
        return float(s[0]), True
    frac = (v[i - 1] - target) / (v[i - 1] - v[i])
    return float(s[i - 1] + frac * (s[i] - s[i - 1])), False


def agreement(frame: pd.DataFrame, metric: str) -> list[dict]:
    """Per curve evaluation (sampler, steps) and curve step: the arms with a mean there and at the end,
    Kendall's tau between the two orders of their means, its p, and the pairs that flip as
    (arm better at that step, arm better at the end). Empty where the final evaluation did not score
    ``metric`` at the curve's sampler and steps."""
    from scipy.stats import kendalltau

    out = []
    sign = 1.0 if higher_is_better(metric) else -1.0  # larger score = better
    for (s, k), f in frame.groupby(["sampler", "sample_steps"], sort=False):
        end = f[f["final"]].set_index("label")["mean"]
        for step, at in f[~f["final"]].groupby("train_step", sort=True):
            at = at.set_index("label")["mean"]
            arms = [lb for lb in at.index if lb in end.index]
            x, y = at[arms].to_numpy(float), end[arms].to_numpy(float)
            tau, p = kendalltau(x, y) if len(arms) >= 2 else (np.nan, np.nan)
            flips = [(a, b) if sign * (x[i] - x[j]) > 0 else (b, a)
                     for i, a in enumerate(arms) for j, b in enumerate(arms)
                     if i < j and (x[i] - x[j]) * (y[i] - y[j]) < 0]
            images = f.loc[f["train_step"] == step, "images"].iloc[0]
            out.append({"sampler": s, "sample_steps": int(k), "train_step": int(step), "images": float(images),
                        "end_step": int(f.loc[f["final"], "train_step"].max()) if f["final"].any() else None,
                        "arms": arms, "tau": float(tau), "p": float(p), "flips": flips})
    return out


def paired_along(run: Run, dataset: str, metric: str) -> pd.DataFrame:
    """Whether the final ranking holds along the curve, with intervals (issue 36): per curve evaluation,
    the arm best at the end (by mean) against every other arm at each point of the curve and at the end,
    paired by training seed (``bench.scoring.stats.paired``): ``gap`` = the other arm's score minus the
    best's in the direction where positive means the final best arm is ahead, its 95% t-interval and p.
    A gap whose interval lies below 0 at some point is a ranking that did not hold there."""
    from bench.scoring import stats

    pts = trial_points(run, dataset, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0
    out = []
    for (s, k), part in pts.groupby(["sampler", "sample_steps"], sort=False):
        end = part[part["final"]]
        if not len(end):
            continue
        best = (sign * end.groupby("label", sort=False)["value"].mean()).idxmax()
        for (step, final), at in part.groupby(["train_step", "final"], sort=True):
            wide = at.pivot_table(index="seed", columns="label", values="value", aggfunc="first")
            # arms that differ in batch size pair at equal steps, not at equal images: then the step names the point
            images = float(at["images"].iloc[0]) if at["images"].nunique() == 1 else float("nan")
            for other in (lb for lb in run.labels if lb in wide.columns and lb != best and best in wide.columns):
                r = stats.paired(sign * wide[best].to_numpy(float), sign * wide[other].to_numpy(float))
                out.append({"dataset": dataset, "metric": metric, "sampler": s, "sample_steps": int(k),
                            "train_step": int(step), "images": images, "final": bool(final),
                            "best": best, "other": other, "n": r.n, "gap": r.mean, "lo": r.lo, "hi": r.hi, "p": r.p})
    return pd.DataFrame(out)


def write_pairs(run: Run, out_dir) -> None:
    """``tables/curve_pairs.csv``: ``paired_along`` for every dataset and curve metric, where the run has a curve."""
    from bench.files import write_text_atomic

    parts = [paired_along(run, ds, m) for m in curve_metrics(run) for ds in curve_datasets(run, m)]
    parts = [p for p in parts if len(p)]
    if parts:
        write_text_atomic(out_dir / f"{PAIRS}.csv", pd.concat(parts, ignore_index=True).to_csv(index=False))


def pairs_words(run: Run, dataset: str, metric: str) -> str | None:
    """The report's sentence on ``paired_along``: each other arm's gap behind the final best arm at
    each point, with its interval; None without curve points."""
    table = paired_along(run, dataset, metric)
    if not len(table) or table["final"].all() or table["n"].max() < 2:  # one seed: no interval to state
        return None
    parts = []
    for (s, k, best), part in table.groupby(["sampler", "sample_steps", "best"], sort=False):
        steps = sorted(set(part["train_step"]))
        gaps = []
        for other, rows in part.groupby("other", sort=False):
            every = len(rows) <= SHOWN_POINTS
            shown = rows if every else rows.iloc[[0, -1]]  # the CSV has every point
            cells = [f"{r.gap:.3g} [{r.lo:.3g}, {r.hi:.3g}] at "
                     + (_count(r.images) if np.isfinite(r.images) else f"step {r.train_step:,}") for r in shown.itertuples()]
            held = int((rows["lo"] > 0).sum())
            gaps.append(f"{other} {(', ' if every else ' ... ').join(cells)} "
                        f"(interval above 0 at {held} of {len(rows)})")
        which = "each" if len(steps) <= SHOWN_POINTS else "the first and the last"
        unit = "training images" if np.isfinite(part["images"]).all() else "the arms differ in batch size: steps"
        parts.append(f"`{s}:{k}`: how far the final best arm, {best}, is ahead of each other arm at {which} of "
                     f"{len(steps)} points ({unit}; the last is the end of training; positive = ahead, paired "
                     f"by seed, 95% t-interval): " + "; ".join(gaps))
    return f"Paired gaps along the learning curve of `{metric}` (`tables/{PAIRS}.csv`), " + ". ".join(parts) + "."


def _count(x: float) -> str:
    return f"{x:,.0f}"


def words(run: Run, dataset: str, metric: str) -> str | None:
    """The report's sentence on the learning curve of ``metric`` on ``dataset``: per curve step, whether
    the final ranking already held (tau, the pairs that flip); None without curve rows."""
    frame = curve_frame(run, dataset, metric)
    if not len(frame):
        return None
    rows = agreement(frame, metric)
    evs = ", ".join(f"`{s}:{k}`" for s, k in dict.fromkeys(zip(frame["sampler"], frame["sample_steps"])))
    head = f"Learning curve of `{metric}` ({evs}; means over the seeds that finished)"
    if not rows or all(r["end_step"] is None for r in rows):
        return (f"{head}: the final evaluation did not score `{metric}` with the curve's sampler and steps, so there "
                f"is no end point to compare the ranking with.")
    parts = []
    for r in rows:
        where = f"at {_count(r['images'])} training images (step {r['train_step']} of {r['end_step']})"
        if len(r["arms"]) < 2:
            parts.append(f"{where} fewer than two arms have a value at both points")
            continue
        if not r["flips"]:
            parts.append(f"{where} the {len(r['arms'])} arms were already in their final order (Kendall's tau = "
                         f"{r['tau']:.2f}, no pair flips)")
            continue
        flips = join([f"{a} was better than {b} then, {b} is better at the end" for a, b in r["flips"]])
        parts.append(f"{where} Kendall's tau between the arms' order then and at the end is {r['tau']:.2f} "
                     f"({plural(len(r['arms']), 'arm')}); {plural(len(r['flips']), 'pair')} flip: {flips}")
    return (f"{head}: " + "; ".join(parts) + ". The means order the arms without a test: a flip between arms "
            "whose final comparison has no evidence of a difference may be seed noise.")
