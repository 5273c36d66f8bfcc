"""``bench perf``'s time-to-FD case (bench.perf.fd_time): the interpolated training seconds at which a
learning curve first reaches a target, and the table built from a fake run whose answers are worked
by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.config import RunConfig
from bench.grid import trial_id
from bench.registry import InputError
from bench.report.curves import time_to_reach
from bench.rundir import write_rows

STEPS = (25, 50, 75, 100)  # curve points at 25, 50, 75; the final evaluation at 100
#: (model, seed) -> (seconds per training step, fd_mnist_clf at STEPS)
CURVES = {("tiny", 0): (1.0, (100, 60, 40, 30)), ("tiny", 1): (1.0, (100, 60, 40, 30)),
          ("tiny_wide", 0): (2.0, (50, 30, 20, 15)), ("tiny_wide", 1): (2.0, (70, 40, 25, 15))}


# --- time_to_reach --------------------------------------------------------------------------------
def test_time_to_reach_interpolates_between_the_bracketing_points():
    assert time_to_reach([10, 20, 30], [100, 60, 20], 40) == (25.0, False)  # halfway from 60 to 20
    assert time_to_reach([10, 20, 30], [100, 60, 20], 60) == (20.0, False)  # reached exactly at a point
    assert time_to_reach([10, 20, 30], [100, 60, 20], 100) == (10.0, True)  # the first point: only a bound
    t, bound = time_to_reach([10, 20, 30], [100, 60, 20], 10)
    assert math.isnan(t) and not bound  # never reached


def test_time_to_reach_takes_the_first_crossing_and_skips_missing_points():
    # down to 40 at 20 s, back up (a noisy point), down again: the first crossing counts
    assert time_to_reach([10, 20, 30, 40], [80, 40, 90, 30], 60) == (15.0, False)
    assert time_to_reach([10, float("nan"), 30], [80, 10, 40], 60) == (20.0, False)  # the NaN time is dropped


# --- the section on a fake run ------------------------------------------------------------------------
def _make_run(run: Path) -> Path:
    rows = []
    for (model, seed), (per_step, values) in CURVES.items():
        cfg = RunConfig(dataset="mnist", schedule="cosine", model=model, seed=seed, train_steps=100, batch_size=8,
                        evals="ddim:10", metrics="fd_mnist_clf", eval_at="25,50,75", curve_metrics="fd_mnist_clf")
        base = {**cfg.to_dict(), "trial_id": trial_id(cfg), "arm": cfg.arm(), "status": "ok", "error": "",
                "train_steps_done": 100, "sampler": "ddim", "sample_steps": 10}
        for step, value in zip(STEPS, values):
            rows.append({**base, "train_step": step, "train_seconds": per_step * step, "fd_mnist_clf": value})
    run.mkdir(parents=True)
    write_rows(run, rows)
    (run / "env.json").write_text(json.dumps({"platform": "Linux x86_64", "cpu_count": 2, "runner": "ray",
                                              "cpus_per_trial": 1}))
    return run


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from bench.perf import fd_time

    return fd_time.measure(_make_run(tmp_path_factory.mktemp("fd") / "run"))


def _row(rows, arm_model: str, target_of: str):
    return next(r for r in rows if arm_model in r["arm"] and r["target_of"] == target_of
                and r["metric"] == "training seconds")


def test_targets_are_the_baselines_scores_at_half_and_at_the_end(measured):
    rows, _, notes = measured
    goals = {r["target_of"]: r["target"] for r in rows if r["metric"] == "training seconds"}
    assert goals == {"step 50": 60.0, "its end": 30.0}
    assert "model=tiny]" in rows[0]["baseline"]  # the run's first arm
    assert "fd_mnist_clf on mnist" in notes[0] and "runner ray" in notes[0]


def test_seconds_and_paired_speed_ups_match_the_hand_worked_values(measured):
    rows, _, _ = measured
    base = _row(rows, "model=tiny]", "its end")
    assert (base["median"], base["reps"], base["ratio"]) == (100.0, 2, 1.0)
    wide_half = _row(rows, "tiny_wide", "step 50")
    # seed 0 is at 30 <= 60 at its first point (50 s, a bound); seed 1 crosses 60 between 70 @ 50 s and
    # 40 @ 100 s: 50 + 50 * (70 - 60) / (70 - 40) = 66.7 s; the baseline reaches 60 at 50 s in both seeds
    assert wide_half["lo"] == 50.0 and wide_half["hi"] == pytest.approx(200 / 3)
    assert wide_half["ratio_lo"] == pytest.approx(0.75) and wide_half["ratio_hi"] == 1.0
    assert "upper bound" in wide_half["note"]
    wide_end = _row(rows, "tiny_wide", "its end")
    # seed 0 reaches 30 at 100 s; seed 1 between 40 @ 100 s and 25 @ 150 s: 100 + 50 * 10 / 15 = 133.3 s
    assert wide_end["lo"] == 100.0 and wide_end["hi"] == pytest.approx(400 / 3)
    assert wide_end["ratio"] == pytest.approx((1.0 + 0.75) / 2)
    rates = {r["arm"]: r["median"] for r in rows if r["metric"] == "images/s"}
    assert sorted(rates.values()) == [4.0, 8.0]  # 800 images in 200 s and in 100 s


def test_table_and_figure(measured, tmp_path):
    import pandas as pd

    from bench.perf import fd_time
    from bench.perf.report import time_to_fd_table

    rows, points, _ = measured
    lines = time_to_fd_table(pd.DataFrame(rows))
    assert len(lines) == 2 + 2 and "speed-up" in lines[0]
    assert "<= 58.3 (50.0-66.7, n=2)" in lines[3]  # median of 50 (a bound: marked) and 66.7
    fd_time.plot(points, "fd_mnist_clf", tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bad_input_is_one_clear_error_before_work(tmp_path):
    from bench.perf import run_perf

    with pytest.raises(InputError, match="needs --from-run"):
        run_perf(tmp_path, only="time_to_fd")
    with pytest.raises(InputError, match="no rows.csv"):
        run_perf(tmp_path, only="time_to_fd", from_run=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
