"""The driver's progress model (bench.run.eta): its lines, its ETA, and the fail-fast rule."""

import time

from bench.run import eta


def test_progress_line_format(capsys):
    p = eta.Progress(total=12, done_before=2, at_once=2)
    p.t0 -= 240  # 4 minutes into the fan-out
    p.begin("a", 0, 500)
    p.trial_done("linear / gaussian | mnist | seed 0", [{"trial_id": "a", "status": "ok", "trial_s": 120.0}])
    p.step("b", "cosine / gaussian | mnist | seed 0", 250, 500, 105.0, force=True)
    err = capsys.readouterr().err
    assert "[3/12] linear / gaussian | mnist | seed 0: ok in 2.0 min; 3 finished (0 failed), 0 running of 12" in err
    assert "ETA 9.0 min" in err  # 9 left x 2 min a trial / 2 at a time
    assert "step 250/500, 105 img/s" in err

    early = eta.Progress(total=4, done_before=0, at_once=2)  # before any trial finished: from the steps
    early.t0 -= 100
    early.running = {"a": (50, 100), "b": (50, 100)}
    assert early.eta() == "ETA > 5.0 min (training only, until a trial finishes)"  # 200 s a trial, 1.5 waves left


def test_progress_eta_after_a_resume_counts_only_what_this_session_ran():
    """A --resume restarts the running trials from their checkpoints near the end: their few steps
    and short durations must not set the rate (before: 16 trials of 18 min each were announced as
    27 min away; once they finished, as a few minutes)."""
    p = eta.Progress(total=20, done_before=4, at_once=2)
    p.step("a", "a", 4250, 4500, start=4250)  # resumed from their checkpoints ...
    p.step("b", "b", 4300, 4500, start=4250)
    p.first_seen = {tid: (s, t - 60) for tid, (s, t) in p.first_seen.items()}  # ... a minute ago
    p.step("a", "a", 4500, 4500, start=4250)  # 250 and 200 steps in 60 s
    p.step("b", "b", 4500, 4500, start=4250)
    per_trial = (4500 / (250 / 60) + 4500 / (200 / 60)) / 2  # their whole training at their rates: 18 and 22.5 min
    assert p.eta() == f"ETA > {eta.duration(14 * per_trial / 2)} (training only, until a trial finishes)"  # 14 to start
    p.trial_done("a", [{"trial_id": "a", "status": "ok", "trial_s": 300.0}])
    p.trial_done("b", [{"trial_id": "b", "status": "ok", "trial_s": 280.0}])
    assert not p.durations  # both resumed: their 5 minutes are not a trial's duration
    p.step("c", "c", 45, 4500)  # a fresh trial, first seen at its first report
    p.trial_done("c", [{"trial_id": "c", "status": "ok", "trial_s": 1100.0}])
    assert p.durations == [1100.0] and p.eta() == f"ETA {eta.duration(13 * 1100.0 / 2)}"
    p.step("d", "d", 10, 10, start=0)  # a short trial whose one report is its last step: fresh by its start_step
    p.step("e", "e", 4500, 4500, start=4250)  # resumed at 4250
    p.trial_done("d", [{"trial_id": "d", "status": "ok", "trial_s": 900.0}])
    p.trial_done("e", [{"trial_id": "e", "status": "ok", "trial_s": 60.0}])
    assert p.durations == [1100.0, 900.0]
    p.begin("f", 0, 4500)  # adopted a finished model (reuse_training): it only evaluated
    p.trial_done("f", [{"trial_id": "f", "status": "ok", "trial_s": 200.0, "trained_in": "../other/trial"}])
    p.trial_done("g", [{"trial_id": "g", "status": "ok", "trial_s": 30.0}])  # never seen training (e.g. killed in evaluation)
    assert p.durations == [1100.0, 900.0]
    p.step("h", "h", 4600, 36000, start=4500)  # continued a 4500-step trial (issue 36's long presets): it trained here
    p.trial_done("h", [{"trial_id": "h", "status": "ok", "trial_s": 4000.0, "trained_in": "../std/trial",
                        "adopted_step": 4500}])
    p.step("i", "i", 36000, 36000, start=36000)  # adopted a finished 36000-step model: evaluation only
    p.trial_done("i", [{"trial_id": "i", "status": "ok", "trial_s": 100.0, "trained_in": "../long/trial",
                        "adopted_step": 36000}])
    assert p.durations == [1100.0, 900.0, 4000.0]


def test_progress_counts_trials_that_only_evaluate_as_running(capsys):
    """Under Ray an adopted trial never reports steps: it still runs (before: '0 running of 15' while
    two adopted trials were evaluating), and it does not enter the ETA's step fractions."""
    p = eta.Progress(total=15, done_before=0, at_once=2)
    p.launched("a")
    p.launched("b")
    assert p.counts() == "0 finished (0 failed), 2 running of 15" and not p.running
    p.step("b", "b", 10, 100)  # b turns out to train: still one trial
    assert p.counts() == "0 finished (0 failed), 2 running of 15"
    p.trial_done("a", [{"trial_id": "a", "status": "ok", "trial_s": 180.0, "trained_in": "../x"}])
    assert "1 finished (0 failed), 1 running of 15" in capsys.readouterr().err


def test_progress_says_what_a_trial_samples_at_which_rate_and_how_long_it_has_left(capsys):
    """Before: after a trial's last training step the driver said nothing for the 30+ min of a ddpm:1000
    evaluation (the crater grid); now a trial's sampling reports reach it (bench.run.trial.sampling_ticks,
    through Tune or run_local) as a line with the rate and that sampling's ETA."""
    p = eta.Progress(total=6, done_before=0, at_once=2)
    p.last -= eta.PROGRESS_EVERY_S
    p.note("a", "linear / gaussian | craters | seed 0", 3063, {"eval": "ddpm:1000", "eval_step": 250,
                                                                "eval_steps": 1000, "eval_s": 500.0})
    err = capsys.readouterr().err
    assert ("running linear / gaussian | craters | seed 0: sampling ddpm:1000, step 250/1000, 0.50 steps/s, "
            "ETA 25.0 min; 0 finished (0 failed), 1 running of 6") in err  # 750 steps left at 0.5/s
    p.note("a", "x", 3063, {"eval": "ddpm:1000", "eval_step": 260, "eval_steps": 1000, "eval_s": 520.0})
    assert capsys.readouterr().err == ""  # within 30 s of the last line: quiet
    p.last -= eta.PROGRESS_EVERY_S
    before = (dict(p.running), set(p.started))
    p.note("a", "x", 3063, {"training_iteration": 7})  # Tune's bookkeeping: neither steps nor sampling
    assert capsys.readouterr().err == "" and (p.running, p.started) == before  # ignored, though a line was due
    p.note("b", "y", 3063, {"step": 100, "images_per_s": 20.0, "start_step": 0})  # the trainer's reports still count
    assert p.running["b"] == (100, 3063) and p.start["b"] == 0


def test_progress_training_rate_stops_at_the_last_step_while_a_trial_evaluates():
    """Before: a resumed crater trial sampling for 30 min after its last step kept lowering its own
    'training rate' (steps / time since first seen), and the bound said 3.6 h where training took 1.2."""
    p = eta.Progress(total=3, done_before=0, at_once=1)
    p.step("a", "a", 2000, 3000, start=2000)
    p.first_seen["a"] = (2000, time.time() - 1800)  # first seen 30 min ago at step 2000 ...
    p.step("a", "a", 3000, 3000)
    p.stepped_at["a"] -= 900  # ... its last step 15 min ago, sampling since
    # 1000 steps in 900 s: 2700 s a trial; 2 trials to train (the running one has none left)
    assert p.eta() == f"ETA > {eta.duration(2 * 2700)} (training only, until a trial finishes)"


def test_progress_eta_counts_the_sampling_under_way_when_every_trial_has_trained():
    """Before: the crater grid's last two trials, both trained and sampling ddpm:1000 for 20 more
    minutes, read 'ETA > 0 s (training only, ...)'. The bound is now the longest sampling's time left."""
    p = eta.Progress(total=6, done_before=4, at_once=2)
    for tid in ("a", "b"):
        p.step(tid, tid, 2000, 3063, start=2000)
        p.first_seen[tid] = (2000, time.time() - 1800)
        p.step(tid, tid, 3063, 3063)
    p.evaluating("a", "a", "ddpm:1000", 400, 1000, 800.0)  # 0.5 steps/s, 600 left: 20 min
    p.evaluating("b", "b", "ddpm:1000", 100, 1000, 100.0)  # 1 step/s, 900 left: 15 min
    assert p.eta() == "ETA > 20.0 min (the sampling under way only, until a trial finishes)"
    p.trial_done("a", [{"status": "ok", "trial_id": "a", "trial_s": 4000.0}])
    assert "b" in p.sampled_by and "a" not in p.sampled_by


def test_progress_eta_is_never_less_than_the_longest_running_trial():
    """The last trial of a grid runs on one slot however many there are: 90% of a 1000 s trial is
    left, so 15 min, not that time spread over 4 slots (3.8 min)."""
    p = eta.Progress(total=5, done_before=4, at_once=4)
    p.durations = [1000.0]
    p.running = {"z": (100, 1000)}
    assert p.eta() == "ETA 15.0 min"


def test_different_or_trial_specific_errors_do_not_stop_the_grid():
    p = eta.Progress(total=6, done_before=0, at_once=1)
    rows = lambda tid, status, error="": [{"trial_id": tid, "status": status, "error": error}]  # noqa: E731
    p.trial_done("a", rows("a", "error", "DataError: no data"))
    assert not p.shared_failure()  # one is not a pattern
    p.trial_done("b", rows("b", "error", "DataError: no data"))
    assert p.shared_failure() == "DataError: no data"
    q = eta.Progress(total=6, done_before=0, at_once=1)
    q.trial_done("a", rows("a", "error", "ValueError: diverged weights"))
    q.trial_done("b", rows("b", "error", "ValueError: diverged weights"))
    assert not q.shared_failure()  # a trial's own failure: the others may well succeed
    r = eta.Progress(total=6, done_before=0, at_once=1)
    r.trial_done("a", rows("a", "ok"))
    r.trial_done("b", rows("b", "error", "DataError: no data"))
    r.trial_done("c", rows("c", "error", "DataError: no data"))
    assert not r.shared_failure()  # one trial got through: not every trial meets it


def test_earlier_sessions_trials_set_the_eta_of_a_resume_until_one_of_its_own_finishes():
    """A --resume knew no trial duration until one of its own finished, and said a training-only lower bound
    for the first quarter hour (issue 35's run: "ETA > 6.2 h" where ~3.5 h remained). The trials earlier
    sessions trained give it from the start: training over every attempt plus every evaluation."""
    def trial(train_s, evals, **extra):  # a curve point and two final evaluations, as rows.csv holds them
        return [{"status": "ok", "trial_id": "t", "train_seconds": t, "sample_s": s, "score_s": 1.0, **extra}
                for t, s in zip(train_s, evals)]

    finished = {
        "a": trial([100.0, 400.0, 400.0], [20.0, 30.0, 100.0]),  # 400 s of training + 150 s sampling + 3 s scoring
        "b": trial([120.0, 500.0, 500.0], [25.0, 35.0, 140.0], trained_in=""),  # an empty cell: trained here
        "c": trial([0.0, 0.0], [30.0, 100.0], trained_in="../other/_work/trials/x"),  # adopted: evaluated only
        "d": [{"status": "error", "trial_id": "d", "train_seconds": 50.0}],  # failed: no duration
        "e": [{"status": "ok", "trial_id": "e", "train_s": 600.0, "sample_s": 10.0}],  # rows before train_seconds
        "f": trial([float("nan"), 300.0], [20.0, 60.0], trained_in=float("nan")),  # NaN cells as rows.csv reads them
    }
    assert eta.earlier_seconds(finished) == [553.0, 703.0, 382.0]
    p = eta.Progress(total=10, done_before=6, at_once=2, earlier=eta.earlier_seconds(finished))
    per_trial = 553.0  # the median of 553, 703 and 382 s
    assert p.eta() == (f"ETA {eta.duration(4 * per_trial / 2)} (at the median of 3 trials of earlier sessions, "
                       f"{eta.duration(per_trial)} a trial)")
    p.step("g", "g", 45, 4500)  # a trial of this session, from its start ...
    p.trial_done("g", [{"trial_id": "g", "status": "ok", "trial_s": 1200.0}])
    assert p.eta() == f"ETA {eta.duration(3 * 1200.0 / 2)}"  # ... then this session's load sets it
