"""Paths: how x_t mixes data and noise in continuous time, and the shift (DESIGN.md section 6).

Notation: t in [0, 1] (0 = data, 1 = noise), x_t = alpha_t x_0 + sigma_t eps, log-SNR
lambda_t = log(alpha_t^2 / sigma_t^2). Every path has the **VE view** the solvers use:
sigma~ = sigma_t / alpha_t = exp(-lambda/2), x~ = x_t / alpha_t = x_0 + sigma~ eps, and a denoiser
D(x~; sigma~) = x0_hat from the one model-output conversion (Karras et al. 2022, sec. 3).

* ``vp`` (default): the discrete beta schedules, alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)
  at t = i/T, i = 1..T (``bench.process.diffusion.Diffusion``: its tables are the path; this class
  only names it and its accepted targets).
* ``rf``: rectified flow (Liu et al. 2022; Lipman et al. 2022 with sigma_min = 0; Esser et al. 2024,
  eqs. 2-3): alpha_t = 1 - t, sigma_t = t, so sigma~ = t/(1 - t) and lambda = -2 logit(t).
* ``edm``: VE with Karras et al.'s preconditioning (2022, Table 1; NVlabs/edm ``EDMPrecond``):
  x = x_0 + sigma eps. Its time is t = sigma/(1 + sigma) (a bookkeeping choice: sigma~ = t/(1 - t) as
  on ``rf``, so t = 1 is sigma = inf and a density over t means the same noise levels on both paths);
  D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

Every formula here is float64 (the trainer casts at use), so bf16 autocast never touches lambda or
a coefficient.

Add a path: subclass ``Path`` (formulas and reference in the docstring), register it in ``PATHS``,
and give it the targets it accepts (``predictions``); ``bench.process.continuous.PathDiffusion``
makes it a forward process the trainer and the ``euler`` solver use.
"""

from __future__ import annotations

import math

import torch

from bench.registry import InputError, Registry

PATHS: Registry = Registry("path")

#: EDM's sigma_data (Karras et al. 2022, Table 1: 0.5 for images in [-1, 1])
SIGMA_DATA = 0.5


def _f64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _sigma_over_one_plus(sigma) -> torch.Tensor:
    """t = sigma~/(1 + sigma~) (rf and edm: sigma~ = t/(1 - t)), 1 at sigma~ = inf."""
    sigma = _f64(sigma)
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1.0 + sigma))


def shift_log_snr(lam: torch.Tensor, shift: float) -> torch.Tensor:
    """The shift by ``shift`` = a >= 1: sigma~' = a sigma~, i.e. lambda' = lambda - 2 log a (Hoogeboom
    et al. 2023, simple diffusion's shifted schedules; on ``rf`` this is SD3's t' = a t/(1 + (a - 1) t),
    eq. 23, which is NOT the same t-formula on ``vp``: the shift is defined in lambda)."""
    return lam - 2.0 * math.log(shift)


def check_shift(name: str, value) -> float:
    """``value`` as a shift (a finite number >= 1), or InputError naming field ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 1):
        raise InputError(f"{name} must be a finite number >= 1 (sigma~' = {name} * sigma~; 1 = no shift), got {value!r}")
    return float(value)


class Path:
    """A path x_t = alpha_t x_0 + sigma_t eps on t in [0, 1] (float64 tensors in, float64 out)."""

    #: its registered name and one line for ``bench ls paths``
    name = ""
    description = ""
    #: the prediction targets it accepts (the first is what its papers use)
    predictions: tuple[str, ...] = ()
    #: the weighting its papers train with (arm labels name any other)
    natural_weighting = "none"
    #: the time density its papers train with, whose parameters its arm label carries (edm(P_mean,P_std))
    natural_density = ""
    #: whether it is a discrete beta schedule (vp: the ``Diffusion`` tables; no continuous formulas here)
    discrete = False
    #: the sampling grid its papers use (``bench.process.spacings``: the grid of ``spacing = ""``)
    default_spacing = "uniform_t"
    #: the VE noise range [sigma~_min, sigma~_max] its solvers sample (karras and uniform_lambda need a finite max)
    sigma_min, sigma_max = 0.0, math.inf

    def arm_label(self, density_name: str, density_label: str, density_params: str) -> str:
        """The arm's name in SD3 Table 1's style: ``rf/lognorm(0.00,1.00)``, ``rf`` for uniform;
        ``edm(-1.20,1.20)`` for a path's own density (``natural_density``: its parameters only)."""
        if density_name and density_name == self.natural_density:
            return self.name + density_params
        return self.name + (f"/{density_label}" if density_label else "")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t^2/sigma_t^2) (+inf at t = 0, -inf at t = 1)."""
        t = _f64(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of ``log_snr``."""
        raise NotImplementedError

    def log_snr_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """lambda at time t: ``log_snr`` (the name the densities use on every process, vp's chain included)."""
        return self.log_snr(t)

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """The network's input is c_in x_t (1 unless the path preconditions)."""
        return torch.ones_like(_f64(t))

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input (the UNet's sinusoidal embedding takes it as a position)."""
        raise NotImplementedError

    def denoised(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction from the raw network output ``out`` (identity unless the path preconditions)."""
        return out

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The time of VE noise level sigma~ (lambda = -2 log sigma~; sigma~ = inf is t = 1)."""
        return self.t_of_log_snr(-2.0 * torch.log(_f64(sigma)))


@PATHS.register("vp")
class VP(Path):
    """vp: the discrete beta schedules (the ``schedule`` field), alpha_t = sqrt(alpha_bar_t),
    sigma_t = sqrt(1 - alpha_bar_t) at t = i/T (Ho et al. 2020); sampled by ddpm, ddim, cold and euler."""

    name = "vp"
    description = "vp: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps on the beta schedule's T steps (Ho et al. 2020)"
    predictions = ("eps", "x0", "v")
    discrete = True
    default_spacing = "linspace"


@PATHS.register("rf")
class RectifiedFlow(Path):
    """rf: alpha_t = 1 - t, sigma_t = t (Liu et al. 2022; Lipman et al. 2022, sigma_min = 0; SD3 eqs. 2-3).

    sigma~ = t/(1 - t), lambda = -2 logit(t), t = sigmoid(-lambda/2). Target ``flow``: u = eps - x_0.
    The network's time input is 1000 t (diffusers' SD3 convention, timestep = sigma * 1000, so the
    embedding sees the range a vp index has)."""

    name = "rf"
    description = "rf: x_t = (1 - t) x_0 + t eps, target flow u = eps - x_0 (rectified flow; SD3 eqs. 2-3)"
    predictions = ("flow",)
    #: karras / uniform_lambda (with solver_sigma_max) end at EDM's 0.002; sigma~_max is infinite (t = 1)
    sigma_min = 0.002

    def alpha(self, t):
        return 1.0 - _f64(t)

    def sigma(self, t):
        return _f64(t)

    def log_snr(self, t):
        t = _f64(t)
        return -2.0 * (torch.log(t) - torch.log1p(-t))

    def t_of_log_snr(self, lam):
        return torch.sigmoid(-0.5 * _f64(lam))

    def c_noise(self, t):
        return 1000.0 * _f64(t)

    def t_of_sigma(self, sigma):
        return _sigma_over_one_plus(sigma)


@PATHS.register("edm")
class EDM(Path):
    """edm: x = x_0 + sigma eps with Karras et al.'s preconditioning (2022, Table 1; NVlabs/edm
    ``training/networks.py`` ``EDMPrecond``), sigma_data sd = 0.5:

        D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
        c_skip = sd^2/(sigma^2 + sd^2), c_out = sigma sd/sqrt(sigma^2 + sd^2),
        c_in = 1/sqrt(sigma^2 + sd^2), c_noise = ln(sigma)/4.

    D is an x_0 prediction (target ``x0``); EDM's loss weight (sigma^2 + sd^2)/(sigma sd)^2 on
    ||D - x_0||^2 is the weighting ``edm``. Time t = sigma/(1 + sigma) (sigma~ = t/(1 - t), as on
    rf). Default sampling grid: Karras et al.'s rho = 7 between 0.002 and 80 (``edm_sampler``'s defaults)."""

    name = "edm"
    description = "edm: x = x_0 + sigma eps, D = c_skip x + c_out F(c_in x, ln(sigma)/4), sigma_data 0.5 (Karras et al. 2022)"
    predictions = ("x0",)
    natural_weighting = "edm"
    natural_density = "lognormal"
    default_spacing = "karras"
    sigma_min, sigma_max = 0.002, 80.0

    def alpha(self, t):
        return torch.ones_like(_f64(t))

    def sigma(self, t):
        t = _f64(t)
        return t / (1.0 - t)

    def log_snr(self, t):
        return -2.0 * torch.log(self.sigma(t))

    def t_of_log_snr(self, lam):
        return torch.sigmoid(-0.5 * _f64(lam))

    def c_skip(self, t):
        s = self.sigma(t)
        return SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)

    def c_out(self, t):
        s = self.sigma(t)
        return s * SIGMA_DATA / torch.sqrt(s**2 + SIGMA_DATA**2)

    def c_in(self, t):
        return 1.0 / torch.sqrt(self.sigma(t) ** 2 + SIGMA_DATA**2)

    def c_noise(self, t):
        return torch.log(self.sigma(t)) / 4.0

    def denoised(self, out, x_t, t):
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        skip = self.c_skip(t).to(x_t.dtype).reshape(shape)
        cout = self.c_out(t).to(x_t.dtype).reshape(shape)
        return skip * x_t + cout * out.to(x_t.dtype)

    def t_of_sigma(self, sigma):
        return _sigma_over_one_plus(sigma)
