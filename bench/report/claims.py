"""The report's "Against the published results" section, its table and figure (``bench.experiment.claims``).

Every ``[[claims]]`` table of the run's grid.toml is evaluated on the run's final scores (status ok):
the claim in the source's words, the measured contrast (positive where the claim holds) with its
paired 95% t-interval, p and Holm p over the run's contrasts, and the verdict the interval gives
(agrees / disagrees / not resolved, with what an unresolved interval excludes), then the differences
of setting that could explain a disagreement.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.experiment import claims
from bench.files import write_text_atomic
from bench.report.tables import Run, higher_is_better, md_escape, plural
from bench.scoring import stats
from bench.style import Plot, figure, safe, save, theme, wrap

TABLE = "claims"
COLOURS = {claims.AGREES: "#1b7837", claims.DISAGREES: "#b2182b", claims.UNRESOLVED: "0.45"}


def run_claims(run: Run) -> list[claims.Claim]:
    return claims.parse_claims(run.grid.get("claims"), f"{run.dir / 'grid.toml'}")


def claims_table(run: Run) -> pd.DataFrame:
    """``claims.evaluate`` on the run's final rows (cached on the run); it scores the finished ones and
    reports a group whose trials all failed as not measured."""
    if "claims" not in run.cache:
        run.cache["claims"] = claims.evaluate(run_claims(run), run.rows, higher_is_better)
    return run.cache["claims"]


def interval_text(r) -> str:
    if not np.isfinite(r["lo"]):
        return "—"
    return "{} [{}, {}]".format(*stats.fmt_interval(r["diff"], r["lo"], r["hi"]))


def verdict_text(r) -> str:
    """Why the verdict is what it is, in the interval's own numbers."""
    if r["problem"]:
        return f"not measured: {r['problem']}"
    _, lo, hi = stats.fmt_interval(r["diff"], r["lo"], r["hi"])
    if r["verdict"] == claims.AGREES:
        return f"**agrees**: the interval [{lo}, {hi}] lies above 0"
    if r["verdict"] == claims.DISAGREES:
        return f"**disagrees**: the interval [{lo}, {hi}] lies below 0, the opposite of the claim"
    if r["lo"] > 0 or r["hi"] < 0:
        side = "above" if r["lo"] > 0 else "below"
        return (f"**not resolved**: the interval [{lo}, {hi}] lies {side} 0, but not after Holm's correction over "
                f"the run's contrasts ({stats.p_phrase('Holm', r['p_holm'])})")
    return (f"**not resolved** with {plural(int(r['n']), 'seed')}: the interval [{lo}, {hi}] covers 0; it excludes "
            f"a contrast above {hi} or below {lo}")


def fmt_margin(row) -> str:
    """'10%': a claim's non-inferiority margin, or '' where it has none."""
    m = row["margin"]
    return "" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.0%}"


def left_out_text(r) -> str:
    return f"; seed(s) {r['left_out']} left out (not scored in every cell)" if r["left_out"] else ""


def section(run: Run) -> str:
    """The report section (empty when the grid states no claim)."""
    table = claims_table(run)
    if not len(table):
        return ""
    counts = table["verdict"].where(table["problem"] == "", "not measured").value_counts()
    summary = ", ".join(f"{counts[v]} {v}" for v in (claims.AGREES, claims.DISAGREES, claims.UNRESOLVED, "not measured")
                        if v in counts)
    out = ["## Against the published results",
           f"The grid states {plural(len(run_claims(run)), 'published claim')}, measured here as "
           f"{plural(len(table), 'paired contrast')} ({summary}). Each contrast is positive where the claim holds, in "
           f"the metric's own units, per training seed, then averaged: 95% t-interval, paired p, Holm p over the "
           f"{plural(int(table['p'].notna().sum()), 'contrast')} of this run (`bench/experiment/claims.py`; `tables/claims.csv`).",
           ""]
    for _, part in table.groupby("index", sort=True):
        r0 = part.iloc[0]
        margin = (f" (non-inferiority: the margin, {fmt_margin(r0)} of the reference cell's score per seed, is "
                  f"part of the contrast)") if fmt_margin(r0) else ""
        out += [f"**Claim**: {md_escape(r0['claim'])}{margin}. *Source*: {md_escape(r0['source'])}.", "",
                f"Measured: `{r0['contrast']}` ({r0['metric']}):", ""]
        for _, r in part.iterrows():
            where = f"{md_escape(r['group'])}: " if r["group"] else ""
            out.append(f"- {where}{interval_text(r)} over {plural(int(r['n']), 'seed')} ({stats.p_phrase('p', r['p'])}, "
                       f"{stats.p_phrase('Holm', r['p_holm'])}{left_out_text(r)}): {verdict_text(r)}.")
        out += [""] + ([f"*Differences of setting*: {md_escape(r0['setting'])}", ""] if r0["setting"] else [])
    return "\n".join(out).strip()


def write_table(run: Run, out_dir: Path) -> None:
    table = claims_table(run)
    if len(table):
        write_text_atomic(Path(out_dir) / f"{TABLE}.csv", table.to_csv(index=False))


def plot_claims(run: Run, out_dir: Path) -> list[Plot]:
    """One figure per metric: each contrast with its 95% interval, a line at 0, coloured by verdict."""
    table = claims_table(run)
    plots = []
    for metric, part in table.groupby("metric", sort=False):
        part = part.reset_index(drop=True)
        with theme():
            fig, axes = figure(1, 1, 7.0, 0.42 * len(part) + 1.3)
            ax = axes[0, 0]
            ax.axvline(0, color="0.3", lw=1, zorder=1)
            for y, r in part.iterrows():
                colour = COLOURS.get(r["verdict"], "0.45") if not r["problem"] else "0.7"
                if np.isfinite(r["lo"]):
                    ax.errorbar([r["diff"]], [y], xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o",
                                color=colour, ms=5, capsize=3, zorder=3)
            names = [wrap(f"{r['claim']}" + (f" ({r['group']})" if r["group"] else ""), 60) for _, r in part.iterrows()]
            ax.set_yticks(range(len(part)), names, fontsize=6)
            ax.set_ylim(len(part) - 0.5, -0.5)
            ax.set_xlabel(wrap(f"{metric}: contrast, positive where the claim holds (mean over seeds, 95% t-interval)", 45))
            ax.margins(x=0.15)
            png = save(fig, Path(out_dir) / f"claims_{safe(metric)}.png")
        plots.append(Plot(png, f"The published claims measured in {metric}: each contrast (positive where the claim "
                               f"holds, paired by training seed; a non-inferiority margin is part of its contrast) with its "
                               f"95% t-interval; green: agrees, red: disagrees (both: the interval excludes 0 and Holm's "
                               f"p over the run's contrasts < 0.05), grey: not resolved."))
    return plots
