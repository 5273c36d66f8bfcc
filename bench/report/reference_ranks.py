"""The report's "Against published rankings" part: the run's ranking beside the ``[[reference_ranks]]`` of its
grid (``bench.experiment.reference_ranks``), with Kendall's tau-b, in a table and a figure.

For each reference and dataset the arms both rank are sorted again into non-dominated fronts over the reference's
``over`` settings (``bench.report.ranking``; means over seeds): an arm only this run has could otherwise split a
front of the others. An arm's rank here is its average front; the agreement is Kendall's tau-b between those and the
source's ranks,

    tau_b = sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(n_x n_y),

n_x and n_y the pairs not tied in x and in y (Kendall 1945; scipy.stats.kendalltau's default): 1 the same order,
0 no association, -1 reversed. Fronts tie arms, so tau_b here cannot reach 1: its bound min(n_x, n_y) / sqrt(n_x n_y)
is stated beside it. The published ranks are taken as exact (a source seldom gives their error); how sure the
run's side is: the 2.5-97.5% range of tau_b over the ranking's joint seed resamples (``ranking.seed_fronts``, the
same draws as the average ranks' ranges; a resample that ties every arm has no tau and is counted apart), its
lowest and highest value from one seed's scores alone, and a two-sided permutation p of no association
(``PERMS`` random orders of the run's ranks, seeded). For scale, the sources' own columns are compared with one
another on the same arms (SD3's 5-step and 50-step ranks are far from one order).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.experiment import reference_ranks as sources
from bench.files import write_text_atomic
from bench.report import ranking
from bench.report.tables import Run, join, md_escape, plural
from bench.style import Plot, figure, save, theme

PERMS = 10000  # permutations behind the p of no association (seeded: the report reproduces)
TABLE = "reference_ranks"


def tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of ``x`` (n,) against each row of ``y`` (n,) or (k, n); NaN where either side is all tied."""
    y2 = np.atleast_2d(np.asarray(y, dtype=float))
    i, j = np.triu_indices(len(x), 1)
    sx = np.sign(np.asarray(x, dtype=float)[i] - np.asarray(x, dtype=float)[j])
    sy = np.sign(y2[:, i] - y2[:, j])
    den = np.sqrt(np.abs(sx).sum() * np.abs(sy).sum(axis=1))
    out = np.where(den > 0, (sy * sx).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return out if np.ndim(y) == 2 else out[0]


def tau_bound(x: np.ndarray, y: np.ndarray) -> float:
    """The most |tau_b| can be with the ties of ``x`` and ``y``: min(n_x, n_y) / sqrt(n_x n_y), n_x and n_y the
    pairs untied in each (the numerator counts pairs untied in both); 1 without ties."""
    i, j = np.triu_indices(len(x), 1)
    nx = float(np.sum(np.asarray(x)[i] != np.asarray(x)[j]))
    ny = float(np.sum(np.asarray(y)[i] != np.asarray(y)[j]))
    return min(nx, ny) / np.sqrt(nx * ny) if nx and ny else float("nan")


def permutation_p(x: np.ndarray, y: np.ndarray, perms: int = PERMS) -> float:
    """Two-sided permutation p of tau_b(x, y) under no association: (1 + #{|tau| >= |observed|}) / (1 + perms)
    over ``perms`` random orders of ``y`` (seeded)."""
    observed = tau_b(x, y)
    if not np.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(0)
    shuffled = np.array([rng.permutation(np.asarray(y, dtype=float)) for _ in range(perms)])
    return float((1 + np.sum(np.abs(tau_b(x, shuffled)) >= abs(observed) - 1e-12)) / (1 + perms))


def run_references(run: Run) -> list[sources.ReferenceRanks]:
    return sources.parse(run.grid.get("reference_ranks"), f"{run.dir / 'grid.toml'}")


def agreement(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, ranks): one summary row per reference and dataset (``tau_b`` and its ``bound``, the seed range
    ``tau_lo``/``tau_hi`` and how many resamples had no tau (``untied_out``), ``seed_tau_min``/``seed_tau_max``,
    ``p_perm``, the arms compared and the source's arms the run lacks, or ``problem``), and one ranks row per
    reference, dataset and arm both rank (``published``, ``here``, its seed range ``here_lo``/``here_hi``)."""
    if "reference_ranks" not in run.cache:
        run.cache["reference_ranks"] = _agreement(run)
    return run.cache["reference_ranks"]


def _agreement(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    refs, table = run_references(run), ranking.ranking(run)
    if not refs or not len(table):
        return pd.DataFrame(), pd.DataFrame()
    pair = ranking.metrics_of(run)
    settings = [c for c in table.columns if ":" in c]
    summary, ranks = [], []
    for ds, part in table.groupby("dataset", sort=False):
        labels = part["label"].tolist()
        cubes = ranking.seed_cubes(run, pair, ds, labels, settings)
        present = [c for c in settings if part[c].notna().any()]  # this dataset's settings (another may have more)
        for k, ref in enumerate(refs, 1):
            row, arms = _compare(k, ref, ds, labels, settings, present, cubes)
            summary.append(row)
            ranks += arms
    return pd.DataFrame(summary), pd.DataFrame(ranks)


def _compare(k: int, ref: sources.ReferenceRanks, ds: str, labels: list[str], settings: list[str], present: list[str],
             cubes: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict, list[dict]]:
    """One reference on one dataset (module docstring): the point from the seeds' means, the range from the seed
    resamples and from each seed alone, all with the fronts sorted among the arms both rank. ``settings``: the
    columns of the cubes; ``present``: those the dataset has."""
    given = ref.as_dict()
    shared = [lb for lb in labels if lb in given]
    row = {"reference": k, "dataset": ds, "source": ref.source, "over": ",".join(ref.over), "setting": ref.setting,
           "arms": len(shared), "lacking": ", ".join(lb for lb in given if lb not in labels), "tau_b": np.nan,
           "bound": np.nan, "tau_lo": np.nan, "tau_hi": np.nan, "untied_out": 0, "seed_tau_min": np.nan,
           "seed_tau_max": np.nan, "p_perm": np.nan, "problem": ""}
    missing = [x for x in ref.over if x not in present]
    row["problem"] = (f"the run has no {join(missing)} on {ds}" if missing else
                      f"only {plural(len(shared), 'arm')} of the run in the source's ranking (3 needed)"
                      if len(shared) < 3 else "the rows hold no per-seed scores" if cubes is None else "")
    if row["problem"]:
        return row, []
    cols = [settings.index(x) for x in ref.over]
    a, b = (c[[labels.index(lb) for lb in shared]][:, cols] for c in cubes)  # shared arms x over x seeds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an arm with no score in a setting: NaN, its last front
        here = ranking.setting_fronts(np.nanmean(a, axis=2), np.nanmean(b, axis=2)).mean(axis=1)
    draws = ranking.seed_fronts(a, b).mean(axis=2)  # boot x shared arms
    x = np.array([given[lb] for lb in shared])
    taus = tau_b(x, draws)
    alone = [tau_b(x, ranking.average_rank(a[:, :, s], b[:, :, s])) for s in range(a.shape[2])
             if np.isfinite(a[:, :, s]).all() and np.isfinite(b[:, :, s]).all()]
    alone = [t for t in alone if np.isfinite(t)]
    row.update(tau_b=float(tau_b(x, here)), bound=tau_bound(x, here), p_perm=permutation_p(x, here),
               untied_out=int(np.sum(~np.isfinite(taus))))
    if np.isfinite(taus).any():
        row.update(tau_lo=float(np.percentile(taus[np.isfinite(taus)], 2.5)),
                   tau_hi=float(np.percentile(taus[np.isfinite(taus)], 97.5)))
    if alone:
        row.update(seed_tau_min=float(min(alone)), seed_tau_max=float(max(alone)))
    lo, hi = np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)
    arms = [{"reference": k, "dataset": ds, "label": lb, "published": given[lb], "here": here[i],
             "here_lo": lo[i], "here_hi": hi[i]} for i, lb in enumerate(shared)]
    return row, arms


def between_sources(ranks: pd.DataFrame) -> list[tuple[int, int, str, float, int]]:
    """(i, j, dataset, tau_b, arms) of every two references' own published ranks over the arms both rank and the run
    trains: how far the source's columns agree with one another."""
    out = []
    for ds, part in ranks.groupby("dataset", sort=False):
        by = {k: g.set_index("label")["published"] for k, g in part.groupby("reference")}
        for i, j in ((i, j) for i in by for j in by if i < j):
            arms = [lb for lb in by[i].index if lb in by[j].index]
            if len(arms) >= 3:
                out.append((i, j, ds, float(tau_b(by[i][arms].to_numpy(), by[j][arms].to_numpy())), len(arms)))
    return out


def section(run: Run) -> str:
    """Markdown for the ranking section ("" where the grid states no reference ranks or the run has no ranking);
    writes ``tables/reference_ranks.csv``."""
    summary, ranks = agreement(run)
    if not len(summary):
        return ""
    write_text_atomic(run.dir / "tables" / f"{TABLE}.csv",
                      (ranks.merge(summary.drop(columns=["setting", "problem"]), on=["reference", "dataset"])
                       if len(ranks) else summary).to_csv(index=False))
    out = ["### Against published rankings",
           "Each source's ranks beside this run's average front over the settings named, the fronts sorted as above "
           "(means over seeds) among the arms the source ranks. Only the order is compared: Kendall's tau-b over the "
           "arms both rank (1: the same order, 0: no association, -1: reversed), with the most it can be given the "
           "ties of the fronts. The published ranks are taken as exact; the run's side varies with its seeds: tau_b's "
           "95% range over the seed resamples above and from each seed alone, and a two-sided permutation p of no "
           f"association ({PERMS} orders) (`bench/report/reference_ranks.py`; `tables/{TABLE}.csv`).", "",
           "| # | dataset | source | settings here | arms | tau_b (bound with ties) | 95% range, seed resamples | "
           "one seed alone | p (permutation) |", "|---:|---|---|---|---:|---:|---|---|---:|"]
    out += [_summary_line(r) for _, r in summary.iterrows()] + [""]
    for lacking, part in summary[summary["lacking"] != ""].drop_duplicates("reference").groupby("lacking", sort=False):
        refs = part["reference"].tolist()
        out.append(f"{'Source' if len(refs) == 1 else 'Sources'} {join([str(k) for k in refs])} also "
                   f"{'ranks' if len(refs) == 1 else 'rank'} {md_escape(lacking)}, which this run does not train.")
    ranked = set(ranks["label"]) if len(ranks) else set()
    extra = [lb for lb in ranking.ranking(run)["label"].drop_duplicates() if lb not in ranked]
    if extra and len(ranks):
        out.append(f"This run's {md_escape(join(extra))} {'is' if len(extra) == 1 else 'are'} in no source's ranking: "
                   f"the ranks here are fronts sorted again among the arms a source ranks.")
    scale = between_sources(ranks) if len(ranks) else []
    if scale:
        out.append("For scale, the sources' own ranks agree with one another by tau_b = "
                   + join([f"{t:.2f} ({i} and {j}{f', {ds}' if len(set(x[2] for x in scale)) > 1 else ''}, {n} arms)"
                           for i, j, ds, t, n in scale]) + ".")
    for _, r in summary[summary["setting"] != ""].drop_duplicates("reference").iterrows():
        out.append(f"*Differences of setting ({r['reference']})*: {md_escape(r['setting'])}")
    if len(ranks):
        out += ["", _ranks_table(ranks)]
    return "\n".join(out).strip()


def _summary_line(r: pd.Series) -> str:
    head = (f"| {r['reference']} | {md_escape(r['dataset'])} | {md_escape(r['source'])} | "
            f"{', '.join(f'`{x}`' for x in r['over'].split(','))} | ")
    if r["problem"]:
        return head + f"– | – | – | – | {md_escape(r['problem'])} |"
    if not np.isfinite(r["tau_b"]):
        return head + f"{r['arms']} | – | – | – | the run ties every arm compared |"
    spread = f"{r['tau_lo']:.2f} to {r['tau_hi']:.2f}" if np.isfinite(r["tau_lo"]) else "–"
    spread += f" ({r['untied_out']} resamples tie every arm)" if r["untied_out"] else ""
    alone = f"{r['seed_tau_min']:.2f} to {r['seed_tau_max']:.2f}" if np.isfinite(r["seed_tau_min"]) else "–"
    p = "< 0.001" if r["p_perm"] < 0.001 else f"{r['p_perm']:.3f}"
    return head + f"{r['arms']} | {r['tau_b']:.2f} ({r['bound']:.2f}) | {spread} | {alone} | {p} |"


def _ranks_table(ranks: pd.DataFrame) -> str:
    """Arms x references: the published rank, then this run's (with its seed range)."""
    refs = sorted(ranks["reference"].unique())
    lines = []
    for ds, part in ranks.groupby("dataset", sort=False):
        lines += [f"{ds}, published rank / rank here (95% range, seed resamples):", "",
                  "| arm | " + " | ".join(f"source {k}" for k in refs) + " |", "|---|" + "---:|" * len(refs)]
        for lb in dict.fromkeys(part["label"]):
            cells = []
            for k in refs:
                r = part[(part["label"] == lb) & (part["reference"] == k)]
                if not len(r):
                    cells.append("–")
                    continue
                r = r.iloc[0]
                spread = f" ({r['here_lo']:.2f}-{r['here_hi']:.2f})" if np.isfinite(r["here_lo"]) else ""
                cells.append(f"{r['published']:.2f} / {r['here']:.2f}{spread}")
            lines.append(f"| {md_escape(lb)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).strip()


def plot_references(run: Run, out_dir: Path) -> Plot | None:
    """Per reference and dataset, the run's rank against the source's, one point per arm with its seed range."""
    summary, ranks = agreement(run)
    if not len(ranks):
        return None
    panels = summary[summary["problem"] == ""].reset_index(drop=True)
    with theme():
        fig, axes = figure(1, len(panels), 3.4, 3.2)
        for ax, (_, s) in zip(axes[0], panels.iterrows()):
            part = ranks[(ranks["reference"] == s["reference"]) & (ranks["dataset"] == s["dataset"])]
            err = np.vstack([part["here"] - part["here_lo"], part["here_hi"] - part["here"]])
            ax.errorbar(part["published"], part["here"], yerr=None if np.isnan(err).any() else err, fmt="o", ms=4,
                        capsize=2, color="C0")
            _annotate(ax, part)
            ax.set_xlabel("published rank")
            ax.set_ylabel("rank here")
            ax.set_title(f"source {s['reference']} ({s['dataset']}, {s['over'].replace(',', ', ')}):\n"
                         + (f"tau_b = {s['tau_b']:.2f} (bound {s['bound']:.2f})" if np.isfinite(s["tau_b"])
                            else "no order: every arm tied"), fontsize=8)
        png = save(fig, out_dir / "reference_ranks.png")
    return Plot(png, "Each arm's rank here (average front over the settings named, means over seeds; bars: 95% range "
                     "over seed resamples) against the published rank of the same formulation, one panel per source: "
                     + "; ".join(f"{s['reference']}: {s['source']}" for _, s in panels.drop_duplicates('reference').iterrows())
                     + ". Points on a rising line: the same order.")


def _annotate(ax, part: pd.DataFrame) -> None:
    """Label each point, stacking the labels of points that lie close together instead of printing them over one
    another."""
    xspan = max(np.ptp(part["published"]), 1.0)
    placed: list[tuple[float, float]] = []
    for _, r in part.sort_values(["here", "published"]).iterrows():
        near = sum(abs(x - r["published"]) < 0.15 * xspan and abs(y - r["here"]) < 0.3 for x, y in placed)
        ax.annotate(r["label"], (r["published"], r["here"]), fontsize=6, xytext=(3, 2 + 7 * near),
                    textcoords="offset points")
        placed.append((r["published"], r["here"]))
