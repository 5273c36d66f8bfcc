"""Corruptions (bench/process/corruptions.py) against closed forms and independent oracles.

* the DCT: orthonormal, equal to scipy.fft.dctn(norm="ortho"), its round trip exact to float precision;
* blur: the frequency scaling as DESIGN.md writes it; sigma_blur_max = 0 is the Gaussian diffusion (x_t,
  conversions, posterior, samples with the same seeds); the per-frequency posterior equals the posterior
  of the whole image computed independently (explicit pixel-space matrices from scipy's DCT, Gaussian
  conditioning); an exact predictor returns the image through every sampler;
* cold_blur: D is the paper's blur (kernel on an impulse, their circular Conv2d applied t times,
  D(x, 0) = x, the variance of t passes); an exact restorer returns the image through Algorithm 2; the
  stochastic start is the documented one;
* bad combinations are InputError before any work (exit 2 from the CLI).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn as nn

from bench.experiment.config import RunConfig, build_process, trial_id, validate
from bench.process.corruptions import (
    CORRUPTIONS,
    BlurDiffusion,
    ChannelMeanPrior,
    ColdBlur,
    dct2,
    dct_matrix,
    gaussian_kernel2d,
    idct2,
    make_process,
)
from bench.process.diffusion import PREDICTIONS, Diffusion
from bench.process.noise import make_noise
from bench.process.schedules import make_betas
from bench.registry import InputError
from bench.sampling.sample import SAMPLERS, image_generators, sample_images, timestep_subsequence

PREDS = [p for p in PREDICTIONS.names() if p != "flow"]  # flow is the rf path's (no corruption there)


def blur(schedule="linear", T=100, sigma=20.0, prediction="eps", zt=False) -> BlurDiffusion:
    return BlurDiffusion(make_betas(schedule, T, zt), prediction, sigma_blur_max=sigma)


def gauss(schedule="linear", T=100, prediction="eps", zt=False) -> Diffusion:
    return Diffusion(make_betas(schedule, T, zt), prediction)


def image(seed=0, shape=(2, 1, 8, 6)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


# ---------------------------------------------------------------------------------------------
# the DCT


@pytest.mark.parametrize("n", [1, 2, 7, 16, 28, 64])
def test_dct_matrix_is_orthonormal(n):
    c = dct_matrix(n)
    assert torch.allclose(c @ c.T, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)
    assert torch.allclose(c.T @ c, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)


@pytest.mark.parametrize("shape", [(3, 2, 28, 28), (1, 3, 16, 9), (2, 1, 5, 1)])
def test_dct2_is_scipys_orthonormal_dct_and_round_trips(shape):
    x = image(1, shape)
    want = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert np.abs(dct2(x).numpy() - want).max() < 1e-13
    assert (idct2(dct2(x)) - x).abs().max().item() < 1e-13
    assert np.abs(idct2(torch.from_numpy(want)).numpy() - scipy.fft.idctn(want, type=2, norm="ortho", axes=(-2, -1))).max() < 1e-13
    xf = x.float()
    assert (idct2(dct2(xf)) - xf).abs().max().item() < 1e-6  # float32: rounding only
    assert torch.allclose((dct2(x) ** 2).sum((-2, -1)), (x**2).sum((-2, -1)), rtol=1e-12)  # Parseval


# ---------------------------------------------------------------------------------------------
# blur: the frequency scaling


def test_frequency_scaling_is_designs_formula():
    d = blur(T=50, sigma=7.5)
    h, w = 6, 9
    tab = d.frequency_tables(h, w)
    f_h, f_w = np.pi * np.arange(h) / h, np.pi * np.arange(w) / w
    lam = f_h[:, None] ** 2 + f_w[None, :] ** 2
    for i in (0, 10, 49):
        s = (i + 1) / 50
        tau = (7.5 * np.sin(np.pi * s / 2) ** 2) ** 2 / 2
        want = (1 - 0.001) * np.exp(-lam * tau) + 0.001
        assert np.abs(tab["d"][i].numpy() - want).max() < 1e-14
        assert np.abs(tab["alpha"][i].numpy() - math.sqrt(d.alpha_bar[i]) * want).max() < 1e-14
    dd = tab["d"]
    assert (dd[:, 0, 0] == 1.0).all()  # the DC frequency is never damped
    assert ((dd >= 0.001) & (dd <= 1.0)).all() and (dd[1:] <= dd[:-1]).all()  # more blur as t grows


def test_sigma_zero_is_exactly_no_blur():
    tab = blur(sigma=0.0).frequency_tables(7, 5)
    assert (tab["d"] == 1.0).all()  # 1 + (1 - d_min) expm1(0), no rounding


def test_bad_sigma_blur_max():
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(InputError, match="sigma_blur_max"):
            blur(sigma=bad)


# ---------------------------------------------------------------------------------------------
# blur with sigma_blur_max = 0 is the Gaussian diffusion


@pytest.mark.parametrize("prediction,zt", [(p, False) for p in PREDS] + [("v", True), ("x0", True)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sigma_zero_reproduces_the_gaussian_formulas(schedule, prediction, zt):
    b, g = blur(schedule, 100, 0.0, prediction, zt), gauss(schedule, 100, prediction, zt)
    x0, eps, out = image(2), image(3), image(4)
    t = torch.tensor([0, 99]) if not zt else torch.tensor([0, 98])
    x_t = g.q_sample(x0, t, eps)
    assert (b.q_sample(x0, t, eps) - x_t).abs().max() < 1e-12
    assert (b.target(x0, t, eps) - g.target(x0, t, eps)).abs().max() < 1e-12
    for clip in (False, True):
        for u, v in zip(b.split(out, x_t, t, clip), g.split(out, x_t, t, clip)):
            assert (u - v).abs().max() < 1e-9, (clip, (u - v).abs().max())
    mb, vb, lb = b.q_posterior(x0, x_t, t)
    mg, vg, lg = g.q_posterior(x0, x_t, t)
    assert (mb - mg).abs().max() < 1e-12
    assert torch.allclose(vb, vg.expand_as(vb), rtol=1e-10, atol=1e-15) and torch.allclose(lb, lg.expand_as(lb), rtol=1e-10)
    for var_type in ("small", "large"):
        mb, vb, xb = b.p_mean_variance(out, x_t, t, var_type)
        mg, vg, xg = g.p_mean_variance(out, x_t, t, var_type)
        assert (mb - mg).abs().max() < 1e-9 and (xb - xg).abs().max() < 1e-9
        assert torch.allclose(vb, vg.expand_as(vb), rtol=1e-10, atol=1e-15)
    model = lambda x, tt: torch.tanh(x + tt.view(-1, 1, 1, 1) / 100)  # any fixed function of (x, t)
    assert torch.allclose(b.loss(model, x0, t, eps), g.loss(model, x0, t, eps), rtol=1e-10)


class FixedNet(nn.Module):
    """A fixed, non-trivial function of (x, t) standing in for a trained network."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(1, 1, 3, 3, generator=g) * 0.3)

    def forward(self, x, t):
        y = nn.functional.conv2d(x, self.w, padding=1)
        return torch.tanh(y + 0.3 * torch.cos(t.float() / 17).view(-1, 1, 1, 1))


@pytest.mark.parametrize("prediction", PREDS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sigma_zero_reproduces_the_gaussian_samples(schedule, prediction):
    """Same seeds, same model: every sampler gives the Gaussian diffusion's samples (float32, to DCT rounding)."""
    b, g = blur(schedule, 60, 0.0, prediction), gauss(schedule, 60, prediction)
    noise = make_noise("gaussian", g.alpha_bar)
    net = FixedNet()
    for sampler, steps, opts in (("ddpm", 60, {}), ("ddpm", 13, {"var_type": "large"}), ("ddim", 10, {}),
                                 ("ddim", 12, {"ddim_eta": 0.6}), ("cold", 10, {})):
        xb = sample_images(net, b, noise, sampler, steps, 3, (1, 8, 8), 11, 3, "cpu", options=opts)
        xg = sample_images(net, g, noise, sampler, steps, 3, (1, 8, 8), 11, 3, "cpu", options=opts)
        assert (xb - xg).abs().max().item() < 2e-5, (sampler, steps, opts, (xb - xg).abs().max().item())


def test_small_sigma_is_close_to_gaussian():
    """sigma_blur_max -> 0 is continuous: x_t moves by O(sigma^2)."""
    x0, eps, t = image(5), image(6), torch.tensor([40, 80])
    g = gauss().q_sample(x0, t, eps)
    gaps = [(blur(sigma=s).q_sample(x0, t, eps) - g).abs().max().item() for s in (0.1, 0.01, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6 and gaps[1] / gaps[2] == pytest.approx(100, rel=0.05)


# ---------------------------------------------------------------------------------------------
# blur: the posterior against an independent computation of the whole image's posterior


def _pixel_operator(d: BlurDiffusion, i: int, h: int, w: int) -> np.ndarray:
    """A_i = V diag(alpha_i) V^T as an explicit [hw, hw] matrix, from scipy's DCT of basis images and the
    DESIGN.md formula (not from the class's tables)."""
    f_h, f_w = np.pi * np.arange(h) / h, np.pi * np.arange(w) / w
    lam = f_h[:, None] ** 2 + f_w[None, :] ** 2
    s = (i + 1) / d.T if i >= 0 else 0.0
    tau = (d.sigma_blur_max * np.sin(np.pi * s / 2) ** 2) ** 2 / 2
    alpha = (math.sqrt(d.alpha_bar[i]) if i >= 0 else 1.0) * ((1 - 0.001) * np.exp(-lam * tau) + 0.001)
    cols = []
    for k in range(h * w):
        e = np.zeros(h * w)
        e[k] = 1.0
        u = scipy.fft.dctn(e.reshape(h, w), type=2, norm="ortho")
        cols.append(scipy.fft.idctn(alpha * u, type=2, norm="ortho").ravel())
    return np.stack(cols, 1)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("i", [0, 1, 37, 99])
def test_blur_posterior_is_the_images_gaussian_conditional(schedule, i):
    """q(x_{t-1} | x_t, x_0) by Gaussian conditioning of the joint of (x_{t-1}, x_t) given x_0 in pixel space:
    x_{t-1} = A_{t-1} x_0 + s_{t-1} e1, x_t = A_{t|t-1} x_{t-1} + noise of covariance s_t^2 I - s_{t-1}^2 A_{t|t-1}^2."""
    h, w = 4, 5
    d = blur(schedule, 100, 6.0)
    a_t, a_s = _pixel_operator(d, i, h, w), _pixel_operator(d, i - 1, h, w)
    s_t = math.sqrt(1 - d.alpha_bar[i])
    s_s = math.sqrt(1 - d.alpha_bar[i - 1]) if i > 0 else 0.0
    a_ts = a_t @ np.linalg.inv(a_s)
    n = h * w
    cov_s, cov_t, cov_st = s_s**2 * np.eye(n), s_t**2 * np.eye(n), s_s**2 * a_ts.T  # Cov(x_s, x_t) = s_s^2 A_ts^T
    x0, xt = image(7, (1, 1, h, w)), image(8, (1, 1, h, w))
    gain = cov_st @ np.linalg.inv(cov_t)
    mean = a_s @ x0.numpy().ravel() + gain @ (xt.numpy().ravel() - a_t @ x0.numpy().ravel())
    cov = cov_s - gain @ cov_st.T
    got_mean, got_var, _ = d.q_posterior(x0, xt, torch.tensor([i]))
    assert np.abs(got_mean.numpy().ravel() - mean).max() < 1e-10
    v = np.stack([scipy.fft.idctn(np.eye(n)[k].reshape(h, w), type=2, norm="ortho").ravel() for k in range(n)], 1)
    got_cov = v @ np.diag(got_var.numpy().ravel()) @ v.T
    assert np.abs(got_cov - cov).max() < 1e-10


def test_blur_posterior_per_frequency_is_hos_formula_with_alpha_bar_of_the_frequency():
    """Per frequency with x_t = alpha_t u_0 + s_t eps: the coefficients of Ho et al. eq. 7 rewritten with
    alpha_bar_t(f) = alpha_t(f)^2 / (alpha_t(f)^2 + s_t^2) after rescaling u by 1 / sqrt(alpha^2 + s^2)."""
    d = blur("cosine", 100, 20.0)
    tab = d.frequency_tables(5, 5)
    for i in (3, 50, 98):
        for (p, q) in ((0, 0), (1, 2), (4, 4)):
            at, as_ = tab["alpha"][i, p, q].item(), tab["alpha"][i - 1, p, q].item()
            st, ss = math.sqrt(1 - d.alpha_bar[i]), math.sqrt(1 - d.alpha_bar[i - 1])
            # u_s = as u0 + ss e ; u_t = (at/as) u_s + sqrt(st^2 - (at/as)^2 ss^2) e'   (the Markov chain)
            r = at / as_
            beta = st**2 - r**2 * ss**2
            post_var = 1 / (1 / ss**2 + r**2 / beta)  # precision-weighted (the paper's sigma2_denoise)
            c_xt = post_var * r / beta
            c_x0 = post_var * as_ / ss**2
            assert tab["var"][i, p, q].item() == pytest.approx(post_var, rel=1e-10)
            assert tab["coef_xt"][i, p, q].item() == pytest.approx(c_xt, rel=1e-10)
            assert tab["coef_x0"][i, p, q].item() == pytest.approx(c_x0, rel=1e-10)


def test_blur_respacing_keeps_the_original_times():
    d = blur("cosine", 100, 20.0)
    ts = timestep_subsequence(100, 9)
    sub = d.restrict(ts)
    assert isinstance(sub, BlurDiffusion) and sub.T == 9 and sub.sigma_blur_max == 20.0
    assert torch.equal(sub.times, d.times[ts])
    assert torch.allclose(sub.frequency_tables(4, 4)["alpha"], d.frequency_tables(4, 4)["alpha"][ts], rtol=1e-12)
    assert d.restrict(range(100)) is d


# ---------------------------------------------------------------------------------------------
# blur: exact predictor


class BlurPointOracle:
    """Exact predictor of a blur process's target when the data is the single image x*: E[x_0 | x_t] = x*,
    eps* = (x_t - A_t x*) / s_t; output = the process's own target of (x*, eps*) (float64)."""

    def __init__(self, d, xstar):
        self.d, self.xstar = d, xstar.double()

    def __call__(self, x, t):
        x = x.double()
        xs = self.xstar.expand(x.shape)
        s = (1 - self.d.alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
        eps = (x - self.d.q_sample(xs, t, torch.zeros_like(xs))) / s
        return self.d.target(xs, t, eps).float()


SAMPLER_CONFIGS = [("ddpm", None, {}), ("ddpm", 17, {}), ("ddpm", None, {"var_type": "large"}), ("ddim", 10, {}),
                   ("ddim", 25, {"ddim_eta": 1.0}), ("cold", 10, {})]


@pytest.mark.parametrize("prediction,zt", [(p, False) for p in PREDS] + [("v", True), ("x0", True)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sigma", [1.0, 20.0])
def test_blur_point_oracle_returns_the_image(schedule, prediction, zt, sigma):
    T = 100
    d = blur(schedule, T, sigma, prediction, zt)
    noise = make_noise("gaussian", d.alpha_bar)
    xstar = image(9, (2, 1, 6, 6)).float()
    xstar.view(-1)[:2] = torch.tensor([1.0, -1.0])
    for sampler, steps, kw in SAMPLER_CONFIGS:
        out = SAMPLERS.get(sampler)(BlurPointOracle(d, xstar), d, noise, xstar.shape, steps or T,
                                    image_generators(2, 3), **kw)
        assert torch.isfinite(out).all()
        assert (out - xstar).abs().max().item() < 1e-4, (sampler, steps, kw, (out - xstar).abs().max().item())


def test_blur_ddim_eta1_all_steps_is_ddpm():
    d = blur("cosine", 40, 20.0, "v")
    noise = make_noise("gaussian", d.alpha_bar)
    net = FixedNet()
    a = sample_images(net, d, noise, "ddim", 40, 2, (1, 6, 6), 4, 2, "cpu", options={"ddim_eta": 1.0})
    b = sample_images(net, d, noise, "ddpm", 40, 2, (1, 6, 6), 4, 2, "cpu")
    assert (a - b).abs().max().item() < 1e-5


def test_cold_sampler_on_a_gaussian_process_is_ddim_eta0():
    for d in (gauss("cosine", 50, "v"), blur("cosine", 50, 20.0, "v")):
        noise = make_noise("gaussian", d.alpha_bar)
        a = sample_images(FixedNet(), d, noise, "cold", 10, 3, (1, 6, 6), 2, 3, "cpu")
        b = sample_images(FixedNet(), d, noise, "ddim", 10, 3, (1, 6, 6), 2, 3, "cpu")
        assert (a - b).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------
# cold_blur: the paper's blur


def cold(T=20) -> ColdBlur:
    return ColdBlur(make_betas("linear", T), "x0")


def their_conv(channels: int) -> nn.Conv2d:
    """Cold Diffusion's ``get_conv((11, 11), (7, 7))``: a depthwise Conv2d, padding 5, padding_mode 'circular',
    the torchgeometry kernel written out here (exp(-x^2 / (2 * 7^2)), x = -5..5, normalised, outer product)."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 7.0**2))
    g /= g.sum()
    conv = nn.Conv2d(channels, channels, 11, padding=5, padding_mode="circular", bias=False, groups=channels)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.outer(g, g)).float().expand(channels, 1, 11, 11))
    return conv


def test_cold_kernel_is_torchgeometrys():
    k = gaussian_kernel2d(11, 7.0)
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / 98.0)
    assert np.abs(k.numpy() - np.outer(g, g) / g.sum() ** 2).max() < 1e-15 and abs(k.sum().item() - 1) < 1e-14


def test_cold_blur_on_an_impulse():
    d = cold()
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    x[0, 0, 14, 14] = 1.0
    once = d.degrade(x, torch.tensor([1]))
    assert (once[0, 0, 9:20, 9:20] - gaussian_kernel2d(11, 7.0)).abs().max() < 1e-14  # the kernel around the impulse
    assert once[0, 0].sum().item() == pytest.approx(1.0) and (once[0, 0, :9].abs().max() < 1e-14)
    corner = torch.zeros_like(x)
    corner[0, 0, 0, 0] = 1.0  # circular padding: the kernel wraps around the border
    wrapped = d.degrade(corner, torch.tensor([1]))[0, 0]
    k = gaussian_kernel2d(11, 7.0)
    assert wrapped[0, 0].item() == pytest.approx(k[5, 5].item()) and wrapped[-5, -5].item() == pytest.approx(k[0, 0].item())


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 16, 16), (1, 2, 12, 20)])
def test_cold_blur_is_their_conv_applied_t_times(shape):
    d = cold()
    x = image(10, shape).float()
    conv = their_conv(shape[1])
    ref = x
    with torch.no_grad():
        for t in range(21):
            got = d.degrade(x, torch.full((shape[0],), t))
            # float32 FFT blur vs t direct convolutions: CPU-dependent kernels, ~1e-6 apart (issue 29: 1e-5)
            assert (got - ref).abs().max().item() < 1e-5, (t, (got - ref).abs().max().item())
            ref = conv(ref)
    assert torch.equal(d.degrade(x, torch.zeros(shape[0], dtype=torch.long)), x)  # D(x, 0) = x exactly
    # q_sample at 0-based index i is the blur applied i + 1 times; per-image counts in one batch
    t = torch.tensor([0, 19, 4])[: shape[0]]
    want = torch.stack([d.degrade(x[j : j + 1], torch.tensor([int(t[j]) + 1]))[0] for j in range(shape[0])])
    assert torch.allclose(d.q_sample(x, t, torch.randn_like(x)), want, atol=1e-7)


def test_cold_blur_t_passes_have_t_times_the_kernels_variance():
    """Blurring t times is one blur whose variance is t times the kernel's: a Gaussian of std 7 sqrt(t) for
    an untruncated kernel, but the 11-tap kernel of std 7 is cut at +-5 pixels (nearly a box), so one pass
    has std 3.04, not 7 (checked on a 64 x 64 impulse where t <= 5 passes do not wrap around)."""
    d = cold()
    x = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    x[0, 0, 32, 32] = 1.0
    taps = np.arange(11) - 5
    g = np.exp(-(taps**2) / 98.0)
    var1 = float((g * taps**2).sum() / g.sum())
    assert math.sqrt(var1) == pytest.approx(3.037, abs=1e-3)
    pos = torch.arange(64, dtype=torch.float64) - 32
    for t in range(1, 6):
        y = d.degrade(x, torch.tensor([t]))[0, 0]
        assert y.sum().item() == pytest.approx(1.0, abs=1e-12)
        row = y.sum(1)
        assert (row * pos).sum().item() == pytest.approx(0.0, abs=1e-10)
        assert (row * pos**2).sum().item() == pytest.approx(t * var1, rel=1e-10)
        assert (row * pos**2).sum().item() < 49 * t / 4  # far from std 7 sqrt(t)


def test_cold_blur_keeps_the_channel_means():
    d = cold()
    x = image(11, (2, 3, 28, 28))
    y = d.degrade(x, torch.tensor([20, 7]))
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-12)
    # 20 passes on 28 x 28: what is left besides the mean is ~1% of the image's lowest frequencies
    assert (y[0] - y[0].mean((1, 2), keepdim=True)).abs().max() < 0.05 * (x[0] - x[0].mean((1, 2), keepdim=True)).abs().max()


def test_cold_blur_restorer_oracle_returns_the_image():
    """An exact restorer R(x_t, t) = x* through Algorithm 2 telescopes to x* + (x_T - D(x*, T)): from
    x_T = D(x*, T) it returns x* (every steps count); from the stochastic start it is off by exactly the start's gap."""
    T = 20
    d = cold(T)
    noise = make_noise("gaussian", d.alpha_bar)
    xstar = image(12, (2, 1, 28, 28)).float()
    restorer = lambda x, t: xstar
    d.x_T = lambda noise, shape, gens, device: d.degrade(xstar, torch.full((shape[0],), T))
    for steps in (20, 7, 1):
        out = SAMPLERS.get("cold")(restorer, d, noise, xstar.shape, steps, image_generators(2, 0), clip_x0=False)
        assert (out - xstar).abs().max().item() < 1e-5
    del d.x_T
    d.fit_start(image(13, (50, 1, 28, 28)).float())
    start = d.x_T(noise, xstar.shape, image_generators(2, 0), "cpu")
    out = SAMPLERS.get("cold")(restorer, d, noise, xstar.shape, 20, image_generators(2, 0), clip_x0=False)
    assert (out - (xstar + start - d.degrade(xstar, torch.full((2,), T)))).abs().max().item() < 1e-5


def test_cold_start_is_the_papers():
    """x_T = a constant image of channel means drawn from the fitted mixture + N(0, 0.002^2) per pixel, per-image seeds."""
    d = ColdBlur(make_betas("linear", 20), "x0")
    data = torch.cat([torch.full((300, 3, 8, 8), -0.5), torch.full((100, 3, 8, 8), 0.25)]) + 0.01 * torch.randn(400, 3, 8, 8)
    d.fit_start(data)
    noise = make_noise("gaussian", d.alpha_bar)
    x = d.x_T(noise, (64, 3, 8, 8), image_generators(64, 5), "cpu")
    means = x.mean((2, 3))
    assert ((means + 0.5).abs().lt(0.01) | (means - 0.25).abs().lt(0.01)).all()  # one of the two modes
    assert 0.6 < (means[:, 0] < 0).float().mean().item() < 0.9  # weights ~ 3 : 1
    assert (x - x.mean((2, 3), keepdim=True)).std().item() == pytest.approx(0.002, rel=0.1)
    again = d.x_T(noise, (3, 3, 8, 8), image_generators(3, 5 + 10), "cpu")  # image i depends on its seed alone
    assert torch.equal(again, x[10:13])
    assert "0.002" in ColdBlur.START and "mixture" in ColdBlur.START
    with pytest.raises(InputError, match="channels"):
        d.x_T(noise, (2, 1, 8, 8), image_generators(2, 0), "cpu")
    with pytest.raises(InputError, match="training images"):
        ColdBlur(make_betas("linear", 20), "x0").x_T(noise, (2, 3, 8, 8), image_generators(2, 0), "cpu")


def test_channel_mean_prior_recovers_a_mixture():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.1, 3000), rng.normal(2, 0.3, 1000)])[:, None]
    prior = ChannelMeanPrior(x, components=2)
    order = np.argsort(prior.means[:, 0])
    assert np.allclose(prior.means[order, 0], [-1, 2], atol=0.03)
    assert np.allclose(np.sqrt(prior.covs[order, 0, 0]), [0.1, 0.3], atol=0.02)
    assert np.allclose(prior.weights[order], [0.75, 0.25], atol=0.02)
    again = ChannelMeanPrior(x, components=2)
    assert np.array_equal(again.means, prior.means)  # deterministic


def test_cold_blur_loss_is_l1_restoration():
    d = cold()
    x0 = image(14, (3, 1, 16, 16)).float()
    t = torch.tensor([0, 5, 19])
    model = lambda x, tt: x * 0.5
    want = (d.degrade(x0, t + 1) * 0.5 - x0).abs().flatten(1).mean(1)
    assert torch.allclose(d.loss(model, x0, t, torch.randn_like(x0), kind="l1"), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the builder, the config, bad input


def test_registry_and_config_fields():
    assert CORRUPTIONS.names() == ["blur", "cold_blur", "none"] and CORRUPTIONS.get("none") is Diffusion
    for name, cls in CORRUPTIONS.items():
        assert cls.description.startswith(name + ":")
    cfg = RunConfig()
    assert cfg.corruption == "none" and cfg.sigma_blur_max is None
    assert trial_id(cfg) == trial_id(cfg.replace(sigma_blur_max=None))
    assert cfg.canonical() == cfg and cfg.replace(sigma_blur_max=3.0).canonical() == cfg  # none drops it
    b = cfg.replace(corruption="blur", sigma_blur_max=3.0)
    assert b.canonical() == b and trial_id(b) != trial_id(cfg)
    assert b.arm() == "linear / gaussian / blur(sigma_blur_max=3)" and cfg.arm() == "linear / gaussian"
    _, d, _ = build_process(b)
    assert isinstance(d, BlurDiffusion) and d.sigma_blur_max == 3.0
    _, d, _ = build_process(cfg.replace(corruption="blur"))
    assert d.sigma_blur_max == 20.0  # None -> the paper's default
    assert type(build_process(cfg).diffusion) is Diffusion


COLD = dict(corruption="cold_blur", prediction="x0", timesteps=20, loss="l1", evals="cold:20")


@pytest.mark.parametrize("changes,match", [
    (dict(COLD, prediction="eps"), "prediction x0"),
    (dict(COLD, prediction="v"), "prediction x0"),
    (dict(COLD, noise="gamma", theta_0=0.1), "noise gaussian"),
    (dict(COLD, weighting="min_snr"), "weighting none"),
    (dict(COLD, evals="cold:20,ddim:10"), "sampler ddim needs a Gaussian posterior"),
    (dict(COLD, evals="ddpm:20"), "sample it with cold"),
    (dict(corruption="blur", noise="gamma", theta_0=0.1), "noise gaussian"),
    (dict(corruption="blur", sigma_blur_max=-1.0), "sigma_blur_max"),
    (dict(corruption="blurr"), "did you mean blur"),
    (dict(corruption="blur", prediction="eps", zero_terminal_snr=True), "zero terminal SNR"),
])
def test_bad_combinations_are_input_errors(changes, match):
    with pytest.raises(InputError, match=match):
        validate(RunConfig(**changes))


def test_good_combinations_validate():
    validate(RunConfig(**COLD))
    for p in PREDS:
        validate(RunConfig(corruption="blur", prediction=p, sigma_blur_max=0.0, evals="ddim:10,ddpm:20,cold:5"))
    validate(RunConfig(corruption="blur", prediction="v", zero_terminal_snr=True, weighting="min_snr"))
    with pytest.raises(InputError, match="takes no parameters"):
        make_process("none", make_betas("linear", 10), sigma_blur_max=2.0)


def test_sampling_cold_blur_with_ddpm_is_an_input_error():
    d = cold()
    with pytest.raises(InputError, match="Gaussian posterior"):
        SAMPLERS.get("ddpm")(lambda x, t: x, d, make_noise("gaussian", d.alpha_bar), (1, 1, 8, 8), 5, image_generators(1, 0))
    with pytest.raises(InputError, match="no posterior"):
        d.q_posterior(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.tensor([0]))


def test_cli_exit_2_before_any_work(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "corruptions_cold", "--preset", "smoke", "--local",
                        "--set", "prediction=eps", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "prediction x0" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "rows.csv").exists()


# ---------------------------------------------------------------------------------------------
# the picture of the forward processes


def test_forward_picture(tmp_path):
    from bench.report.forward import FRACTIONS, caption, default_rows, forward_cells, plot_forward

    rows = default_rows(timesteps=100)
    assert list(rows) == ["gaussian", "gamma, θ₀ = 0.01", "gamma, θ₀ = 0.1", "blur, σ_B,max = 2 (mild)",
                          "blur, σ_B,max = 20 (strong)", "cold_blur (T = 20)"]
    for cfg in rows.values():
        validate(cfg)
    x0 = image(15, (1, 1, 16, 16)).float()[0]
    cells = forward_cells(rows, x0)
    for label, cfg in rows.items():
        assert [t for t, _ in cells[label]] == [min(cfg.timesteps, round(f * cfg.timesteps)) for f in FRACTIONS]
        assert torch.equal(cells[label][0][1], x0)  # t = 0 is x_0
    _, d, noise = build_process(rows["blur, σ_B,max = 20 (strong)"])
    t, got = cells["blur, σ_B,max = 20 (strong)"][3]
    eps = noise.sample((1, 1, 16, 16), torch.tensor([t - 1]), torch.Generator().manual_seed(3)).float()
    assert torch.allclose(got, d.q_sample(x0[None], torch.tensor([t - 1]), eps)[0])
    t, end = cells["cold_blur (T = 20)"][-1]
    assert t == 20 and (end - x0.mean()).abs().max() < 0.05  # nearly the constant image of the mean
    png = plot_forward(tmp_path / "forward.png", rows, x0=x0)
    assert png.exists() and png.with_suffix(".pdf").exists()
    assert plot_forward(tmp_path / "again.png", rows, x0=x0).read_bytes() == png.read_bytes()  # byte-stable
    assert "cold_blur" in caption(rows) and "blur(sigma_blur_max=20)" in caption(rows)


def test_cold_blur_arm_label_names_neither_schedule_nor_noise():
    """cold_blur uses no betas and no noise: its label is the corruption with its T (issue 14)."""
    from bench.experiment.config import RunConfig

    cold = RunConfig(corruption="cold_blur", timesteps=20, prediction="x0", loss="l1", evals="cold:20")
    assert cold.arm() == "cold_blur(T=20) / x0, none"
    assert RunConfig(corruption="blur", sigma_blur_max=2.0).arm() == "linear / gaussian / blur(sigma_blur_max=2)"
    assert RunConfig(schedule="cosine").arm() == "cosine / gaussian"  # the first release's labels, unchanged


def test_report_draws_the_forward_processes_of_a_run_that_varies_them(tmp_path):
    """A run varying noise or corruption gets the forward figure, one row per distinct process (the
    schedules of a noise grid do not multiply its rows); a run that varies only the schedule gets none."""
    import pandas as pd

    from bench.experiment.config import RunConfig, trial_id
    from bench.report.forward import plot_run_forward, run_forward_rows
    from bench.report.tables import Run

    def run_of(cfgs):
        rows = pd.DataFrame([{**c.to_dict(), "trial_id": trial_id(c), "status": "ok"} for c in cfgs])
        return Run(tmp_path, rows, None, {}, {})

    arms = [RunConfig(dataset="synthetic", schedule=s, noise=n, theta_0=th, corruption=c, sigma_blur_max=sb, seed=seed)
            for s in ("linear", "cosine") for n, th, c, sb in (("gaussian", None, "none", None), ("gamma", 0.1, "none", None),
                                                               ("gaussian", None, "blur", 2.0)) for seed in (0, 1)]
    rows = run_forward_rows(run_of(arms))
    assert list(rows) == ["linear / gaussian", "linear / gamma(theta_0=0.1)", "linear / gaussian / blur(sigma_blur_max=2)"]
    notes: list[str] = []
    plot = plot_run_forward(run_of(arms), tmp_path / "plots", notes)
    assert notes == [] and plot.png.exists() and "blur adds noise" in plot.caption and "cold_blur" not in plot.caption
    assert run_forward_rows(run_of([RunConfig(schedule=s) for s in ("linear", "cosine")])) == {}
