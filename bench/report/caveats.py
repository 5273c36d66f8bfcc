"""Caveats of a run: everything a reader must know before trusting its numbers (the report's Warnings).

Each check is a function ``(run) -> list of Markdown sentences``: an incomplete run, schedules whose x_T
is not pure noise, diverged and failed trials, metrics skipped for a dataset, Fréchet distances from
fewer images than feature dimensions, a floor at another n than the arms, a shrunken preset, arms with fewer
than two seeds, samples closer to the training set than held-out images (memorization), a dirty tree.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from bench.report.tables import Run, arm_n, floor_n, floor_phrase, is_fd_infinity, join, metric_meta, values
from bench.scoring.metrics import METRICS

#: feature dimension assumed for a Fréchet metric whose extractor does not state one (Inception pool3)
DEFAULT_FEATURE_DIM = 2048


def warnings_section(run: Run, notes: list[str]) -> str:
    checks = (incomplete, not_pure_noise, failed_trials, skipped_metrics, small_reference, floor_sample_size,
              budget_notes, few_seeds, memorization, git_warnings)
    items = [w for check in checks for w in check(run)]
    if notes:
        items.append("Missing files (the figures show a placeholder or leave the trial out):\n"
                     + "\n".join(f"  - {n}" for n in notes))
    return "## Warnings\n\n" + ("\n".join(f"- {w}" for w in items) if items else "None.")


def incomplete(run: Run) -> list[str]:
    """rows.csv has fewer trials than grid.toml defines (a run that was interrupted or is still going)."""
    try:
        from bench.experiment.grid import grid_of_record

        expected = len(grid_of_record(run.grid).trials())
    except Exception:  # noqa: BLE001 - no or an old grid.toml: nothing to compare with
        return []
    have = run.rows["trial_id"].nunique()
    return [f"**Incomplete run**: rows.csv holds {have} of the grid's {expected} trials (interrupted, or still "
            f"running); arms and seeds that are missing are simply absent from the tables."] if have < expected else []


def not_pure_noise(run: Run) -> list[str]:
    from bench.process.schedules import PURE_NOISE_ALPHA_BAR

    if "alpha_bar_T" not in run.rows.columns:
        return []
    ab = run.rows.dropna(subset=["alpha_bar_T"]).groupby("label", sort=False)["alpha_bar_T"].max()
    return [f"Arm `{lb}`: x_T is **not pure noise** (alpha_bar_T = {v:.3g} > {PURE_NOISE_ALPHA_BAR:g}; the signal "
            f"keeps {100 * np.sqrt(v):.0f}% of its amplitude at t = T), while every sampler starts from pure noise: "
            f"part of its result reflects this train/sample mismatch, not the schedule's shape."
            for lb, v in ab.items() if v > PURE_NOISE_ALPHA_BAR]


def failed_trials(run: Run) -> list[str]:
    out = []
    for _, t in run.trials().iterrows():
        where = f"`{t['label']}` on `{t['dataset']}`, seed {t['seed']} (trial {t['trial_id']})"
        if t["status"] == "diverged":
            out.append(f"**Diverged**: {where} after {values(run, 'train_steps_done', t.to_frame().T)} steps "
                       f"(final loss {t.get('final_loss', '?')}); it has no samples and is left out of the means.")
        elif t["status"] == "error":
            out.append(f"**Error**: {where}: `{str(t.get('error', '')).strip() or 'no message'}`.")
    return out


def skipped_metrics(run: Run) -> list[str]:
    """Metrics that bench.scoring.metrics declined for a dataset (``<metric>_skipped``: why)."""
    out = []
    for m in run.metrics:
        col = f"{m}_skipped"
        if col in run.rows.columns:
            for (ds, why) in run.rows[["dataset", col]].dropna().drop_duplicates().itertuples(index=False):
                why = str(why).removeprefix(f"{ds}: ").rstrip(".")
                out.append(f"`{m}` was not computed on `{ds}` (the table shows —): {why}.")
    return out


def small_reference(run: Run) -> list[str]:
    """Fréchet distances estimated from fewer images than feature dimensions: rank-deficient covariances.
    An FD-infinity variant gets a note instead: it extrapolates away the O(1/n) part of that bias but
    not the higher-order terms that dominate below the feature dimension (``bench.scoring.fidelity.fd_infinity_fit``)."""
    out = []
    for m in run.metrics:
        md = metric_meta(run, m)
        dim = _feature_dim(m)
        counts = [int(x) for x in re.findall(r"\d+", f"{md['n_generated']} {md['n_reference']}")]
        if dim and counts and min(counts) < dim and is_fd_infinity(m):
            out.append(f"Note on `{m}` (FD-infinity, Chong & Forsyth 2020) at {min(counts)} < {dim} images "
                       f"(n_generated = {md['n_generated']}, n_reference = {md['n_reference']}; {dim}-d features): the "
                       f"extrapolation to 1/n = 0 removes the O(1/n) bias of the generated side, not the higher-order "
                       f"terms that dominate when n is below the feature dimension, nor the reference's own bias "
                       f"(`bench/scoring/fidelity.py`: with d = 2048 and 300 images FD overestimates a true 189 by 1326 and "
                       f"FD-infinity still by ~820). It reduces the bias, it does not remove it: compare arms with each "
                       f"other at the same n, beside the Fréchet distance and KID.")
        elif dim and counts and min(counts) < dim:
            out.append(f"`{m}` on a small sample: {min(counts)} < {dim} images (n_generated = {md['n_generated']}, "
                       f"n_reference = {md['n_reference']}; {dim}-d features, {md['features']}), so the covariance "
                       f"estimates are rank-deficient and the value is strongly biased upwards; compare arms only "
                       f"with each other at the same n, never with published numbers.")
    return out


def floor_sample_size(run: Run) -> list[str]:
    """Floors computed from another number of images than the arms (e.g. a held-out split smaller than
    n_samples): one warning naming each such metric and dataset with both n."""
    off = [(m, ds, phrase) for m in run.metrics for ds in run.datasets
           for phrase in [floor_phrase(run, m, ds)] if phrase and [floor_n(run, m, ds)] != arm_n(run, m, ds)]
    if not off:
        return []
    frechet = any(_feature_dim(m) for m, _, _ in off)
    return ["Real-vs-real floors at another sample size than the arms: "
            + join([f"`{m}` on `{ds}`, {ph}" for m, ds, ph in off])
            + ". Such a floor is what a perfect model scores at the floor's n, not at the arms' n"
            + (" (the upward bias of a Fréchet distance grows as n falls)." if frechet else ".")]


def _feature_dim(metric: str) -> int | None:
    """Feature dimension of a registered Fréchet metric (its contract), else None."""
    m = METRICS.find(metric)
    return m.dim if m is not None and m.frechet else None


def budget_notes(run: Run) -> list[str]:
    preset = run.grid.get("preset", "full")
    notes = list(run.grid.get("notes", [])) + list(run.env.get("notes", []))
    if preset == "full" and not notes:
        return []
    text = (f"Preset `{preset}`: the budget is shrunk from the grid as written (paper scale); rankings at this "
            f"budget need not hold at full scale." if preset != "full" else "The grid was modified:")
    return [text + "".join(f"\n  - {n}" for n in notes + _preset_notes(run, preset))]


def _preset_notes(run: Run, preset: str) -> list[str]:
    """The preset's note from experiments/<grid>.toml, if that file is still there and its preset still
    makes this run's trials (best effort); a preset changed since the run is said, not quoted."""
    try:
        from bench.experiment.grid import find_grid, grid_of_record, load_grid, read_toml, trial_id

        note = read_toml(find_grid(run.name))["presets"][preset]["note"]
        ran = grid_of_record({**run.grid, "preset": preset})
        same = {trial_id(c) for c in load_grid(run.name, preset).trials()} == {trial_id(c) for c in ran.trials()}
    except Exception:  # noqa: BLE001
        return []
    if same:
        return [f"{note} (from experiments/{run.name}.toml)"]
    return [f"experiments/{run.name}.toml's `{preset}` preset has changed since this run, so its note (which describes "
            f"the current preset) is not quoted; grid.toml holds the grid this run ran."]


def few_seeds(run: Run) -> list[str]:
    ok = run.trials()[run.trials()["status"] == "ok"].groupby(["dataset", "label"], sort=False).size()
    thin = [f"`{lb}` on `{ds}` ({n})" for (ds, lb), n in ok.items() if n < 2]
    return [f"Fewer than 2 finished seeds, so no spread estimate: {join(thin)}."] if thin else []


def memorization(run: Run) -> list[str]:
    """Metrics with a warning threshold (``Metric.warns_below``: the ``memorization_*`` ratios of
    bench.scoring.fidelity.nearest_neighbour_ratio, 1) below it in some trial: its samples sit closer to the
    training images than held-out real images do. Where the rows carry the ratio's bootstrap interval
    (``<metric>_lo``/``_hi``), the warning says in how many of those seeds it excludes the threshold."""
    out = []
    for m in (m for m in run.metrics if METRICS.get(m).warns_below is not None):
        below = METRICS.get(m).warns_below
        low = run.rows[run.rows[m] < below].dropna(subset=[m])
        for (label, sampler, steps), g in low.groupby(["label", "sampler", "sample_steps"], sort=False):
            of = int(run.rows[(run.rows["label"] == label) & (run.rows["sampler"] == sampler)
                              & (run.rows["sample_steps"] == steps)][m].notna().sum())
            out.append(f"**Memorization?** `{label}` ({sampler}:{steps}): `{m}` < {below:g} in {len(g)} of {of} seeds "
                       f"(min {g[m].min():.3g}{_resolved(g, m, below)}): its samples sit closer to the training images "
                       f"than held-out real images do (median nearest-neighbour distances); look at the samples beside "
                       f"their nearest training images before trusting its scores.")
    return out


def _resolved(low: pd.DataFrame, m: str, below: float) -> str:
    """The lowest ratio's bootstrap interval and how many of the seeds below the threshold have one
    that excludes it ('' where the rows predate the interval)."""
    if f"{m}_hi" not in low.columns or low[f"{m}_hi"].isna().all():
        return ""
    r = low.loc[low[m].idxmin()]
    col = f"{m}_n_heldout"
    n_held = pd.to_numeric(low[col], errors="coerce").max() if col in low.columns else np.nan
    held = f" and {n_held:.0f} held-out images" if np.isfinite(n_held) else ""
    return (f" [{r[f'{m}_lo']:.3g}, {r[f'{m}_hi']:.3g}]; the 95% bootstrap interval over the samples{held} lies "
            f"below {below:g} in {int((low[f'{m}_hi'] < below).sum())} of these {len(low)}")


def git_warnings(run: Run) -> list[str]:
    git = run.env.get("git") or {}
    if git.get("dirty"):
        return [f"The git tree was **dirty** (uncommitted changes) at commit `{git.get('commit')}`: the commit alone "
                f"does not reproduce this run."]
    return [] if git.get("commit") else ["No git commit recorded: the code version of this run is unknown."]
