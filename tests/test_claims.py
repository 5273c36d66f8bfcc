"""Published claims (bench.experiment.claims): parsing, the exit-2 checks, the contrasts against scipy and hand
arithmetic, the verdicts, the grid.toml round trip, a --resume that updates claims only, and the
report section."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bench.experiment import claims
from bench.experiment.claims import AGREES, DISAGREES, UNRESOLVED, Claim, evaluate, parse_claims
from bench.experiment.config import from_dict
from bench.experiment.grid import Grid, read_toml
from bench.registry import InputError

SEEDS = [0, 1, 2, 3, 4]


def lower(metric: str) -> bool:  # every metric here is read as lower is better
    return False


def rows_of(scores: dict, tmp=None) -> pd.DataFrame:
    """{(schedule, sampler, steps): [score per seed]} -> rows as rows.csv gives them back (through a CSV
    file: typed by pandas, as the report reads them)."""
    import io

    out = [{"schedule": sch, "sampler": smp, "sample_steps": n, "seed": s, "fd": v, "status": "ok",
            "zero_terminal_snr": False, "skip_start": 0.2 if n == 10 else 0.0, "theta_0": np.nan}
           for (sch, smp, n), vals in scores.items() for s, v in zip(SEEDS, vals)]
    return pd.read_csv(io.StringIO(pd.DataFrame(out).to_csv(index=False)))


DDIM10 = [300.0, 320.0, 310.0, 305.0, 330.0]
DDPM10 = [350.0, 330.0, 360.0, 340.0, 345.0]
DDIM100 = [200.0, 210.0, 190.0, 205.0, 215.0]
DDPM100 = [204.0, 209.0, 199.0, 206.0, 222.0]
SCORES = {("linear", "ddim", 10): DDIM10, ("linear", "ddpm", 10): DDPM10,
          ("linear", "ddim", 100): DDIM100, ("linear", "ddpm", 100): DDPM100,
          ("cosine", "ddim", 10): DDPM10, ("cosine", "ddpm", 10): DDIM10}  # cosine: the other way round


def claim(**kw) -> Claim:
    raw = {"claim": "c", "source": "s", "metric": "fd_pixels", **kw}
    return parse_claims([raw], "test")[0]


def test_simple_claim_is_the_paired_t_of_the_scores_in_the_metrics_direction():
    c = claim(better={"sampler": "ddim", "sample_steps": 10}, than={"sampler": "ddpm", "sample_steps": 10},
              for_each="schedule")
    c = Claim(**{**c.__dict__, "metric": "fd"})
    t = evaluate([c], rows_of(SCORES), lower)
    assert list(t["group"]) == ["schedule = linear", "schedule = cosine"]
    lin, cos = t.iloc[0], t.iloc[1]
    d = np.array(DDPM10) - np.array(DDIM10)  # lower is better: the claim's contrast is fd(ddpm) - fd(ddim)
    assert lin["diff"] == pytest.approx(d.mean())
    assert lin["p"] == pytest.approx(st.ttest_rel(DDPM10, DDIM10).pvalue)
    half = st.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert (lin["lo"], lin["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert lin["verdict"] == AGREES and cos["verdict"] == DISAGREES
    assert cos["diff"] == pytest.approx(-d.mean())
    assert lin["contrast"] == "fd(ddpm:10) - fd(ddim:10)"


def test_holm_runs_over_every_contrast_and_the_verdict_reads_it():
    """Three contrasts with distinct p-values: Holm by hand (Holm 1979: sorted p_(i) times (m - i + 1),
    running maximum); a contrast whose interval excludes 0 with Holm p >= 0.05 is not resolved."""
    def cell(smp, n):
        return ({"sampler": smp, "sample_steps": n},)

    cs = [Claim("ddim ahead at 10", "s", "fd", cell("ddim", 10), cell("ddpm", 10)),
          Claim("ddim ahead at 100", "s", "fd", cell("ddim", 100), cell("ddpm", 100)),
          Claim("100 steps ahead of 10", "s", "fd", cell("ddim", 100), cell("ddim", 10))]
    a10, a100 = np.array(DDIM10), np.array(DDIM100)
    scores = {("linear", "ddim", 10): a10, ("linear", "ddpm", 10): a10 + [4, 2, 9, 1, 7],
              ("linear", "ddim", 100): a100, ("linear", "ddpm", 100): a100 + [3, 2, 8, 1, 8]}
    t = evaluate(cs, rows_of(scores), lower)
    p = t["p"].to_numpy()
    assert len(set(np.round(p, 12))) == 3
    order = np.argsort(p)
    expect = np.maximum.accumulate(np.minimum(1, p[order] * (3 - np.arange(3))))
    assert t["p_holm"].to_numpy()[order] == pytest.approx(expect)
    assert list(t["verdict"]) == [AGREES if ph < 0.05 else UNRESOLVED for ph in t["p_holm"]]
    assert (t["p"] < 0.05).all() and (t["lo"] > 0).all()  # every interval excludes 0 ...
    assert list(t["verdict"]) == [UNRESOLVED, UNRESOLVED, AGREES]  # ... but two do not survive Holm


@pytest.mark.parametrize("shift, spread, verdict", [(0.0, 1, AGREES), (15.0, 4, UNRESOLVED), (40.0, 1, DISAGREES)])
def test_margin_is_non_inferiority_with_each_seeds_own_reference(shift, spread, verdict):
    """A = B + shift + noise (lower is better), margin 10% of B (~20): the contrast per seed is
    1.1 B_s - A_s, so a shift of 0 is within the margin, 40 beyond it, 15 with this noise unresolved."""
    noise = np.array([-3.0, 2.0, 4.0, -1.0, -2.0]) * spread
    b = np.array([200.0, 198.0, 202.0, 201.0, 199.0])
    rows = rows_of({("linear", "ddim", 10): list(b + shift + noise), ("linear", "ddim", 50): list(b)})
    c = Claim("little worse", "s", "fd", ({"sample_steps": 10},), ({"sample_steps": 50},), margin=0.1)
    r = evaluate([c], rows, lower).iloc[0]
    per_seed = 1.1 * b - (b + shift + noise)
    assert r["diff"] == pytest.approx(per_seed.mean())
    assert r["p"] == pytest.approx(st.ttest_1samp(per_seed, 0).pvalue)
    assert r["verdict"] == verdict
    assert r["contrast"] == "1.1 fd(sample_steps=50) - fd(sample_steps=10)"


def test_margin_when_higher_is_better():
    """Higher is better: A may be at most 10% below B, contrast A_s - 0.9 B_s."""
    b = np.array([0.50, 0.52, 0.48, 0.51, 0.49])
    a = b - np.array([0.02, 0.03, 0.01, 0.02, 0.025])  # 2-6% lower: within the margin
    rows = rows_of({("linear", "ddim", 10): list(a), ("linear", "ddim", 50): list(b)})
    c = Claim("not much lower", "s", "fd", ({"sample_steps": 10},), ({"sample_steps": 50},), margin=0.1)
    r = evaluate([c], rows, lambda m: True).iloc[0]
    assert r["diff"] == pytest.approx((a - 0.9 * b).mean()) and r["verdict"] == AGREES
    assert r["contrast"] == "fd(sample_steps=10) - 0.9 fd(sample_steps=50)"


def test_a_seed_missing_from_a_cell_is_left_out_and_named():
    rows = rows_of({k: v for k, v in SCORES.items() if k[0] == "linear"})
    gone = (rows["seed"] == 3) & (rows["sampler"] == "ddpm") & (rows["sample_steps"] == 10)
    rows.loc[gone, "status"] = "diverged"
    c = Claim("c", "s", "fd", ({"sampler": "ddim", "sample_steps": 10},), ({"sampler": "ddpm", "sample_steps": 10},))
    r = evaluate([c], rows, lower).iloc[0]
    keep = [0, 1, 2, 4]
    d = np.array(DDPM10)[keep] - np.array(DDIM10)[keep]
    assert r["n"] == 4 and r["left_out"] == "3" and r["diff"] == pytest.approx(d.mean())


def test_typed_columns_match_their_toml_values():
    """rows.csv read back gives bools, floats (0.0 / 0.2) and NaN: cells with true, 0.0 and 0.2 pick them."""
    rows = rows_of(SCORES)
    assert claims.select(rows, {"zero_terminal_snr": False}).shape[0] == len(rows)
    assert claims.select(rows, {"zero_terminal_snr": True}).shape[0] == 0
    assert set(claims.select(rows, {"skip_start": 0.2})["sample_steps"]) == {10}
    assert set(claims.select(rows, {"skip_start": 0.0})["sample_steps"]) == {100}
    assert claims.select(rows, {"sample_steps": 10.0}).shape[0] == claims.select(rows, {"sample_steps": 10}).shape[0] == 20


def test_an_ambiguous_cell_is_a_problem_not_a_number():
    c = Claim("c", "s", "fd", ({"sampler": "ddim", "sample_steps": 10},), ({"sampler": "ddpm", "sample_steps": 10},))
    r = evaluate([c], rows_of(SCORES), lower).iloc[0]  # no for_each: linear and cosine both match
    assert "picks 2 scores of seed 0" in r["problem"] and np.isnan(r["diff"])


@pytest.mark.parametrize("raw, message", [
    ({"better": {"sampler": "ddim"}}, "missing"),
    ({"better": {"sampler": "ddim"}, "than": {"sampler": "ddpm"}, "oops": 1}, "unknown keys ['oops']"),
    ({"better": {"sampler": "ddim"}, "than": [{"sampler": "ddpm"}, {"sampler": "ddim"}]}, "both be one cell"),
    ({"better": {"samplr": "ddim"}, "than": {"sampler": "ddpm"}}, "['samplr'] are not columns"),
    ({"better": {"sampler": "ddim"}, "than": {"sampler": "ddpm"}, "margin": 2}, "margin must be"),
    ({"better": {"sampler": "ddim"}, "than": {"sampler": "ddpm"}, "for_each": "nope"}, "for_each 'nope'"),
    ({"better": {"sampler": "ddim"}, "than": {"sampler": "ddpm"}, "metric": "fdd"}, "unknown metric 'fdd'"),
    ({"better": {"sampler": "ddim", "schedule": "linear"}, "than": {"sampler": "ddpm"}, "for_each": "schedule"},
     "for_each 'schedule' is also set in a cell"),
])
def test_bad_claims_are_bad_input(raw, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_claims([{"claim": "c", "source": "s", "metric": "fd_pixels", **raw}], "grid.toml")


def trials(evals="ddim:5,ddpm:5"):
    return [from_dict({"schedule": s, "seed": k, "evals": evals, "metrics": "fd_pixels", "dataset": "synthetic"})
            for s in ("linear", "cosine") for k in (0, 1)]


def test_check_before_work():
    good = claim(better={"sampler": "ddim"}, than={"sampler": "ddpm"}, for_each="schedule")
    assert claims.check([good], trials(), "g") == [good]
    with pytest.raises(InputError, match="picks 2 scores of seed 0"):
        claims.check([claim(better={"sampler": "ddim"}, than={"sampler": "ddpm"})], trials(), "g")
    missing = claim(better={"sampler": "ddim", "sample_steps": 50}, than={"sampler": "ddpm"}, for_each="schedule")
    with pytest.raises(InputError, match="ddim:50, schedule=linear picks no trial evaluation"):
        claims.check([missing], trials(), "g")
    notes = []
    assert claims.check([missing], trials(), "g", strict=False, notes=notes) == []  # a smaller preset leaves it out
    assert notes == ["claim 'c' is not measured by this run: it ddim:50, schedule=linear picks no trial evaluation"]
    other = Claim(**{**good.__dict__, "metric": "kid"})
    with pytest.raises(InputError, match="reads kid, which no trial scores"):
        claims.check([other], trials(), "g")


def test_grid_toml_round_trip_and_resume_may_update_claims_only(tmp_path):
    from bench.experiment import rundir

    c = [claim(better=[{"sampler": "ddim", "sample_steps": 5}, {"sampler": "ddpm", "sample_steps": 5}],
               than=[{"schedule": "cosine"}, {"schedule": "linear"}], for_each="seed", setting="x \"quoted\" \U0001d703 \x7f \u00d7"),
         claim(better={"skip_start": 0.2}, than={"skip_start": 0.0, "zero_terminal_snr": True}, margin=0.1)]
    grid = Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [0, 1]}, claims=c)
    text = grid.to_toml()
    (tmp_path / "grid.toml").write_text(text)
    assert parse_claims(read_toml(tmp_path / "grid.toml")["claims"], "x") == c
    plain = Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [0, 1]})
    assert text.startswith(plain.to_toml().rstrip("\n"))  # claims come last: old run dirs keep their bytes
    rundir.check(tmp_path, plain, resume=True, probe_lock=False)  # fewer or other claims: still this run
    other = Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [0, 2]}, claims=c)
    with pytest.raises(InputError, match="different resolved grid"):
        rundir.check(tmp_path, other, resume=True, probe_lock=False)


def test_a_grid_may_grow_but_not_change_its_preset_and_a_run_killed_before_its_grid_toml_starts_over(tmp_path):
    """rundir.extension: the trials a grid adds to a run ([] for a directory without grid.toml, as a run killed
    before writing it leaves), None for a grid that drops a trial, runs under another preset's name, or meets a
    grid.toml this code cannot read (then check's one line says so instead of a traceback)."""
    from bench.experiment import rundir

    grid = Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [0, 1]})
    assert rundir.extension(tmp_path, grid) == []  # no grid.toml yet
    (tmp_path / "grid.toml").write_text(grid.to_toml())
    grown = Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [0, 1, 2]})
    assert [c.seed for c in rundir.extension(tmp_path, grown)] == [2]
    rundir.check(tmp_path, grown, resume=True, probe_lock=False)
    assert rundir.extension(tmp_path, Grid("g", "d", "standard", {"dataset": "synthetic"}, {"seed": [0, 1, 2]})) is None
    assert rundir.extension(tmp_path, Grid("g", "d", "quick", {"dataset": "synthetic"}, {"seed": [1, 2]})) is None
    (tmp_path / "grid.toml").write_text(grid.to_toml().replace('dataset = "synthetic"', 'no_such_field = 1'))
    assert rundir.extension(tmp_path, grown) is None
    with pytest.raises(InputError, match="a --resume may only add trials"):
        rundir.check(tmp_path, grown, resume=True, probe_lock=False)


def test_report_section_words_and_figure(tmp_path):
    from bench.report import claims as report_claims
    from bench.report.tables import Run

    gap = {"claim": "the gap shrinks", "source": "Song et al. 2021, Table 1", "metric": "fd_pixels",
           "better": [{"sampler": "ddim", "sample_steps": 10}, {"sampler": "ddpm", "sample_steps": 10}],
           "than": [{"sampler": "ddim", "sample_steps": 100}, {"sampler": "ddpm", "sample_steps": 100}],
           "setting": "CIFAR-10 there, MNIST here"}
    ahead = {"claim": "DDIM is ahead at 10 steps", "source": "Song et al. 2021", "metric": "fd_pixels",
             "better": {"sampler": "ddim", "sample_steps": 10}, "than": {"sampler": "ddpm", "sample_steps": 10},
             "for_each": "schedule"}
    rows = rows_of(SCORES).rename(columns={"fd": "fd_pixels"})
    run = Run(tmp_path, rows, None, {"claims": [gap, ahead]}, {})
    text = report_claims.section(run)
    assert "2 published claims, measured here as 3 paired contrasts (1 agrees, 1 disagrees, 1 not measured)" in text, text
    assert "**disagrees**: the interval" in text and "the opposite of the claim" in text
    assert "*Differences of setting*: CIFAR-10 there, MNIST here" in text
    assert "picks 2 scores of seed 0" in text  # the gap claim has no for_each: linear and cosine both match
    plots = report_claims.plot_claims(run, tmp_path / "plots")
    assert [p.png.name for p in plots] == ["claims_fd_pixels.png"] and plots[0].png.stat().st_size > 1000
    assert report_claims.section(Run(tmp_path, rows, None, {}, {})) == ""
    failed = rows.assign(status=np.where(rows["schedule"] == "cosine", "error", "ok"))  # every cosine trial failed
    text = report_claims.section(Run(tmp_path, failed, None, {"claims": [ahead]}, {}))
    assert "schedule = cosine: — over 0 seeds" in text and "not measured: 0 seed(s) with a score in every cell" in text


def test_a_preset_that_cannot_measure_a_claim_says_so(tmp_path):
    """The smoke preset scores fd_pixels only: every claim of the probe (fd_mnist_clf) is left out of
    the run, and the plan carries one line per claim for the run and the dry run to print."""
    from bench.run.plan import plan_grid

    plan = plan_grid("probe_sampler_steps", "smoke", out=tmp_path / "run")
    assert plan.grid.claims == [] and len(plan.unmeasured) == 5
    assert plan.unmeasured[0].startswith("claim 'DDIM (eta = 0) samples better") and "reads fd_mnist_clf" in plan.unmeasured[0]
    assert set(plan.unmeasured) <= set(plan.grid.notes)
