"""Learning-rate schedules and weight averages (bench.optim), issue 36's sample-efficiency knobs: each
against a closed form or an independent implementation (torch's CosineAnnealingLR, EDM2's
learning_rate_schedule and power-function EMA transcribed, a root finder for EDM2 eq. 123)."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from bench.experiment.config import RunConfig, trial_id, validate
from bench.optim.ema import EMAS, MAX_STD, exp_to_std, std_to_exp
from bench.optim.lr import LR_SCHEDULES
from bench.registry import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = RunConfig(dataset="synthetic", timesteps=50, model="tiny", train_steps=12, batch_size=8, warmup_steps=2,
                  ema_decay=0.9, checkpoint_every=6, evals="ddim:3", n_samples=8, metrics="fd_pixels")


def lrs(cfg, n):
    """The learning rate of optimizer steps 1..n as torch's LambdaLR applies the schedule (as the trainer does)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: LR_SCHEDULES.get(cfg.lr_schedule).factor(s + 1, cfg))
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_constant_is_the_warmup_the_trainer_always_had():
    cfg = SMOKE.replace(warmup_steps=100, lr=1e-3)
    k = np.arange(1, 301)
    assert np.array_equal(lrs(cfg, 300), np.array([1e-3 * min(1.0, (s + 1) / 100) for s in k - 1]))


def test_cosine_is_torch_cosine_annealing():
    cfg = SMOKE.replace(lr_schedule="cosine", warmup_steps=0, lr=1e-3, train_steps=50)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.0)
    expect = []
    for _ in range(50):
        expect.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    np.testing.assert_allclose(lrs(cfg, 50), expect, rtol=1e-12, atol=1e-18)


def edm2_learning_rate_schedule(cur_nimg, batch_size, ref_lr, ref_batches, rampup_Mimg=0):
    """NVlabs/edm2 training/training_loop.py, transcribed."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr


def test_inv_sqrt_is_edm2s_schedule_after_the_warmup():
    cfg = SMOKE.replace(lr_schedule="inv_sqrt", lr_ref_steps=40, warmup_steps=0, lr=1e-3, batch_size=16)
    got = lrs(cfg, 400)
    expect = [edm2_learning_rate_schedule((k - 1) * 16, 16, 1e-3, 40) for k in range(1, 401)]
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    assert got[40] == pytest.approx(1e-3) and got[160] == pytest.approx(5e-4)  # step 161: (161 - 1) / 40 = 4
    warm = lrs(cfg.replace(warmup_steps=10), 20)
    assert warm[4] == pytest.approx(1e-3 * 5 / 10) and warm[15] == pytest.approx(1e-3)


@pytest.mark.parametrize("std", [0.01, 0.05, 0.10, 0.20, 0.28])
def test_std_to_exp_solves_edm2_eq_123(std):
    gamma = std_to_exp(std)
    ref = brentq(lambda g: exp_to_std(g) - std, 1e-9, 1e7, xtol=1e-14, rtol=1e-14)
    assert gamma == pytest.approx(ref, rel=1e-9) and exp_to_std(gamma) == pytest.approx(std, rel=1e-12)
    assert exp_to_std(0.0) == pytest.approx(MAX_STD)  # gamma = 0: the uniform average, 1/sqrt(12)


def test_power_ema_weights_are_the_power_function_profile():
    """ema_k = beta_k ema_{k-1} + (1 - beta_k) theta_k with EDM2's beta_k puts weight
    (i/k)^(gamma+1) - ((i-1)/k)^(gamma+1) on step i (so the first step's weight is not the init's: beta_1 = 0),
    and the profile's standard deviation relative to the training time so far is sigma_rel (EDM2 sec. 3.1)."""
    cfg = SMOKE.replace(ema="power", ema_std=0.10)
    beta = EMAS.get("power").beta
    n = 5000
    weights = np.zeros(n)
    for k in range(1, n + 1):  # the recursion on one-hot parameters: w <- beta w + (1 - beta) e_k
        b = beta(k, cfg)
        weights *= b
        weights[k - 1] += 1 - b
    g = std_to_exp(0.10)
    i = np.arange(1, n + 1)
    np.testing.assert_allclose(weights, (i / n) ** (g + 1) - ((i - 1) / n) ** (g + 1), rtol=1e-9, atol=1e-15)
    t = i / n
    mean = (weights * t).sum()
    assert math.sqrt((weights * (t - mean) ** 2).sum()) == pytest.approx(0.10, rel=1e-3)  # t in units of the length
    assert beta(1, cfg) == 0.0


def test_fixed_is_the_warmed_up_decay_the_trainer_always_had():
    beta = EMAS.get("fixed").beta
    cfg = SMOKE.replace(ema_decay=0.998)
    assert [beta(k, cfg) for k in (1, 2, 10, 5000)] == [min(0.998, (1 + s) / (10 + s)) for s in (0, 1, 9, 4999)]


def test_the_trainer_uses_the_schedule_and_the_average(tmp_path):
    """The trainer's loss.csv logs the schedule's rates; with the power EMA the average after the first
    step is the weights themselves (beta_1 = 0)."""
    from bench.experiment.config import build_process
    from bench.run.trial import train_images
    from bench.training.train import Trainer, train

    cfg = SMOKE.replace(lr_schedule="inv_sqrt", lr_ref_steps=4, warmup_steps=0, ema="power", ema_std=0.1)
    data = train_images(cfg)
    _, diffusion, noise = build_process(cfg)
    train(cfg, data, diffusion, noise, tmp_path / "t", progress=False)
    log = np.genfromtxt(tmp_path / "t" / "loss.csv", delimiter=",", names=True)
    np.testing.assert_allclose(log["lr"], lrs(cfg, 12)[log["step"].astype(int) - 1], rtol=1e-6)
    trainer = Trainer(cfg, data, diffusion, noise, tmp_path / "u", torch.device("cpu"))
    trainer.train_step()
    for e, p in zip(trainer.ema.parameters(), trainer.model.parameters()):
        assert torch.equal(e, p)


def test_new_fields_keep_every_key_and_name_what_is_not_the_default():
    """The keys of a default config are pinned (test_formulations pins train_key and curve_key the same
    way); a non-default schedule or average changes the trial id and shows in the arm label."""
    from bench.training.trained import budget_key, point_key, train_key

    plain = RunConfig()
    assert (train_key(plain), budget_key(plain), point_key(plain)) == (
        "68cc0eb9b0bb6179", "budget-16c05cca687aa562", "fb343953d184dfa1")
    assert trial_id(plain.replace(lr_schedule="inv_sqrt", lr_ref_steps=100)) != trial_id(plain)
    assert plain.replace(ema="power", ema_std=0.05).arm().endswith(" / ema power(0.05)")
    assert plain.replace(lr_schedule="inv_sqrt", lr_ref_steps=4500).arm().endswith(" / lr inv_sqrt(4500)")


def test_canonical_resets_what_the_schedule_and_the_average_do_not_read():
    """As for component parameters: a grid crossing ema_decay with a power arm, or lr_ref_steps with a
    constant arm, makes one trial of each, not several identical ones under different ids."""
    power = SMOKE.replace(ema="power", ema_std=0.1)
    assert trial_id(power.replace(ema_decay=0.5).canonical()) == trial_id(power.replace(ema_decay=0.9).canonical())
    assert power.replace(ema_decay=0.5).canonical().ema_decay == RunConfig().ema_decay
    assert SMOKE.replace(lr_ref_steps=100).canonical().lr_ref_steps == 0
    assert SMOKE.replace(ema_std=0.05).canonical().ema_std == 0.0
    kept = SMOKE.replace(lr_schedule="inv_sqrt", lr_ref_steps=100, ema_decay=0.5).canonical()
    assert (kept.lr_ref_steps, kept.ema_decay) == (100, 0.5)  # read by inv_sqrt and the fixed average


@pytest.mark.parametrize("change, message", [
    ({"lr_schedule": "inv_sqrt"}, "needs lr_ref_steps > 0"),
    ({"lr_schedule": "cosin"}, "did you mean cosine"),
    ({"ema": "power"}, "needs 0 < ema_std < 0.2887"),
    ({"ema": "power", "ema_std": 0.3}, "needs 0 < ema_std"),
    ({"ema": "karras"}, "unknown ema 'karras'"),
    ({"lr_ref_steps": -1}, "lr_ref_steps must be >= 0"),
])
def test_bad_optimisation_settings_are_input_errors(change, message):
    with pytest.raises(InputError, match=message):
        validate(SMOKE.replace(**change))


def test_the_report_names_the_schedule_and_the_average_only_where_they_differ_from_before(tmp_path):
    import pandas as pd

    from bench.report import ema_text, lr_schedule_text
    from bench.report.tables import Run

    old = pd.DataFrame({"ema_decay": [0.998, 0.998], "trial_id": ["a", "b"]})  # rows made before the fields
    run = Run(tmp_path, old, None, {}, {})
    assert (ema_text(run), lr_schedule_text(run)) == ("EMA of the weights (decay 0.998)", "")
    new = pd.DataFrame({"trial_id": ["a", "b", "c"], "ema": ["fixed", "power", "fixed"], "ema_std": [0.0, 0.1, 0.0],
                        "ema_decay": [0.998, 0.999, 0.998], "lr_schedule": ["constant", "constant", "inv_sqrt"],
                        "lr_ref_steps": [0, 0, 4500]})
    run = Run(tmp_path, new, None, {}, {})
    assert ema_text(run) == "by arm, EMA of the weights (decay 0.998) or EDM2's power-function EMA (sigma_rel 0.1)"
    assert lr_schedule_text(run).startswith(", then by arm `constant` and `inv_sqrt`")
