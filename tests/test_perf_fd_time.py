"""``bench perf``'s time-to-FD case (bench.perf.fd_time): the interpolated training seconds at which a
learning curve first reaches a target, and the table built from a fake run whose answers are worked
by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.experiment.config import RunConfig
from bench.experiment.grid import trial_id
from bench.experiment.rundir import write_rows
from bench.registry import InputError
from bench.report.curves import time_to_reach

STEPS = (25, 50, 75, 100)  # curve points at 25, 50, 75; the final evaluation at 100
#: (model, seed) -> (seconds per training step, fd_mnist_clf at STEPS). The baseline (tiny) seeds end
#: at 30 and 40: seed 1 never reaches the mean (35), so only per-seed targets pair every seed.
CURVES = {("tiny", 0): (1.0, (100, 60, 40, 30)), ("tiny", 1): (1.0, (110, 70, 50, 40)),
          ("tiny_wide", 0): (2.0, (50, 30, 20, 15)), ("tiny_wide", 1): (2.0, (80, 45, 25, 15))}


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
def _make_run(run: Path, metric: str = "fd_mnist_clf", trained_in: str = "") -> Path:
    rows = []
    for (model, seed), (per_step, values) in CURVES.items():
        cfg = RunConfig(dataset="mnist", schedule="cosine", model=model, seed=seed, train_steps=100, batch_size=8,
                        evals="ddim:10", metrics=metric, eval_at="25,50,75", curve_metrics=metric)
        base = {**cfg.to_dict(), "trial_id": trial_id(cfg), "arm": cfg.arm(), "status": "ok", "error": "",
                "train_steps_done": 100, "sampler": "ddim", "sample_steps": 10,
                "trained_in": trained_in if model == "tiny_wide" else ""}
        for step, value in zip(STEPS, values):
            rows.append({**base, "train_step": step, "train_seconds": per_step * step, metric: value})
    run.mkdir(parents=True)
    write_rows(run, rows)
    (run / "env.json").write_text(json.dumps({"platform": "Linux x86_64", "cpu_count": 2, "runner": "ray",
                                              "cpus_per_trial": 1}))
    return run


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from bench.perf import fd_time

    return fd_time.measure(_make_run(tmp_path_factory.mktemp("fd") / "run"))


def _row(rows, arm_model: str, target_of: str, unit: str = "training seconds"):
    return next(r for r in rows if arm_model in r["arm"] and r["target_of"] == target_of and r["metric"] == unit)


def test_targets_are_the_baselines_scores_per_seed_at_half_and_at_the_end(measured):
    rows, _, notes = measured
    goals = {r["target_of"]: r["target"] for r in rows if r["metric"] == "training seconds"}
    assert goals == {"step 50": 65.0, "its end": 35.0}  # means of the per-seed targets (60, 70) and (30, 40)
    assert "model=tiny]" in rows[0]["baseline"]  # the run's first arm
    assert "fd_mnist_clf at ddim:10 on mnist" in notes[0] and "runner ray" in notes[0]


def test_seconds_and_paired_speed_ups_match_the_hand_worked_values(measured):
    rows, _, _ = measured
    for what, t in (("its end", 100.0), ("step 50", 50.0)):  # every baseline seed reaches its own target there
        base = _row(rows, "model=tiny]", what)
        assert (base["median"], base["reps"], base["ratio"], base["paired"]) == (t, 2, 1.0, 2)
    wide_half = _row(rows, "tiny_wide", "step 50")
    # seed 0 is at 50 <= 60 at its first point (50 s, a bound); seed 1 crosses 70 between 80 @ 50 s and
    # 45 @ 100 s: 50 + 50 * (80 - 70) / (80 - 45) = 64.29 s; the baseline reaches 60 and 70 at 50 s
    assert wide_half["lo"] == 50.0 and wide_half["hi"] == pytest.approx(450 / 7) and wide_half["bounds"] == 1
    assert wide_half["ratio_lo"] == pytest.approx(0.7 / 0.9) and wide_half["ratio_hi"] == 1.0
    assert "upper bound" in wide_half["note"]
    wide_end = _row(rows, "tiny_wide", "its end")
    # seed 0 reaches 30 at 100 s; seed 1 reaches 40 between 45 @ 100 s and 25 @ 150 s: 100 + 50 * 5 / 20 = 112.5 s
    assert wide_end["lo"] == 100.0 and wide_end["hi"] == 112.5 and wide_end["bounds"] == 0
    assert wide_end["ratio"] == pytest.approx((1.0 + 100 / 112.5) / 2) and wide_end["paired"] == 2
    # in optimizer steps (tiny_wide takes 2 s a step, so its seconds are twice its steps): seed 0 reaches 30 at
    # step 50, seed 1 reaches 40 at step 56.25; the baseline at step 100 in both: speed-ups 2 and 1.78
    steps_end = _row(rows, "tiny_wide", "its end", "training steps")
    assert (steps_end["lo"], steps_end["hi"]) == (50.0, 56.25)
    assert steps_end["ratio"] == pytest.approx((2.0 + 100 / 56.25) / 2) and steps_end["case"].endswith(
        "steps to fd_mnist_clf <= the baseline's at its end")
    rates = {r["arm"]: r["median"] for r in rows if r["metric"] == "images/s"}
    assert sorted(rates.values()) == [4.0, 8.0]  # 800 images in 200 s and in 100 s


def test_table_and_figure(measured, tmp_path):
    import pandas as pd

    from bench.perf import fd_time
    from bench.perf.report import time_to_fd_table

    rows, points, _ = measured
    lines = time_to_fd_table(pd.DataFrame(rows))
    assert len(lines) == 2 + 2 and "speed-up" in lines[0] and "| steps to fd_mnist_clf <= the baseline's at its end" in lines[0]
    assert "<= 57.1 (50.0-64.3, n=2)" in lines[3]  # median of 50 (a bound: marked) and 64.3
    assert ">= **0.89x** (0.78-1.00, n=2)" in lines[3]  # a bound on a time is a bound on its speed-up
    fd_time.plot(points, "fd_mnist_clf", tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bad_input_is_one_clear_error_before_work(tmp_path):
    from bench.perf import run_perf

    with pytest.raises(InputError, match="needs --from-run"):
        run_perf(tmp_path, only="time_to_fd")
    with pytest.raises(InputError, match="no rows.csv"):
        run_perf(tmp_path, only="time_to_fd", from_run=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_only_time_to_fd_writes_beside_not_over_the_device_measurement(tmp_path):
    from bench.perf import run_perf

    run = _make_run(tmp_path / "fd-run")
    target = run_perf(tmp_path / "perf", only="time_to_fd", from_run=run)
    assert target == tmp_path / "perf" / "time_to_fd" / "fd-run"
    md = (target / "perf.md").read_text()
    assert f"--only time_to_fd --from-run {run}" in md and "## Wall time to a fixed FD" in md
    assert md.startswith("# bench perf — time to a fixed FD in run `fd-run`") and "torch threads" not in md
    assert (target / "time_to_fd.png").exists()
    with pytest.raises(InputError, match="--from-run is read by the time_to_fd section only"):
        run_perf(tmp_path / "perf", only="sample", from_run=run)


def test_a_higher_is_better_curve_is_refused(tmp_path):
    from bench.perf import fd_time

    with pytest.raises(InputError, match="no lower-is-better metric"):
        fd_time.measure(_make_run(tmp_path / "run", metric="precision_clf"))


def test_trials_that_adopted_another_runs_model_are_named_in_the_notes(tmp_path):
    """Their train_seconds include the source's, timed under another run's load: the notes say to read steps."""
    from bench.perf import fd_time

    _, _, notes = fd_time.measure(_make_run(tmp_path / "run", trained_in="/elsewhere/_work/trials/x"))
    assert any("2 trial(s) of this run adopted or continued" in n and "read their steps" in n for n in notes)
    _, _, plain = fd_time.measure(_make_run(tmp_path / "plain"))
    assert not any("adopted" in n for n in plain)
