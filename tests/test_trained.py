"""Evaluation-only trials (bench.training.trained): a trial with reuse_training adopts the final model of a
finished trial with the same training fields instead of training again (issue 17's probes)."""

import json
import time

import pandas as pd
import pytest
import torch

from bench.experiment.config import RunConfig, validate
from bench.run.dryrun import steps_to_train
from bench.run.trial import run_trial
from bench.training import trained
from bench.training.train import load_ema

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = RunConfig(dataset="synthetic", timesteps=50, model="tiny", train_steps=12, batch_size=8, warmup_steps=2,
                  ema_decay=0.9, checkpoint_every=6, evals="ddim:3", n_samples=8, metrics="fd_pixels")


@pytest.fixture(autouse=True)
def own_index(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_TRAINED", str(tmp_path / "trained"))


def test_train_key_ignores_evaluation_fields_only():
    base = trained.train_key(SMOKE)
    for change in ({"evals": "ddpm:10"}, {"skip_start": 0.2}, {"n_samples": 99}, {"metrics": "kid"}, {"eval_at": "0.5"},
                   {"image_seeds": "per_seed"}, {"reuse_training": True}, {"checkpoint_every": 3}, {"ddim_eta": 1.0}):
        assert trained.train_key(SMOKE.replace(**change)) == base, change
    for change in ({"seed": 1}, {"schedule": "cosine"}, {"train_steps": 13}, {"lr": 1e-3}, {"prediction": "v"},
                   {"noise": "gamma", "theta_0": 0.1}, {"dropout": 0.0}):
        assert trained.train_key(SMOKE.replace(**change)) != base, change


def test_an_evaluation_only_trial_adopts_the_model_and_samples_as_the_trainer_would(tmp_path):
    """The source trains (with a learning curve, under a forked RNG); the probe with other evaluations
    adopts its final weights bit for bit, trains no step, and scores its own evaluation exactly as the
    source would have (same weights, same image seeds)."""
    src = SMOKE.replace(eval_at="0.5", evals="ddim:3,ddim:5")
    src_rows = run_trial(src, tmp_path / "src", device="cpu", progress=False)
    probe = SMOKE.replace(evals="ddim:5,ddpm:4", reuse_training=True)
    rows = run_trial(probe, tmp_path / "probe", device="cpu", progress=False)
    assert {r["trained_in"] for r in rows} == {str((tmp_path / "src").resolve())}
    assert all(r["status"] == "ok" and r["train_steps_done"] == 12 for r in rows)
    a, b = load_ema(tmp_path / "src"), load_ema(tmp_path / "probe")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    same = {r["sample_steps"]: r["fd_pixels"] for r in src_rows if r["sampler"] == "ddim" and r["train_step"] == 12}
    assert rows[0]["fd_pixels"] == pytest.approx(same[5], rel=1e-6)
    assert (tmp_path / "probe" / "loss.csv").read_text() == (tmp_path / "src" / "loss.csv").read_text()
    attempt = [json.loads(line) for line in (tmp_path / "probe" / "attempts.jsonl").read_text().splitlines()]
    assert [(a["resumed_from_step"], a["adopted_from"]) for a in attempt] == [(12, str((tmp_path / "src").resolve()))]


def test_a_trial_stopped_after_adopting_still_says_whose_model_it_scores(tmp_path):
    """A trial killed while evaluating an adopted model resumes from the copied checkpoint; its rows
    must still name the source (before: trained_in was "", the report counted it as trained here and
    the ETA took its evaluation time for a trial's)."""
    run_trial(SMOKE, tmp_path / "src", device="cpu", progress=False)
    probe = SMOKE.replace(evals="ddim:5", reuse_training=True)
    first = run_trial(probe, tmp_path / "probe", device="cpu", progress=False)
    (tmp_path / "probe" / "result.json").unlink()  # as if killed before its rows were written
    again = run_trial(probe, tmp_path / "probe", device="cpu", progress=False)
    src = str((tmp_path / "src").resolve())
    assert {r["trained_in"] for r in again} == {src} and again[0]["fd_pixels"] == first[0]["fd_pixels"]
    attempt = [json.loads(line) for line in (tmp_path / "probe" / "attempts.jsonl").read_text().splitlines()]
    assert [(a["resumed_from_step"], a.get("adopted_from")) for a in attempt] == [(12, src), (12, None)]


def test_the_learning_curve_does_not_change_the_weights(tmp_path):
    """eval_at is an evaluation field: with dropout on (masks from the global RNG), training with an
    evaluation hook that itself draws from the global RNG ends at the same weights as training
    without one (Trainer.run forks the RNG around evaluations)."""
    from bench.experiment.config import build_process
    from bench.run.trial import train_images
    from bench.training.train import train

    cfg = SMOKE.replace(dropout=0.1, eval_at="0.25,0.5")
    data = train_images(cfg)
    _, diffusion, noise = build_process(cfg)
    calls, seconds = [], []

    def greedy(step, ema, train_seconds):
        calls.append(step)
        seconds.append(train_seconds)
        torch.rand(1000)  # what an evaluation that uses the global RNG would do
        time.sleep(0.5)  # evaluation time is not training time

    result, a = train(cfg, data, diffusion, noise, tmp_path / "curve", progress=False, evaluate=greedy)
    _, b = train(cfg, data, diffusion, noise, tmp_path / "plain", progress=False)
    assert calls == [3, 6]
    assert 0 < seconds[0] < seconds[1] < result.train_seconds <= result.wall_s - 1.0
    assert torch.load(tmp_path / "curve" / "checkpoint.pt", weights_only=False)["train_seconds"] == result.train_seconds
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_without_a_finished_model_the_trial_trains_and_a_stale_pointer_is_ignored(tmp_path):
    rows = run_trial(SMOKE.replace(reuse_training=True), tmp_path / "a", device="cpu", progress=False)
    assert rows[0]["trained_in"] == "" and rows[0]["train_steps_done"] == 12
    (tmp_path / "a" / "checkpoint.pt").unlink()  # the source run deleted: its pointer must not be followed
    assert trained.find(SMOKE) is None
    rows = run_trial(SMOKE.replace(reuse_training=True, evals="ddim:4"), tmp_path / "b", device="cpu", progress=False)
    assert rows[0]["trained_in"] == ""


def test_a_reusing_trial_with_a_learning_curve_adopts_the_curve_it_would_draw_or_trains(tmp_path):
    """The noise grid's Gaussian arm trains as the schedules grid's: with eval_at it adopts a source whose
    curve has the same steps, evaluation and scoring (rows equal to the source's, its training seconds
    included, and the curve's sample grids), and trains itself where the curve would differ."""
    src = SMOKE.replace(eval_at="6", evals="ddim:3,ddim:5")
    src_rows = run_trial(src, tmp_path / "src", device="cpu", progress=False)
    twin = SMOKE.replace(eval_at="6", evals="ddim:3,ddpm:4", reuse_training=True)
    validate(twin)
    rows = run_trial(twin, tmp_path / "twin", device="cpu", progress=False)
    assert {r["trained_in"] for r in rows} == {str((tmp_path / "src").resolve())}
    curve = [r for r in rows if r["train_step"] == 6]
    src_curve = [r for r in src_rows if r["train_step"] == 6]
    assert len(curve) == len(src_curve) == 1
    assert (curve[0]["fd_pixels"], curve[0]["train_seconds"]) == (src_curve[0]["fd_pixels"], src_curve[0]["train_seconds"])
    assert (tmp_path / "twin" / "samples" / "ddim-3-step6.png").read_bytes() == \
        (tmp_path / "src" / "samples" / "ddim-3-step6.png").read_bytes()
    other = run_trial(SMOKE.replace(eval_at="4", reuse_training=True), tmp_path / "other", device="cpu", progress=False)
    assert {r["trained_in"] for r in other} == {""}  # its curve step is not the source's: it trains, curve included
    assert sorted(r["train_step"] for r in other) == [4, 12]


def _weights(workdir):
    ck = torch.load(workdir / "checkpoint.pt", weights_only=False)
    return [*ck["model"].values(), *ck["ema"].values()]


def test_a_longer_trial_continues_the_longest_shorter_training_to_the_weights_of_training_from_zero(tmp_path):
    """Issue 36 (a longer run continues a shorter one's checkpoints): with dropout on (the global RNG),
    a 24-step trial with reuse_training continues the 12-step trial (not the 8-step one, nor one with
    another learning rate) and ends at the weights, EMA and curve points of the same trial trained from
    step 0; its curve point at the source's final step is evaluated on resume."""
    base = SMOKE.replace(dropout=0.1)
    for steps, lr in ((8, base.lr), (12, base.lr), (16, 2 * base.lr)):
        run_trial(base.replace(train_steps=steps, lr=lr), tmp_path / f"src{steps}", device="cpu", progress=False)
    long = base.replace(train_steps=24, eval_at="12,18")
    assert steps_to_train(long.replace(reuse_training=True), set()) == 12  # the dry run's estimate: the steps beyond
    assert steps_to_train(long, set()) == 24
    rows = run_trial(long.replace(reuse_training=True), tmp_path / "continued", device="cpu", progress=False)
    scratch = run_trial(long, tmp_path / "scratch", device="cpu", progress=False)
    src = str((tmp_path / "src12").resolve())
    assert {(r["trained_in"], r["adopted_step"], r["train_steps_done"]) for r in rows} == {(src, 12, 24)}
    assert {(r["trained_in"], r["adopted_step"]) for r in scratch} == {("", 0)}
    for a, b in zip(_weights(tmp_path / "continued"), _weights(tmp_path / "scratch")):
        assert torch.equal(a, b)  # bitwise: the same steps on the same CPU
    points = {r["train_step"]: r["fd_pixels"] for r in rows}
    assert sorted(points) == [12, 18, 24]
    for r in scratch:
        assert points[r["train_step"]] == pytest.approx(r["fd_pixels"], rel=1e-5)
    attempt = [json.loads(line) for line in (tmp_path / "continued" / "attempts.jsonl").read_text().splitlines()]
    assert [(a["resumed_from_step"], a["adopted_from"]) for a in attempt] == [(12, src)]
    src_seconds = json.loads((tmp_path / "src12" / "result.json").read_text())[0]["train_seconds"]
    seconds = {r["train_step"]: r["train_seconds"] for r in rows}
    assert seconds[12] == src_seconds < seconds[18] < seconds[24]  # the source's training time, then on


def test_a_longer_trial_does_not_continue_a_source_without_its_earlier_curve_points(tmp_path):
    """A curve point below the source's last step can only be copied (its model is gone): a source that
    did not draw it with the same evaluation is not continued, and the trial trains from step 0."""
    run_trial(SMOKE, tmp_path / "src", device="cpu", progress=False)
    rows = run_trial(SMOKE.replace(train_steps=24, eval_at="6,18", reuse_training=True), tmp_path / "long",
                     device="cpu", progress=False)
    assert {(r["trained_in"], r["adopted_step"]) for r in rows} == {("", 0)}
    assert sorted(r["train_step"] for r in rows) == [6, 18, 24]
    with_curve = SMOKE.replace(train_steps=12, eval_at="6", seed=1)  # seed 0 at 24 steps is indexed now
    src_rows = run_trial(with_curve, tmp_path / "src_curve", device="cpu", progress=False)
    rows = run_trial(with_curve.replace(train_steps=24, eval_at="6,18", reuse_training=True), tmp_path / "long2",
                     device="cpu", progress=False)
    assert {r["adopted_step"] for r in rows} == {12}
    copied = [r for r in rows if r["train_step"] == 6]
    assert [r["fd_pixels"] for r in copied] == [r["fd_pixels"] for r in src_rows if r["train_step"] == 6]


def test_a_checkpoint_at_a_curve_step_without_its_point_evaluates_it_on_resume(tmp_path):
    """Killed after saving the checkpoint at a curve step and before evaluating it: the resumed trainer
    draws that point before its next step (before: the point was lost for good)."""
    from bench.experiment.config import build_process
    from bench.run.trial import train_images
    from bench.training.train import train

    cfg = SMOKE.replace(eval_at="6")
    data = train_images(cfg)
    _, diffusion, noise = build_process(cfg)

    def killed(step, ema, train_seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, diffusion, noise, tmp_path / "t", progress=False, evaluate=killed)
    calls = []
    result, _ = train(cfg, data, diffusion, noise, tmp_path / "t", progress=False,
                      evaluate=lambda step, ema, s: calls.append(step))
    assert calls == [6] and result.steps == 12


def test_the_report_tells_evaluation_only_continued_and_trained_trials_apart(tmp_path):
    """adopted_step = the trial's train_steps: evaluation only; below it: continued; rows written before
    the column (NaN): evaluation only, as they were."""
    from bench.report import adopted_lines
    from bench.report.tables import Run

    src = "/r/schedules/standard-1/_work/trials/abc"
    rows = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "trained_in": [src, src, "", src],
                         "adopted_step": [36000, 4500, 0, float("nan")], "train_steps": [36000] * 4,
                         "train_step": [36000] * 4, "train_steps_done": [36000] * 4})
    lines = adopted_lines(Run(tmp_path, rows, None, {}, {}))
    assert len(lines) == 2
    assert lines[0].startswith("- **Evaluation only**: 2 of 4 trials trained nothing") and "`schedules/standard-1`" in lines[0]
    assert lines[1].startswith("- **Continued**: 1 of 4 trials began") and "step 4,500" in lines[1]


def test_continuation_holds_for_edm2s_schedule_and_average_and_cosine_never_continues(tmp_path):
    """inv_sqrt and the power EMA count in steps taken, so a 24-step trial continues a 12-step one to
    the weights of training from 0; cosine reads train_steps, so its 24-step trial trains from 0."""
    edm2 = SMOKE.replace(lr_schedule="inv_sqrt", lr_ref_steps=6, ema="power", ema_std=0.1, warmup_steps=0)
    run_trial(edm2, tmp_path / "short", device="cpu", progress=False)
    rows = run_trial(edm2.replace(train_steps=24, reuse_training=True), tmp_path / "long", device="cpu", progress=False)
    run_trial(edm2.replace(train_steps=24), tmp_path / "scratch", device="cpu", progress=False)
    assert rows[0]["adopted_step"] == 12
    for a, b in zip(_weights(tmp_path / "long"), _weights(tmp_path / "scratch")):
        assert torch.equal(a, b)
    cosine = SMOKE.replace(lr_schedule="cosine")
    run_trial(cosine, tmp_path / "cos12", device="cpu", progress=False)
    assert trained.budget_key(cosine) != trained.budget_key(cosine.replace(train_steps=24))
    rows = run_trial(cosine.replace(train_steps=24, reuse_training=True), tmp_path / "cos24", device="cpu", progress=False)
    assert rows[0]["adopted_step"] == 0


def test_a_continued_trial_keeps_its_own_second_half_and_survives_a_kill(tmp_path, monkeypatch):
    """The loss-by-t "second half" of a continued trial holds only its own second half (before: the
    source's second half, an earlier and higher-loss stretch, was carried in); a continued trial killed
    before its first own checkpoint resumes from the adopted one and ends where an unbroken one does."""
    import csv

    from bench.training import train as train_mod

    run_trial(SMOKE, tmp_path / "src", device="cpu", progress=False)
    long = SMOKE.replace(train_steps=48, checkpoint_every=48, reuse_training=True)
    real_save = train_mod.Trainer.save

    def save_then_die(self):
        if self.step == 20:
            raise KeyboardInterrupt  # killed at step 20, before any checkpoint of its own
        real_save(self)

    monkeypatch.setattr(train_mod.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_trial(long.replace(checkpoint_every=20), tmp_path / "long", device="cpu", progress=False)
    monkeypatch.setattr(train_mod.Trainer, "save", real_save)
    rows = run_trial(long.replace(checkpoint_every=20), tmp_path / "long", device="cpu", progress=False)
    run_trial(SMOKE.replace(train_steps=48), tmp_path / "scratch", device="cpu", progress=False)
    assert {(r["trained_in"], r["adopted_step"], r["train_steps_done"]) for r in rows} == \
        {(str((tmp_path / "src").resolve()), 12, 48)}
    for a, b in zip(_weights(tmp_path / "long"), _weights(tmp_path / "scratch")):
        assert torch.equal(a, b)

    def second_half_n(wd):
        with open(wd / "loss_by_t.csv") as f:
            return sum(int(r["n"]) for r in csv.DictReader(f) if r["window"] == "second_half")

    assert second_half_n(tmp_path / "long") == second_half_n(tmp_path / "scratch") == 24 * SMOKE.batch_size


def test_only_trials_that_trained_are_indexed_and_only_their_kind_of_device_is_continued(tmp_path):
    """An evaluation-only copy does not take over its source's pointer (the source keeps the complete
    curve and logs); a checkpoint made on another kind of device is not continued."""
    src = SMOKE.replace(eval_at="6")
    run_trial(src, tmp_path / "src", device="cpu", progress=False)
    run_trial(SMOKE.replace(reuse_training=True, evals="ddim:4"), tmp_path / "copy", device="cpu", progress=False)
    assert trained.find(SMOKE) == (tmp_path / "src" / "checkpoint.pt").resolve()
    assert trained.source(SMOKE.replace(train_steps=24), "cpu")[1] == 12
    assert trained.source(SMOKE.replace(train_steps=24), "cuda") is None  # made on the CPU
