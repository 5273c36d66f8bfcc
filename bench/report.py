"""rows.csv -> tables (csv/md/tex), figures (png/pdf) and REPORT.md of a run directory.

``build_report(run_dir)`` rebuilds everything from the run's own files (rows.csv, floors.csv,
grid.toml, env.json, samples/, logs/) and writes the same bytes every time it is run on the same
files. The data side lives in ``bench.tables``, the figures in ``bench.plots`` / ``bench.images``;
this module writes the words: what was compared, the result in plain language, method, warnings,
provenance and how to cite.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.images import denoise_strip, montage_denoise, montage_samples, strip_timesteps
from bench.plots import (Plot, plot_loss_by_t, plot_loss_curves, plot_metric_by_arm, plot_metric_vs_steps,
                         plot_run_schedules, plot_schedules)
from bench.tables import Run, aggregate, floor_value, load_run, metric_meta, write_tables

__all__ = ["build_report", "make_plots", "plot_schedules", "denoise_strip", "strip_timesteps", "load_run"]

REPORT = "REPORT.md"
VERSION = "0.1.0"
TITLE = "bench: a benchmark suite for diffusion beta schedules and noise types"
#: Fréchet distances (FID, fd_*): their covariance estimates need more images than feature dimensions
FRECHET_PREFIXES = ("fid", "fd")
#: feature dimension assumed for a Fréchet metric whose extractor does not state one (Inception pool3)
DEFAULT_FEATURE_DIM = 2048


def build_report(run_dir: Path) -> Path:
    """Tables, plots and REPORT.md of ``run_dir`` (idempotent); returns the REPORT.md path."""
    from bench.rundir import write_text_atomic

    run = load_run(Path(run_dir))
    write_tables(run, run.dir / "tables")
    plots, notes = make_plots(run, run.dir / "plots")
    sections = [header(run), compared(run), result(run), tables_section(run), figures_section(run, plots),
                method(run), warnings_section(run, notes), provenance(run), cite(run)]
    path = run.dir / REPORT
    write_text_atomic(path, "\n\n".join(s.strip() for s in sections) + "\n")
    return path


def make_plots(run: Run, out_dir: Path) -> tuple[list[Plot], list[str]]:
    """Every figure of the report; returns the figures and notes about missing inputs."""
    notes: list[str] = []
    plots: list[Plot | None] = []
    for m in run.metrics:
        plots += [plot_metric_by_arm(run, m, out_dir), plot_metric_vs_steps(run, m, out_dir)]
    plots += [plot_run_schedules(run, out_dir), plot_loss_curves(run, out_dir, notes), plot_loss_by_t(run, out_dir, notes)]
    plots += montage_samples(run, out_dir, notes) + montage_denoise(run, out_dir, notes)
    return [p for p in plots if p is not None], list(dict.fromkeys(notes))


# --- small helpers ---------------------------------------------------------------------------------
def values(run: Run, col: str, rows: pd.DataFrame | None = None) -> str:
    """The distinct values of a column as text ('64' or '64, 128'); '?' if absent."""
    df = run.rows if rows is None else rows
    if col not in df.columns:
        return "?"
    vals = [int(v) if isinstance(v, float) and v.is_integer() else v for v in df[col].dropna()]
    return ", ".join(str(v) for v in dict.fromkeys(vals)) or "?"


def fmt(x: float, d: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def duration(seconds) -> str:
    if seconds is None or not np.isfinite(float(seconds)):
        return "unknown"
    s = float(seconds)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def ev_name(ev: tuple[str, int]) -> str:
    return f"{ev[0]}:{ev[1]}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "none"


# --- sections --------------------------------------------------------------------------------------
def header(run: Run) -> str:
    return f"# Report: grid `{run.name}`, run `{run.id}`"


def compared(run: Run) -> str:
    axes = run.grid.get("axes") or {}
    seeds = sorted(int(s) for s in run.rows["seed"].dropna().unique())
    axis_text = "; ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in axes.items())
    intro = (run.grid.get("description", "").strip() + " ").lstrip()
    return (f"## What was compared\n\n{intro}This run (preset "
            f"`{run.grid.get('preset', '?')}`) trains one model per arm, dataset and seed: {plural(len(run.labels), 'arm')} "
            f"({join([f'`{lb}`' for lb in run.labels])}) on {join([f'`{d}`' for d in run.datasets])}, with "
            f"{plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) as replicates, "
            f"{plural(run.rows['trial_id'].nunique(), 'trial')} in all. "
            f"Grid axes: {axis_text or 'none recorded'}. Everything else (model, training budget, data, sampling "
            f"seeds, number of samples) is identical across arms, so differences between arms come from the "
            f"axes, and the seeds measure how much of a difference is luck. Every model is sampled with "
            f"{join([f'`{ev_name(e)}`' for e in run.evals])} (sampler:steps), {values(run, 'n_samples')} images "
            f"each, image i starting from the same seed in every arm, and scored with "
            f"{join([f'`{m}`' for m in run.metrics])} (lower is better).")


def result(run: Run) -> str:
    out = ["## Result"]
    st = run.trials()["status"].value_counts()
    out.append(f"Of {plural(len(run.trials()), 'trial')}, {st.get('ok', 0)} finished, {st.get('diverged', 0)} diverged and "
               f"{st.get('error', 0)} failed with an error (see Warnings).")
    if not run.metrics:
        return "\n\n".join(out + ["No metric has a value in rows.csv, so there is nothing to rank."])
    for ds in run.datasets:
        primary = primary_metric(run, ds)
        agg = aggregate(run, primary)
        lines = [f"**{ds}**, by `{primary}` (the grid's first metric with a value here; mean ± std over seeds, "
                 f"n = seeds that finished):"]
        lines += [f"- `{ev_name(ev)}`: {verdict(run, agg, primary, ds, ev)}" for ev in run.evals]
        lines += other_metrics(run, ds, primary)
        out.append("\n".join(lines))
    out.append(budget(run))
    return "\n\n".join(out)


def primary_metric(run: Run, ds: str) -> str:
    """The first metric of the grid that has a value on dataset ``ds`` (e.g. fd_mnist_clf is skipped on RGB)."""
    rows = run.rows[run.rows["dataset"] == ds]
    return next((m for m in run.metrics if pd.to_numeric(rows[m], errors="coerce").notna().any()), run.metrics[0])


def _ranked(agg: pd.DataFrame, ds: str, ev: tuple[str, int]) -> pd.DataFrame:
    a = agg[(agg.dataset == ds) & (agg.sampler == ev[0]) & (agg.sample_steps == ev[1]) & (agg.n > 0)]
    return a.sort_values("mean", kind="stable")


def verdict(run: Run, agg: pd.DataFrame, metric: str, ds: str, ev: tuple[str, int]) -> str:
    """Who won this evaluation, by how much, and whether the gap exceeds the seed spread."""
    a = _ranked(agg, ds, ev)
    if not len(a):
        return "no arm produced a value."
    b = a.iloc[0]
    text = f"**{b.label}** scored lowest, {_ms(b)}"
    if len(a) == 1:
        return text + "; it is the only arm with a result."
    s = a.iloc[1]
    gap = s["mean"] - b["mean"]
    text += (f", ahead of {s.label} at {_ms(s)}: {fmt(gap)} lower"
             + (f" ({100 * gap / abs(s['mean']):.0f}%)." if s["mean"] else "."))
    if b["n"] < 2 or s["n"] < 2:
        text += " With a single seed there is no spread estimate: treat this ranking as indicative only."
    elif b["mean"] + b["std"] >= s["mean"] - s["std"]:
        text += " The mean ± std ranges overlap: the difference is within the seed-to-seed spread, so these two are not separated at this budget."
    else:
        text += " The mean ± std ranges do not overlap: the gap is larger than the seed-to-seed spread."
    fv = floor_value(run, metric, ds)
    return text + (f" (Real-vs-real floor at this sample size: {fmt(fv)}.)" if fv is not None else "")


def _ms(r) -> str:
    return f"{fmt(r['mean'])}" + (f" ± {fmt(r['std'])}" if r["n"] > 1 else "") + f" (n={int(r['n'])})"


def other_metrics(run: Run, ds: str, primary: str) -> list[str]:
    agg0 = aggregate(run, primary)
    win0 = {ev: _winner(agg0, ds, ev) for ev in run.evals}
    out = []
    for m in [m for m in run.metrics if m != primary]:
        agg = aggregate(run, m)
        wins = {ev: _winner(agg, ds, ev) for ev in run.evals}
        if not any(wins.values()):
            continue
        same = "agrees" if wins == win0 else "disagrees"
        out.append(f"- By `{m}` the best arm is " + join([f"{w or 'none'} at `{ev_name(ev)}`" for ev, w in wins.items()])
                   + f" ({same} with `{primary}`).")
    return out


def _winner(agg: pd.DataFrame, ds: str, ev) -> str | None:
    a = _ranked(agg, ds, ev)
    return a.iloc[0].label if len(a) else None


def n_params(run: Run) -> str:
    return ", ".join(f"{int(p):,}" for p in run.rows["params"].dropna().unique()) if "params" in run.rows else "?"


def budget(run: Run) -> str:
    wall = run.env.get("wall_s")
    return (f"**Budget** (the same for every arm): {values(run, 'train_steps')} training steps at batch size "
            f"{values(run, 'batch_size')}, UNet preset `{values(run, 'model')}` ({n_params(run) or '?'} "
            f"parameters), T = {values(run, 'timesteps')} diffusion steps, {values(run, 'n_samples')} generated "
            f"images per evaluation, on {values(run, 'device')}. The run took "
            f"{duration(wall) + ' of wall-clock time' if wall else 'an unrecorded wall-clock time (env.json has no wall_s)'} "
            f"and {sum(trial_seconds(run).values()) / 3600:.2f} device-hours summed over trials.")


def tables_section(run: Run) -> str:
    out = ["## Tables"]
    for m in run.metrics:
        md = (run.dir / "tables" / f"{m}.md").read_text()
        out.append(f"### {m}\n\n{md.strip()}\n\nAlso as [CSV](tables/{m}.csv) and [LaTeX](tables/{m}.tex).")
    return "\n\n".join(out if run.metrics else out + ["No metric values: no tables."])


def figures_section(run: Run, plots: list[Plot]) -> str:
    out = ["## Figures"]
    for p in plots:
        rel = p.png.relative_to(run.dir).as_posix()
        out.append(f"![{p.caption}]({rel})\n\n*{p.caption}* ([PDF]({rel[:-4]}.pdf))")
    return "\n\n".join(out)


def method(run: Run) -> str:
    lines = ["## Method",
             f"- **Model**: the shared UNet, preset `{values(run, 'model')}` ({n_params(run)} parameters), "
             f"dropout {values(run, 'dropout')}, EMA of the weights (decay {values(run, 'ema_decay')}) used for sampling.",
             f"- **Training**: {values(run, 'train_steps')} steps, batch size {values(run, 'batch_size')}, AdamW lr "
             f"{values(run, 'lr')} with {values(run, 'warmup_steps')} warm-up steps, gradient clipping "
             f"{values(run, 'grad_clip')}, {values(run, 'loss').upper()} loss on the predicted noise eps.",
             f"- **Data**: " + "; ".join(_data_line(run, ds) for ds in run.datasets) + ".",
             f"- **Forward process**: T = {values(run, 'timesteps')} steps; each arm's schedule and noise type as "
             f"defined (formula and reference) in `bench/schedules.py` and `bench/noise.py`.",
             f"- **Samplers**: {join([f'`{ev_name(e)}`' for e in run.evals])}; DDIM eta = {values(run, 'ddim_eta')}, "
             f"DDPM reverse variance `{values(run, 'var_type')}`; image i of every evaluation starts from seed "
             f"sample_seed + i (sample_seed = {values(run, 'sample_seed')}) in every arm.",
             "- **Aggregation**: mean and sample standard deviation (ddof = 1) over the seeds that finished; diverged "
             "or failed trials are left out of the mean and counted in the table cells."]
    lines += [f"- **`{m}`**: {metric_description(m)} Feature extractor: {md['features']}; n_generated = "
              f"{md['n_generated']}, n_reference = {md['n_reference']}. Floor: the same metric between the training "
              f"and held-out real images at the same sample size." for m in run.metrics for md in [metric_meta(run, m)]]
    return "\n".join(lines)


def _data_line(run: Run, ds: str) -> str:
    rows = run.rows[run.rows["dataset"] == ds]
    size = values(run, "image_size", rows)
    try:
        from bench.data import DATASETS

        spec = DATASETS.get(ds)
        size = f"{spec.size}x{spec.size} native" if size in ("0", "?") else f"{size}x{size}"
        size += f", {spec.channels} channel(s)"
    except Exception:  # noqa: BLE001 - an unknown dataset still gets a report
        pass
    return f"`{ds}` ({values(run, 'n_train_images', rows)} training images, {size})"


def metric_description(metric: str) -> str:
    try:
        from bench.metrics import METRICS

        obj = METRICS.get(metric)
        return (getattr(obj, "description", None) or (obj.__doc__ or "").strip().split("\n")[0]).rstrip(".") + "."
    except Exception:  # noqa: BLE001 - metrics module absent or the name retired: the table still stands
        return "Distance between generated and real images (lower is better)."


# --- warnings --------------------------------------------------------------------------------------
def warnings_section(run: Run, notes: list[str]) -> str:
    items = (incomplete(run) + not_pure_noise(run) + failed_trials(run) + skipped_metrics(run) + small_reference(run) + budget_notes(run)
             + few_seeds(run) + git_warnings(run))
    if notes:
        items.append("Missing files (the figures show a placeholder or leave the trial out):\n"
                     + "\n".join(f"  - {n}" for n in notes))
    return "## Warnings\n\n" + ("\n".join(f"- {w}" for w in items) if items else "None.")


def incomplete(run: Run) -> list[str]:
    """rows.csv has fewer trials than grid.toml defines (a run that was interrupted or is still going)."""
    try:
        from bench.grid import Grid

        g = run.grid
        expected = len(Grid(g["name"], g.get("description", ""), g.get("preset", "full"), g.get("base", {}),
                            g.get("axes", {})).trials())
    except Exception:  # noqa: BLE001 - no or an old grid.toml: nothing to compare with
        return []
    have = run.rows["trial_id"].nunique()
    return [f"**Incomplete run**: rows.csv holds {have} of the grid's {expected} trials (interrupted, or still "
            f"running); arms and seeds that are missing are simply absent from the tables."] if have < expected else []


def not_pure_noise(run: Run) -> list[str]:
    from bench.schedules import PURE_NOISE_ALPHA_BAR

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
    """Metrics that bench.metrics declined for a dataset (``<metric>_skipped``: why)."""
    out = []
    for m in run.metrics:
        col = f"{m}_skipped"
        if col in run.rows.columns:
            for (ds, why) in run.rows[["dataset", col]].dropna().drop_duplicates().itertuples(index=False):
                why = str(why).removeprefix(f"{ds}: ").rstrip(".")
                out.append(f"`{m}` was not computed on `{ds}` (the table shows —): {why}.")
    return out


def small_reference(run: Run) -> list[str]:
    """Fréchet distances estimated from fewer images than feature dimensions: rank-deficient covariances."""
    out = []
    for m in run.metrics:
        md = metric_meta(run, m)
        dim = _feature_dim(m, md["features"])
        counts = [int(x) for x in re.findall(r"\d+", f"{md['n_generated']} {md['n_reference']}")]
        if dim and counts and min(counts) < dim:
            out.append(f"`{m}` on a small sample: {min(counts)} < {dim} images (n_generated = {md['n_generated']}, "
                       f"n_reference = {md['n_reference']}; {dim}-d features, {md['features']}), so the covariance "
                       f"estimates are rank-deficient and the value is strongly biased upwards; compare arms only "
                       f"with each other at the same n, never with published numbers.")
    return out


def _feature_dim(metric: str, features: str) -> int | None:
    """Feature dimension of a Fréchet metric, read from its extractor's label ('...-2048', '2048-d',
    'pixels-8x8' -> 64, a lower bound), else None (not a Fréchet metric)."""
    if not metric.startswith(FRECHET_PREFIXES):
        return None
    for pattern, dim in ((r"(\d+)-d\b", lambda g: int(g[0])), (r"(\d+)x(\d+)$", lambda g: int(g[0]) * int(g[1])),
                         (r"-(\d+)$", lambda g: int(g[0]))):
        found = re.search(pattern, features.split(",")[0].strip())
        if found:
            return dim(found.groups())
    return DEFAULT_FEATURE_DIM


def budget_notes(run: Run) -> list[str]:
    preset = run.grid.get("preset", "full")
    notes = list(run.grid.get("notes", [])) + list(run.env.get("notes", []))
    if preset == "full" and not notes:
        return []
    text = (f"Preset `{preset}`: the budget is shrunk from the grid as written (paper scale); rankings at this "
            f"budget need not hold at full scale." if preset != "full" else "The grid was modified:")
    return [text + "".join(f"\n  - {n}" for n in notes + _preset_notes(run, preset))]


def _preset_notes(run: Run, preset: str) -> list[str]:
    """The preset's note from experiments/<grid>.toml, if that file is still there (best effort)."""
    try:
        from bench.grid import find_grid, read_toml

        return [f"{read_toml(find_grid(run.name))['presets'][preset]['note']} (from experiments/{run.name}.toml)"]
    except Exception:  # noqa: BLE001
        return []


def few_seeds(run: Run) -> list[str]:
    ok = run.trials()[run.trials()["status"] == "ok"].groupby(["dataset", "label"], sort=False).size()
    thin = [f"`{lb}` on `{ds}` ({n})" for (ds, lb), n in ok.items() if n < 2]
    return [f"Fewer than 2 finished seeds, so no spread estimate: {join(thin)}."] if thin else []


def git_warnings(run: Run) -> list[str]:
    git = run.env.get("git") or {}
    if git.get("dirty"):
        return [f"The git tree was **dirty** (uncommitted changes) at commit `{git.get('commit')}`: the commit alone "
                f"does not reproduce this run."]
    return [] if git.get("commit") else ["No git commit recorded: the code version of this run is unknown."]


# --- provenance and citation -----------------------------------------------------------------------
def trial_seconds(run: Run) -> dict[str, float]:
    """Device seconds per trial: train_s + the evaluations' sample_s + score_s, else trial_s."""
    out = {}
    for tid, rows in run.rows.groupby("trial_id", sort=False):
        parts = [rows[c].dropna() for c in ("train_s", "sample_s", "score_s") if c in rows.columns]
        total = (parts[0].max() if len(parts) and len(parts[0]) else 0.0) + sum(p.sum() for p in parts[1:])
        fallback = rows["trial_s"].dropna().max() if "trial_s" in rows.columns else np.nan
        out[tid] = float(total) if total > 0 else float(fallback) if np.isfinite(fallback) else 0.0
    return out


def provenance(run: Run) -> str:
    env, git = run.env, run.env.get("git") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = ["## Provenance",
             f"- Run `{run.id}` of grid `{run.name}`, preset `{run.grid.get('preset', '?')}`; command `{env.get('command', '?')}`",
             f"- Code: commit `{git.get('commit') or 'unknown'}`" + (" (**dirty** tree)" if git.get("dirty") else ""),
             f"- Started {env.get('started', '?')}, finished {env.get('finished', '?')}, wall time {duration(env.get('wall_s'))}; "
             f"runner {env.get('runner', '?')}, {env.get('cpus_per_trial', '?')} CPUs and {env.get('gpus_per_trial', '?')} GPUs per trial",
             f"- Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, CUDA devices: "
             f"{', '.join(env.get('cuda_devices') or []) or 'none'}; Python {env.get('python', '?')}",
             f"- Versions: {versions or 'not recorded'}", "",
             "| trial | arm | dataset | seed | status | device | device time |", "|---|---|---|---:|---|---|---:|"]
    secs = trial_seconds(run)
    for _, t in run.trials().iterrows():
        lines.append(f"| {t['trial_id']} | {t['label']} | {t['dataset']} | {t['seed']} | {t['status']} | "
                     f"{t.get('device') if pd.notna(t.get('device')) else '—'} | {secs[t['trial_id']] / 3600:.3f} h |")
    lines.append(f"\nTotal: {sum(secs.values()) / 3600:.3f} device-hours (train + sample + score time of every trial).")
    return "\n".join(lines)


def cite(run: Run) -> str:
    git = run.env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + ("-dirty" if git.get("dirty") else "")
    year = str(run.env.get("started", ""))[:4]
    key = re.sub(r"[^A-Za-z0-9]+", "-", f"bench-{run.name}-{run.id}").strip("-")
    return (f"## How to cite\n\nCite the suite (see `CITATION.cff` at the repository root) and this run:\n\n"
            f"```bibtex\n@misc{{{key},\n  title        = {{{{{TITLE}}}: grid {run.name}, run {run.id}}},\n"
            f"  author       = {{{{The bench developers}}}},\n  year         = {{{year if year.isdigit() else 'n.d.'}}},\n"
            f"  version      = {{{(run.env.get('versions') or {}).get('bench') or VERSION}}},\n"
            f"  note         = {{Run {run.id} of grid {run.name} (preset {run.grid.get('preset', '?')}), commit {commit}}},\n"
            f"}}\n```")
