"""The samplers of a discrete chain of timesteps or a corruption: ``ddpm`` (ancestral, all T steps or a
respaced subset), ``ddim`` (any steps, eta) and ``cold`` (Cold Diffusion's Algorithm 2, any steps).

They reach the forward process only through its methods (``bench.sampling.sample``'s docstring): ``x_T``,
``split``, ``p_sample`` (ddpm), ``ddim_step`` (ddim) and ``q_sample`` (cold's degradation). The contract
they register under is ``bench.sampling.contract``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from bench.process.diffusion import Diffusion
from bench.process.noise import Noise
from bench.process.schedules import timestep_subsequence
from bench.registry import InputError
from bench.sampling.contract import Ticks, _loop, _model_out, _steps_on, _validate, check_options, register_sampler

VAR_TYPES = ("small", "large")


def _check_var_type(value: Any) -> None:
    if value not in VAR_TYPES:
        raise InputError(f"var_type must be one of {', '.join(VAR_TYPES)}, got {value!r}")


def _check_ddim_eta(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise InputError(f"ddim_eta must be a finite number >= 0, got {value!r}")


def _check_skip_start(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value < 1):
        raise InputError(f"skip_start must be a fraction in [0, 1) of the reverse process to skip, got {value!r}")


def start_T(T: int, skip_start: float = 0.0) -> int:
    """T' = T - round(skip_start * T): with ``skip_start`` the reverse process starts at the papers'
    t = T' (0-based index T' - 1) instead of T, and samples at most T' steps."""
    return T - round(skip_start * T)


def respace(diffusion: Diffusion, timesteps: Sequence[int]) -> Diffusion:
    """The diffusion restricted to an ascending subsequence s_0 < ... < s_{K-1} of its timesteps.

    beta'_i = 1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}} (alpha_bar_{s_{-1}} = 1), so that the new
    process has alpha_bar'_i = alpha_bar_{s_i} exactly (Nichol & Dhariwal 2021, sec. 4;
    improved-diffusion's ``SpacedDiffusion``); it keeps the prediction target, the weighting and the
    corruption (``Diffusion.restrict``; at zero terminal SNR the last beta' is 1 again). The full
    sequence returns ``diffusion`` itself.
    """
    return diffusion.restrict(timesteps)


def _x_T(diffusion: Diffusion, noise: Noise, shape, generators, device) -> torch.Tensor:
    """Where generation starts (``Diffusion.x_T``): x_T = sqrt(1 - alpha_bar_T) * (standardised noise at
    index T-1) (gamma paper, Algorithm 2), or the corruption's own start (cold_blur)."""
    return diffusion.x_T(noise, shape, generators, device)


def _start(diffusion: Diffusion, noise: Noise, shape, generators, device, skip_start: float) -> torch.Tensor:
    """The first x of ddpm / ddim: x_T (``_x_T``), or with ``skip_start`` = f > 0 the probe of Nichol &
    Dhariwal (2021, sec. 3.2: a linear-schedule model loses little when the first ~20% of its reverse
    process is skipped, a cosine one more): generation starts at t = T' = T - round(f T) from
    standardised noise at index T' - 1 (unit variance, drawn exactly as x_T's noise), taken as if it
    were pure noise, although the true x_T' still holds sqrt(alpha_bar_T') of the image. f = 0 is x_T."""
    if not skip_start:
        return _x_T(diffusion, noise, shape, generators, device)
    T1 = start_T(diffusion.T, skip_start)
    if T1 < 1:
        raise InputError(f"skip_start={skip_start} leaves no timestep of T = {diffusion.T}")
    return noise.sample_per_item(shape, T1 - 1, generators, device).float()


@register_sampler("ddpm", options={"var_type": _check_var_type, "skip_start": _check_skip_start}, evals_per_step=1)
@torch.no_grad()
def ddpm(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
         device="cpu", *, clip_x0: bool = True, progress: Ticks = False, var_type: str = "small",
         skip_start: float = 0.0) -> torch.Tensor:
    """Ancestral sampling (Ho, Jain, Abbeel 2020, Algorithm 2) on ``steps`` evenly spaced timesteps.

    Over the subsequence s_0 < ... < s_{K-1} (``timestep_subsequence``; K = T is the full chain) with
    respaced betas beta'_i = 1 - alpha_bar_{s_i}/alpha_bar_{s_{i-1}} (``respace``), for i = K-1..0:

        x_0^ = split(model(x, s_i), x, s_i)[0]                                 (clipped to [-1, 1])
        mu   = coef1'_i x_0^ + coef2'_i x                                      (posterior mean, eq. 7)
        x    = mu + sigma_i z,   z = standardised noise at index s_{i-1}       (i > 0)
        x_0  = mu                                                              (i = 0: no noise)

    sigma_i^2 = beta_tilde'_i = beta'_i (1 - ab_{s_{i-1}})/(1 - ab_{s_i}) for ``var_type="small"``,
    beta'_i for ``"large"`` (Ho et al. sec. 3.2). The model always gets the original timestep s_i.
    With eps-prediction and no clipping, mu equals Algorithm 2's (x - beta/sqrt(1 - ab) eps)/sqrt(alpha).
    At zero terminal SNR the first step has coef2' = 0 (alpha_T = 0) and 1 - ab = 1: no division by 0.
    """
    _validate(diffusion, noise, shape, steps, generators)
    check_options({"var_type": var_type, "skip_start": skip_start})
    ts = timestep_subsequence(start_T(diffusion.T, skip_start), steps)
    sub = respace(diffusion, ts)
    x = _start(diffusion, noise, shape, generators, device, skip_start)
    for i in _loop(reversed(range(len(ts))), progress, f"ddpm:{steps}"):
        out = _model_out(model, x, ts[i], device)
        t_sub = _steps_on(x, i)
        if i == 0:
            return sub.p_sample(out, x, t_sub, None, var_type, clip_x0)  # the posterior mean
        z = noise.sample_per_item(shape, ts[i - 1], generators, device).float()
        x = sub.p_sample(out, x, t_sub, z, var_type, clip_x0)  # mean + sigma z (per frequency under blur)
    raise AssertionError("unreachable")


@register_sampler("ddim", options={"ddim_eta": _check_ddim_eta, "skip_start": _check_skip_start}, evals_per_step=1)
@torch.no_grad()
def ddim(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
         device="cpu", *, clip_x0: bool = True, progress: Ticks = False, ddim_eta: float = 0.0,
         skip_start: float = 0.0) -> torch.Tensor:
    """DDIM (Song, Meng, Ermon 2021, eq. 12) on ``steps`` evenly spaced timesteps, eta = ``ddim_eta``.

    From timestep t to its target s (ab_s = 1 after the last timestep, index 0):

        (x_0^, eps^) = split(model(x, t), x, t)   if clipped: x_0^ in [-1, 1], eps^ = (x - sqrt(ab_t) x_0^)/sqrt(1 - ab_t)
        sigma = eta sqrt((1 - ab_s)/(1 - ab_t)) sqrt(1 - ab_t/ab_s)
        x     = sqrt(ab_s) x_0^ + sqrt(1 - ab_s - sigma^2) eps^ + sigma z,  z = standardised noise at index s

    The last step returns x_0^ (ab_s = 1 makes sigma = 0). eta = 0 is deterministic given x_T (the
    noise type then enters only through x_T); eta = 1 with all T steps is DDPM with the small
    variance. For eta > 1, 1 - ab_s - sigma^2 can turn negative and is clamped at 0. Recomputing eps
    from the clipped x_0^ (improved-diffusion's ``ddim_sample``) keeps x on the line through x_0^.
    """
    _validate(diffusion, noise, shape, steps, generators)
    check_options({"ddim_eta": ddim_eta, "skip_start": skip_start})
    eta = float(ddim_eta)
    ts = timestep_subsequence(start_T(diffusion.T, skip_start), steps)
    x = _start(diffusion, noise, shape, generators, device, skip_start)
    for i in _loop(reversed(range(len(ts))), progress, f"ddim:{steps}"):
        t = ts[i]
        out = _model_out(model, x, t, device)
        x0, eps = diffusion.split(out, x, _steps_on(x, t), clip_x0)
        if i == 0:
            return x0
        z = noise.sample_per_item(shape, ts[i - 1], generators, device).float() if eta > 0 else None
        x = diffusion.ddim_step(x0, eps, t, ts[i - 1], eta, z)  # per frequency under blur
    raise AssertionError("unreachable")


@register_sampler("cold", evals_per_step=1, needs_posterior=False)
@torch.no_grad()
def cold(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
         device="cpu", *, clip_x0: bool = True, progress: Ticks = False) -> torch.Tensor:
    """Cold Diffusion's improved sampling (Bansal et al. 2022, Algorithm 2) on ``steps`` evenly spaced timesteps.

    With the degradation D(x_0, t) = ``diffusion.q_sample(x_0, t, eps)`` (cold_blur: the blur applied
    t times, eps unused), from timestep t to its target s (x_0 itself after the last timestep):

        (x_0^, eps^) = split(model(x, t), x, t)                      (x_0^ clipped to [-1, 1] when clip_x0)
        x            = x - D(x_0^, t) + D(x_0^, s)                   (D(x_0^, "0") = x_0^)

    and the result is clamped to [-1, 1] when ``clip_x0``. It starts from ``diffusion.x_T`` (cold_blur:
    the paper's stochastic start, see ``bench.process.corruptions.ColdBlur``). It needs no posterior, so it
    samples every corruption: for a Gaussian-type process (none, blur) D(x_0^, t) with the model's
    eps^ is x itself up to rounding and the step is DDIM with eta = 0 (tests/test_corruptions.py).
    """
    _validate(diffusion, noise, shape, steps, generators)
    ts = timestep_subsequence(diffusion.T, steps)
    x = _x_T(diffusion, noise, shape, generators, device)
    for i in _loop(reversed(range(len(ts))), progress, f"cold:{steps}"):
        out = _model_out(model, x, ts[i], device)
        tt = torch.full((shape[0],), ts[i], dtype=torch.long, device=x.device)
        x0, eps = diffusion.split(out, x, tt, clip_x0)
        here = diffusion.q_sample(x0, tt, eps)
        there = diffusion.q_sample(x0, torch.full_like(tt, ts[i - 1]), eps) if i > 0 else x0
        x = x - here + there
    return x.clamp(-1.0, 1.0) if clip_x0 else x
