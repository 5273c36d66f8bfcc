"""The ranking Stable Diffusion 3 used for many formulations: non-dominated sorting, averaged over settings
(Esser et al. 2024, sec. 5.1; DESIGN.md section 6, "Ranking many formulations").

Per evaluation setting (sampler and steps) and dataset, every arm is a point of two metrics of opposite
kinds, a distance (FD: lower is better) and a coverage-type score (coverage, else recall: higher is
better), each the mean over seeds. Front 1 holds the arms no other arm dominates (at least as good in
both, better in one); remove it, front 2 is the next, and so on: an arm's rank in a setting is its front.
The average of its ranks over the settings says how robust a formulation is across budgets; it does
not say which differences are real, which is what the paired intervals of the report are for. Both
are reported, never one instead of the other.

SD3 averaged over the step counts of one solver (Euler at 5, 10, 25 and 50 steps, with and without EMA):
where a run evaluates several samplers, the average is over the settings of the one with the most of them
(``averaged``), and the other settings are shown beside it, not averaged.

How sure is a rank? The means it sorts rest on a few seeds, so the average rank is recomputed on ``BOOT``
resamples of the training seeds, drawn jointly for every arm (an arm's seeds are paired with the others'):
its 2.5-97.5% range and the share of resamples in which the arm has the lowest average rank (ties
shared); and from each seed's own scores alone, the range of the average rank over the seeds.

Drawn for formulation runs (arms that differ in ``path`` or ``t_density``) that score both kinds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.files import write_text_atomic
from bench.report.tables import Run, aggregate, higher_is_better, join, md_escape
from bench.style import Plot, figure, save, theme

#: the second metric, in order of preference (SD3 used CLIP score with FID; DESIGN.md: coverage or recall)
SECOND = ("coverage_clf", "coverage", "recall_clf", "recall")
TABLE = "ranking"
BOOT = 1000  # seed resamples behind the average rank's range (seeded: the report reproduces)


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


def averaged(settings: list[str]) -> list[str]:
    """The settings the average rank is over: those of the one sampler with the most settings, as SD3 averaged
    over one solver's step counts; every setting where no sampler has more than the others (a solver probe)."""
    by = [x.split(":")[0] for x in settings]
    counts = sorted((by.count(smp) for smp in set(by)), reverse=True)
    if len(counts) < 2 or counts[0] == counts[1]:
        return list(settings)
    most = max(by, key=by.count)
    return [x for x, smp in zip(settings, by) if smp == most]


def setting_fronts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Arms x settings fronts from arms x settings arrays of a distance ``a`` (lower is better) and a
    coverage-type ``b`` (higher is better); an arm without both in a setting comes after its last front."""
    ranks = np.empty(a.shape)
    for j in range(a.shape[1]):
        ok = np.flatnonzero(np.isfinite(a[:, j]) & np.isfinite(b[:, j]))
        front = fronts({int(i): (a[i, j], -b[i, j]) for i in ok})
        last = max(front.values(), default=0) + 1
        ranks[:, j] = [front.get(i, last) for i in range(a.shape[0])]
    return ranks


def average_rank(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Average front over the settings (``setting_fronts``)."""
    return setting_fronts(a, b).mean(axis=1)


def seed_fronts(a: np.ndarray, b: np.ndarray, boot: int = BOOT) -> np.ndarray:
    """boot x arms x settings: the fronts (``setting_fronts``) of ``boot`` joint resamples of the seeds of arms x
    settings x seeds arrays (NaN where a trial has no score), each mean weighted by how often its seed is drawn.
    The resamples depend only on the number of seeds (generator seeded 0), so any two calls draw the same."""
    def means(v: np.ndarray, w: np.ndarray) -> np.ndarray:
        have = np.isfinite(v)
        den = have.astype(float) @ w
        return np.where(den > 0, np.where(have, v, 0.0) @ w / np.where(den > 0, den, 1.0), np.nan)

    n = a.shape[2]
    rng = np.random.default_rng(0)
    return np.array([setting_fronts(means(a, w), means(b, w))
                     for w in (np.bincount(rng.integers(0, n, n), minlength=n).astype(float) for _ in range(boot))])


def seed_ranges(a: np.ndarray, b: np.ndarray, boot: int = BOOT) -> pd.DataFrame:
    """For arms x settings x seeds arrays of the two metrics (NaN where a trial has no score): the average
    rank's 2.5% and 97.5% points over ``boot`` joint resamples of the seeds (``seed_fronts``), ``p_best`` (the
    share of resamples with the arm's average rank lowest, ties shared), and its lowest and highest average rank
    from one seed's scores alone (the seeds every arm has every score of)."""
    n = a.shape[2]
    draws = seed_fronts(a, b, boot).mean(axis=2)
    best = draws == draws.min(axis=1, keepdims=True)
    complete = [s for s in range(n) if np.isfinite(a[:, :, s]).all() and np.isfinite(b[:, :, s]).all()]
    alone = np.array([average_rank(a[:, :, s], b[:, :, s]) for s in complete] or [np.full(a.shape[0], np.nan)])
    return pd.DataFrame({"average_rank_lo": np.percentile(draws, 2.5, axis=0),
                         "average_rank_hi": np.percentile(draws, 97.5, axis=0),
                         "p_best": (best / best.sum(axis=1, keepdims=True)).mean(axis=0),
                         "seed_rank_min": alone.min(axis=0), "seed_rank_max": alone.max(axis=0)})


def ranking(run: Run) -> pd.DataFrame:
    """One row per dataset and arm: its front in every setting (columns ``sampler:steps``), ``average_rank``
    over the ``averaged`` settings (an arm without a score in one, diverged or failed, counts as the front after
    the last there), ``settings``, the settings where it has both scores, and where the rows hold every
    seed's scores the average rank's ranges over seeds (``seed_ranges``); sorted by average rank."""
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
    columns = [f"{s}:{k}" for s, k in run.evals]  # samplers as rows.csv first names them, each one's steps rising
    for ds, part in both.groupby("dataset", sort=False):
        ranks: dict[str, dict[str, int]] = {lb: {} for lb in run.labels}
        groups = {f"{s}:{int(k)}": g for (s, k), g in part.groupby(["sampler", "sample_steps"], sort=False)}
        for setting in (c for c in columns if c in groups):
            pts = {r.label: (r.mean_a, -r.mean_b) for r in groups[setting].itertuples()}  # coverage: higher is better
            ranked = fronts(pts)
            for lb in ranks:  # an arm with no score here (diverged, failed) comes after every front
                ranks[lb][setting] = ranked.get(lb, max(ranked.values()) + 1)
        over = averaged(list(next(iter(ranks.values()))))
        spread = _seed_spread(run, pair, ds, list(ranks), over)
        for i, (lb, r) in enumerate(ranks.items()):
            scored = int(both[(both.dataset == ds) & (both.label == lb)].shape[0])
            out.append({"dataset": ds, "label": lb, **r, "average_rank": sum(r[x] for x in over) / len(over),
                        "settings": scored, **({} if spread is None else spread.iloc[i].to_dict())})
    table = pd.DataFrame(out)
    first = ["dataset", "label", *(c for c in columns if c in table.columns)]  # a later dataset's own settings too
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(["dataset", "average_rank"], kind="stable").reset_index(drop=True)


def _seed_spread(run: Run, pair: tuple[str, str], ds: str, labels: list[str], settings: list[str]) -> pd.DataFrame | None:
    """``seed_ranges`` of the arms ``labels`` over ``settings`` from the run's per-seed rows, or None where the
    rows lack a column it needs or hold fewer than 2 seeds."""
    cubes = seed_cubes(run, pair, ds, labels, settings)
    return None if cubes is None else seed_ranges(*cubes)


def seed_cubes(run: Run, pair: tuple[str, str], ds: str, labels: list[str],
               settings: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two metrics of ``pair`` as arms x settings x seeds arrays (NaN where a trial has no score) from the
    run's per-seed rows of dataset ``ds``, or None where the rows lack a column or hold fewer than 2 seeds."""
    rows = run.rows
    if not {"dataset", "label", "sampler", "sample_steps", "seed", "status", *pair} <= set(rows.columns):
        return None
    df = rows[(rows["dataset"] == ds) & (rows["status"] == "ok") & rows["sampler"].notna() & (rows["sampler"] != "")]
    seeds = sorted(df["seed"].dropna().unique())
    if len(seeds) < 2:
        return None
    df = df.assign(setting=df["sampler"].astype(str) + ":" + df["sample_steps"].astype(int).astype(str))
    index = pd.MultiIndex.from_product([labels, settings, seeds], names=["label", "setting", "seed"])

    def cube(metric: str) -> np.ndarray:
        values = pd.to_numeric(df[metric], errors="coerce").groupby([df["label"], df["setting"], df["seed"]]).mean()
        return values.reindex(index).to_numpy(dtype=float).reshape(len(labels), len(settings), len(seeds))

    return cube(pair[0]), cube(pair[1])


def section(run: Run) -> str:
    """The report's ranking section, or "" where the run has none; writes ``tables/ranking.csv``."""
    table = ranking(run)
    if not len(table):
        return ""
    dist, cov = metrics_of(run)
    write_text_atomic(run.dir / "tables" / f"{TABLE}.csv", table.to_csv(index=False))
    settings = [c for c in table.columns if ":" in c]
    over = averaged(settings)
    spread = "p_best" in table.columns
    ok = run.rows[run.rows["status"] == "ok"] if "status" in run.rows.columns else run.rows
    n = int(ok["seed"].nunique()) if "seed" in ok.columns else 0
    others = [x for x in settings if x not in over]
    out = ["## Ranking by non-dominated sorting (SD3)",
           f"Per setting, each arm's front when the arms are sorted by non-dominance on {dist} (lower is better) and "
           f"{cov} (higher is better), each the mean over seeds (Esser et al. 2024, sec. 5.1): front 1 is the arms no "
           f"other beats on both; then the average over "
           + (f"the {len(over)} settings of {over[0].split(':')[0]} (as SD3 averaged over one solver's step counts; "
              f"{join([f'`{x}`' for x in others])} beside it, not averaged)" if others else f"the {len(over)} settings")
           + ". It ranks robustness across budgets; whether two arms differ is what "
           f"the paired intervals above say (`bench/report/ranking.py`; `tables/{TABLE}.csv`)."
           + (f" How sure each average rank is: its 95% range over {BOOT} joint resamples of the {n} training seeds "
              f"(only {math.comb(2 * n - 1, n)} distinct ones: a coarse range), the share of them in which the arm "
              f"ranks first (P(first)), and its lowest and highest average rank from one seed's scores alone."
              if spread else ""), ""]
    extra = ["95% range, seed resamples", "P(first)", "one seed alone"] if spread else []
    for ds, part in table.groupby("dataset", sort=False):
        out += [f"{ds}:", "", "| arm | " + " | ".join(settings) + " | average rank | " + " | ".join(extra)
                + (" |" if extra else ""), "|---|" + "---:|" * (len(settings) + 1 + len(extra))]
        for _, r in part.iterrows():
            cells = [str(int(r[c])) if pd.notna(r[c]) else "–" for c in settings]
            alone = (f"{r['seed_rank_min']:.2f}-{r['seed_rank_max']:.2f}" if pd.notna(r["seed_rank_min"])
                     else "– (no seed with every score)")
            more = ([f"{r['average_rank_lo']:.2f}-{r['average_rank_hi']:.2f}", f"{r['p_best']:.2f}", alone]
                    if spread else [])
            out.append(f"| {md_escape(r['label'])} | " + " | ".join(cells) + f" | {r['average_rank']:.2f} |"
                       + "".join(f" {m} |" for m in more))
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
    over = averaged(settings)
    return Plot(png, f"Non-dominated sorting on {dist} and {cov} (means over seeds) per evaluation setting, as SD3 "
                     f"ranked its formulations: each arm's front (1 = no other arm better on both) and the average "
                     f"over {f'the {len(over)} settings of ' + over[0].split(':')[0] if len(over) < len(settings) else 'the settings'}; "
                     f"arms ordered by it.")
