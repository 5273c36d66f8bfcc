"""rows.csv -> tables (csv/md/tex), figures (png/pdf) and REPORT.md of a run directory.

``build_report(run_dir)`` rebuilds everything from the run's own files (rows.csv, floors.csv,
grid.toml, env.json, samples/, logs/) and writes the same bytes every time it is run on the same
files. The data side lives in ``bench.report.tables``, the paired comparisons in ``bench.report.paired``,
the figures in ``bench.report.plots`` / ``bench.report.montage``; this module writes the words: what was
compared, the result in plain language (paired differences with intervals and p-values, DESIGN.md
section 5; each metric read in its own direction), the seed planner, method, warnings, provenance and
how to cite.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.files import write_text_atomic
from bench.report import claims as claims_report
from bench.report import curves, kept, perimage, ranking, reference_ranks
from bench.report.caveats import warnings_section
from bench.report.formulation import plot_effective_weighting
from bench.report.forward import plot_run_forward
from bench.report.montage import montage_denoise, montage_nearest, montage_samples
from bench.report.nfe import plot_metric_vs_nfe
from bench.report.paired import fmt_seeds, paired_table, sentence, vs_best, write_paired
from bench.report.plots import (
    Plot,
    brightness_metrics,
    loss_what,
    plot_brightness,
    plot_forest,
    plot_learning_curves,
    plot_loss_by_t,
    plot_loss_curves,
    plot_metric_by_arm,
    plot_metric_vs_steps,
    plot_run_schedules,
    plot_schedules,
)
from bench.report.tables import (
    HELDOUT_FLOOR,
    Run,
    aggregate,
    arm_n,
    datasets_with,
    decimals,
    direction,
    floor_n,
    floor_phrase,
    floor_value,
    floor_words,
    higher_is_better,
    join,
    labels_of,
    load_run,
    md_escape,
    metric_meta,
    plural,
    values,
    write_tables,
)
from bench.scoring import stats

__all__ = ["build_report", "make_plots", "plot_schedules", "load_run"]

REPORT = "REPORT.md"
VERSION = "0.1.0"
TITLE = "bench: a benchmark suite for diffusion beta schedules and noise types"


def build_report(run_dir: Path) -> Path:
    """Tables, plots and REPORT.md of ``run_dir`` (idempotent); returns the REPORT.md path."""
    run = load_run(Path(run_dir))
    write_tables(run, run.dir / "tables")
    paired = write_paired(run, run.dir / "tables")
    claims_report.write_table(run, run.dir / "tables")
    curves.write_pairs(run, run.dir / "tables")
    plots, notes = make_plots(run, run.dir / "plots", paired)
    notes = kept.notes(run, notes)
    sections = [header(run), compared(run), result(run, paired), claims_report.section(run), ranking.section(run),
                reference_ranks.section(run),
                tables_section(run),
                figures_section(run, plots),
                method(run), warnings_section(run, notes), provenance(run), cite(run)]
    kept.write(run, plots, notes)  # after every section: the sections derive numbers too (the brightness intervals)
    path = run.dir / REPORT
    write_text_atomic(path, "\n\n".join(s.strip() for s in sections if s.strip()) + "\n")
    return path


def make_plots(run: Run, out_dir: Path, paired: dict[str, pd.DataFrame] | None = None) -> tuple[list[Plot], list[str]]:
    """Every figure of the report; returns the figures and notes about missing inputs. ``paired``:
    {metric: ``paired_table``} where already computed."""
    notes: list[str] = []
    plots: list[Plot | None] = []
    for m in run.metrics:
        table = paired[m] if paired and m in paired else paired_table(run, m)
        plots += [plot_metric_by_arm(run, m, out_dir), plot_metric_vs_steps(run, m, out_dir), plot_metric_vs_nfe(run, m, out_dir)]
        plots += [plot_forest(run, m, ds, table, out_dir) for ds in datasets_with(run, m)]
    plots += claims_report.plot_claims(run, out_dir)
    plots += [ranking.plot_ranking(run, out_dir), reference_ranks.plot_references(run, out_dir)]
    plots += plot_learning_curves(run, out_dir)
    plots += [plot_brightness(run, m, out_dir) for m in brightness_metrics(run)]
    plots += [plot_run_schedules(run, out_dir), plot_effective_weighting(run, out_dir), plot_run_forward(run, out_dir, notes),
              plot_loss_curves(run, out_dir, notes),
              plot_loss_by_t(run, out_dir, notes)]
    plots += montage_samples(run, out_dir, notes) + montage_denoise(run, out_dir, notes) + montage_nearest(run, out_dir, notes)
    return [p for p in plots if p is not None], list(dict.fromkeys(notes))


# --- small helpers ---------------------------------------------------------------------------------
def fmt(x: float, d: int = 2) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def duration(seconds) -> str:
    if seconds is None or not np.isfinite(float(seconds)):
        return "unknown"
    s = float(seconds)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def ev_name(ev: tuple[str, int]) -> str:
    return f"{ev[0]}:{ev[1]}"


# --- sections --------------------------------------------------------------------------------------
def header(run: Run) -> str:
    return f"# Report: grid `{run.name}`, run `{run.id}`"


def compared(run: Run) -> str:
    axes = run.grid.get("axes") or {}
    seeds = sorted(int(s) for s in run.rows["seed"].dropna().unique())
    axis_text = "; ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in axes.items())
    arms = run.grid.get("arms") or []
    arm_text = " Arms ([[arms]], each crossed with the axes): " + "; ".join(
        f"{i}. " + ", ".join(f"`{k}` = {v}" for k, v in a.items()) for i, a in enumerate(arms, 1)) + "." if arms else ""
    intro = (run.grid.get("description", "").strip() + " ").lstrip()
    return (f"## What was compared\n\n{intro}This run (preset "
            f"`{run.grid.get('preset', '?')}`) trains one model per arm, dataset and seed: {plural(len(run.labels), 'arm')} "
            f"({join([f'`{lb}`' for lb in run.labels])}) on {join([f'`{d}`' for d in run.datasets])}, with "
            f"{plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) as replicates, "
            f"{plural(run.rows['trial_id'].nunique(), 'trial')} in all. "
            f"Grid axes: {axis_text or ('none' if arms else 'none recorded')}.{arm_text} Everything else (model, training budget, data, sampling "
            f"seeds, number of samples) is identical across arms, so differences between arms come from the "
            f"{'arms and axes' if arms else 'axes'}, and the seeds measure how much of a difference is luck. Every model is sampled with "
            f"{join([f'`{ev_name(e)}`' for e in run.evals])} (sampler:steps), {values(run, 'n_samples')} images "
            f"each, image i starting from the same seed in every arm, and scored with "
            f"{join([f'`{m}` ({direction(m)})' for m in run.metrics])}." + curve_intro(run))


def curve_steps(run: Run) -> list[int]:
    """The training steps of the learning-curve evaluations."""
    if not len(run.curve) or "train_step" not in run.curve.columns:
        return []
    return sorted({int(v) for v in pd.to_numeric(run.curve["train_step"], errors="coerce").dropna()})


def curve_intro(run: Run) -> str:
    """One sentence on the learning-curve evaluations, where the run has them."""
    steps, ms = curve_steps(run), curves.curve_metrics(run)
    if not steps:
        return ""
    evs = list(dict.fromkeys(zip(run.curve["sampler"], run.curve["sample_steps"])))
    return (f" Learning curves: each model was also evaluated during training, at step "
            f"{join([f'{k:,}' for k in steps])} of {values(run, 'train_steps')}, with "
            f"{join([f'`{s}:{int(k)}`' for s, k in evs])} and {join([f'`{m}`' for m in ms]) or 'no metric with a value'}; "
            f"those evaluations appear only in the learning-curve figures and sentences, every table and comparison "
            f"uses the final evaluation.")


def result(run: Run, paired: dict[str, pd.DataFrame] | None = None) -> str:
    """Per dataset, by its primary metric: each evaluation's best arm and the paired comparison of every
    other arm with it (``bench.report.paired.sentence``); then the other metrics' best arms, the seed
    planner and the budget. ``paired``: {metric: ``paired_table``} where already computed."""
    out = ["## Result"]
    st = run.trials()["status"].value_counts()
    out.append(f"Of {plural(len(run.trials()), 'trial')}, {st.get('ok', 0)} finished, {st.get('diverged', 0)} diverged and "
               f"{st.get('error', 0)} failed with an error (see Warnings).")
    if not run.metrics:
        return "\n\n".join(out + ["No metric has a value in rows.csv, so there is nothing to rank."])
    tables = {m: (paired or {}).get(m) for m in run.metrics}
    tables = {m: t if t is not None else paired_table(run, m) for m, t in tables.items()}
    for ds in run.datasets:
        primary = primary_metric(run, ds)
        agg = aggregate(run, primary)
        several = len(labels_of(run, ds)) > 1
        lines = [f"**{ds}**, by `{primary}` ({direction(primary)}; the grid's first metric with a value here). Best arm "
                 f"of each evaluation (mean ± std over seeds, n = seeds that finished)"
                 + (", then every other arm against it, paired by training seed: the difference with its 95% "
                    "t-interval, the paired p and Holm's p over all pairs of arms of that evaluation (the best arm is "
                    "chosen from the same scores):" if several else ":")]
        lines += [f"- `{ev_name(ev)}`: {verdict(run, agg, tables[primary], primary, ds, ev)}" for ev in run.evals]
        lines += other_metrics(run, ds, primary, several)
        lines += brightness_lines(run, ds)
        lines += [f"- {w}" for m in curves.curve_metrics(run) for w in [curves.words(run, ds, m)] if w]
        lines += [f"- {w}" for m in curves.curve_metrics(run)[:1] for w in [curves.pairs_words(run, ds, m)] if w]
        out.append("\n".join(lines))
    out.append(seed_planner(run, tables))
    out.append(budget(run))
    return "\n\n".join(out)


def primary_metric(run: Run, ds: str) -> str:
    """The first metric of the grid that has a value on dataset ``ds`` (e.g. fd_mnist_clf is skipped on RGB)."""
    rows = run.rows[run.rows["dataset"] == ds]
    return next((m for m in run.metrics if pd.to_numeric(rows[m], errors="coerce").notna().any()), run.metrics[0])


def _ranked(agg: pd.DataFrame, ds: str, ev: tuple[str, int], metric: str) -> pd.DataFrame:
    """The arms with a value at (ds, ev), best mean first in ``metric``'s direction."""
    a = agg[(agg.dataset == ds) & (agg.sampler == ev[0]) & (agg.sample_steps == ev[1]) & (agg.n > 0)]
    return a.sort_values("mean", kind="stable", ascending=not higher_is_better(metric))


def verdict(run: Run, agg: pd.DataFrame, table: pd.DataFrame, metric: str, ds: str, ev: tuple[str, int]) -> str:
    """The best arm of one evaluation and, as sub-items, each other arm's paired comparison with it and the floor."""
    a, rows = _ranked(agg, ds, ev, metric), vs_best(table, ds, ev)
    if not len(a):
        return "no arm produced a value."
    b = a[a.label == rows["reference"].iloc[0]].iloc[0] if len(rows) else a.iloc[0]  # the comparisons' reference
    best = "highest" if higher_is_better(metric) else "lowest"
    text = f"**{b.label}** scored best ({best}), {_ms(b, decimals(agg['mean'].tolist()))}"
    if len(a) == 1:
        text += "; it is the only arm with a result, so there is nothing to compare."
    else:
        text += "." + (" With a single seed of the best arm its rank is indicative only." if b["n"] < 2 else "")
        text += "".join(f"\n  - {sentence(r, metric)}." for _, r in rows.iterrows())
    phrase, fv = floor_phrase(run, metric, ds), floor_value(run, metric, ds)
    return text + (f"\n  - Real-vs-real {phrase}: {stats.fmt(fv)}{_times_floor(run, metric, ds, b['mean'], fv)}."
                   if phrase else "")


def _times_floor(run: Run, metric: str, ds: str, best: float, floor: float) -> str:
    """'; the best arm is 9.5x the floor' for a lower-is-better metric whose floor is positive and at the
    arms' sample size (a distance's bias depends on n: a ratio across sample sizes would mislead)."""
    same_n = floor_n(run, metric, ds) is not None and arm_n(run, metric, ds) == [floor_n(run, metric, ds)]
    if higher_is_better(metric) or not same_n or not floor > 0 or not best > 0:
        return ""
    return f"; the best arm's mean is {best / floor:.1f}x the floor"


def _ms(r, d: int = 2) -> str:
    """'4.25 ± 0.35 (n=2)': mean ± std over seeds with ``d`` decimals (the metric's table decimals)."""
    return f"{fmt(r['mean'], d)}" + (f" ± {fmt(r['std'], d)}" if r["n"] > 1 else "") + f" (n={int(r['n'])})"


def other_metrics(run: Run, ds: str, primary: str, several: bool = True) -> list[str]:
    """One line per other metric: its best arm at each evaluation, and whether that agrees with ``primary``."""
    win0 = {ev: _winner(run, primary, ds, ev) for ev in run.evals}
    out = []
    for m in [m for m in run.metrics if m != primary]:
        wins = {ev: _winner(run, m, ds, ev) for ev in run.evals}
        if not any(wins.values()):
            continue
        same = "agrees" if wins == win0 else "disagrees"
        out.append(f"- By `{m}` ({direction(m)}) the best arm is "
                   + join([f"{w or 'none'} at `{ev_name(ev)}`" for ev, w in wins.items()])
                   + f" ({same} with `{primary}`" + ("; its paired comparisons are in the Tables)." if several else ")."))
    return out


def brightness_lines(run: Run, ds: str) -> list[str]:
    """Per brightness metric and evaluation: whether each arm's samples are darker or brighter than the
    data (mean intensity of the samples minus the data's, its t-interval over seeds and, where per-image
    data were kept, the two-level bootstrap interval)."""
    out = []
    for m in brightness_metrics(run):
        for ev in run.evals:
            b = perimage.brightness(run, m, ds, ev)
            if not len(b):
                continue
            arms = [_brightness_arm(r) for _, r in b.iterrows()]
            kinds = {k for _, k in arms}
            summary = (f"the samples are {next(iter(kinds))} than the data in every arm. " if len(kinds) == 1
                       and next(iter(kinds)) in ("darker", "brighter") else "")
            boot = b["boot_lo"].notna().any()
            out.append(f"- Brightness (`{m}`'s mean intensities at `{ev_name(ev)}`; data {stats.fmt(b['mean_ref'].mean())}): "
                       f"{summary}Mean intensity of the samples minus the data's, mean over seeds with its 95% "
                       f"t-interval" + (" and the two-level bootstrap interval over seeds and images" if boot else "")
                       + ": " + "; ".join(t for t, _ in arms) + ".")
    return out


def _brightness_arm(r) -> tuple[str, str]:
    """('linear / gaussian -0.013 [-0.020, -0.006] (bootstrap [...]), darker than the data', kind): kind is
    darker | brighter (the t-interval excludes 0), none (it covers 0) or ? (no interval: one seed)."""
    if not (np.isfinite(r["lo"]) and np.isfinite(r["hi"])):
        return f"{r['label']} {stats.fmt(r['offset'])} ({plural(int(r['n']), 'seed')}: no interval)", "?"
    est, lo, hi = stats.fmt_interval(r["offset"], r["lo"], r["hi"])
    text = f"{r['label']} {est} [{lo}, {hi}]"
    if np.isfinite(r["boot_lo"]) and np.isfinite(r["boot_hi"]):
        _, blo, bhi = stats.fmt_interval(r["offset"], r["boot_lo"], r["boot_hi"])
        text += f" (bootstrap [{blo}, {bhi}])"
    kind = "darker" if r["hi"] < 0 else "brighter" if r["lo"] > 0 else "none"
    return text + {"darker": ", darker than the data", "brighter": ", brighter than the data",
                   "none": ", no evidence of an offset"}[kind], kind


def _winner(run: Run, metric: str, ds: str, ev) -> str | None:
    a = _ranked(aggregate(run, metric), ds, ev, metric)
    return a.iloc[0].label if len(a) else None


def seed_planner(run: Run, tables: dict[str, pd.DataFrame]) -> str:
    """Per comparison of the result paragraph: seeds for 80% power (alpha 0.05, two-sided paired t) to
    detect the observed difference (``seeds_80``) and 10% of the best arm's mean (``seeds_10pct``)."""
    head = ("**Seed planner**: the number of seeds a rerun needs for 80% power (two-sided paired t, alpha = 0.05) "
            "for each comparison above, from the sd of its paired differences: to detect the observed difference, "
            "and to detect 10% of the best arm's mean. The sd is itself estimated from these few seeds, so read "
            "these as rough guides.")
    lines = ["| dataset | evaluation | metric | arm vs best | n | diff | sd of differences | seeds (observed diff) | "
             "10% of best | seeds (10%) |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for ds in run.datasets:
        m = primary_metric(run, ds)
        for ev in run.evals:
            lines += [f"| {md_escape(ds)} | `{ev_name(ev)}` | `{m}` | {md_escape(r['arm'])} vs {md_escape(r['reference'])} | "
                      f"{int(r['n'])} | "
                      f"{stats.fmt(r['diff'])} | {stats.fmt(r['sd'])} | {fmt_seeds(r['seeds_80'])} | "
                      f"{stats.fmt(0.1 * abs(r['mean_ref']))} | {fmt_seeds(r['seeds_10pct'])} |"
                      for _, r in vs_best(tables[m], ds, ev).iterrows()]
    if len(lines) == 2:
        return head.split(":")[0] + ": no comparisons to plan for (fewer than two arms with a value)."
    return head + "\n\n" + "\n".join(lines)


def n_params(run: Run) -> str:
    return ", ".join(f"{int(p):,}" for p in run.rows["params"].dropna().unique()) if "params" in run.rows else "?"


#: the training and evaluation budget a report states; the sentence says which of them a grid varies
BUDGET_FIELDS = ("train_steps", "batch_size", "lr", "model", "timesteps", "n_samples")


def budget(run: Run) -> str:
    wall = run.env.get("wall_s")
    took = f"{duration(wall)} of wall-clock time" if wall else "an unrecorded wall-clock time (env.json has no wall_s)"
    cut = sum(s.get("finished") is None for s in run.env.get("sessions") or [])
    if wall and cut:  # sessions killed before they finished recorded no end: their time is unknown, not 0
        took += f" in the sessions that finished ({cut} interrupted session{'s' * (cut > 1)} not counted: see Provenance)"
    varying = [c for c in BUDGET_FIELDS if c in run.rows.columns and run.rows[c].nunique() > 1]
    scope = ("the same for every arm" if not varying else
             f"the grid varies {join([f'`{c}`' for c in varying])} between arms; the rest is the same for every arm")
    return (f"**Budget** ({scope}): {values(run, 'train_steps')} training steps at batch size "
            f"{values(run, 'batch_size')}, UNet preset `{values(run, 'model')}` ({n_params(run) or '?'} "
            f"parameters), T = {values(run, 'timesteps')} diffusion steps{_continuous_note(run)}, {values(run, 'n_samples')} generated "
            f"images per evaluation, on {values(run, 'device')}. The run took "
            f"{took} "
            f"and {sum(trial_seconds(run).values()) / 3600:.2f} device-hours summed over trials.")


def _continuous_note(run: Run) -> str:
    """Where arms train on a continuous path (rf, edm), T is the vp arms' alone."""
    paths = set(run.rows["path"].dropna()) if "path" in run.rows.columns else set()
    return " (the vp arms'; rf and edm train in continuous time)" if paths - {"vp"} else ""


def tables_section(run: Run) -> str:
    out = ["## Tables"]
    for m in run.metrics:
        md, pmd = ((run.dir / "tables" / f"{name}.md").read_text() for name in (m, f"paired_{m}"))
        out.append(f"### {m}\n\n{md.strip()}\n\nAlso as [CSV](tables/{m}.csv) and [LaTeX](tables/{m}.tex).")
        out.append(f"#### {m}: paired comparisons with the best arm\n\n{pmd.strip()}\n\nEvery pair of arms, with "
                   f"all columns of `bench.scoring.stats.compare`: [CSV](tables/paired_{m}.csv).")
    return "\n\n".join(out if run.metrics else out + ["No metric values: no tables."])


def figures_section(run: Run, plots: list[Plot]) -> str:
    out = ["## Figures"]
    for p in plots:
        rel = p.png.relative_to(run.dir).as_posix()
        out.append(f"![{p.caption}]({rel})\n\n*{p.caption}* ([PDF]({rel[:-4]}.pdf))")
    return "\n\n".join(out)


def ema_text(run: Run) -> str:
    """The evaluated weight average: the fixed-decay EMA of every run before issue 36 in its old words;
    with the power-function EMA (``bench.optim.ema``) each profile, and ema_decay only where it is read."""
    profiles = [str(v) for v in dict.fromkeys(run.rows["ema"].dropna())] if "ema" in run.rows.columns else []
    if not profiles or profiles == ["fixed"]:
        return f"EMA of the weights (decay {values(run, 'ema_decay')})"
    fixed = run.rows[run.rows["ema"] == "fixed"]
    parts = [f"EDM2's power-function EMA (sigma_rel {join(sorted({f'{v:g}' for v in run.rows.loc[run.rows['ema'] == 'power', 'ema_std']}))})"
             if p == "power" else f"the {p} average" for p in profiles if p != "fixed"]
    if len(fixed):
        parts.insert(0, f"EMA of the weights (decay {join(sorted({f'{v:g}' for v in fixed['ema_decay']}))})")
    return "by arm, " + " or ".join(parts)


def lr_schedule_text(run: Run) -> str:
    """'' for the constant rate of every run before issue 36; else the schedules (``bench.optim.lr``)."""
    kinds = [str(v) for v in dict.fromkeys(run.rows["lr_schedule"].dropna())] if "lr_schedule" in run.rows.columns else []
    if not kinds or kinds == ["constant"]:
        return ""
    return f", then by arm {join([f'`{k}`' for k in kinds])} (`bench/optim/lr.py`; `lr_ref_steps` {values(run, 'lr_ref_steps')})"


def formulation_text(run: Run) -> str:
    """'' unless arms differ in path or training time density (a formulation run): then where those are defined."""
    varies = [c for c in ("path", "t_density") if c in run.rows.columns and run.rows[c].nunique() > 1]
    if not varies:
        return ""
    return ("; each arm's path (x_t = alpha(t) x_0 + sigma(t) eps, with the network's preconditioning), training time "
            "density and loss weighting as its label names them, defined in `bench/process/paths.py`, "
            "`bench/process/densities.py` and `bench/process/diffusion.py` (the effective weighting over log-SNR of "
            "each arm is a figure below)")


def method(run: Run) -> str:
    lines = ["## Method",
             f"- **Model**: the shared UNet, preset `{values(run, 'model')}` ({n_params(run)} parameters), "
             f"dropout {values(run, 'dropout')}, {ema_text(run)} used for sampling.",
             f"- **Training**: {values(run, 'train_steps')} steps, batch size {values(run, 'batch_size')}, AdamW lr "
             f"{values(run, 'lr')} with {values(run, 'warmup_steps')} warm-up steps{lr_schedule_text(run)}, gradient "
             f"clipping {values(run, 'grad_clip')}; loss: {loss_what(run)}.",
             "- **Data**: " + "; ".join(_data_line(run, ds) for ds in run.datasets) + ".",
             f"- **Forward process**: T = {values(run, 'timesteps')} steps; each arm's schedule and noise type as "
             f"defined (formula and reference) in `bench/process/schedules.py` and `bench/process/noise.py`"
             f"{formulation_text(run)}.",
             f"- **Samplers**: {join([f'`{ev_name(e)}`' for e in run.evals])}; DDIM eta = {values(run, 'ddim_eta')}, "
             f"DDPM reverse variance `{values(run, 'var_type')}`; {image_seed_text(run)}",
             "- **Aggregation**: mean and sample standard deviation (ddof = 1) over the seeds that finished; diverged "
             "or failed trials are left out of the mean and counted in the table cells.",
             "- **Comparisons** (DESIGN.md section 5, `bench/scoring/stats.py`): arms with the same training seed share the "
             "initial weights and the image seeds; the minibatches and the training times come from one generator and "
             "the noise (with a training knob's extra noise) from another, so arms that draw alike (vp arms with "
             "uniform time and no knob; densities that draw as much randomness a step) share every batch and noise "
             "draw, and others share the first (`r_seeds` in `tables/paired_*.csv`, the "
             "correlation of two arms' scores over seeds, says how much of the seed-to-seed spread a pair shares, "
             "which pairing removes). Two arms are compared by their "
             "per-seed differences d_s = arm_s - best_s over the seeds both finished: mean, 95% t-interval "
             "(df = n - 1), two-sided paired t p-value, and Holm's adjustment over every pair of arms of that dataset, "
             "evaluation and metric (the best arm is chosen from the same scores, so each pair could have been "
             "shown). Where an interval covers 0, what it excludes is the result. The seed planner uses the exact "
             "power of the paired t (noncentral t)."]
    boot = [m for m in run.metrics if perimage.bootstrappable(m)]
    if boot and not perimage.has_per_image(run):
        lines.append(f"- **Two-level bootstrap** ({join([f'`{m}`' for m in boot])}): not available: {perimage.NO_PER_IMAGE}, "
                     f"so only the paired t-intervals are given.")
    elif boot:
        lines.append(f"- **Two-level bootstrap** ({join([f'`{m}`' for m in boot])}): a second interval for each comparison "
                     f"with the best arm, resampling the seeds both arms finished and then, within each, the generated "
                     f"images with the same indices in both arms; the metric is recomputed from the per-image features "
                     f"(per_image/, float16) against the reference mean and covariance (references/); "
                     f"n_boot = {perimage.N_BOOT}, percentile interval. It adds the images' sampling noise to the seed "
                     f"spread; with 3-5 seeds it is indicative (it under-covers when the seed spread dominates: 77% "
                     f"with 3 seeds, 85% with 5 in the simulations of `bench/scoring/stats.py`).")
    lines += adopted_lines(run)
    if curve_steps(run):
        lines.append("- **Learning curves**: the EMA model at each `eval_at` step (" + join([f"{k:,}" for k in curve_steps(run)])
                     + "), sampled with the grid's first evaluation and scored with `curve_metrics`, plotted against "
                     "training images (train_step x batch size): each arm's mean over seeds with the min-max range over "
                     "seeds. Kendall's tau (tau-b, `scipy.stats.kendalltau`) compares the order of the arm means at "
                     "each step with their order at the end of training; the pairs that flip are named.")
    lines += [f"- **`{m}`** ({direction(m)}): {metric_description(m)} Feature extractor: {md['features']}; "
              f"n_generated = {md['n_generated']}, n_reference = {md['n_reference']}. {_floor_method(run, m)}"
              for m in run.metrics for md in [metric_meta(run, m)]]
    return "\n".join(lines)


def adopted_lines(run: Run) -> list[str]:
    """Where trials trained nothing or only part (``reuse_training``): how many, and the run directories
    their models came from (``trained_in`` is a trial work dir, RUN/_work/trials/ID). ``adopted_step``
    tells the two apart: the source's step, equal to the trial's train_steps when it only evaluated, below
    it when it continued the source's training (rows written before the column: evaluation only)."""
    adopted = run.adopted_trials()
    if not len(adopted):
        return []
    trials = run.trials()
    step = pd.to_numeric(adopted.get("adopted_step", pd.Series(np.nan, index=adopted.index)), errors="coerce")
    continued = step.notna() & (step < pd.to_numeric(adopted["train_steps"], errors="coerce"))
    lines = []
    for part, what in ((adopted[~continued], "evaluated"), (adopted[continued], "continued")):
        if not len(part):
            continue
        runs = join([f"`{r}`" for r in sorted({_run_of(s) for s in part["trained_in"]})])
        if what == "evaluated":
            lines.append(f"- **Evaluation only**: {len(part)} of {plural(len(trials), 'trial')} trained nothing: each "
                         f"adopted the final weights and EMA of a finished trial with identical training fields "
                         f"(`reuse_training`, `bench/training/trained.py`) from {runs}, resumed its trainer at the last step "
                         f"(no step taken) and sampled and scored only; the training recorded for them is the source's.")
        else:
            steps = join([f"{int(v):,}" for v in sorted(set(step[continued]))])
            lines.append(f"- **Continued**: {len(part)} of {plural(len(trials), 'trial')} began from the final checkpoint "
                         f"of a finished shorter trial with the same training fields (step {steps}; `reuse_training`, "
                         f"`bench/training/trained.py`) from {runs} and trained on to their own train_steps: the same "
                         f"weights as training from step 0 (the learning-rate schedule and the weight average count "
                         f"in steps taken, every generator's state is in the checkpoint); their training time "
                         f"includes the source's.")
    return lines


def _run_of(workdir: str) -> str:
    """RUN_PARENT/RUN of a trial work dir RUN/_work/trials/ID (the path itself when shorter)."""
    p = Path(workdir)
    return f"{p.parents[2].parent.name}/{p.parents[2].name}" if len(p.parents) > 3 else workdir


def image_seed_text(run: Run) -> str:
    """How image i's starting noise is seeded (``image_seeds``: shared, or per training seed)."""
    modes = [str(v) for v in dict.fromkeys(run.rows["image_seeds"].dropna())] if "image_seeds" in run.rows.columns else []
    if modes == ["per_seed"]:
        return ("image i of every evaluation starts from a seed derived from (sample_seed, training seed, i) "
                f"(sample_seed = {values(run, 'sample_seed')}): the same in every arm, different across training seeds, "
                "so the seed-to-seed spread includes the sampling noise of the images.")
    return (f"image i of every evaluation starts from seed sample_seed + i (sample_seed = {values(run, 'sample_seed')}) in "
            f"every arm" + (" and every training seed, so the seed-to-seed spread leaves out the sampling noise of the "
                            "images." if modes in ([], ["shared"]) else f" (image_seeds: {', '.join(modes)})."))


def _floor_method(run: Run, metric: str) -> str:
    """What the floor of ``metric`` is, with its own n per dataset."""
    phrases = [f"{ds}: {ph}" for ds in run.datasets for ph in [floor_phrase(run, metric, ds)] if ph]
    if not phrases:
        return "No real-vs-real floor recorded."
    words, phrases = floor_words(run, metric), "; ".join(phrases)
    if words == HELDOUT_FLOOR:  # the committed runs' wording, kept byte for byte
        return f"Floor: the same metric between held-out and training real images ({phrases})."
    return f"Floor: the same metric between real images, {words} ({phrases})."


def _data_line(run: Run, ds: str) -> str:
    rows = run.rows[run.rows["dataset"] == ds]
    size = values(run, "image_size", rows)
    try:
        from bench.data.datasets import DATASETS

        spec = DATASETS.get(ds)
        size = f"{spec.size}x{spec.size} native" if size in ("0", "?") else f"{size}x{size}"
        size += f", {spec.channels} channel(s)"
    except Exception:  # noqa: BLE001 - an unknown dataset still gets a report
        pass
    return f"`{ds}` ({values(run, 'n_train_images', rows)} training images, {size})"


def metric_description(metric: str) -> str:
    try:
        from bench.scoring.metrics import METRICS

        obj = METRICS.get(metric)
        return (getattr(obj, "description", None) or (obj.__doc__ or "").strip().split("\n")[0]).rstrip(".") + "."
    except Exception:  # noqa: BLE001 - metrics module absent or the name retired: the table still stands
        # an unregistered name is read as lower is better (``tables.higher_is_better``): say what that assumes
        return "Not a registered metric: read as a distance between generated and real images (lower is better)."


# --- provenance and citation -----------------------------------------------------------------------
def trial_seconds(run: Run) -> dict[str, float]:
    """Device seconds per trial: train_s + the evaluations' (final and learning-curve) sample_s + score_s,
    else trial_s."""
    out = {}
    for tid, rows in run.all_rows.groupby("trial_id", sort=False):  # learning-curve evaluations cost time too
        parts = [rows[c].dropna() for c in ("train_s", "sample_s", "score_s") if c in rows.columns]
        total = (parts[0].max() if len(parts) and len(parts[0]) else 0.0) + sum(p.sum() for p in parts[1:])
        fallback = rows["trial_s"].dropna().max() if "trial_s" in rows.columns else np.nan
        out[tid] = float(total) if total > 0 else float(fallback) if np.isfinite(fallback) else 0.0
    return out


def provenance(run: Run) -> str:
    env, git = run.env, run.env.get("git") or {}
    e = {k: env.get(k, "?") for k in ("command", "started", "finished", "runner", "cpus_per_trial", "gpus_per_trial")}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    lines = ["## Provenance",
             f"- Run `{run.id}` of grid `{run.name}`, preset `{run.grid.get('preset', '?')}`; command `{e['command']}`",
             f"- Code: commit `{git.get('commit') or 'unknown'}`" + (" (**dirty** tree)" if git.get("dirty") else ""),
             f"- Started {e['started']}, finished {e['finished']}, wall time {duration(env.get('wall_s'))}; runner "
             f"{e['runner']}, {e['cpus_per_trial']} CPUs and {e['gpus_per_trial']} GPUs per trial",
             f"- Machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs, CUDA devices: "
             f"{', '.join(env.get('cuda_devices') or []) or 'none'}; Python {env.get('python', '?')}",
             f"- Versions: {versions or 'not recorded'}", *session_lines(env), "",
             "| trial | arm | dataset | seed | status | device | device time |", "|---|---|---|---:|---|---|---:|"]
    secs = trial_seconds(run)
    for _, t in run.trials().iterrows():
        lines.append(f"| {t['trial_id']} | {t['label']} | {t['dataset']} | {t['seed']} | {t['status']} | "
                     f"{t.get('device') if pd.notna(t.get('device')) else '—'} | {secs[t['trial_id']] / 3600:.3f} h |")
    lines.append(f"\nTotal: {sum(secs.values()) / 3600:.3f} device-hours (train + sample + score time of every trial).")
    return "\n".join(lines)


def session_lines(env: dict) -> list[str]:
    """One line per session of a resumed run (env.json ``sessions``): when, how long, which code."""
    sessions = env.get("sessions") or []
    if len(sessions) < 2:
        return []

    def code(s: dict) -> str:
        g = s.get("git") or {}
        return f"commit `{g['commit'][:12]}`" + (" (dirty)" if g.get("dirty") else "") if g.get("commit") else "commit not recorded"

    def span(s: dict) -> str:
        if not s.get("finished"):  # killed before it could record its end: its time is not in the wall time
            return f"{s.get('started', '?')}, interrupted (no end recorded; not in the wall time above)"
        return f"{s.get('started', '?')} to {s['finished']}, {duration(s.get('wall_s'))}"

    def grew(s: dict) -> str:  # a --resume that added trials to the grid (bench.experiment.rundir.extension)
        return f"; the grid was extended by {s['grid_extended']}" if s.get("grid_extended") else ""

    return [f"- Sessions ({len(sessions)}; the commit above is the last one's):"] + [
        f"  {i}. {span(s)}, {code(s)}: `{s.get('command', '?')}`{grew(s)}" for i, s in enumerate(sessions, 1)]


def cite(run: Run) -> str:
    git = run.env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + ("-dirty" if git.get("dirty") else "")
    year = str(run.env.get("started", ""))[:4]
    key = re.sub(r"[^A-Za-z0-9]+", "-", f"bench-{run.name}-{run.id}").strip("-")
    return (f"## How to cite\n\nCite the suite (see `CITATION.cff` at the repository root) and this run:\n\n"
            f"```bibtex\n@misc{{{key},\n  title        = {{{{{TITLE}}}: grid {run.name}, run {run.id}}},\n"
            f"  author       = {{{{The bench developers}}}},\n  year         = {{{year if year.isdigit() else 'n.d.'}}},\n"
            f"  version      = {{{(run.env.get('versions') or {}).get('bench') or VERSION}}},\n"
            f"  note         = {{Run {run.id} of grid {run.name} (preset {run.grid.get('preset', '?')}), "
            f"commit {commit}}},\n"
            f"}}\n```")
