"""Samplers against closed-form oracles.

Two data distributions have an exact predictor, so a sampler can be checked without training:
* a single image x*:        E[x0 | x_t] = x*, eps*(x_t, t) = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t); every
  sampler must return x*;
* Gaussian data N(mu, s^2): E[x0 | x_t] = mu + sqrt(ab) s^2 (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)
  (gaussian noise); samples must have mean mu and std s, and DDIM(eta=0) is an exactly known affine map.
The oracles compute (x0, eps) in float64 and output the diffusion's prediction target (eps, x0 or v),
so every test holds for every target; with zero terminal SNR (alpha_bar_T = 0) for v and x0.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import bench.sampling.chain as chain_module
from bench.process.diffusion import PREDICTIONS, Diffusion
from bench.process.noise import make_noise
from bench.process.paths import VP
from bench.process.schedules import make_betas
from bench.registry import InputError, UnknownNameError
from bench.sampling.sample import (
    OPTION_CHECKS,
    SAMPLERS,
    Sampler,
    image_generators,
    register_sampler,
    respace,
    sample_images,
    sampler_options,
    save_grid,
    timestep_subsequence,
    to_uint8,
)

CORE = ["linear", "cosine", "sigmoid", "exponential"]
NOISE_CASES = [("gaussian", None), ("gamma", 0.001), ("gamma", 0.1)]


PREDS = [p for p in PREDICTIONS.names() if p in VP.predictions]  # eps, v, x0 (flow is rf's: tests/test_formulations.py)
ZT_PREDS = [n for n, p in PREDICTIONS.items() if p.recovers_x0_at_zero_snr and n in VP.predictions]  # v, x0


@functools.lru_cache(maxsize=None)
def diff(schedule: str, T: int, prediction: str = "eps", zt: bool = False) -> Diffusion:
    return Diffusion(make_betas(schedule, T, zt), prediction=prediction)


def noise_for(d: Diffusion, name: str, theta_0=None):
    return make_noise(name, d.alpha_bar, theta_0=theta_0)


def as_target(d: Diffusion, x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The exact output of a model of d's target, given E[x0 | x_t] (float64; eps = (x - a x0)/s, s > 0)."""
    ab = d.alpha_bar[t].view(-1, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x = x.double()
    return d.prediction.target(x0, (x - a * x0) / s, a, s).float()


class PointOracle:
    """Exact predictor of d's target when the data is the single image x*; records every call."""

    def __init__(self, d: Diffusion, xstar: torch.Tensor):
        self.d, self.xstar, self.calls = d, xstar.double(), []

    def __call__(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and bool((t == t[0]).all())
        self.calls.append((int(t[0]), x.clone()))
        return as_target(self.d, x, t, self.xstar.expand(x.shape))

    def implied_eps(self):
        return [(x.double() - self.d.alpha_bar[t].sqrt() * self.xstar) / (1 - self.d.alpha_bar[t]).sqrt()
                for t, x in self.calls]


class GaussOracle:
    """Exact predictor of d's target for data x0 ~ N(mu, s^2 I) under gaussian noise."""

    def __init__(self, d: Diffusion, mu: float, s: float):
        self.d, self.mu, self.s = d, mu, s

    def __call__(self, x, t):
        ab = self.d.alpha_bar[t].view(-1, 1, 1, 1)
        ex0 = self.mu + ab.sqrt() * self.s**2 * (x.double() - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)
        return as_target(self.d, x, t, ex0)


def run(sampler, model, d, noise, shape, steps, seed, **kw):
    return SAMPLERS.get(sampler)(model, d, noise, shape, steps, image_generators(shape[0], seed), **kw)


def xstar_of(seed, shape=(2, 1, 4, 4)):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    x.view(-1)[:2] = torch.tensor([1.0, -1.0])  # the clipping boundary
    return x


# sampler, steps (None = T), kwargs
CONFIGS = [
    ("ddpm", None, {}),
    ("ddpm", 17, {}),
    ("ddpm", None, {"var_type": "large"}),
    ("ddim", 10, {}),
    ("ddim", 50, {}),
    ("ddim", 20, {"ddim_eta": 1.0}),
]


# ---------------------------------------------------------------------------------------------
# single-image oracle


@pytest.mark.parametrize("prediction,zt", [(p, False) for p in PREDS] + [(p, True) for p in ZT_PREDS])
@pytest.mark.parametrize("schedule", CORE)
@pytest.mark.parametrize("noise_name,theta_0", NOISE_CASES)
def test_point_oracle_returns_the_image(schedule, noise_name, theta_0, prediction, zt):
    """Every prediction target x sampler x noise type x core schedule, and zero terminal SNR with v
    and x0: the exact predictor's samples are the image, finite, from x_T = pure noise."""
    T = 100
    d = diff(schedule, T, prediction, zt)
    noise = noise_for(d, noise_name, theta_0)
    if zt:
        assert d.alpha_bar[-1].item() == 0.0 and d.sqrt_one_minus_alpha_bar[-1].item() == 1.0
    for k, (sampler, steps, kw) in enumerate(CONFIGS):
        steps = steps or T
        xstar = xstar_of(k)
        model = PointOracle(d, xstar)
        out = run(sampler, model, d, noise, xstar.shape, steps, seed=k, **kw)
        assert out.dtype == torch.float32 and out.shape == xstar.shape and torch.isfinite(out).all()
        assert all(torch.isfinite(x).all() for _, x in model.calls)
        err = (out - xstar).abs().max().item()
        assert err < 1e-4, (sampler, steps, kw, err)
        # the model saw exactly the subsequence's ORIGINAL timesteps, from T-1 down to 0
        assert [t for t, _ in model.calls] == timestep_subsequence(T, steps)[::-1]
        # x_T = sqrt(1 - ab_T) * standardised noise at index T-1
        want_xT = noise.sample_per_item(xstar.shape, T - 1, image_generators(2, k)) * d.sqrt_one_minus_alpha_bar[-1]
        assert torch.allclose(model.calls[0][1], want_xT.float(), rtol=1e-6, atol=1e-6)
        if zt:  # pure noise: sqrt(1 - alpha_bar_T) = 1 exactly
            assert torch.equal(model.calls[0][1], noise.sample_per_item(xstar.shape, T - 1, image_generators(2, k)))
        if sampler == "ddim" and not kw.get("ddim_eta"):
            # eta = 0 with the exact predictor keeps the implied eps fixed along the whole trajectory
            eps = model.implied_eps()
            assert max((e - eps[0]).abs().max().item() for e in eps) < 1e-3


@pytest.mark.parametrize("sampler,steps,prediction,zt", [("ddpm", 1000, "eps", False), ("ddim", 50, "eps", False),
                                                         ("ddim", 50, "v", False), ("ddim", 50, "x0", False),
                                                         ("ddpm", 1000, "v", True), ("ddim", 50, "v", True),
                                                         ("ddim", 50, "x0", True)])
def test_point_oracle_T1000(sampler, steps, prediction, zt):
    d = diff("cosine", 1000, prediction, zt)
    noise = noise_for(d, "gamma", 0.001)
    xstar = xstar_of(7)
    out = run(sampler, PointOracle(d, xstar), d, noise, xstar.shape, steps, seed=3)
    assert torch.isfinite(out).all() and (out - xstar).abs().max().item() < 1e-4


@pytest.mark.parametrize("prediction,zt", [(p, False) for p in PREDS] + [(p, True) for p in ZT_PREDS])
@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddpm", {"var_type": "large"}), ("ddim", {"ddim_eta": 1.0})])
def test_one_step(sampler, kw, prediction, zt):
    """One step from x_T to x_0: with zero terminal SNR the respaced chain is a single beta' = 1."""
    d = diff("linear", 100, prediction, zt)
    xstar = xstar_of(2)
    model = PointOracle(d, xstar)
    out = run(sampler, model, d, noise_for(d, "gamma", 0.1), xstar.shape, 1, seed=0, **kw)
    assert [t for t, _ in model.calls] == [99]
    assert (out - xstar).abs().max().item() < 1e-4


@pytest.mark.parametrize("sampler,steps,kw", [("ddpm", 100, {}), ("ddpm", 13, {}), ("ddpm", 13, {"var_type": "large"}),
                                              ("ddim", 13, {"ddim_eta": 1.0}), ("ddim", 13, {"ddim_eta": 0.4})])
def test_each_step_adds_noise_drawn_at_the_target_index(sampler, steps, kw):
    """Replay the generators: x_s = (mean from the formula, in float64) + sigma * z(index s), exactly.

    Gamma noise with theta_0 = 0.1 depends strongly on its index at small t, so drawing z at the
    current index t instead of the target s is detected (negative control below)."""
    T = 100
    d = diff("linear", T)
    ab = d.alpha_bar
    noise = noise_for(d, "gamma", 0.1)
    xstar = xstar_of(5, (3, 1, 4, 4)).double()
    model = PointOracle(d, xstar)
    run(sampler, model, d, noise, xstar.shape, steps, seed=11, clip_x0=False, **kw)
    ts = timestep_subsequence(T, steps)[::-1]
    gens, gens_wrong = image_generators(3, 11), image_generators(3, 11)
    noise.sample_per_item(xstar.shape, T - 1, gens), noise.sample_per_item(xstar.shape, T - 1, gens_wrong)
    xs = [x.double() for _, x in model.calls]
    worst, worst_wrong = 0.0, 0.0
    for k in range(len(ts) - 1):
        t, s = ts[k], ts[k + 1]
        a_t, a_s = ab[t].item(), ab[s].item()
        x_t = xs[k]
        if sampler == "ddpm":  # Ho et al. eq. 7 on the respaced chain, beta' = 1 - a_t/a_s
            b = 1 - a_t / a_s
            mean = math.sqrt(a_s) * b / (1 - a_t) * xstar + math.sqrt(1 - b) * (1 - a_s) / (1 - a_t) * x_t
            var = b * (1 - a_s) / (1 - a_t) if kw.get("var_type", "small") == "small" else b
            sigma = math.sqrt(var)
        else:  # Song et al. eq. 12
            sigma = kw["ddim_eta"] * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
            eps = (x_t - math.sqrt(a_t) * xstar) / math.sqrt(1 - a_t)
            mean = math.sqrt(a_s) * xstar + math.sqrt(1 - a_s - sigma**2) * eps
        z = noise.sample_per_item(xstar.shape, s, gens).double()
        z_wrong = noise.sample_per_item(xstar.shape, t, gens_wrong).double()
        worst = max(worst, (xs[k + 1] - (mean + sigma * z)).abs().max().item())
        worst_wrong = max(worst_wrong, (xs[k + 1] - (mean + sigma * z_wrong)).abs().max().item())
    assert worst < 1e-5
    assert worst_wrong > 1e-3  # the replay can tell the indices apart


# ---------------------------------------------------------------------------------------------
# Gaussian-data oracle


MU, SD = 0.3, 0.5


@pytest.mark.parametrize("sampler,steps,kw,prediction,zt", [
    ("ddpm", 1000, {}, "eps", False), ("ddpm", 1000, {"var_type": "large"}, "eps", False),
    ("ddpm", 250, {}, "eps", False), ("ddim", 1000, {}, "eps", False), ("ddim", 1000, {"ddim_eta": 1.0}, "eps", False),
    ("ddpm", 250, {}, "v", False), ("ddpm", 250, {}, "x0", False),
    ("ddpm", 250, {}, "v", True), ("ddim", 1000, {}, "v", True), ("ddpm", 250, {}, "x0", True)])
def test_gaussian_data_moments(sampler, steps, kw, prediction, zt):
    """Samples of the exact predictor have the data's moments; with zero terminal SNR too (the
    process then starts from x_T ~ N(0, I) exactly, which is its true marginal)."""
    d = diff("linear", 1000, prediction, zt)
    x = run(sampler, GaussOracle(d, MU, SD), d, noise_for(d, "gaussian"), (64, 1, 16, 16), steps, seed=0,
            clip_x0=False, **kw).double()
    # 16384 iid values: standard errors 0.004 (mean), 0.003 (std)
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(SD, abs=0.02)


def ddim_affine_map(ab: list[float], ts_desc: list[int]) -> tuple[float, float]:
    """(A, c) with DDIM(eta=0)'s output = A n + c for x_T = sqrt(1 - ab_T) n, under Gaussian data:
    every step is affine (Song et al. eq. 12 with the exact E[x0|x_t]), composed here in float64."""
    A, c = math.sqrt(1 - ab[-1]), 0.0
    for k, t in enumerate(ts_desc):
        a_t = ab[t]
        a_s = ab[ts_desc[k + 1]] if k + 1 < len(ts_desc) else 1.0
        g = math.sqrt(a_t) * SD**2 / (a_t * SD**2 + 1 - a_t)  # E[x0|x] = MU + g (x - sqrt(a_t) MU)
        x0_A, x0_c = g * A, MU + g * (c - math.sqrt(a_t) * MU)
        eps_A, eps_c = (A - math.sqrt(a_t) * x0_A) / math.sqrt(1 - a_t), (c - math.sqrt(a_t) * x0_c) / math.sqrt(1 - a_t)
        A = math.sqrt(a_s) * x0_A + math.sqrt(1 - a_s) * eps_A
        c = math.sqrt(a_s) * x0_c + math.sqrt(1 - a_s) * eps_c
    return A, c


@pytest.mark.parametrize("schedule", CORE)
@pytest.mark.parametrize("prediction", PREDS)
def test_ddim_eta0_is_the_exact_affine_map(schedule, prediction):
    """DDIM(eta=0) applies exactly the composed affine map; as steps grow the map approaches the
    probability-flow map, which sends N(0, 1 - ab_T) to N(mu, s^2). With few steps DDIM shrinks the
    samples (std 0.36-0.43 at 10 steps, 0.47-0.48 at 50, for s = 0.5): first-order discretisation
    error of the ODE, not a bug -- the moments test therefore uses many steps."""
    T, steps = 200, 40
    d = diff(schedule, T, prediction)
    ab = d.alpha_bar.tolist()
    A, c = ddim_affine_map(ab, timestep_subsequence(T, steps)[::-1])
    shape = (4, 1, 4, 4)
    noise = noise_for(d, "gaussian")
    out = run("ddim", GaussOracle(d, MU, SD), d, noise, shape, steps, seed=4, clip_x0=False)
    n = noise.sample_per_item(shape, T - 1, image_generators(4, 4))
    assert torch.allclose(out.double(), A * n.double() + c, atol=1e-4)
    stds = [ddim_affine_map(ab, timestep_subsequence(T, k)[::-1])[0] for k in (5, 10, 20, 40, 100, T)]
    assert all(a < b for a, b in zip(stds, stds[1:])) and stds[-1] == pytest.approx(SD, rel=0.015)
    assert c == pytest.approx(MU, abs=0.005)


# ---------------------------------------------------------------------------------------------
# determinism, seeds, equivalences


def test_ddim_eta0_is_deterministic():
    d = diff("cosine", 100)
    noise = noise_for(d, "gamma", 0.01)
    model = GaussOracle(d, MU, SD)
    a = run("ddim", model, d, noise, (3, 1, 4, 4), 20, seed=1)
    b = run("ddim", model, d, noise, (3, 1, 4, 4), 20, seed=1)
    c = run("ddim", model, d, noise, (3, 1, 4, 4), 20, seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 0.1


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddpm", {"var_type": "large"}), ("ddim", {"ddim_eta": 0.5}),
                                        ("ddim", {})])
@pytest.mark.parametrize("noise_name,theta_0", [("gaussian", None), ("gamma", 0.1)])
def test_per_image_seeds(sampler, kw, noise_name, theta_0):
    d = diff("linear", 100)
    noise = noise_for(d, noise_name, theta_0)
    model = GaussOracle(d, MU, SD)
    fn = SAMPLERS.get(sampler)
    shape = (1, 4, 4)
    eight = fn(model, d, noise, (8, *shape), 25, image_generators(8, 40), **kw)
    alone = torch.cat([fn(model, d, noise, (1, *shape), 25, image_generators(1, 40, start=i), **kw) for i in range(8)])
    three = fn(model, d, noise, (3, *shape), 25, image_generators(3, 40, start=2), **kw)
    assert torch.allclose(eight, alone, rtol=0, atol=1e-6)
    assert torch.allclose(eight[2:5], three, rtol=0, atol=1e-6)
    assert (eight[0] - eight[1]).abs().max() > 0.05  # different seeds, different images
    opts = {"ddim_eta": kw.get("ddim_eta", 0.0), "var_type": kw.get("var_type", "small")}  # each takes its own
    via_helper = sample_images(model, d, noise, sampler, 25, 8, shape, seed0=40, batch_size=3, device="cpu",
                               options=opts)
    assert torch.allclose(via_helper, eight, rtol=0, atol=1e-6)


def test_full_ddpm_matches_ho_algorithm_2():
    """steps = T is the full chain (respace returns the diffusion itself), and it is Ho et al.'s
    Algorithm 2 written out independently: x <- (x - beta/sqrt(1-ab) eps)/sqrt(alpha) + sigma z."""
    T = 100
    d = diff("sigmoid", T)
    assert respace(d, range(T)) is d
    noise = noise_for(d, "gamma", 0.1)
    model = GaussOracle(d, MU, SD)
    shape = (3, 1, 4, 4)
    out = run("ddpm", model, d, noise, shape, T, seed=9, clip_x0=False)
    gens = image_generators(3, 9)
    x = noise.sample_per_item(shape, T - 1, gens).double() * d.sqrt_one_minus_alpha_bar[-1]
    for t in reversed(range(T)):
        b, ab = d.betas[t].item(), d.alpha_bar[t].item()
        eps = model(x.float(), torch.full((3,), t)).double()
        x = (x - b / math.sqrt(1 - ab) * eps) / math.sqrt(1 - b)
        if t > 0:
            x = x + math.sqrt(d.posterior_variance[t].item()) * noise.sample_per_item(shape, t - 1, gens).double()
    assert torch.allclose(out.double(), x, atol=1e-4)


def test_respacing(monkeypatch):
    d = diff("cosine", 100)
    ts = timestep_subsequence(100, 17)
    sub = respace(d, ts)
    assert sub.T == 17
    assert torch.allclose(sub.alpha_bar, d.alpha_bar[ts], rtol=1e-12, atol=0)
    # rebuilding all T steps from alpha_bar gives the schedule back (to float64 rounding), and the
    # full ddpm through that rebuilt chain matches the full ddpm
    rebuilt = Diffusion(1 - d.alpha_bar / d.alpha_bar_prev)
    assert torch.allclose(rebuilt.betas, d.betas, rtol=1e-10, atol=0)
    noise = noise_for(d, "gamma", 0.1)
    model = GaussOracle(d, MU, SD)
    full = run("ddpm", model, d, noise, (2, 1, 4, 4), 100, seed=0)
    monkeypatch.setattr(chain_module, "respace", lambda diffusion, timesteps: rebuilt)
    via_rebuilt = run("ddpm", model, d, noise, (2, 1, 4, 4), 100, seed=0)
    assert torch.allclose(full, via_rebuilt, atol=1e-5)


@pytest.mark.parametrize("steps", [100, 13])
def test_ddim_eta1_is_ddpm(steps):
    """Song et al.: eta = 1 makes the DDIM step the DDPM posterior step (small variance); with the
    same seeds both samplers draw the same noise at the same indices, so the outputs agree."""
    d = diff("exponential", 100)
    noise = noise_for(d, "gamma", 0.1)
    model = GaussOracle(d, MU, SD)
    a = run("ddpm", model, d, noise, (3, 1, 4, 4), steps, seed=5)
    b = run("ddim", model, d, noise, (3, 1, 4, 4), steps, seed=5, ddim_eta=1.0)
    assert torch.allclose(a, b, atol=1e-4)


def test_timestep_subsequence():
    assert timestep_subsequence(10, 10) == list(range(10))
    assert timestep_subsequence(10, 4) == [0, 3, 6, 9]
    assert timestep_subsequence(1000, 1) == [999]
    assert timestep_subsequence(1000, 2) == [0, 999]
    for T, k in [(1000, 50), (1000, 999), (100, 7), (37, 36)]:
        ts = timestep_subsequence(T, k)
        assert len(ts) == k and ts[0] == 0 and ts[-1] == T - 1 and all(b > a for a, b in zip(ts, ts[1:]))


# ---------------------------------------------------------------------------------------------
# bad input, images


def test_bad_input():
    d = diff("linear", 100)
    noise = noise_for(d, "gaussian")
    model = GaussOracle(d, MU, SD)
    with pytest.raises(UnknownNameError, match="did you mean ddpm"):
        SAMPLERS.get("ddmp")
    with pytest.raises(UnknownNameError, match="did you mean ddim"):
        sample_images(model, d, noise, "ddimm", 10, 2, (1, 4, 4), 0, 2, "cpu")
    for sampler in SAMPLERS:
        for steps in (0, 101, -3):
            with pytest.raises(InputError, match=r"1\.\.T = 1\.\.100"):
                run(sampler, model, d, noise, (2, 1, 4, 4), steps, seed=0)
        with pytest.raises(InputError, match="integer"):
            run(sampler, model, d, noise, (2, 1, 4, 4), 2.5, seed=0)
        with pytest.raises(InputError, match="one generator per image"):
            SAMPLERS.get(sampler)(model, d, noise, (3, 1, 4, 4), 10, image_generators(2, 0))
        with pytest.raises(InputError, match="different schedule"):
            run(sampler, model, d, noise_for(diff("cosine", 100), "gaussian"), (2, 1, 4, 4), 10, seed=0)
        with pytest.raises(InputError, match=f"sampler {sampler} takes the option"):  # another sampler's option
            other = next(o for o in OPTION_CHECKS if o not in SAMPLERS.get(sampler).options)
            run(sampler, model, d, noise, (2, 1, 4, 4), 10, seed=0, **{other: OPTION_DEFAULTS[other]})
        with pytest.raises(InputError, match="unknown sampler option.*eta"):
            sample_images(model, d, noise, sampler, 10, 2, (1, 4, 4), 0, 2, "cpu", options={"eta": 0.5})
    with pytest.raises(InputError, match="var_type"):
        run("ddpm", model, d, noise, (2, 1, 4, 4), 10, seed=0, var_type="learned")
    for eta in (-0.1, float("nan"), "0.5"):
        with pytest.raises(InputError, match="ddim_eta must be a finite number >= 0"):
            run("ddim", model, d, noise, (2, 1, 4, 4), 10, seed=0, ddim_eta=eta)
    with pytest.raises(InputError, match="1..T"):
        sample_images(model, d, noise, "ddim", 101, 2, (1, 4, 4), 0, 2, "cpu")


# ---------------------------------------------------------------------------------------------
# the sampler contract as data


def _option_defaults() -> dict:
    """Every sampler option's RunConfig default (the fields declared with the sampler-option role)."""
    from bench.experiment.config import SAMPLER_OPTION, RunConfig, fields_with

    return {k: RunConfig.__dataclass_fields__[k].default for k in sorted(fields_with(SAMPLER_OPTION))}


OPTION_DEFAULTS = _option_defaults()


def test_sampler_contract():
    assert SAMPLERS.names() == ["cold", "ddim", "ddpm", "dpmpp_2m", "euler", "heun", "unipc"]
    grid = ("sample_shift", "spacing", "rho", "solver_sigma_max")
    assert SAMPLERS.get("euler").options == grid and SAMPLERS.get("euler").needs_ve_view
    assert SAMPLERS.get("heun").options == (*grid, "s_churn", "s_tmin", "s_tmax", "s_noise")
    assert SAMPLERS.get("ddpm").options == ("var_type", "skip_start")
    assert SAMPLERS.get("ddim").options == ("ddim_eta", "skip_start")
    assert SAMPLERS.get("cold").options == () and not SAMPLERS.get("cold").needs_posterior
    assert SAMPLERS.get("ddpm").needs_posterior and SAMPLERS.get("ddim").needs_posterior
    assert set(OPTION_DEFAULTS) == set(OPTION_CHECKS)
    assert OPTION_DEFAULTS == {"var_type": "small", "ddim_eta": 0.0, "skip_start": 0.0, "sample_shift": 1.0, "spacing": "",
                               "rho": 7.0, "solver_sigma_max": math.inf, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    for name, smp in SAMPLERS.items():
        assert isinstance(smp, Sampler) and smp.name == name and smp.evals_per_step == (2 if name == "heun" else 1)
        assert set(smp.options) <= set(OPTION_CHECKS)
        # `bench ls samplers` prints the description: reference, options and cost
        assert smp.description.count("[options: ") == 1 and "(" in smp.description.split("[")[0]
        # a config-like object: exactly the declared fields are read
        cfg_like = SimpleNamespace(**OPTION_DEFAULTS)
        assert sampler_options(name, cfg_like) == {o: OPTION_DEFAULTS[o] for o in smp.options}
    with pytest.raises(InputError, match="var_type"):
        sampler_options("ddpm", SimpleNamespace(var_type="learned", ddim_eta=0.0, skip_start=0.0))
    with pytest.raises(InputError, match="ddim_eta"):
        sampler_options("ddim", SimpleNamespace(var_type="small", ddim_eta=-1.0, skip_start=0.0))
    with pytest.raises(InputError, match="skip_start"):
        sampler_options("ddim", SimpleNamespace(var_type="small", ddim_eta=0.0, skip_start=1.5))
    with pytest.raises(AttributeError):
        sampler_options("ddim", SimpleNamespace(var_type="small"))  # the field it declares must exist


@pytest.mark.parametrize("sampler", SAMPLERS.names())
@pytest.mark.parametrize("steps", [1, 7, 100])
def test_model_evaluations_per_step_as_declared(sampler, steps):
    d = diff("cosine", 100)
    model = PointOracle(d, xstar_of(0))
    run(sampler, model, d, noise_for(d, "gaussian"), (2, 1, 4, 4), steps, seed=0)
    assert len(model.calls) == SAMPLERS.get(sampler).nfe(steps, d) == steps * SAMPLERS.get(sampler).evals_per_step - (
        sampler == "heun")  # heun: 2N - 1 (its last step is Euler's)


def test_sample_images_passes_each_sampler_only_its_options():
    d = diff("linear", 100)
    noise = noise_for(d, "gamma", 0.1)
    model = GaussOracle(d, MU, SD)
    both = {"var_type": "large", "ddim_eta": 1.0}
    for name, direct in (("ddpm", {"var_type": "large"}), ("ddim", {"ddim_eta": 1.0})):
        want = run(name, model, d, noise, (3, 1, 4, 4), 20, seed=2, **direct)
        got = sample_images(model, d, noise, name, 20, 3, (1, 4, 4), 2, 3, "cpu", options=both)
        assert torch.equal(got, want)
        default = sample_images(model, d, noise, name, 20, 3, (1, 4, 4), 2, 3, "cpu")  # options=None: defaults
        assert not torch.equal(default, want)
        assert torch.equal(default, run(name, model, d, noise, (3, 1, 4, 4), 20, seed=2))


def test_register_sampler_checks_the_declared_options():
    with pytest.raises(TypeError, match="declared options"):
        @register_sampler("bad_sampler", options={"ddim_eta": OPTION_CHECKS["ddim_eta"]})
        def bad(model, diffusion, noise, shape, steps, generators, device="cpu", *, clip_x0=True, progress=False):
            return None
    with pytest.raises(TypeError, match="the check of its value"):
        @register_sampler("bad_sampler", options={"skip_frac": None})
        def bad2(model, diffusion, noise, shape, steps, generators, device="cpu", *, clip_x0=True, progress=False,
                 skip_frac=0.0):
            return None
    with pytest.raises(TypeError, match="another check"):  # one option, one meaning
        @register_sampler("bad_sampler", options={"skip_start": lambda v: None})
        def bad3(model, diffusion, noise, shape, steps, generators, device="cpu", *, clip_x0=True, progress=False,
                 skip_start=0.0):
            return None
    assert "bad_sampler" not in SAMPLERS and "skip_frac" not in OPTION_CHECKS


def test_to_uint8_and_save_grid(tmp_path):
    x = torch.tensor([-1.0, 0.0, 1.0, -2.0, 2.0, 0.5, -0.999])
    assert to_uint8(x).tolist() == [0, 128, 255, 0, 255, 191, 0]
    assert to_uint8(x).dtype == torch.uint8
    imgs = torch.linspace(-1, 1, 5 * 64).view(5, 1, 8, 8)
    path = save_grid(imgs, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (3 * 10 + 2, 2 * 10 + 2)  # nrow = ceil(sqrt(5)) = 3
        px = torch.from_numpy(np.asarray(im).copy())
    assert px.min().item() == 0 and px.max().item() == 255
    save_grid(to_uint8(imgs), tmp_path / "sub" / "grid.png", nrow=5)  # overwrite, uint8 input
    with Image.open(path) as im:
        assert im.size == (5 * 10 + 2, 10 + 2)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["grid.png"]  # no temp file left


def test_sample_images_with_progress(capsys):
    d = diff("linear", 100)
    out = sample_images(PointOracle(d, torch.zeros(1, 1, 2, 2)), d, noise_for(d, "gaussian"), "ddim", 5, 3, (1, 2, 2),
                        seed0=0, batch_size=2, device="cpu", progress=True)
    assert out.shape == (3, 1, 2, 2) and out.abs().max().item() < 1e-4


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_sample_images_ticks_count_every_step_of_every_batch_and_change_no_image(sampler):
    """A callable progress (a trial's evaluation reporting to the driver) hears tick(done, total) after
    each step, counted over all batches (3 images in batches of 2: 2 batches x 7 steps), and the images
    are bitwise those of a silent run."""
    d = diff("linear", 100)
    model, noise = GaussOracle(d, MU, SD), noise_for(d, "gaussian")
    ticks = []
    got = sample_images(model, d, noise, sampler, 7, 3, (1, 4, 4), 5, 2, "cpu", progress=lambda k, n: ticks.append((k, n)))
    assert ticks == [(k, 14) for k in range(1, 15)]
    assert torch.equal(got, sample_images(model, d, noise, sampler, 7, 3, (1, 4, 4), 5, 2, "cpu"))


# ---------------------------------------------------------------------------------------------
# skip_start (Nichol & Dhariwal 2021's probe: skip the first fraction of the reverse process)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler,steps,kw", [("ddpm", None, {}), ("ddpm", 17, {}), ("ddim", 10, {}),
                                              ("ddim", 20, {"ddim_eta": 1.0})])
def test_skip_start_starts_later_from_unit_noise_and_the_oracle_still_returns_the_image(schedule, sampler, steps, kw):
    """skip_start = 0.25 at T = 100: the model sees the subsequence of T' = 75 timesteps from index 74
    down to 0, the first x is the standardised noise at index 74 (unit variance, not scaled by
    sqrt(1 - alpha_bar)), and the exact predictor still returns the image."""
    T = 100
    d = diff(schedule, T, "eps", False)
    noise = noise_for(d, "gaussian", None)
    xstar = xstar_of(3)
    steps = steps or 75
    model = PointOracle(d, xstar)
    out = run(sampler, model, d, noise, xstar.shape, steps, seed=5, skip_start=0.25, **kw)
    assert [t for t, _ in model.calls] == timestep_subsequence(75, steps)[::-1] and model.calls[0][0] == 74
    assert torch.equal(model.calls[0][1], noise.sample_per_item(xstar.shape, 74, image_generators(2, 5)).float())
    assert (out - xstar).abs().max().item() < 1e-4


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", {}), ("ddim", {"ddim_eta": 1.0})])
def test_skip_start_zero_is_the_plain_sampler(sampler, kw):
    d = diff("cosine", 100, "eps", False)
    noise = noise_for(d, "gamma", 0.1)
    xstar = xstar_of(4)
    a = run(sampler, PointOracle(d, xstar), d, noise, xstar.shape, 10, seed=1, **kw)
    b = run(sampler, PointOracle(d, xstar), d, noise, xstar.shape, 10, seed=1, skip_start=0.0, **kw)
    assert torch.equal(a, b)


def test_skip_start_bad_values_and_too_many_steps_are_input_errors():
    from bench.experiment.config import RunConfig, validate
    from bench.registry import InputError

    d = diff("linear", 100, "eps", False)
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(InputError, match="skip_start must be a fraction in"):
            run("ddim", PointOracle(d, xstar_of(0)), d, noise_for(d, "gaussian", None), (2, 1, 4, 4), 10, seed=0, skip_start=bad)
    with pytest.raises(InputError, match="more steps than the 700 timesteps left by skip_start=0.3"):
        validate(RunConfig(skip_start=0.3, evals="ddpm:800"))


@pytest.mark.parametrize("sampler,options", [("ddim", {}), ("ddim", {"ddim_eta": 1.0}), ("ddpm", {}),
                                             ("ddpm", {"var_type": "large"})])
def test_a_sampler_step_issues_no_host_to_device_copy(monkeypatch, sampler, options):
    """Issue 32: the samplers built their timesteps on the CPU and copied coefficients to the device 2-5
    times a step, each a wait on the GPU. The meta device stands in for a GPU here: a tensor moved to it
    from the CPU is what a host-to-device copy would be. The noise is drawn on the device (as
    ``Noise.draw_on`` does on CUDA; its own test is tests/test_cuda.py), so what is counted is the
    sampler and the diffusion math: their copies (the coefficient tables, once) do not grow with the steps."""
    from bench.models.unet import build_model

    with torch.device("meta"):
        model = build_model("tiny", 1, 16).eval()
    real_to, moved = torch.Tensor.to, []

    def to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "meta":
            moved.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)
    copies = {}
    for steps in (3, 12):
        d = Diffusion(make_betas("cosine", 100))  # a fresh process each time (diff() is cached): its tables move once
        noise = noise_for(d, "gaussian")
        monkeypatch.setattr(noise, "sample_per_item", lambda shape, t, gens, device=None: torch.randn(shape, device=device))
        moved.clear()
        x = SAMPLERS.get(sampler)(model, d, noise, (2, 1, 16, 16), steps, image_generators(2, 0), "meta", **options)
        assert x.device.type == "meta" and x.shape == (2, 1, 16, 16)
        copies[steps] = len(moved)
    assert copies[12] == copies[3] <= 8, copies


@pytest.mark.parametrize("noise,sampler,kw,mean,std,pixels", [
    ("gaussian", "ddim", {"ddim_eta": 1.0}, 0.024586116029240657, 0.8099135880371042, [0.5037, 0.953149, 0.983795, -1.0]),
    ("gamma", "ddpm", {"theta_0": 0.1}, -0.025357529506739713, 0.8135424309756533, [-0.478642, 0.990804, -0.870229, -0.184575]),
    ("laplace", "ddpm", {}, -0.020802363043609755, 0.8209141973037284, [0.307411, 1.0, -0.377835, 0.768183]),
])
def test_cpu_samples_are_unchanged_by_the_gpu_path(noise, sampler, kw, mean, std, pixels):
    """Issue 32: the GPU path (device timesteps, batched device noise, autocast) must leave the CPU's
    draws exactly as they were, so committed results, resumes and adopted curves stay valid. Anchors:
    the same call on the commit before that change (997091a), to BLAS rounding."""
    from bench.experiment.config import RunConfig, build_process
    from bench.models.unet import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 1, 16).eval()
    _, d, n = build_process(RunConfig(timesteps=100, noise=noise, dataset="synthetic",
                                      **{k: v for k, v in kw.items() if k == "theta_0"}))
    x = sample_images(model, d, n, sampler, 10, 3, (1, 16, 16), 5, 2, "cpu",
                      options={k: v for k, v in kw.items() if k != "theta_0"}).double()
    assert float(x.mean()) == pytest.approx(mean, abs=1e-5) and float(x.std()) == pytest.approx(std, rel=1e-5)
    assert x.flatten()[[0, 100, 500, 700]].tolist() == pytest.approx(pixels, abs=1e-4)
