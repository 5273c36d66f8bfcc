"""The ranking Stable Diffusion 3 used for many formulations: non-dominated sorting, averaged over settings
(Esser et al. 2024, sec. 5.1; DESIGN.md section 6, "Ranking many formulations").

Per evaluation setting (sampler and steps) and dataset, every arm is a point of two metrics of opposite
kinds, a distance (FD: lower is better) and a coverage-type score (coverage, else recall: higher is
better), each the mean over seeds. Front 1 holds the arms no other arm dominates (at least as good in
both, better in one); remove it, front 2 is the next, and so on: an arm's rank in a setting is its front.
The average of its ranks over the settings says how robust a formulation is across budgets; it does
not say which differences are real, which is what the paired intervals of the report are for. Both
are reported, never one instead of the other.

Drawn for formulation runs (arms that differ in ``path`` or ``t_density``) that score both kinds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.files import write_text_atomic
from bench.report.tables import Run, aggregate, higher_is_better, md_escape
from bench.style import Plot, figure, save, theme

#: the second metric, in order of preference (SD3 used CLIP score with FID; DESIGN.md: coverage or recall)
SECOND = ("coverage_clf", "coverage", "recall_clf", "recall")
TABLE = "ranking"


def metrics_of(run: Run) -> tuple[str, str] | None:
    """(distance, coverage-type) metrics the ranking uses, or None where the run is no formulation run or
    lacks one of them."""
    rows = run.rows
    varies = [c for c in ("path", "t_density") if c in rows.columns and rows[c].nunique(dropna=False) > 1]
    if not varies or len(run.labels) < 2:
        return None
    first = next((m for m in run.metrics if not higher_is_better(m)), None)
    second = next((m for m in SECOND if m in run.metrics), None)
    return (first, second) if first and second else None


def fronts(points: dict[str, tuple[float, float]]) -> dict[str, int]:
    """Front index (1 = non-dominated) of each point, both coordinates to be minimised."""
    def dominates(q, p):
        return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])

    left, out, rank = dict(points), {}, 1
    while left:
        front = [k for k, p in left.items() if not any(dominates(q, p) for j, q in left.items() if j != k)]
        out.update({k: rank for k in front})
        for k in front:
            del left[k]
        rank += 1
    return out


def ranking(run: Run) -> pd.DataFrame:
    """One row per dataset and arm: its front in every setting (columns ``sampler:steps``), ``average_rank``
    over every setting (an arm without a score in one, diverged or failed, counts as the front after the last
there), and ``settings``, the settings where it has both scores; sorted by average rank."""
    if "ranking" not in run.cache:  # the section and the figure read it: computed once per report
        run.cache["ranking"] = _ranking(run)
    return run.cache["ranking"]


def _ranking(run: Run) -> pd.DataFrame:
    pair = metrics_of(run)
    if pair is None:
        return pd.DataFrame()
    dist, cov = (aggregate(run, m) for m in pair)
    keys = ["dataset", "label", "sampler", "sample_steps"]
    both = dist[keys + ["mean"]].merge(cov[keys + ["mean"]], on=keys, suffixes=("_a", "_b")).dropna()
    # "settings": the settings where the arm has both metrics (a missing one counts as the last front there)
    out = []
    for ds, part in both.groupby("dataset", sort=False):
        ranks: dict[str, dict[str, int]] = {lb: {} for lb in run.labels}
        for (s, k), g in part.groupby(["sampler", "sample_steps"], sort=False):
            pts = {r.label: (r.mean_a, -r.mean_b) for r in g.itertuples()}  # coverage: higher is better
            ranked = fronts(pts)
            for lb in ranks:  # an arm with no score here (diverged, failed) comes after every front
                ranks[lb][f"{s}:{int(k)}"] = ranked.get(lb, max(ranked.values()) + 1)
        for lb, r in ranks.items():
            scored = int(both[(both.dataset == ds) & (both.label == lb)].shape[0])
            out.append({"dataset": ds, "label": lb, **r, "average_rank": sum(r.values()) / len(r), "settings": scored})
    return pd.DataFrame(out).sort_values(["dataset", "average_rank"], kind="stable").reset_index(drop=True)


def section(run: Run) -> str:
    """The report's ranking section, or "" where the run has none; writes ``tables/ranking.csv``."""
    table = ranking(run)
    if not len(table):
        return ""
    dist, cov = metrics_of(run)
    write_text_atomic(run.dir / "tables" / f"{TABLE}.csv", table.to_csv(index=False))
    settings = [c for c in table.columns if ":" in c]
    out = ["## Ranking by non-dominated sorting (SD3)",
           f"Per setting, each arm's front when the arms are sorted by non-dominance on {dist} (lower is better) and "
           f"{cov} (higher is better), each the mean over seeds (Esser et al. 2024, sec. 5.1): front 1 is the arms no "
           f"other beats on both; then the average over the {len(settings)} settings. It ranks robustness across "
           f"budgets; whether two arms differ is what the paired intervals above say (`bench/report/ranking.py`; "
           f"`tables/{TABLE}.csv`).", ""]
    for ds, part in table.groupby("dataset", sort=False):
        out += [f"{ds}:", "", "| arm | " + " | ".join(settings) + " | average rank |",
                "|---|" + "---:|" * (len(settings) + 1)]
        for _, r in part.iterrows():
            cells = [str(int(r[c])) if pd.notna(r[c]) else "–" for c in settings]
            out.append(f"| {md_escape(r['label'])} | " + " | ".join(cells) + f" | {r['average_rank']:.2f} |")
        out.append("")
    return "\n".join(out).strip()


def plot_ranking(run: Run, out_dir: Path) -> Plot | None:
    """Fronts per arm and setting as a grid of numbers, arms ordered by average rank (the last column)."""
    table = ranking(run)
    if not len(table):
        return None
    settings = [c for c in table.columns if ":" in c]
    datasets = list(dict.fromkeys(table.dataset))
    with theme(seaborn=False):
        fig, axes = figure(1, len(datasets), 2.6 + 0.7 * (len(settings) + 1), 1.0 + 0.32 * table.label.nunique())
        for ax, ds in zip(axes[0], datasets):
            part = table[table.dataset == ds]
            grid = part[settings + ["average_rank"]].to_numpy(dtype=float)
            ax.imshow(grid, cmap="viridis_r", aspect="auto")
            for (i, j), v in pd.DataFrame(grid).stack().items():
                ax.text(j, i, f"{v:.2f}" if j == len(settings) else f"{v:.0f}", ha="center", va="center",
                        color="white" if v > np.nanmax(grid) * 0.6 else "black", fontsize=8)
            ax.set_xticks(range(len(settings) + 1), settings + ["average"], rotation=30, ha="right")
            ax.set_yticks(range(len(part)), part.label.tolist())
            ax.set_title(f"{ds}: front (1 = non-dominated)")
        png = save(fig, out_dir / "ranking.png")
    dist, cov = metrics_of(run)
    return Plot(png, f"Non-dominated sorting on {dist} and {cov} (means over seeds) per evaluation setting, as SD3 "
                     f"ranked its formulations: each arm's front (1 = no other arm better on both) and the average "
                     f"over the settings; arms ordered by it.")
