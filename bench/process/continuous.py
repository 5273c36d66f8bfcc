"""``PathDiffusion``: a continuous-time path (``rf``, ``edm``; ``bench.process.paths``) as the forward
process the trainer and the VE-view solvers call (DESIGN.md section 6).

It is a ``Diffusion`` in interface only: the same methods (``draw_t``, ``q_sample``, ``target``,
``split``, ``loss``, ``model_input``, ``solver_grid``), computed from the path's formulas in float64 at
continuous times t in (0, 1) instead of from tables at integer indices. The discrete samplers (ddpm,
ddim, cold) step a chain it does not have (``discrete = False``: they refuse it with one line).

Training (one step, t from the time density, then the training shift in lambda):

    t  ~ density;  lambda' = lambda(t) - 2 log train_shift;  t <- t(lambda')
    x_t = alpha_t x_0 + sigma_t eps
    pred = path.denoised(F(c_in x_t, c_noise(t)), x_t, t)          (edm: D = c_skip x_t + c_out F)
    loss = w(t) * mean((pred - target)^2),  w = the weighting in the target's form (DESIGN.md section 3)

The model is conditioned on the noise level it sees (c_noise of the shifted t), so a sampling shift
different from the training shift is a valid evaluation here (unlike on vp).

Nominal tables (``alpha_bar``, ``log_snr`` at t = i/T, T = 1000) exist for what reads tables as labels:
the loss-by-time bins and the noise type's bookkeeping; no formula uses them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.process.diffusion import PREDICTIONS, Diffusion, Prediction, make_weighting
from bench.process.paths import Path, shift_log_snr
from bench.process.spacings import SPACINGS
from bench.registry import InputError

#: training times are kept in [T_EPS, 1 - T_EPS]: sigma~ finite (edm's c_noise = ln sigma/4) and > 0
T_EPS = 1e-5
NOMINAL_T = 1000


class PathDiffusion(Diffusion):
    """The forward process of a continuous path with its target, weighting, density and training shift."""

    description = "a continuous-time path (rf, edm): see bench.process.paths"
    has_posterior = False
    discrete = False

    def __init__(self, path: Path, prediction: str, weighting: str = "none", weighting_kwargs: dict | None = None,
                 density=None, train_shift: float = 1.0):
        self.path = path
        self.prediction_name = prediction
        self.prediction: type[Prediction] = PREDICTIONS.get(prediction)
        self.weighting_name = weighting
        self.weighting_kwargs = dict(weighting_kwargs or {})
        self.weighting = make_weighting(weighting, **self.weighting_kwargs)
        self.density = density
        self.train_shift = float(train_shift)
        self.zero_terminal_snr = False
        self.T = NOMINAL_T
        self._tables = {}
        t = torch.arange(1, self.T + 1, dtype=torch.float64) / self.T
        self.log_snr = path.log_snr(t)
        self.alpha_bar = torch.sigmoid(self.log_snr)  # the VP-equivalent alpha_bar (0 at t = 1)
        self.snr = torch.exp(self.log_snr)
        probe = torch.linspace(T_EPS, 1 - T_EPS, 257, dtype=torch.float64)
        w = self.weighting.weight(torch.exp(path.log_snr(probe)), self.prediction)
        if not (torch.isfinite(w).all() and (w >= 0).all()):
            raise InputError(f"weighting {weighting} with prediction {prediction}: the loss weight is not a finite number >= 0 "
                             f"over the path's times")

    def label(self):
        return f"path {self.path.name}"

    # --- coefficients at continuous times ------------------------------------------------------------
    def _coef(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return values.to(device=like.device, dtype=dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def _a_s(self, t: torch.Tensor, like: torch.Tensor):
        t = t.double()
        return self._coef(self.path.alpha(t), like), self._coef(self.path.sigma(t), like)

    # --- time --------------------------------------------------------------------------------------
    def draw_t(self, n, generator):
        """t from the density (float64, CPU), shifted by ``train_shift`` in lambda, kept in [T_EPS, 1 - T_EPS]."""
        t = self.density.draw(n, generator, self.path)
        if self.train_shift != 1.0:
            t = self.path.t_of_log_snr(shift_log_snr(self.path.log_snr(t), self.train_shift))
        return t.clamp(T_EPS, 1.0 - T_EPS)

    def t_of_log_snr(self, lam):
        return self.path.t_of_log_snr(lam)

    def log_snr_mass(self, edges):
        """The training density's exact probability of each log-SNR bin: the time interval a bin maps to
        (before the training shift: lambda + 2 log train_shift) under the density's CDF."""
        import math

        base = edges.double() + 2.0 * math.log(self.train_shift)
        t = self.path.t_of_log_snr(base)  # decreasing in lambda
        cdf = self.density.cdf(t, self.path)
        return (cdf[:-1] - cdf[1:]).clamp(min=0.0)

    def t_bin(self, t, nbins):
        return (t.double() * nbins).long().clamp(0, nbins - 1)

    def noise_index(self, t):
        """The nominal index of t (noise types that accept a continuous path do not depend on it)."""
        return (t.double() * self.T).long().clamp(0, self.T - 1)

    def time_of_index(self, i):
        """t = (i + 1)/T, kept below 1 (edm: sigma~ finite at the last index)."""
        return min((i + 1) / self.T, 1.0 - T_EPS)

    def start_alpha_bar(self):
        """The VP-equivalent alpha_bar = alpha^2/(alpha^2 + sigma^2) at the solvers' first grid point
        (rf: t = 1, 0; edm: sigma = 80, 1/(1 + 80^2))."""
        _, a, s = self.solver_grid(1)[0]
        return a * a / (a * a + s * s)

    def times_on(self, x, time):
        return torch.full((x.shape[0],), float(time), dtype=torch.float64, device=x.device)

    def model_input(self, x_t, t):
        """(c_in x_t, c_noise(t)): the path's preconditioning of the network's input (float32 time input)."""
        c_in = self._coef(self.path.c_in(t.double()), x_t)
        return c_in * x_t, self.path.c_noise(t.double()).to(torch.float32)

    def sigma_range(self):
        return self.path.sigma_min, self.path.sigma_max

    def solver_grid(self, steps, sample_shift=1.0, spacing="", rho=7.0, sigma_cap=math.inf):
        """The grid of ``spacing`` (``bench.process.spacings``; "" = the path's own: uniform t from 1 on rf,
        Karras rho = 7 on edm), then data (t = 0), then the sampling shift in lambda (sigma~' = sample_shift
        sigma~; the ends t = 0 and 1 stay)."""
        t = SPACINGS.get(spacing or self.path.default_spacing)(self, steps, rho, sigma_cap)
        t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
        if sample_shift != 1.0:
            inner = (t > 0) & (t < 1)
            t = torch.where(inner, self.path.t_of_log_snr(shift_log_snr(self.path.log_snr(t.clamp(T_EPS, 1 - T_EPS)),
                                                                         sample_shift)), t)
        a, s = self.path.alpha(t), self.path.sigma(t)
        return [(float(ti), float(ai), float(si)) for ti, ai, si in zip(t, a, s)]

    # --- the forward process and the one conversion ----------------------------------------------------
    def q_sample(self, x0, t, eps):
        a, s = self._a_s(t, x0)
        return a * x0 + s * eps

    def target(self, x0, t, eps):
        a, s = self._a_s(t, x0)
        return self.prediction.target(x0, eps, a, s)

    def split(self, model_out, x_t, t, clip_x0=False):
        """(x0_hat, eps_hat) from the raw network output: the path's preconditioning (``Path.denoised``),
        then the target's conversion; with ``clip_x0`` x0_hat is clamped to [-1, 1] and eps_hat recomputed."""
        a, s = self._a_s(t, x_t)
        pred = self.path.denoised(model_out.to(x_t.dtype), x_t, t.double())
        x0, eps = self.prediction.split(pred, x_t, a, s)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x_t - a * x0) / s
        return x0, eps

    def loss(self, model, x0, t, eps, kind="mse", eps_in=None):
        """Per-example loss [B]: w(t) mean((pred - target)^2), pred = the path's prediction from the network
        (edm: D), target = the prediction's (flow: eps - x_0; x0: x_0), w = the weighting in the target's
        form at SNR = exp(lambda_t)."""
        losses = {"mse": F.mse_loss, "l1": F.l1_loss}
        if kind not in losses:
            raise InputError(f"loss must be one of {', '.join(losses)}, got {kind!r}")
        x_t = self.q_sample(x0, t, eps if eps_in is None else eps_in)
        x_in, c_noise = self.model_input(x_t, t)
        pred = self.path.denoised(model(x_in, c_noise).float(), x_t.float(), t.double())
        target = self.target(x0, t, eps)
        per = losses[kind](pred, target.to(pred.dtype), reduction="none").flatten(1).mean(1)
        w = self.weighting.weight(torch.exp(self.path.log_snr(t.double())), self.prediction)
        return per * w.to(device=per.device, dtype=per.dtype)

    # --- what the discrete samplers would need: refused with one line ------------------------------------
    def restrict(self, timesteps):
        raise InputError("a continuous path has no discrete chain to respace: sample it with euler")
