"""Published rankings (bench.experiment.reference_ranks, bench.report.reference_ranks): parsing and its exit-2
checks, the grid round trip and --resume, Kendall's tau-b against scipy and by hand, its bound under ties, the
permutation p against the exact null, and the report's agreement on a run whose orders are known."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bench.experiment import rundir
from bench.experiment.grid import load_grid, read_toml
from bench.experiment.reference_ranks import ReferenceRanks, check, parse
from bench.registry import InputError
from bench.report import ranking
from bench.report import reference_ranks as report
from bench.report.tables import Run
from bench.run.checks import check_claims

GOOD = {"source": "a paper, Table 1", "over": ["euler:5"], "ranks": {"a": 1, "b": 2.5, "c": 3}}


def test_a_reference_is_read_as_written():
    (r,) = parse([{**GOOD, "setting": "how it differs"}], "grid.toml")
    assert r == ReferenceRanks("a paper, Table 1", ("euler:5",), (("a", 1.0), ("b", 2.5), ("c", 3.0)), "how it differs")
    assert r.as_dict() == {"a": 1.0, "b": 2.5, "c": 3.0} and parse(None, "grid.toml") == []


@pytest.mark.parametrize("bad, says", [
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"over": "euler:5"}, "over must be a list"),
    ({"over": ["euler"]}, "over must be a list"),
    ({"over": ["euler:5", "euler:5"]}, "repeats a setting"),
    ({"ranks": {"a": 1, "b": 2}}, "three or more"),
    ({"ranks": {"a": 1, "b": -2, "c": 3}}, "positive ranks"),
    ({"ranks": {"a": 1, "b": True, "c": 3}}, "positive ranks"),
    ({"ranks": {"a": 1, "b": float("nan"), "c": 3}}, "positive ranks"),
    ({"source": ""}, "source must be"),
    ({"setting": 3}, "setting a string"),
])
def test_a_bad_reference_is_one_line_naming_its_table(bad, says):
    with pytest.raises(InputError) as e:
        parse([GOOD, {**GOOD, **bad}], "grid.toml")
    assert says in str(e.value) and "number 2" in str(e.value) and "\n" not in str(e.value)


def test_a_reference_without_ranks_or_not_as_tables_is_refused():
    with pytest.raises(InputError, match="lacks ranks"):
        parse([{k: v for k, v in GOOD.items() if k != "ranks"}], "grid.toml")
    with pytest.raises(InputError, match=r"must be \[\[reference_ranks\]\] tables"):
        parse(GOOD, "grid.toml")  # [reference_ranks] (one table) instead of [[reference_ranks]]


def test_the_formulations_grid_writes_its_references_back_and_a_resume_may_add_them(tmp_path):
    """grid.toml carries them after every trial line; a run whose grid.toml predates them is the same run."""
    grid = load_grid("formulations", "standard")
    assert [r.over for r in grid.reference_ranks] == [("euler:5", "euler:10", "euler:25", "euler:50"), ("euler:5",),
                                                      ("euler:50",)]
    # SD3 Table 1: rf/lognorm(0.50,0.60) first at 50 steps, 8.5 at 5; edm(-1.20,1.20) last of the grid's arms
    assert grid.reference_ranks[2].as_dict()["rf/lognorm(0.50,0.60)"] == 1.0
    assert grid.reference_ranks[1].as_dict()["rf/lognorm(0.50,0.60)"] == 8.5
    assert max(grid.reference_ranks[0].ranks, key=lambda lr: lr[1]) == ("edm(-1.20,1.20)", 15.58)
    (tmp_path / "grid.toml").write_text(grid.to_toml())
    assert parse(read_toml(tmp_path / "grid.toml")["reference_ranks"], "x") == grid.reference_ranks
    bare = load_grid("formulations", "standard")
    bare.reference_ranks, bare.claims = [], []
    assert rundir.trial_part(grid.to_toml()) == rundir.trial_part(bare.to_toml()) == bare.to_toml().rstrip("\n")
    bare.reference_ranks = grid.reference_ranks  # references but no claims: still not part of the trials
    assert rundir.trial_part(bare.to_toml()) == rundir.trial_part(grid.to_toml())
    old = tmp_path / "run"
    old.mkdir()
    bare.reference_ranks = []
    (old / "grid.toml").write_text(bare.to_toml())  # written before the references existed
    rundir.check(old, grid, resume=True, probe_lock=False)  # no InputError: the same run
    rundir.prepare(old, grid)
    assert parse(read_toml(old / "grid.toml")["reference_ranks"], "x") == grid.reference_ranks


def test_tau_b_by_hand_and_against_scipy_with_ties():
    assert report.tau_b(np.arange(5), np.arange(5)) == pytest.approx(1.0)
    assert report.tau_b(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    # 4 items, one discordant pair of 6: (5 - 1) / 6
    assert report.tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert math.isnan(report.tau_b([1, 2, 3], [2, 2, 2]))
    gen = np.random.default_rng(1)
    checked = 0
    for _ in range(25):
        x, y = gen.integers(0, 4, 9).astype(float), gen.integers(0, 5, (3, 9)).astype(float)
        if len(set(x)) < 2 or any(len(set(row)) < 2 for row in y):
            continue
        want = [scipy.stats.kendalltau(x, row).statistic for row in y]
        assert report.tau_b(x, y) == pytest.approx(want, abs=1e-12)
        checked += 1
    assert checked > 15


def test_the_bound_of_tau_b_under_ties_is_reached_by_a_consistent_order():
    """Published ranks without ties against fronts 1, 1, 2, 3: 5 of 6 pairs untied, so tau_b is at most sqrt(5/6),
    which an order consistent with the fronts reaches."""
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 2.0, 3.0])
    assert report.tau_bound(x, y) == pytest.approx(math.sqrt(5 / 6))
    assert report.tau_b(x, y) == pytest.approx(math.sqrt(5 / 6)) == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    assert report.tau_bound(x, x) == 1.0


def test_the_permutation_p_against_the_exact_null():
    """n = 5 without ties: the exact two-sided p of tau = 0.6 counts the orders with |tau| >= 0.6 among all 120."""
    x, y = np.arange(5.0), np.array([1.0, 0.0, 3.0, 2.0, 4.0])  # two discordant pairs of 10: tau = 0.6
    observed = report.tau_b(x, y)
    assert observed == pytest.approx(0.6)
    exact = np.mean([abs(report.tau_b(x, np.array(p))) >= observed - 1e-12 for p in itertools.permutations(y)])
    assert exact == pytest.approx(scipy.stats.kendalltau(x, y, method="exact").pvalue)
    # 10000 random orders: the binomial standard error of the estimate is sqrt(p (1 - p) / 10000) < 0.005
    assert abs(report.permutation_p(x, y) - exact) < 0.02


# (FD, coverage) per setting and arm. euler:5: a and b are incomparable (front 1), then c, then d; e, which no source
# ranks, dominates a (and c, d) but not b, so sorted with e the order of a-d would change (a behind b). Seed 2 swaps
# c and d there. euler:50: d < c < b < a strictly, e dominated. euler:25: every arm the same point.
POINTS = {5: {"a": (10, 0.5), "b": (20, 0.9), "c": (30, 0.4), "d": (40, 0.3), "e": (9, 0.6)},
          50: {"a": (40, 0.6), "b": (30, 0.7), "c": (20, 0.8), "d": (10, 0.9), "e": (25, 0.1)},
          25: {lb: (50, 0.5) for lb in "abcde"}}


class FakeRun:
    labels = ["a", "b", "c", "d", "e"]
    metrics = ["fd_mnist_clf", "coverage_clf"]
    dir = Path("run")
    evals = Run.evals

    def __init__(self, refs):
        self.cache = {}
        self.grid = {"reference_ranks": refs}
        rows = []
        for seed, (i, lb), steps in itertools.product(range(3), enumerate(self.labels), POINTS):
            swap = {"c": "d", "d": "c"} if steps == 5 and seed == 2 else {}
            fd, cov = POINTS[steps][swap.get(lb, lb)]
            rows.append({"dataset": "mnist", "label": lb, "sampler": "euler", "sample_steps": steps, "seed": seed,
                         "status": "ok", "fd_mnist_clf": fd + 0.1 * seed, "coverage_clf": cov,
                         "path": ["vp", "rf"][i % 2], "t_density": "uniform"})
        self.rows = pd.DataFrame(rows)


def _aggregate(run, metric):
    keys = ["dataset", "label", "sampler", "sample_steps"]
    return run.rows.groupby(keys, sort=False)[metric].mean().rename("mean").reset_index()


RANKS = {"a": 1, "b": 2, "c": 3, "d": 4, "z": 5}
TIED = math.sqrt(5 / 6)  # fronts a 1, b 1, c 2, d 3 against 1, 2, 3, 4: 5 concordant pairs of 6, one tied


@pytest.fixture
def known(monkeypatch):
    monkeypatch.setattr(ranking, "aggregate", _aggregate)
    monkeypatch.setattr(report, "write_text_atomic", lambda path, text: None)
    return FakeRun([{"source": "s1", "over": ["euler:5"], "ranks": RANKS},
                    {"source": "s2", "over": ["euler:50"], "ranks": RANKS},
                    {"source": "s3", "over": ["euler:25"], "ranks": RANKS},
                    {"source": "s4", "over": ["euler:10"], "ranks": RANKS}])


def test_the_report_reads_known_orders_against_its_references(known):
    summary, arms = report.agreement(known)
    s = summary.set_index("source")
    # sorted among a-d (e is in no source): a and b share front 1; with e, a would fall behind b (tau 4/6)
    assert arms[arms.reference == 1].set_index("label")["here"].to_dict() == {"a": 1.0, "b": 1.0, "c": 2.0, "d": 3.0}
    assert s.loc["s1", "tau_b"] == pytest.approx(TIED) and s.loc["s1", "bound"] == pytest.approx(TIED)
    assert s.loc["s2", "tau_b"] == pytest.approx(-1.0)
    assert arms[arms.reference == 2].set_index("label")["here"].to_dict() == {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    # seed 2 alone swaps c and d at euler:5: tau (4 - 1) / sqrt(6 5); the resamples run from there to TIED
    alone = 3 / math.sqrt(30)
    assert s.loc["s1", ["seed_tau_min", "seed_tau_max"]].tolist() == pytest.approx([alone, TIED])
    assert s.loc["s1", ["tau_lo", "tau_hi"]].tolist() == pytest.approx([alone, TIED])
    assert s.loc["s2", ["tau_lo", "tau_hi"]].tolist() == pytest.approx([-1.0, -1.0])
    # n = 4, |tau| = 1: the exact p is 2 / 24
    assert s.loc["s2", "p_perm"] == pytest.approx(2 / 24, abs=0.02)
    # every arm ties at euler:25: no order, no tau, every resample counted apart
    assert math.isnan(s.loc["s3", "tau_b"]) and s.loc["s3", "untied_out"] == report.ranking.BOOT
    assert s.loc["s4", "problem"] == "the run has no euler:10 on mnist" and s.loc["s1", "lacking"] == "z"


def test_the_section_says_what_each_row_rests_on(known):
    text = report.section(known)
    assert "| 1 | mnist | s1 | `euler:5` | 4 | 0.91 (0.91) | 0.55 to 0.91 | 0.55 to 0.91 |" in text
    assert "| 3 | mnist | s3 | `euler:25` | 4 | – | – | – | the run ties every arm compared |" in text
    assert "| 4 | mnist | s4 | `euler:10` | – | – | – | – | the run has no euler:10 on mnist |" in text
    assert "This run's e is in no source's ranking" in text and "Sources 1, 2, 3 and 4 also rank z" in text
    # the sources' own columns are one order: tau 1 between each two, over the 4 arms the run trains
    assert "agree with one another by tau_b = 1.00 (1 and 2, 4 arms), 1.00 (1 and 3, 4 arms)" in text


def test_the_full_grid_refuses_a_reference_it_cannot_compare_and_a_preset_notes_it():
    grid = load_grid("formulations")
    trials = grid.trials()
    assert check(grid.reference_ranks, trials, "grid 'formulations'") == grid.reference_ranks
    typo = [*grid.reference_ranks, ReferenceRanks("a paper", ("euler:7",), (("rf", 1.0), ("v/cos", 2.0), ("edm", 3.0)))]
    with pytest.raises(InputError, match=r"number 4 \('a paper'\) names euler:7, which no trial evaluates"):
        check(typo, trials, "grid 'formulations'")
    mislabelled = [ReferenceRanks("a paper", ("euler:5",), (("rf", 1.0), ("v/cos", 2.0), ("rf/lognorm(0.0,1.0)", 3.0)))]
    with pytest.raises(InputError, match=r"ranks 2 of this grid's arms, 3 needed for an order"):
        check(mislabelled, trials, "grid 'formulations'")
    notes: list[str] = []
    assert check(typo, trials, "x", strict=False, notes=notes) == grid.reference_ranks
    assert notes == ["reference ranks 'a paper' are not compared by this run: the table names euler:7, which no "
                     "trial evaluates (the trials evaluate dpmpp_2m:10, euler:10, euler:25, euler:5, euler:50)"]
    # through the pre-work checks: a preset keeps what it can compare and notes the rest
    quick = load_grid("formulations", "quick")
    notes = check_claims(quick, quick.trials(), None)
    assert [r.over for r in quick.reference_ranks] == [("euler:50",)]
    assert any("name no arm of this run (compared on the other 5)" in n for n in notes)


def test_a_dataset_without_a_setting_says_so_instead_of_tying_every_arm(monkeypatch):
    """Two datasets, the second evaluated at euler:50 only: its euler:5 reference is 'no euler:5 on craters'."""
    monkeypatch.setattr(ranking, "aggregate", _aggregate)
    run = FakeRun([{"source": "s1", "over": ["euler:5"], "ranks": RANKS},
                   {"source": "s2", "over": ["euler:50"], "ranks": RANKS}])
    more = run.rows[run.rows.sample_steps == 50].assign(dataset="craters")
    run.rows = pd.concat([run.rows, more], ignore_index=True)
    s = report.agreement(run)[0].set_index(["dataset", "source"])
    assert s.loc[("craters", "s1"), "problem"] == "the run has no euler:5 on craters"
    assert s.loc[("craters", "s2"), "tau_b"] == pytest.approx(-1.0) and s.loc[("mnist", "s1"), "tau_b"] == pytest.approx(TIED)
