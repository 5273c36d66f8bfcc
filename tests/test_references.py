"""Published rankings (bench.experiment.references, bench.report.references): parsing and its exit-2 checks, the
grid round trip, Kendall's tau-b against scipy and by hand, the permutation p against the exact null, and the
report's agreement on a run whose order is known."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bench.experiment.grid import load_grid, read_toml
from bench.experiment.references import ReferenceRanks, parse
from bench.experiment.rundir import without_claims
from bench.registry import InputError
from bench.report import ranking, references

GOOD = {"source": "a paper, Table 1", "over": ["euler:5"], "ranks": {"a": 1, "b": 2.5}}


def test_a_reference_is_read_as_written():
    (r,) = parse([{**GOOD, "setting": "how it differs"}], "grid.toml")
    assert r == ReferenceRanks("a paper, Table 1", ("euler:5",), (("a", 1.0), ("b", 2.5)), "how it differs")
    assert r.as_dict() == {"a": 1.0, "b": 2.5} and parse(None, "grid.toml") == []


@pytest.mark.parametrize("bad, says", [
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"over": "euler:5"}, "over must be a list"),
    ({"over": ["euler"]}, "over must be a list"),
    ({"over": ["euler:5", "euler:5"]}, "repeats a setting"),
    ({"ranks": {"a": 1}}, "two or more"),
    ({"ranks": {"a": 1, "b": -2}}, "positive ranks"),
    ({"ranks": {"a": 1, "b": True}}, "positive ranks"),
    ({"source": ""}, "source must be"),
])
def test_a_bad_reference_is_one_line_naming_its_table(bad, says):
    with pytest.raises(InputError) as e:
        parse([GOOD, {**GOOD, **bad}], "grid.toml")
    assert says in str(e.value) and "number 2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="lacks ranks"):
        parse([{k: v for k, v in GOOD.items() if k != "ranks"}], "grid.toml")


def test_the_formulations_grid_writes_its_references_back_and_a_resume_may_change_them(tmp_path):
    """grid.toml carries them after every trial line; without_claims drops them (text, not trials)."""
    grid = load_grid("formulations", "standard")
    assert [r.over for r in grid.references] == [("euler:5", "euler:10", "euler:25", "euler:50"), ("euler:5",),
                                                 ("euler:50",)]
    assert grid.references[2].as_dict()["rf/lognorm(0.50,0.60)"] == 1.0  # SD3 Table 1: best at 50 steps, 8.5 at 5
    assert grid.references[1].as_dict()["rf/lognorm(0.50,0.60)"] == 8.5
    (tmp_path / "grid.toml").write_text(grid.to_toml())
    assert parse(read_toml(tmp_path / "grid.toml")["reference_ranks"], "x") == grid.references
    bare = load_grid("formulations", "standard")
    bare.references, bare.claims = [], []
    assert without_claims(grid.to_toml()) == without_claims(bare.to_toml()) == bare.to_toml().rstrip("\n")
    bare.references = grid.references  # references but no claims: still not part of the trials
    assert without_claims(bare.to_toml()) == without_claims(grid.to_toml())


def test_tau_b_by_hand_and_against_scipy_with_ties():
    assert references.tau_b(np.arange(5), np.arange(5)) == pytest.approx(1.0)
    assert references.tau_b(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    # 4 items, one discordant pair of 6: (5 - 1) / 6
    assert references.tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert math.isnan(references.tau_b([1, 2, 3], [2, 2, 2]))
    gen = np.random.default_rng(1)
    for _ in range(25):
        x, y = gen.integers(0, 4, 9).astype(float), gen.integers(0, 5, (3, 9)).astype(float)
        if len(set(x)) < 2 or any(len(set(row)) < 2 for row in y):
            continue
        want = [scipy.stats.kendalltau(x, row).statistic for row in y]
        assert references.tau_b(x, y) == pytest.approx(want, abs=1e-12)


def test_the_permutation_p_against_the_exact_null():
    """n = 5 without ties: the exact two-sided p of tau = 0.6 counts the orders with |tau| >= 0.6 among all 120."""
    x, y = np.arange(5.0), np.array([1.0, 0.0, 3.0, 2.0, 4.0])  # two discordant pairs of 10: tau = 0.6
    observed = references.tau_b(x, y)
    assert observed == pytest.approx(0.6)
    exact = np.mean([abs(references.tau_b(x, np.array(p))) >= observed - 1e-12 for p in itertools.permutations(y)])
    assert exact == pytest.approx(scipy.stats.kendalltau(x, y, method="exact").pvalue)
    # 10000 random orders: the binomial standard error of the estimate is sqrt(p (1 - p) / 10000) < 0.005
    assert abs(references.permutation_p(x, y) - exact) < 0.02


class FakeRun:
    """Arms a-d in order a < b < c < d at euler:5 on every seed and reversed at euler:50; e worst everywhere."""
    labels = ["a", "b", "c", "d", "e"]
    metrics = ["fd_mnist_clf", "coverage_clf"]
    dir = Path("run")

    def __init__(self, refs):
        self.cache = {}
        self.grid = {"reference_ranks": refs}
        rows = []
        for seed, (i, lb), steps in itertools.product(range(3), enumerate(self.labels), (5, 50)):
            order = i if lb == "e" or steps == 5 else 3 - i
            fd = 10.0 * (order + 1) + seed
            rows.append({"dataset": "mnist", "label": lb, "sampler": "euler", "sample_steps": steps, "seed": seed,
                         "status": "ok", "fd_mnist_clf": fd, "coverage_clf": 1.0 - fd / 100,
                         "path": ["vp", "rf"][i % 2], "t_density": "uniform"})
        self.rows = pd.DataFrame(rows)


def _aggregate(run, metric):
    keys = ["dataset", "label", "sampler", "sample_steps"]
    return run.rows.groupby(keys, sort=False)[metric].mean().rename("mean").reset_index()


def test_the_report_reads_a_known_order_against_its_references(monkeypatch):
    monkeypatch.setattr(ranking, "aggregate", _aggregate)
    ranks = {"a": 1, "b": 2, "c": 3, "d": 4, "z": 5}
    run = FakeRun([{"source": "s1", "over": ["euler:5"], "ranks": ranks},
                   {"source": "s2", "over": ["euler:50"], "ranks": ranks},
                   {"source": "s3", "over": ["euler:5", "euler:50"], "ranks": ranks},
                   {"source": "s4", "over": ["euler:10"], "ranks": ranks}])
    summary, arms = references.agreement(run)
    s = summary.set_index("source")
    assert s.loc["s1", "tau_b"] == pytest.approx(1.0) and s.loc["s2", "tau_b"] == pytest.approx(-1.0)
    # every seed has the same order: the seed range is the point
    assert s.loc["s1", ["tau_lo", "tau_hi"]].tolist() == pytest.approx([1.0, 1.0])
    # n = 4, |tau| = 1: the exact p is 2 / 24
    assert s.loc["s1", "p_perm"] == pytest.approx(2 / 24, abs=0.02)
    # averaged over both settings every shared arm ranks 2.5: no order, no tau
    assert math.isnan(s.loc["s3", "tau_b"])
    assert s.loc["s4", "problem"] == "the run has no euler:10" and s.loc["s1", "lacking"] == "z"
    # e, only in the run, is left out: the fronts are sorted again among a-d
    mine = arms[arms.reference == 2].set_index("label")["here"].to_dict()
    assert mine == {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    text = references.section(_writable(run, monkeypatch))
    assert "| 1 | mnist | s1 | `euler:5` | 4 | 1.00 | 1.00 to 1.00 |" in text
    assert "This run's e is in no source's ranking" in text and "Sources 1, 2, 3 and 4 also rank z" in text


def _writable(run, monkeypatch):
    written = {}
    monkeypatch.setattr(references, "write_text_atomic", lambda path, text: written.setdefault(path, text))
    return run


def test_a_reference_to_a_setting_no_trial_evaluates_is_exit_2_in_the_full_grid_and_a_note_in_a_preset():
    from bench.experiment.references import check

    grid = load_grid("formulations")
    trials = grid.trials()
    assert check(grid.references, trials, "grid 'formulations'") == grid.references
    typo = [*grid.references, ReferenceRanks("a paper", ("euler:7",), (("rf", 1.0), ("v/cos", 2.0)))]
    with pytest.raises(InputError, match=r"number 4 \('a paper'\) names euler:7, which no trial evaluates"):
        check(typo, trials, "grid 'formulations'")
    notes: list[str] = []
    assert check(typo, trials, "x", strict=False, notes=notes) == grid.references
    assert notes == ["reference ranks 'a paper' are not compared by this run: no trial evaluates euler:7"]
