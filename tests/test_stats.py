"""bench.scoring.stats against closed forms, scipy, an independent Holm, Monte Carlo power and bootstrap
coverage on a simulated paired design (DESIGN.md section 5)."""

import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bench.scoring.stats import (
    COLUMNS,
    all_pairs,
    bootstrap_two_level,
    compare,
    describe,
    describe_row,
    fmt,
    fmt_p,
    holm,
    paired,
    power_paired,
    seeds_needed,
)

A = np.array([61.2, 58.4, 70.1, 65.3, 59.9, 63.0])
B = np.array([55.0, 57.9, 61.3, 60.2, 58.8, 56.1])


# --- paired ------------------------------------------------------------------------------------------
def test_paired_closed_form_df2():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3), df = 2. For df = 2 the t distribution has closed
    # forms: sf(t) = 1/2 - t / (2 sqrt(t^2 + 2)) and quantile(q) = (2q - 1) / sqrt(2 q (1 - q)).
    r = paired([11, 12, 13], [10, 10, 10])
    t = 2 * math.sqrt(3)
    q = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
    assert (r.n, r.mean, r.sd, r.diffs) == (3, 2.0, 1.0, (1.0, 2.0, 3.0))
    assert r.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-12)
    assert (r.lo, r.hi) == pytest.approx((2 - q / math.sqrt(3), 2 + q / math.sqrt(3)), rel=1e-12)


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_paired_equals_scipy(level):
    r = paired(A, B, level=level)
    ref = st.ttest_rel(A, B)
    d = A - B
    half = st.t.ppf(1 - (1 - level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert r.n == 6 and r.level == level
    assert r.mean == pytest.approx(d.mean(), rel=1e-12) and r.sd == pytest.approx(d.std(ddof=1), rel=1e-12)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r.lo, r.hi) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    ci = ref.confidence_interval(confidence_level=level)
    assert (r.lo, r.hi) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # swapping the arms flips the difference and keeps p
    s = paired(B, A, level=level)
    assert (s.mean, s.lo, s.hi, s.p) == pytest.approx((-r.mean, -r.hi, -r.lo, r.p), rel=1e-12)


def test_paired_drops_seeds_without_a_finite_score_in_both_arms():
    a, b = A.copy(), B.copy()
    a[1], b[4] = np.nan, np.inf
    r = paired(a, b)
    keep = [0, 2, 3, 5]
    assert r.n == 4 and r.p == pytest.approx(st.ttest_rel(A[keep], B[keep]).pvalue, rel=1e-10)


def test_paired_degenerate_cases():
    one = paired([3.0], [1.0])
    assert one.n == 1 and one.mean == 2.0 and all(math.isnan(x) for x in (one.sd, one.lo, one.hi, one.p))
    none = paired([], [])
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.p)
    const = paired([5.0, 6.0, 7.0], [3.0, 4.0, 5.0])
    assert (const.sd, const.lo, const.hi, const.p) == (0.0, 2.0, 2.0, 0.0)
    same = paired([5.0, 6.0], [5.0, 6.0])
    assert (same.mean, same.sd, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        paired([1, 2, 3], [1, 2])


# --- Holm --------------------------------------------------------------------------------------------
def holm_by_rejection(p):
    """Independent Holm: the adjusted p of H_i is the smallest alpha at which Holm's step-down
    procedure (reject p_(k) while p_(k) <= alpha / (m - k + 1)) rejects H_i, capped at 1. The
    candidate alphas are the values (m - k + 1) p_(k); the largest rejects every hypothesis."""
    p = list(p)
    idx = [i for i, x in enumerate(p) if not math.isnan(x)]
    m = len(idx)
    srt = sorted(idx, key=lambda i: p[i])
    candidates = sorted({(m - k) * p[i] for k, i in enumerate(srt)})
    out = [math.nan] * len(p)
    for alpha in candidates:
        rejected = set()
        for k, i in enumerate(srt):
            if (m - k) * p[i] <= alpha:
                rejected.add(i)
            else:
                break
        for i in rejected:
            if math.isnan(out[i]):
                out[i] = min(1.0, alpha)
    return np.array(out)


def test_holm_hand_worked():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> running max 0.02 0.03 0.06 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    out = holm([0.01, np.nan, 0.04, 0.03, 0.005])  # nan passed through, m = 4
    assert math.isnan(out[1]) and out[[0, 2, 3, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped
    assert holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])  # monotone: 0.4 alone would stay 0.4
    assert holm([0.02]).tolist() == [0.02] and holm([]).size == 0
    assert np.isnan(holm([np.nan, np.nan])).all()


def test_holm_equals_an_independent_implementation():
    rng = np.random.default_rng(3)
    for trial in range(200):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 0.2, m) ** rng.uniform(0.5, 3)
        if trial % 3 == 0:  # ties and nan
            p[rng.integers(0, m, m // 2)] = p[0]
            p[rng.integers(0, m)] = np.nan
        got = holm(p)
        assert np.allclose(got, holm_by_rejection(p), rtol=1e-12, equal_nan=True)
        ok = ~np.isnan(p)
        assert (got[ok] >= p[ok]).all() and (got[ok] <= 1).all()
        order = np.argsort(p[ok], kind="stable")
        assert (np.diff(got[ok][order]) >= 0).all()


def test_holm_anchor_worked_by_hand():
    """Holm 1979 by hand (also statsmodels' multipletests(method="holm")): sorted p times (m - i + 1) =
    0.0021*6, 0.012*5, 0.013*4, 0.023*3, 0.071*2, 0.4*1 = 0.0126, 0.06, 0.052, 0.069, 0.142, 0.4, then
    the running maximum lifts 0.052 to 0.06. (Was a statsmodels comparison that no install could run.)"""
    p = np.array([0.013, 0.071, 0.023, 0.4, 0.0021, 0.012])
    assert holm(p) == pytest.approx([0.06, 0.142, 0.069, 0.4, 0.0126, 0.06], rel=1e-12)


# --- seed planner ------------------------------------------------------------------------------------
def test_seeds_needed_table_values():
    # Cohen / G*Power, "difference between two dependent means", two-sided alpha 0.05, power 0.8
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(0.2, 1.0) == 199
    assert seeds_needed(-3.0, 6.0) == 34 and seeds_needed(50.0, 100.0) == 34  # sign and scale free
    # the smallest n: power reaches 0.8 at n and not at n - 1
    for d in (0.3, 0.8, 1.5):
        n = seeds_needed(d, 1.0)
        assert power_paired(n, d, 1.0) >= 0.8 > power_paired(n - 1, d, 1.0)


def test_power_paired_equals_monte_carlo():
    # independent of the noncentral t: simulate 40000 paired t-tests with n = 10, d = 1
    rng = np.random.default_rng(0)
    d = rng.normal(1.0, 1.0, (40_000, 10))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(10))
    rate = np.mean(np.abs(t) > st.t.ppf(0.975, 9))
    assert power_paired(10, 1.0, 1.0) == pytest.approx(rate, abs=0.01)  # MC sd ~0.002
    assert power_paired(10, 0.0, 1.0) == pytest.approx(0.05, rel=1e-9)  # no difference: alpha


def test_seeds_needed_monotone_and_edges():
    by_diff = [seeds_needed(x, 1.0) for x in (0.25, 0.5, 1.0, 2.0)]
    assert by_diff == sorted(by_diff, reverse=True) and len(set(by_diff)) == 4
    by_sd = [seeds_needed(1.0, s) for s in (0.5, 1.0, 2.0)]
    assert by_sd == sorted(by_sd) and len(set(by_sd)) == 3
    assert seeds_needed(0.5, 1.0, power=0.9) > 34 and seeds_needed(0.5, 1.0, alpha=0.01) > 34
    assert seeds_needed(0.0, 1.0) == math.inf  # no difference cannot be detected
    assert seeds_needed(1e-3, 1.0, max_n=1000) == math.inf  # needs ~7.8 million
    assert seeds_needed(1.0, 0.0) == 2
    assert math.isnan(seeds_needed(1.0, math.nan)) and math.isnan(seeds_needed(math.nan, 1.0))
    assert seeds_needed(0.01, 1.0) == pytest.approx((st.norm.ppf(0.975) + st.norm.ppf(0.8)) ** 2 / 1e-4, rel=0.002)


# --- compare / all_pairs -----------------------------------------------------------------------------
def long_table():
    rows = []
    for s in range(6):
        rows += [("cosine", s, B[s]), ("linear", s, A[s]), ("sigmoid", s, B[s] - 2 + 0.3 * s)]
    df = pd.DataFrame(rows, columns=["label", "seed", "fid"])
    df = df[~((df.label == "linear") & (df.seed == 2))]  # linear lacks seed 2
    df.loc[(df.label == "cosine") & (df.seed == 5), "fid"] = np.nan  # a failed trial
    return df.reset_index(drop=True)


def test_compare_lower_is_better():
    df = long_table()
    out = compare(df, "label", "seed", "fid", higher_is_better=False)
    assert list(out.columns) == COLUMNS
    # means over each arm's own seeds: sigmoid lowest, then cosine, then linear
    assert out["reference"].tolist() == ["sigmoid", "sigmoid"] and out["arm"].tolist() == ["cosine", "linear"]
    cos = out.iloc[0]
    sig = B - 2 + 0.3 * np.arange(6)
    r = st.ttest_rel(B[:5], sig[:5])  # cosine's seed 5 failed: 5 pairs
    assert cos["n"] == 5 and cos["p"] == pytest.approx(r.pvalue, rel=1e-10)
    assert cos["diff"] == pytest.approx(cos["mean_a"] - cos["mean_ref"], rel=1e-12)
    assert cos["mean_a"] == pytest.approx(B[:5].mean()) and cos["mean_ref"] == pytest.approx(sig[:5].mean())
    lin = out.iloc[1]
    keep = [0, 1, 3, 4, 5]  # linear lacks seed 2
    assert lin["n"] == 5 and lin["p"] == pytest.approx(st.ttest_rel(A[keep], sig[keep]).pvalue, rel=1e-10)
    assert out["p_holm"].to_numpy() == pytest.approx(holm(out["p"].to_numpy()), rel=1e-12)
    assert out["seeds_80"].tolist() == [seeds_needed(r["diff"], r["sd"]) for _, r in out.iterrows()]
    # the same rows in another order give the same table
    again = compare(df.sample(frac=1, random_state=1), "label", "seed", "fid", higher_is_better=False)
    pd.testing.assert_frame_equal(out, again)


def test_compare_higher_is_better_and_all_pairs():
    df = long_table()
    out = compare(df, "label", "seed", "fid", higher_is_better=True)
    assert out["reference"].tolist() == ["linear", "linear"] and out["arm"].tolist() == ["cosine", "sigmoid"]
    assert (out["diff"] < 0).all()  # arm - best, and best is the highest
    pairs = all_pairs(df, "label", "seed", "fid", higher_is_better=False)
    assert list(zip(pairs["arm"], pairs["reference"])) == [("cosine", "sigmoid"), ("linear", "sigmoid"),
                                                           ("linear", "cosine")]
    assert pairs["p_holm"].to_numpy() == pytest.approx(holm(pairs["p"].to_numpy()), rel=1e-12)
    lc = pairs.iloc[2]
    keep = [0, 1, 3, 4]  # linear lacks 2, cosine failed 5
    assert lc["n"] == 4 and lc["diff"] == pytest.approx((A[keep] - B[keep]).mean(), rel=1e-12)


def test_compare_edge_cases():
    df = long_table()
    with pytest.raises(ValueError, match="more than one"):
        compare(pd.concat([df, df.iloc[:1]]), "label", "seed", "fid", higher_is_better=False)
    one = compare(df[df.label == "cosine"], "label", "seed", "fid", higher_is_better=False)
    assert one.empty and list(one.columns) == COLUMNS
    single = compare(df[df.seed == 0], "label", "seed", "fid", higher_is_better=False)
    assert (single["n"] == 1).all() and single["p"].isna().all() and single["seeds_80"].isna().all()


# --- two-level bootstrap -----------------------------------------------------------------------------
def simulate(rng, n_seeds, n_images, delta, sd_seed_arm, sd_image_arm):
    """A paired design: seed effects and image effects shared by both arms (common random numbers),
    plus a seed x arm effect and per-image arm noise; the true difference is delta."""
    u = rng.normal(0, 2.0, (n_seeds, 1))
    v = rng.normal(0, 1.0, (n_seeds, n_images))
    a = delta + u + v + rng.normal(0, sd_seed_arm, (n_seeds, 1)) + rng.normal(0, sd_image_arm, (n_seeds, n_images))
    b = u + v + rng.normal(0, sd_image_arm, (n_seeds, n_images))
    return a, b


def test_bootstrap_coverage_on_a_simulated_paired_design():
    # 15 seeds x 50 images; seed-level variance of the mean difference 0.3^2/15 = 0.006, image-level
    # 2 * 1^2 / 750 = 0.0027. 400 simulations: binomial sd of the coverage ~0.011 at 0.95.
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(400):
        a, b = simulate(rng, 15, 50, 0.5, 0.3, 1.0)
        r = bootstrap_two_level(a, b, n_boot=1000, seed=k)
        hits += r.lo <= 0.5 <= r.hi
    assert 0.90 <= hits / 400 <= 0.985


def test_bootstrap_variance_equals_the_two_level_closed_form():
    # mean statistic: one resampled seed contributes mean of d over resampled images, whose variance
    # is Var_s(m_s) + mean_s(sigma_s^2) / I (total variance, ddof = 0); the replicate averages S of
    # them, so var = (Var_s(m_s) + mean_s(sigma_s^2) / I) / S.
    rng = np.random.default_rng(2)
    a, b = simulate(rng, 5, 40, 0.0, 0.5, 1.0)
    d = a - b
    expected = (d.mean(axis=1).var() + d.var(axis=1).mean() / 40) / 5
    r = bootstrap_two_level(a, b, n_boot=20_000, seed=0)
    assert r.se**2 == pytest.approx(expected, rel=0.05)  # sd of a variance estimate: sqrt(2 / 20000) = 1%
    assert r.estimate == pytest.approx(d.mean(), rel=1e-12)


def test_bootstrap_uses_the_same_image_indices_in_both_arms():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 30))
    r = bootstrap_two_level(a + 0.25, a, n_boot=500)  # a constant shift: every replicate is 0.25
    assert (r.estimate, r.lo, r.hi) == pytest.approx((0.25, 0.25, 0.25), abs=1e-12)
    z = bootstrap_two_level(a, a, n_boot=100)
    assert (z.estimate, z.lo, z.hi, z.se) == (0.0, 0.0, 0.0, 0.0)


def test_bootstrap_stat_forms_agree_and_are_reproducible():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 20, 2)), rng.normal(size=(3, 20, 2))
    mu = np.array([0.5, -0.5])

    def dist(x):  # one image set [n_images, 2] -> a float: squared distance of its mean to mu
        return float(((x.mean(axis=0) - mu) ** 2).sum())

    def dist_batched(x):  # [k, n_images, 2] -> [k]
        return ((x.mean(axis=1) - mu) ** 2).sum(axis=1)

    one = bootstrap_two_level(a, b, dist, n_boot=300, batched=False, seed=7)
    many = bootstrap_two_level(a, b, dist_batched, n_boot=300, seed=7, max_elements=500)  # several chunks
    assert (one.lo, one.hi, one.se) == pytest.approx((many.lo, many.hi, many.se), rel=1e-12)
    assert one.estimate == pytest.approx(np.mean([dist(a[s]) - dist(b[s]) for s in range(3)]), rel=1e-12)
    assert bootstrap_two_level(a, b, dist_batched, n_boot=300, seed=7) == many
    assert bootstrap_two_level(a, b, dist_batched, n_boot=300, seed=8) != many
    with pytest.raises(ValueError):
        bootstrap_two_level(a, b[:, :10])


def test_bootstrap_is_fast_for_a_mean():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(5, 200)), rng.normal(size=(5, 200))
    t0 = time.perf_counter()
    bootstrap_two_level(a, b, n_boot=2000)
    assert time.perf_counter() - t0 < 5.0  # ~0.1 s on one core; a generous bound on a loaded machine (issue 29)


# --- words -------------------------------------------------------------------------------------------
def test_fmt():
    assert [fmt(x) for x in (56.04, 0.01304, 1234, -0.5, 9.996, 0.1 + 0.2, 0, 1.0)] == \
        ["56", "0.013", "1230", "-0.5", "10", "0.3", "0", "1"]
    assert [fmt(x) for x in (1e-5, 1.234e-4, 123456, -2e5)] == ["1e-05", "1.23e-04", "1.23e+05", "-2e+05"]
    assert fmt(math.nan) == "—" and fmt(None) == "—" and fmt(math.inf) == "inf"
    assert [fmt_p(p) for p in (0.0126, 0.0504, 0.071, 0.2133, 1.0, 0.0004)] == \
        ["0.013", "0.05", "0.071", "0.21", "1", "< 0.001"]


def test_describe_lower_is_better():
    # the headline of issue 12: cosine - sigmoid = 56.0 [28.8, 83.3], p 0.013, Holm 0.050
    s = describe("cosine", "sigmoid", 56.04, 28.8, 83.3, 3, 0.0126, 0.0504, higher_is_better=False)
    assert s == "sigmoid is lower (better) than cosine by 56 [29, 83] (paired, 3 seeds, p = 0.013, Holm 0.05)"
    # the same comparison with the arms the other way round reads the same
    assert describe("sigmoid", "cosine", -56.04, -83.3, -28.8, 3, 0.0126, 0.0504, higher_is_better=False) == s


def test_describe_higher_is_better():
    s = describe("linear", "cosine", -0.0503, -0.0812, -0.0194, 5, 0.0004, 0.0021, higher_is_better=True)
    assert s == ("cosine is higher (better) than linear by 0.050 [0.019, 0.081] "
                 "(paired, 5 seeds, p < 0.001, Holm 0.0021)")
    # half-width 0.07 shown to 2 significant figures: 3 decimals for all three numbers; no Holm given
    s = describe("recall", "base", 0.12, 0.05, 0.19, 4, 0.01, None, higher_is_better=True)
    assert s == "recall is higher (better) than base by 0.120 [0.050, 0.190] (paired, 4 seeds, p = 0.01)"


def test_describe_interval_covering_zero_says_what_it_excludes():
    s = describe("linear", "cosine", 4.51, -3.12, 12.14, 3, 0.071, 0.2133, higher_is_better=False)
    assert s == ("no evidence of a difference between linear and cosine with 3 seeds (paired, p = 0.071, "
                 "Holm 0.21); linear - cosine lies in [-3.1, 12.1]: linear is at most 3.1 lower (better) and at "
                 "most 12.1 higher (worse)")
    s = describe("a", "b", -0.01, -0.04, 0.02, 5, 0.4, 1.0, higher_is_better=True)
    assert s == ("no evidence of a difference between a and b with 5 seeds (paired, p = 0.4, Holm 1); a - b lies "
                 "in [-0.040, 0.020]: a is at most 0.040 lower (worse) and at most 0.020 higher (better)")
    s = describe("a", "b", 2.0, math.nan, math.nan, 1, math.nan, math.nan, higher_is_better=False)
    assert s == "a - b = 2 with 1 seed: no interval (a paired interval needs at least 2 seeds)"


def test_describe_rows_of_a_comparison_never_say_overlap():
    df = long_table()
    for higher in (False, True):
        for _, row in all_pairs(df, "label", "seed", "fid", higher_is_better=higher).iterrows():
            s = describe_row(row, higher_is_better=higher)
            assert "overlap" not in s and "separated" not in s
            assert ("better" in s) and (str(row["n"]) + " seed" in s)
