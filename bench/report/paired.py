"""Paired comparisons of a run's arms (DESIGN.md section 5): the numbers behind the report's words.

For every dataset x evaluation (sampler, sample_steps) x metric, the scores of the seeds that
finished (status ok, a finite value) are compared with ``bench.scoring.stats``, pairing arms by training
seed (same initial weights, batches, noise draws and image seeds):

- every pair of arms (``stats.all_pairs``): ``tables/paired_<metric>.csv``;
- each arm against the best arm (``stats.compare``): ``tables/paired_<metric>.md`` (embedded in
  REPORT.md), the result sentences (``stats.describe_row``), the seed planner and the forest plot;
- for those comparisons, where per-image features and reference statistics were kept, a second
  interval from the two-level bootstrap (``bench.report.perimage.bootstrap_vs_best``): boot_lo, boot_hi.

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

from bench.report.perimage import BOOT_LEVEL, N_BOOT, NO_PER_IMAGE, boot_reason, bootstrap_vs_best, has_per_image
from bench.report.tables import Run, datasets_with, direction, higher_is_better, md_escape, plural
from bench.scoring import stats

#: the columns of tables/paired_<metric>.csv: where, then ``stats.COLUMNS`` (p_holm over every pair of
#: the dataset x evaluation x metric), then vs_best (reference is the best arm), p_holm_vs_best (Holm
#: over the comparisons with the best only; NaN on the other pairs), holm_m (p-values in p_holm's
#: family) and seeds_10pct (seeds for 80% power at alpha 0.05 to detect 10% of |mean_ref|, given sd).
#: boot_lo, boot_hi: the two-level bootstrap interval of the comparisons with the best arm, where the
#: metric can be recomputed from the run's per-image data (``bench.report.perimage``; NaN otherwise).
CSV_COLUMNS = ["metric", "dataset", "sampler", "sample_steps", *stats.COLUMNS, "vs_best", "p_holm_vs_best",
               "holm_m", "seeds_10pct", "boot_lo", "boot_hi", "r_seeds"]


def seed_correlation(df: pd.DataFrame, arm: str, reference: str) -> float:
    """Pearson's r of two arms' scores over the seeds both have (``scores``' frame; NaN below 3 seeds or with
    no spread): how much of the seed-to-seed spread the pair shares, which pairing removes. Arms that draw
    their minibatches alike share more of it (the report's Method says which do)."""
    wide = df.pivot_table(index="seed", columns="label", values="value").reindex(columns=[arm, reference]).dropna()
    if len(wide) < 3 or (wide.std() == 0).any():
        return float("nan")
    return float(np.corrcoef(wide[arm], wide[reference])[0, 1])


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
    pairs["boot_lo"] = pairs["boot_hi"] = np.nan
    if boot_reason(metric) is None and len(best):
        boot, _ = bootstrap_vs_best(run, metric, dataset, ev, str(best["reference"].iloc[0]), [str(a) for a in best["arm"]])
        for col, i in (("boot_lo", 0), ("boot_hi", 1)):
            pairs.loc[pairs["vs_best"], col] = pairs.loc[pairs["vs_best"], "arm"].map(lambda a, i=i: boot[str(a)][i])
    pairs["r_seeds"] = [seed_correlation(df, a, r) for a, r in zip(pairs["arm"], pairs["reference"])]
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
    lo, hi = row.get("boot_lo", np.nan), row.get("boot_hi", np.nan)
    if np.isfinite(lo) and np.isfinite(hi):
        t_covers, b_covers = bool(row["lo"] <= 0 <= row["hi"]), bool(lo <= 0 <= hi)
        text += (f"; the two-level bootstrap over seeds and images puts {row['arm']} - {row['reference']} in "
                 f"{boot_text(row)}")
        if np.isfinite(row["lo"]) and t_covers != b_covers:
            text += (", which covers 0: with the images' sampling noise included the difference is not resolved"
                     if b_covers else ", which excludes 0")
    return text


def boot_text(row) -> str:
    """'[27, 85]': the bootstrap interval of a comparison (decimals from its own width), or '—'."""
    lo, hi = row.get("boot_lo", np.nan), row.get("boot_hi", np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    _, a, b = stats.fmt_interval(row["diff"], lo, hi)
    return f"[{a}, {b}]"


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


def caption(metric: str, run: Run | None = None) -> str:
    """What the comparison tables of ``metric`` show (one caption above its tables); ``run``: to say
    when it has no per-image data at all."""
    return (f"{metric} ({direction(metric)}): each arm minus the best arm of its dataset and evaluation, paired over "
            f"the training seeds both finished (n); diff: the mean paired difference with its 95% t-interval "
            f"(df = n - 1); p: two-sided paired t; Holm p: Holm's correction across the comparisons of one table "
            f"(one dataset x evaluation x metric), counted as every pair of its arms (the best arm is chosen from "
            f"these same scores, so any pair could have been a comparison with the best); seeds for 80% power: to "
            f"detect the observed difference at alpha = 0.05 (two-sided paired t)." + boot_caption(metric, run))


def boot_caption(metric: str, run: Run | None = None) -> str:
    """What the bootstrap column is (metrics recomputable from per-image data), or why there is none."""
    why = boot_reason(metric)
    if why is not None:
        return f" No bootstrap interval for {metric}: {why}."
    if run is not None and not has_per_image(run):
        return (f" Bootstrap 95%: empty (—) throughout: {NO_PER_IMAGE}, so the two-level bootstrap of DESIGN.md "
                f"section 5 (seeds, then images) cannot be recomputed from it; the t-intervals stand alone.")
    return (f" Bootstrap 95%: a second interval for the difference, from a two-level percentile bootstrap "
            f"(DESIGN.md section 5; `bench.scoring.stats.bootstrap_two_level`, n_boot = {N_BOOT}): the seeds both arms finished "
            f"are resampled, then within each the generated images, with the same image indices in both arms (image i "
            f"has the same seed in every arm), and {metric} is recomputed from the resampled per-image features "
            f"(float16, per_image/) against the reference mean and covariance (references/). It includes the "
            f"sampling noise of the generated images. With 3-5 seeds read it as indicative: the percentile bootstrap "
            f"under-covers when the seed-to-seed spread dominates (77% with 3 seeds, 85% with 5 in the simulations "
            f"of `bench/scoring/stats.py`); resampling with replacement repeats images, which raises each Fréchet distance by "
            f"a similar amount in both arms.")


def block_head(dataset: str, ev: tuple[str, int], best: pd.DataFrame) -> str:
    """The heading of one table: where, the best arm, and the size of its Holm family."""
    r = best.iloc[0]
    return (f"**{md_escape(dataset)}, `{ev[0]}:{ev[1]}`**: best arm {md_escape(r['reference'])}; Holm over the "
            f"{plural(int(r['holm_m']), 'pair')} of its {len(best) + 1} arms with a p-value:")


def markdown(run: Run, metric: str, table: pd.DataFrame | None = None) -> str:
    """The comparisons with the best arm of ``metric``: a caption, then one Markdown table per dataset x evaluation."""
    table = paired_table(run, metric) if table is None else table
    boot = boot_reason(metric) is None  # a bootstrap column where the metric could have one
    out = [f"*{md_escape(caption(metric, run))}*", ""]
    for ds in datasets_with(run, metric):
        for ev in run.evals:
            best = vs_best(table, ds, ev)
            if not len(best):
                out += [f"**{md_escape(ds)}, `{ev[0]}:{ev[1]}`**: fewer than two arms have a value: nothing to compare.", ""]
                continue
            head = "| arm | vs best | n | diff [95% CI] | p | Holm p | seeds for 80% power |"
            out += [block_head(ds, ev, best), "", head + (f" bootstrap {BOOT_LEVEL:.0%} |" if boot else ""),
                    "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if boot else "")]
            out += ["| " + " | ".join(md_escape(x) for x in (r["arm"], r["reference"], int(r["n"]), diff_text(r),
                                                             stats.fmt_p(r["p"]), stats.fmt_p(r["p_holm"]),
                                                             fmt_seeds(r["seeds_80"]), *([boot_text(r)] if boot else [])))
                    + " |" for _, r in best.iterrows()]
            if boot:
                _, notes = bootstrap_vs_best(run, metric, ds, ev, str(best["reference"].iloc[0]), [str(a) for a in best["arm"]])
                notes = [n for n in notes if n != NO_PER_IMAGE]  # said once, in the caption
                if notes:
                    out += ["", "No bootstrap interval where the column shows —: " + "; ".join(md_escape(n) for n in notes) + "."]
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
