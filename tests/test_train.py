import csv
import math

import pytest
import torch

from bench.data.datasets import load_dataset
from bench.experiment.config import RunConfig
from bench.process.diffusion import Diffusion
from bench.process.noise import make_noise
from bench.process.schedules import make_betas
from bench.training.train import CHECKPOINT, TrainResult, load_ema, read_config, train

# 8 synthetic 16x16 images, T = 100, the tiny UNet: a few seconds of CPU per run
CFG = RunConfig(dataset="synthetic", timesteps=100, model="tiny", train_steps=100, batch_size=8, lr=2e-3,
                warmup_steps=10, checkpoint_every=50, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic")[:8]
    diffusion = Diffusion(make_betas(CFG.schedule, CFG.timesteps))
    return data, diffusion, make_noise(CFG.noise, diffusion.alpha_bar)


def run(cfg, setup, workdir, **kw):
    data, diffusion, noise = setup
    return train(cfg, data, diffusion, noise, workdir, progress=False, **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def losses(workdir):
    return [(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in read_csv(workdir / "loss.csv")]


@pytest.fixture(scope="module")
def full(setup, tmp_path_factory):
    """One uninterrupted run: the reference for the overfit, resume and output tests."""
    workdir = tmp_path_factory.mktemp("full")
    rng_before = torch.get_rng_state()
    result, ema = run(CFG, setup, workdir)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone
    return result, ema, workdir


def test_overfits_a_handful_of_images(full):
    result, ema, workdir = full
    assert isinstance(result, TrainResult)
    assert result.status == "ok" and result.steps == CFG.train_steps
    assert result.params == 1_035_633 and result.wall_s > 0 and result.images_per_s > 0
    curve = [loss for _, loss, _ in losses(workdir)]
    assert len(curve) == CFG.train_steps
    first, last = sum(curve[:20]) / 20, sum(curve[-20:]) / 20
    assert first > 0.5  # an untrained eps-predictor (output 0) has loss ~ E[eps^2] = 1
    assert first / last > 5, (first, last)
    assert result.final_loss == pytest.approx(sum(curve[-100:]) / len(curve[-100:]), rel=1e-9)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())


def test_lr_warmup_then_constant(full):
    lrs = [lr for _, _, lr in losses(full[2])]
    assert lrs[0] == pytest.approx(CFG.lr / CFG.warmup_steps)
    assert lrs[4] == pytest.approx(5 * CFG.lr / CFG.warmup_steps)
    assert all(lr == pytest.approx(CFG.lr) for lr in lrs[CFG.warmup_steps - 1:])


def test_same_seed_same_curve_other_seed_other_curve(setup, full, tmp_path):
    cfg = CFG.replace(train_steps=12)
    a = losses(run(cfg, setup, tmp_path / "a") and tmp_path / "a")
    b = losses(run(cfg, setup, tmp_path / "b") and tmp_path / "b")
    c = losses(run(cfg.replace(seed=1), setup, tmp_path / "c") and tmp_path / "c")
    assert a == b
    assert a == losses(full[2])[:12]  # the budget does not change the first steps
    assert [x[1] for x in a] != [x[1] for x in c]


def test_resume_equals_uninterrupted_bitwise(setup, full, tmp_path):
    class Preempted(Exception):
        pass

    reports = []

    def report_then_die(metrics):
        reports.append(metrics)
        if metrics["step"] == 50:
            raise Preempted  # as if the process were killed right after the step-50 checkpoint

    with pytest.raises(Preempted):
        run(CFG, setup, tmp_path, report=report_then_die, report_every=25)
    assert [r["step"] for r in reports] == [25, 50]
    assert set(reports[0]) == {"step", "loss", "images_per_s", "start_step"} and math.isfinite(reports[0]["loss"])
    assert reports[0]["start_step"] == 0
    at50 = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert at50["step"] == 50 and at50["train_seconds"] > 0

    resumed = []
    result, ema = run(CFG, setup, tmp_path, report=resumed.append, report_every=25)  # resumes from step 50
    assert resumed[0]["step"] == 75 and {r["start_step"] for r in resumed} == {50}  # the driver's ETA reads it
    ref_result, ref_ema, ref_dir = full
    assert result.status == "ok" and result.steps == CFG.train_steps
    assert result.final_loss == ref_result.final_loss
    got = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    ref = torch.load(ref_dir / CHECKPOINT, weights_only=True)
    assert at50["train_seconds"] < result.train_seconds == got["train_seconds"]  # the time of both attempts
    for key in ("model", "ema"):
        assert got[key].keys() == ref[key].keys()
        assert all(torch.equal(got[key][k], ref[key][k]) for k in ref[key]), key
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), ref_ema.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(got["optimizer"]["state"][0].values(), ref["optimizer"]["state"][0].values()))
    assert losses(tmp_path) == losses(ref_dir)
    assert read_csv(tmp_path / "loss_by_t.csv") == read_csv(ref_dir / "loss_by_t.csv")


def test_finished_run_is_not_trained_again(setup, full):
    result, ema, workdir = full
    again, ema2 = run(CFG, setup, workdir)
    assert again.status == "ok" and again.steps == result.steps and again.wall_s == 0
    assert again.final_loss == result.final_loss
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()))


def test_resume_refuses_a_different_config(setup, full):
    with pytest.raises(ValueError, match="lr"):
        run(CFG.replace(lr=1e-3), setup, full[2])


def test_load_ema_and_config_from_checkpoint(full):
    _, ema, workdir = full
    loaded = load_ema(workdir)
    assert not loaded.training and loaded.in_channels == 1 and loaded.image_size == 16
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ema.state_dict().values()))
    assert load_ema(workdir / CHECKPOINT, CFG, 1, 16).state_dict().keys() == ema.state_dict().keys()
    assert read_config(workdir) == CFG


def test_loss_csvs(full):
    workdir = full[2]
    rows = read_csv(workdir / "loss.csv")
    assert list(rows[0]) == ["step", "loss", "lr", "images_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(1, CFG.train_steps + 1))
    assert all(float(r["images_per_s"]) >= 0 for r in rows)
    bins = read_csv(workdir / "loss_by_t.csv")
    assert list(bins[0]) == ["window", "bin", "t_lo", "t_hi", "log_snr_lo", "log_snr_hi", "n", "loss"]
    for window, steps in (("all", CFG.train_steps), ("second_half", CFG.train_steps // 2)):
        rows = [r for r in bins if r["window"] == window]
        assert [(int(r["t_lo"]), int(r["t_hi"])) for r in rows] == [(10 * b, 10 * b + 9) for b in range(10)]
        assert sum(int(r["n"]) for r in rows) == steps * CFG.batch_size  # every example of every step, once
        assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
        snr = [float(r["log_snr_lo"]) for r in rows]
        assert snr == sorted(snr, reverse=True)
    late = {r["bin"]: float(r["loss"]) for r in bins if r["window"] == "second_half"}
    early = {r["bin"]: float(r["loss"]) for r in bins if r["window"] == "all"}
    assert sum(late.values()) < sum(early.values())  # the second half of training has the lower loss


def test_huge_lr_diverges_without_raising(setup, tmp_path):
    cfg = CFG.replace(lr=1e30, warmup_steps=0, train_steps=30)
    result, _ = run(cfg, setup, tmp_path)
    assert result.status == "diverged" and 1 <= result.steps < 30 and math.isnan(result.final_loss)
    rows = losses(tmp_path)
    assert rows[-1][0] == result.steps and math.isnan(rows[-1][1])
    again, _ = run(cfg, setup, tmp_path)  # a diverged run is a result: it is not retried
    assert again.status == "diverged" and again.steps == result.steps and again.wall_s == 0


def test_nan_loss_at_a_given_step_diverges_there(setup, tmp_path, monkeypatch):
    data, diffusion, noise = setup
    calls = []
    real_loss = Diffusion.loss

    def loss_nan_on_third_call(self, *a, **kw):
        calls.append(1)
        out = real_loss(self, *a, **kw)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(Diffusion, "loss", loss_nan_on_third_call)
    result, _ = run(CFG.replace(train_steps=10), setup, tmp_path)
    assert result.status == "diverged" and result.steps == 3 and len(calls) == 3
