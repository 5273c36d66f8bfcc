"""Paired comparisons of a run's arms (DESIGN.md section 5): the numbers behind the report's words.

For every dataset x evaluation (sampler, sample_steps) x metric, the scores of the seeds that
finished (status ok, a finite value) are compared with ``bench.stats``, pairing arms by training
seed (same initial weights, batches, noise draws and image seeds):

- every pair of arms (``stats.all_pairs``): ``tables/paired_<metric>.csv``;
- each arm against the best arm (``stats.compare``): ``tables/paired_<metric>.md`` (embedded in
  REPORT.md), the result sentences (``stats.describe_row``), the seed planner and the forest plot.

Holm: the best arm is picked from the same scores it is then compared on, so any pair could have
become a "vs best" comparison. The Holm-adjusted p shown with a comparison is therefore Holm over
every pair of arms of its dataset x evaluation x metric (``p_holm``, as ``all_pairs`` computes it),
which controls the family-wise error rate over any subset shown. Holm over the k - 1 comparisons with
the best alone (``compare``'s, smaller: it treats the reference as fixed in advance) is kept in the
CSV as ``p_holm_vs_best``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench import stats
from bench.report.tables import Run, datasets_with, direction, higher_is_better, md_escape, plural

#: the columns of tables/paired_<metric>.csv: where, then ``stats.COLUMNS`` (p_holm over every pair of
#: the dataset x evaluation x metric), then vs_best (reference is the best arm), p_holm_vs_best (Holm
#: over the comparisons with the best only; NaN on the other pairs), holm_m (p-values in p_holm's
#: family) and seeds_10pct (seeds for 80% power at alpha 0.05 to detect 10% of |mean_ref|, given sd).
CSV_COLUMNS = ["metric", "dataset", "sampler", "sample_steps", *stats.COLUMNS, "vs_best", "p_holm_vs_best",
               "holm_m", "seeds_10pct"]


def scores(run: Run, metric: str, dataset: str, ev: tuple[str, int]) -> pd.DataFrame:
    """label, seed, value: the finite scores of ``metric`` of the finished trials on ``dataset`` at ``ev``."""
    r = run.rows
    if metric not in r.columns:
        return pd.DataFrame(columns=["label", "seed", "value"])
    sel = (r["dataset"] == dataset) & (r["sampler"] == ev[0]) & (r["sample_steps"] == ev[1]) & (r["status"] == "ok")
    out = pd.DataFrame({"label": r.loc[sel, "label"], "seed": r.loc[sel, "seed"],
                        "value": pd.to_numeric(r.loc[sel, metric], errors="coerce")})
    return out[np.isfinite(out["value"].astype(float))].reset_index(drop=True)


def one_table(run: Run, metric: str, dataset: str, ev: tuple[str, int]) -> pd.DataFrame:
    """Every pair of arms of one dataset x evaluation x metric, with ``CSV_COLUMNS`` (empty with fewer
    than two arms): diff = arm - reference, reference the better-ranked arm of the pair."""
    df, hib = scores(run, metric, dataset, ev), higher_is_better(metric)
    if df["label"].nunique() < 2:
        return pd.DataFrame(columns=CSV_COLUMNS)
    pairs = stats.all_pairs(df, "label", "seed", "value", hib)
    best = stats.compare(df, "label", "seed", "value", hib)
    pairs["vs_best"] = pairs["reference"] == best["reference"].iloc[0]
    pairs["p_holm_vs_best"] = pairs["arm"].map(best.set_index("arm")["p_holm"]).where(pairs["vs_best"])
    pairs["holm_m"] = int(pairs["p"].notna().sum())
    pairs["seeds_10pct"] = [float(stats.seeds_needed(0.1 * abs(m), sd)) for m, sd in zip(pairs["mean_ref"], pairs["sd"])]
    pairs = pairs.assign(metric=metric, dataset=dataset, sampler=ev[0], sample_steps=int(ev[1]))
    return pairs[CSV_COLUMNS]


def paired_table(run: Run, metric: str) -> pd.DataFrame:
    """``one_table`` of every dataset (with a value of ``metric``) x evaluation, in report order."""
    parts = [one_table(run, metric, ds, ev) for ds in datasets_with(run, metric) for ev in run.evals]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CSV_COLUMNS)


def vs_best(table: pd.DataFrame, dataset: str, ev: tuple[str, int]) -> pd.DataFrame:
    """The rows of ``table`` that compare an arm with the best arm, at ``dataset`` and ``ev``."""
    sel = (table["dataset"] == dataset) & (table["sampler"] == ev[0]) & (table["sample_steps"] == ev[1])
    return table[sel & table["vs_best"].astype(bool)]


# --- words -------------------------------------------------------------------------------------------
def sentence(row, metric: str) -> str:
    """``stats.describe_row`` of a comparison, with the Holm caveat where p < 0.05 <= Holm p."""
    if int(row["n"]) == 0:
        return f"{row['arm']} and {row['reference']} have no finished seed in common: no paired comparison"
    text = stats.describe_row(row, higher_is_better=higher_is_better(metric))
    if row["p"] < 0.05 <= row["p_holm"]:
        text += f"; not significant after Holm's correction over {plural(int(row['holm_m']), 'comparison')}"
    return text


def fmt_seeds(x) -> str:
    """A number of seeds: "—" where there is none to give (fewer than 2 paired seeds), "> 100000" where
    even that many would not reach the power (e.g. a difference of exactly 0)."""
    x = float(x)
    return "—" if math.isnan(x) else "> 100000" if math.isinf(x) else str(int(x))


def diff_text(row) -> str:
    """'56 [29, 83]' (difference and 95% interval, common decimals), or the difference alone."""
    if int(row["n"]) == 0:
        return "— (no seed in common)"
    if not (np.isfinite(row["lo"]) and np.isfinite(row["hi"])):
        return f"{stats.fmt(row['diff'])} (no interval: {plural(int(row['n']), 'seed')})"
    return "{} [{}, {}]".format(*stats.fmt_interval(row["diff"], row["lo"], row["hi"]))


def caption(metric: str) -> str:
    """What the comparison tables of ``metric`` show (one caption above its tables)."""
    return (f"{metric} ({direction(metric)}): each arm minus the best arm of its dataset and evaluation, paired over "
            f"the training seeds both finished (n); diff: the mean paired difference with its 95% t-interval "
            f"(df = n - 1); p: two-sided paired t; Holm p: Holm's correction across the comparisons of one table "
            f"(one dataset x evaluation x metric), counted as every pair of its arms (the best arm is chosen from "
            f"these same scores, so any pair could have been a comparison with the best); seeds for 80% power: to "
            f"detect the observed difference at alpha = 0.05 (two-sided paired t).")


def block_head(dataset: str, ev: tuple[str, int], best: pd.DataFrame) -> str:
    """The heading of one table: where, the best arm, and the size of its Holm family."""
    r = best.iloc[0]
    return (f"**{md_escape(dataset)}, `{ev[0]}:{ev[1]}`**: best arm {md_escape(r['reference'])}; Holm over the "
            f"{plural(int(r['holm_m']), 'pair')} of its {len(best) + 1} arms with a p-value:")


def markdown(run: Run, metric: str, table: pd.DataFrame | None = None) -> str:
    """The comparisons with the best arm of ``metric``: a caption, then one Markdown table per dataset x evaluation."""
    table = paired_table(run, metric) if table is None else table
    out = [f"*{md_escape(caption(metric))}*", ""]
    for ds in datasets_with(run, metric):
        for ev in run.evals:
            best = vs_best(table, ds, ev)
            if not len(best):
                out += [f"**{md_escape(ds)}, `{ev[0]}:{ev[1]}`**: fewer than two arms have a value: nothing to compare.", ""]
                continue
            out += [block_head(ds, ev, best), "", "| arm | vs best | n | diff [95% CI] | p | Holm p | seeds for 80% power |",
                    "|---|---|---:|---:|---:|---:|---:|"]
            out += ["| " + " | ".join(md_escape(x) for x in (r["arm"], r["reference"], int(r["n"]), diff_text(r),
                                                             stats.fmt_p(r["p"]), stats.fmt_p(r["p_holm"]),
                                                             fmt_seeds(r["seeds_80"]))) + " |"
                    for _, r in best.iterrows()]
            out.append("")
    return "\n".join(out).strip() if len(out) > 2 else f"No values of {metric}: no comparisons."


def write_paired(run: Run, out_dir) -> dict[str, pd.DataFrame]:
    """tables/paired_<metric>.csv (every pair) and .md (comparisons with the best arm) for every metric
    of the run; returns {metric: its ``paired_table``} for the words, the planner and the plots."""
    from pathlib import Path

    from bench.files import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {m: paired_table(run, m) for m in run.metrics}
    for m, table in tables.items():
        write_text_atomic(out_dir / f"paired_{m}.csv", table.to_csv(index=False))
        write_text_atomic(out_dir / f"paired_{m}.md", markdown(run, m, table) + "\n")
    return tables
