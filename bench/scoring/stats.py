"""Comparing arms: the statistics every report uses (DESIGN.md section 5).

The unit of replication is the training seed. Arms with the same seed share initial weights,
batches, timesteps, noise draws and image seeds, so their per-seed scores are strongly correlated
and the right comparison is the **paired per-seed difference**, never whether mean ± std ranges
overlap. This module is a leaf (numpy, scipy, pandas only):

- ``paired``: mean paired difference, its t-interval (df = n - 1) and two-sided paired p;
- ``holm``: Holm-Bonferroni adjusted p-values over the comparisons shown together;
- ``power_paired`` / ``seeds_needed``: the seed planner (exact power of the paired t, noncentral t);
- ``compare`` / ``all_pairs``: every arm against the best arm, or every pair, of a long table;
- ``bootstrap_two_level``: a second interval that includes sampling noise where per-image data exist;
- ``fmt`` / ``describe``: the words that follow the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = ["Paired", "paired", "holm", "power_paired", "seeds_needed", "compare", "all_pairs", "COLUMNS",
           "Bootstrap", "bootstrap_two_level", "fmt", "fmt_p", "fmt_interval", "describe", "describe_row"]

#: columns of ``compare`` / ``all_pairs`` (``sd`` is the sd of the paired differences, for planning
#: the seeds needed to detect a difference other than the observed one).
COLUMNS = ["arm", "reference", "n", "mean_a", "mean_ref", "diff", "lo", "hi", "p", "p_holm", "seeds_80", "sd"]


# --- paired t ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paired:
    """A paired comparison of arm a against arm b: d_s = a_s - b_s over the n seeds both have."""

    n: int
    mean: float  # mean of d
    sd: float  # sd of d, ddof = 1
    lo: float  # t-interval: mean ± t_{1-(1-level)/2, n-1} · sd / sqrt(n)
    hi: float
    p: float  # two-sided paired t p-value
    diffs: tuple[float, ...]
    level: float = 0.95


def paired(a, b, level: float = 0.95) -> Paired:
    """Paired t comparison of two arms scored on the same seeds, in the same order.

    d = a - b; mean and sd (ddof = 1) of d; t = mean / (sd / sqrt(n)) with df = n - 1;
    interval mean ± t.ppf(1 - (1 - level) / 2, n - 1) · sd / sqrt(n); p = 2 · t.sf(|t|, n - 1).
    Equal to ``scipy.stats.ttest_rel(a, b)`` (Student 1908; any statistics text, e.g. Casella &
    Berger, Statistical Inference, 9.2.2) wherever that is defined.

    A seed with a non-finite score in either arm is left out of both (it cannot be paired).
    Degenerate cases, where scipy returns nan or warns: n = 0 gives nan everywhere; n = 1 gives the
    single difference as the mean and nan for sd, interval and p (one seed carries no spread);
    sd = 0 (all differences identical, n >= 2) collapses the interval to [mean, mean] with p = 0 if
    mean != 0 and p = 1 if mean == 0 (the limits of the t-test as sd -> 0).
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired needs the same seeds in both arms: {a.size} vs {b.size} scores")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n, nan = int(d.size), float("nan")
    diffs = tuple(float(x) for x in d)
    if n < 2:
        return Paired(n, float(d[0]) if n else nan, nan, nan, nan, nan, diffs, level)
    mean = float(d.mean())
    if np.ptp(d) == 0:  # exactly identical differences: sd is 0, not 1e-17 from rounding
        return Paired(n, mean, 0.0, mean, mean, 0.0 if mean != 0 else 1.0, diffs, level)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * _st.t.sf(abs(mean) / se, n - 1))
    return Paired(n, mean, sd, mean - half, mean + half, p, diffs, level)


# --- multiplicity ------------------------------------------------------------------------------------
def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70).

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m):
    adj_(i) = min(1, max_{j <= i} (m - j + 1) · p_(j)), returned in the input order. Step-down and
    monotone in the sorted order; rejecting adj <= alpha controls the family-wise error rate at alpha
    under any dependence (the arms share seeds, so their comparisons are dependent). NaNs are passed
    through untouched and do not count in m (a comparison that could not be made is not one of the
    family). Equal to statsmodels' ``multipletests(p, method="holm")[1]`` on finite input.
    """
    p = np.asarray(pvalues, dtype=float)
    out = p.copy()
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


# --- seed planner ------------------------------------------------------------------------------------
def power_paired(n: int, diff: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level alpha with n seeds, true mean difference diff
    and sd of the paired differences sd.

    Exact: T = mean(d) / (s / sqrt(n)) is noncentral t with df = n - 1 and noncentrality
    delta = sqrt(n) · diff / sd, so power = P(T > c) + P(T < -c) with c = t.ppf(1 - alpha/2, n - 1)
    (e.g. Cohen 1988, Statistical Power Analysis, ch. 2; what G*Power computes for "means: difference
    between two dependent means").
    """
    if n < 2:
        return float("nan")
    if sd == 0:
        return 1.0 if diff != 0 else alpha
    df = n - 1
    c = _st.t.ppf(1 - alpha / 2, df)
    nc = math.sqrt(n) * abs(diff) / sd
    upper, lower = float(_st.nct.sf(c, df, nc)), float(_st.nct.cdf(-c, df, nc))
    # scipy's nct returns nan deep in a tail (e.g. cdf(-c) at df = 99, nc = 10, a value below 1e-27):
    # the lower tail is at most alpha / 2 and vanishes as nc grows; the upper tail is then ~1.
    if math.isnan(lower) and nc > c:
        lower = 0.0
    if math.isnan(upper) and nc > c + 10:
        upper = 1.0
    return upper + lower


def seeds_needed(diff: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                 max_n: int = 100_000) -> float:
    """The smallest n >= 2 seeds for which the two-sided paired t at level alpha has power >= ``power``
    to detect a true mean difference ``diff`` given the sd ``sd`` of the paired differences
    (``power_paired``; power increases with n, so a bisection finds it).

    Returns an int-valued number of seeds; ``math.inf`` when even ``max_n`` seeds do not reach the
    power (in particular diff = 0: no number of seeds detects no difference); nan when diff or sd is
    nan (e.g. sd from a single seed). sd = 0 with diff != 0 needs the minimum, 2. For reference, with
    d = diff / sd: d = 0.5 -> 34, d = 1 -> 10, d = 0.2 -> 199 (the G*Power / Cohen table values).
    """
    if not (0 < alpha < 1 and 0 < power < 1) or max_n < 2:
        raise ValueError(f"need alpha, power in (0, 1) and max_n >= 2, got {alpha}, {power}, {max_n}")
    if math.isnan(diff) or math.isnan(sd):
        return float("nan")
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    # doubling, then bisection (power increases with n); the doubling keeps nct away from the far
    # tails where it loses accuracy, since it stops at the first n that reaches the power
    hi = 2
    while power_paired(hi, diff, sd, alpha) < power:
        if hi >= max_n:
            return math.inf
        hi = min(2 * hi, max_n)
    lo = max(1, hi // 2)  # power(lo) < power, or lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_paired(mid, diff, sd, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# --- tables of comparisons ---------------------------------------------------------------------------
def _wide(df: pd.DataFrame, arm_col: str, seed_col: str, value_col: str) -> pd.DataFrame:
    """seeds x arms; a missing or non-finite score is nan (and therefore left out of any pair)."""
    dup = df.duplicated([arm_col, seed_col])
    if dup.any():
        first = df.loc[dup, [arm_col, seed_col]].iloc[0].tolist()
        raise ValueError(f"more than one {value_col} for ({arm_col}, {seed_col}) = {first}: filter the rows "
                         "to one evaluation before comparing")
    vals = pd.to_numeric(df[value_col], errors="coerce").astype(float)
    wide = pd.DataFrame({arm_col: df[arm_col].values, seed_col: df[seed_col].values, value_col: vals.values})
    return wide.pivot(index=seed_col, columns=arm_col, values=value_col).replace([np.inf, -np.inf], np.nan)


def _ranked(wide: pd.DataFrame, higher_is_better: bool) -> list:
    """Arms best first by their mean over their own seeds; arms without a score last; ties by name."""
    means = wide.mean(axis=0, skipna=True)
    sign = -1.0 if higher_is_better else 1.0
    return sorted(wide.columns, key=lambda arm: (bool(np.isnan(means[arm])),
                                                 sign * means[arm] if not np.isnan(means[arm]) else 0.0,
                                                 str(arm)))


def _row(wide: pd.DataFrame, arm, ref, level: float) -> dict:
    both = wide[[arm, ref]].dropna()
    r = paired(both[arm].to_numpy(), both[ref].to_numpy(), level)
    seeds = seeds_needed(r.mean, r.sd) if r.n >= 2 else float("nan")
    return {"arm": arm, "reference": ref, "n": r.n,
            "mean_a": float(both[arm].mean()) if r.n else np.nan,
            "mean_ref": float(both[ref].mean()) if r.n else np.nan,
            "diff": r.mean, "lo": r.lo, "hi": r.hi, "p": r.p, "p_holm": np.nan, "seeds_80": float(seeds),
            "sd": r.sd}


def _table(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["n"] = out["n"].astype(int)
    out["p_holm"] = holm(out["p"].to_numpy(dtype=float))
    return out.reset_index(drop=True)


def compare(df: pd.DataFrame, arm_col: str, seed_col: str, value_col: str, higher_is_better: bool,
            level: float = 0.95) -> pd.DataFrame:
    """Each arm against the best arm: one row per other arm, with ``COLUMNS``.

    ``df`` is long: one row per (arm, seed) with the score in ``value_col`` (filter it to one dataset x
    evaluation x metric first; a repeated (arm, seed) is an error). The best arm (``reference``) is the
    one with the lowest mean over its seeds, or the highest when ``higher_is_better``; ties go to the
    first name in ``str`` order. Each comparison pairs only the seeds present, with a finite score, in
    both arms (``n``); mean_a and mean_ref are over those paired seeds, so diff = mean_a - mean_ref
    (arm - best). lo, hi: the t-interval of ``paired``; p: paired t; p_holm: Holm over the rows of this
    call; seeds_80: ``seeds_needed(diff, sd)`` for 80% power at alpha = 0.05 (inf when diff = 0, nan
    with fewer than 2 paired seeds); sd: sd of the paired differences. Rows are in rank order (closest
    to the best first), ties by name, so the same data give the same table.
    """
    wide = _wide(df, arm_col, seed_col, value_col)
    ranked = _ranked(wide, higher_is_better)
    if not ranked:
        return _table([])
    best = ranked[0]
    return _table([_row(wide, arm, best, level) for arm in ranked[1:]])


def all_pairs(df: pd.DataFrame, arm_col: str, seed_col: str, value_col: str, higher_is_better: bool,
              level: float = 0.95) -> pd.DataFrame:
    """Every pair of arms once, with the columns and conventions of ``compare``.

    In each pair ``reference`` is the better-ranked arm (so diff = arm - reference points the same
    way as in ``compare``); rows are ordered by the reference's rank, then the arm's; p_holm is Holm
    over all k (k - 1) / 2 pairs of this call.
    """
    wide = _wide(df, arm_col, seed_col, value_col)
    ranked = _ranked(wide, higher_is_better)
    return _table([_row(wide, arm, ref, level) for i, ref in enumerate(ranked) for arm in ranked[i + 1:]])


# --- two-level bootstrap -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    """Two-level bootstrap of the mean over seeds of stat(A, s) - stat(B, s)."""

    estimate: float  # on the data as observed
    lo: float  # percentile interval
    hi: float
    se: float  # sd of the bootstrap replicates
    n_seeds: int
    n_images: int
    n_boot: int
    level: float


def _mean_stat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).mean(axis=1)


def bootstrap_two_level(a, b, stat: Callable | None = None, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0, batched: bool = True, max_elements: int = 1 << 22) -> Bootstrap:
    """Two-level (seeds, then images) percentile bootstrap of a paired difference (DESIGN.md 5).

    ``a``, ``b``: per-image data of two arms, arrays of shape [n_seeds, n_images, ...] in which row s
    is training seed s and image i was generated from the same image seed in both arms (e.g.
    ``per_image[arm]``, ``per_image[reference]``). The quantity is

        theta = mean_s ( stat(a[s, I_s]) - stat(b[s, I_s]) ),

    estimated on the data with I_s = all images. One replicate draws n_seeds seeds with replacement,
    then for each drawn seed n_images image indices I_s with replacement, the SAME indices for both
    arms (common random numbers: the image-seed effect cancels, as it does in the data), and
    evaluates theta. The interval is the (1 - level)/2 and (1 + level)/2 quantiles of the replicates
    (Efron & Tibshirani 1993, ch. 13; resampling clusters then units within them: Davison & Hinkley
    1997, 3.8). It includes the sampling noise of the generated images that a per-seed t-interval
    of whole-set scores carries only through the seed-to-seed spread.

    ``stat``: with ``batched=True`` (default) it maps an array [k, n_images, ...] to k numbers (one
    per resampled image set); with ``batched=False`` it maps one set [n_images, ...] to a float and is
    called n_boot · n_seeds · 2 times. Default: the mean over images (and any trailing axes). A
    Fréchet distance of per-image features against fixed reference statistics fits either form, but
    costs a matrix square root per call: lower ``n_boot`` for large feature dimensions. Replicates
    are evaluated in chunks of at most ~``max_elements`` gathered values per arm.

    Coverage: the percentile interval with few seeds under-covers when the seed-level variance of
    the difference dominates (it uses the seeds' spread with divisor n rather than n - 1 and normal
    rather than t tails); resampling images inside resampled seeds adds the within-seed variance a
    second time, which over-covers when image noise dominates. In simulations (normal seed x arm and
    image x arm effects, 400 runs each) seed-dominated designs gave 77% with 3 seeds, 85% with 5 and
    91% with 10; an image-dominated one 97.5% with 5. The test suite checks coverage in
    [0.90, 0.985] over 400 simulations with 15 seeds x 50 images, where the seed-level variance of
    the mean difference is ~2x the image-level one (observed 0.965). Read intervals from 3-5 seeds
    as indicative, beside the t-interval.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must have the same shape [n_seeds, n_images, ...], got {a.shape}, {b.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    n_seeds, n_images = a.shape[:2]
    stat = _mean_stat if stat is None else stat

    def evaluate(x: np.ndarray) -> np.ndarray:  # [k, n_images, ...] -> [k]
        if batched:
            out = np.asarray(stat(x), dtype=float).reshape(-1)
        else:
            out = np.array([float(stat(xi)) for xi in x])
        if out.shape != (x.shape[0],):
            raise ValueError(f"stat returned {out.shape[0]} values for {x.shape[0]} image sets")
        return out

    estimate = float(np.mean(evaluate(a) - evaluate(b)))
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    img_idx = rng.integers(0, n_images, size=(n_boot, n_seeds, n_images))
    per_rep = a[0].size * n_seeds
    chunk = max(1, max_elements // max(per_rep, 1))
    reps = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        s, i = seed_idx[start:start + chunk, :, None], img_idx[start:start + chunk]
        k = s.shape[0]
        # a[s, i]: [k, n_seeds, n_images, ...] -> k · n_seeds image sets; same (s, i) for both arms
        da = evaluate(a[s, i].reshape(k * n_seeds, n_images, *a.shape[2:]))
        db = evaluate(b[s, i].reshape(k * n_seeds, n_images, *b.shape[2:]))
        reps[start:start + k] = (da - db).reshape(k, n_seeds).mean(axis=1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Bootstrap(estimate, float(lo), float(hi), float(reps.std(ddof=1)) if n_boot > 1 else float("nan"),
                     int(n_seeds), int(n_images), int(n_boot), float(level))


# --- words -------------------------------------------------------------------------------------------
def fmt(x, sig: int = 3) -> str:
    """A number in ``sig`` significant figures, trailing zeros dropped (56.04 -> "56", 0.01304 ->
    "0.013", 1234 -> "1230"); scientific below 1e-3 and from 1e5 in magnitude ("1.23e-05", "2e+05");
    "—" for None / nan."""
    x = float("nan") if x is None else float(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        mantissa, exp = f"{x:.{sig - 1}e}".split("e")
        return f"{_strip(mantissa)}e{exp}"
    decimals = sig - 1 - math.floor(math.log10(abs(x)))
    if decimals <= 0:
        return f"{round(x, decimals):.0f}"
    return _strip(f"{x:.{decimals}f}")


def _strip(s: str) -> str:
    return s.rstrip("0").rstrip(".") if "." in s else s


def fmt_p(p) -> str:
    """A p-value: 2 significant figures ("0.013", "0.05"), "< 0.001" below 0.001, "1" at 1 (Holm caps)."""
    if p is None or math.isnan(p):
        return "—"
    if p < 0.001:
        return "< 0.001"
    return fmt(min(float(p), 1.0), sig=2)


def p_phrase(name: str, p: float) -> str:
    s = fmt_p(p)
    return f"{name} {s}" if s.startswith("<") else f"{name}{' =' if name == 'p' else ''} {s}"


def _interval_formatter(lo: float, hi: float) -> Callable[[float], str]:
    """Formats numbers that go with the interval [lo, hi] with common decimals, enough to show its
    half-width to 2 significant figures: the interval decides how many digits mean something.
    ``fmt`` for a collapsed or non-finite interval, or beyond 6 decimals."""
    half = (hi - lo) / 2
    if not np.isfinite(half) or half <= 0:
        return fmt
    d = max(0, 1 - math.floor(math.log10(half)))
    if d > 6:
        return fmt

    def one(x: float) -> str:
        s = f"{x:.{d}f}"
        return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0"

    return one


def fmt_interval(est: float, lo: float, hi: float) -> tuple[str, str, str]:
    """An estimate and its interval with common decimals (56.04 [28.8, 83.3] -> "56", "29", "83")."""
    f = _interval_formatter(lo, hi)
    return f(est), f(lo), f(hi)


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def describe(arm: str, reference: str, diff: float, lo: float, hi: float, n: int, p: float,
             p_holm: float | None = None, *, higher_is_better: bool) -> str:
    """The sentence that follows a paired comparison (DESIGN.md section 5), diff = arm - reference.

    Interval excludes 0: the better arm first, with the literal direction and which is better,
    "sigmoid is lower (better) than cosine by 56 [29, 83] (paired, 3 seeds, p = 0.013, Holm 0.05)";
    the amount and interval are those of (worse - better), so positive. Interval covers 0: what it
    excludes is the result, "no evidence of a difference between linear and cosine with 3 seeds
    (paired, p = 0.071, Holm 0.21); linear - cosine lies in [-3.1, 12.1]: linear is at most 3.1
    lower (better) and at most 12.1 higher (worse)". Fewer than 2 seeds: the difference and that there is no
    interval. ``p_holm`` None or nan leaves the Holm part out. No final full stop. Never "overlap" or
    "not separated".
    """
    ps = p_phrase("p", p) + (f", {p_phrase('Holm', p_holm)}" if p_holm is not None and not math.isnan(p_holm) else "")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return (f"{arm} - {reference} = {fmt(diff)} with {_seeds(n)}: no interval (a paired interval needs "
                "at least 2 seeds)")
    f = _interval_formatter(lo, hi)
    if lo <= 0 <= hi:
        lower, higher = (("lower (worse)", "higher (better)") if higher_is_better
                         else ("lower (better)", "higher (worse)"))
        return (f"no evidence of a difference between {arm} and {reference} with {_seeds(n)} (paired, {ps}); "
                f"{arm} - {reference} lies in [{f(lo)}, {f(hi)}]: {arm} is at most {f(-lo)} {lower} and at most "
                f"{f(hi)} {higher}")
    arm_better = (diff > 0) == higher_is_better
    better, worse = (arm, reference) if arm_better else (reference, arm)
    amount, l, h = (diff, lo, hi) if diff > 0 else (-diff, -hi, -lo)  # worse - better: positive
    return (f"{better} is {'higher' if higher_is_better else 'lower'} (better) than {worse} by {f(amount)} "
            f"[{f(l)}, {f(h)}] (paired, {_seeds(n)}, {ps})")


def describe_row(row: Mapping, *, higher_is_better: bool) -> str:
    """``describe`` of one row of ``compare`` / ``all_pairs``."""
    return describe(row["arm"], row["reference"], row["diff"], row["lo"], row["hi"], int(row["n"]), row["p"],
                    row.get("p_holm"), higher_is_better=higher_is_better)
