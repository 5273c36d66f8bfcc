"""Beta schedules: pure functions ``(T, **params) -> betas`` (torch.float64, shape [T]).

Notation: t = 1..T, alpha_bar_t = prod_{i<=t} (1 - beta_i), SNR_t = alpha_bar_t / (1 - alpha_bar_t).
The same schedule names mean different things across public libraries, so each docstring states the
exact formula used here and its reference. Keyword parameters are RunConfig fields of the same name
(``None`` in a config means "this schedule's default"), so a grid can sweep e.g. ``tau``.

Add a schedule: write a function below and decorate it with ``@SCHEDULES.register("name")``; the CLI
(``bench ls schedules``), the grids and the generated tests pick it up.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from bench.registry import InputError, Registry

SCHEDULES: Registry = Registry("schedule")

#: beta_t is capped here wherever a formula reaches beta = 1 (alpha_bar_T = 0), as in Nichol & Dhariwal.
MAX_BETA = 0.999
#: x_T counts as "pure noise" when alpha_bar_T is below this (signal amplitude sqrt(1e-3) ~ 3%).
PURE_NOISE_ALPHA_BAR = 1e-3

_F64 = torch.float64


def _check_beta_range(schedule: str, beta_start: float, beta_end: float) -> None:
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise InputError(f"{schedule} schedule: every beta must lie in (0, 1); got beta_start={beta_start}, beta_end={beta_end}")


def betas_from_alpha_bar(alpha_bar: torch.Tensor, max_beta: float = MAX_BETA) -> torch.Tensor:
    """beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta) with alpha_bar_0 = 1.

    ``alpha_bar`` holds alpha_bar_1..alpha_bar_T (shape [T]).
    """
    prev = torch.cat([torch.ones(1, dtype=_F64), alpha_bar[:-1]])
    return torch.clamp(1.0 - alpha_bar / prev, max=max_beta)


@SCHEDULES.register("linear")
def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta = linspace(beta_start * 1000/T, beta_end * 1000/T, T).

    Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (1e-4 .. 0.02 at T=1000); the
    1000/T scaling keeps the total noise fixed for other T, as in improved-diffusion
    (Nichol & Dhariwal 2021). Below T = 20 the scaled betas pass 1 and are capped at 0.999.
    Anchor: alpha_bar_T = 4.036e-5 at T=1000.
    """
    _check_beta_range("linear", beta_start, beta_end)
    scale = 1000.0 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=_F64).clamp(max=MAX_BETA)


@SCHEDULES.register("cosine")
def cosine(T: int, cosine_s: float = 0.008) -> torch.Tensor:
    """f(u) = cos^2((u + s)/(1 + s) * pi/2); beta_t = min(1 - f(t/T)/f((t-1)/T), 0.999), s = 0.008.

    Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", eq. 17.
    Anchor: alpha_bar_T = 2.43e-9 at T=1000 (from the capped betas).
    """
    u = torch.arange(T + 1, dtype=_F64) / T
    f = torch.cos((u + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return torch.clamp(1.0 - f[1:] / f[:-1], max=MAX_BETA)


@SCHEDULES.register("sigmoid")
def sigmoid(T: int, sigmoid_start: float = -3.0, sigmoid_end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Sigmoid schedule on alpha_bar (continuous time), discretised at u_i = i/T, i = 0..T.

    a(u) = (sig(end/tau) - sig((u (end - start) + start)/tau)) / (sig(end/tau) - sig(start/tau)),
    normalised by a(0); beta_i = clip(1 - a_i / a_{i-1}, 0, 0.999). start = -3, end = 3, tau = 1.
    Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models" (Algorithm 1);
    Jabri, Fleet, Chen 2022 (RIN). Anchor: alpha_bar_T = 3.0e-7 at T=1000.
    """
    if tau <= 0:
        raise InputError(f"sigmoid schedule: tau must be > 0, got {tau}")
    if not sigmoid_end > sigmoid_start:
        raise InputError(f"sigmoid schedule: need sigmoid_start < sigmoid_end, got {sigmoid_start}, {sigmoid_end}")
    u = torch.arange(T + 1, dtype=_F64) / T
    v_start = torch.sigmoid(torch.tensor(sigmoid_start / tau, dtype=_F64))
    v_end = torch.sigmoid(torch.tensor(sigmoid_end / tau, dtype=_F64))
    a = (v_end - torch.sigmoid((u * (sigmoid_end - sigmoid_start) + sigmoid_start) / tau)) / (v_end - v_start)
    a = a / a[0]
    return torch.clamp(1.0 - a[1:] / a[:-1], min=0.0, max=MAX_BETA)


@SCHEDULES.register("exponential")
def exponential(T: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """sigma_t = sigma_min (sigma_max/sigma_min)^((t-1)/(T-1)); alpha_bar_t = 1/(1 + sigma_t^2).

    The variance-exploding sigma grid mapped to variance preserving: log-SNR = -2 log sigma_t is
    linear in t. k-diffusion's ``get_sigmas_exponential`` with EDM's range (Karras et al. 2022:
    sigma_min = 0.002, sigma_max = 80). Anchor: alpha_bar_T = 1/(1 + 80^2) = 1.56e-4.
    """
    if not 0 < sigma_min < sigma_max:
        raise InputError(f"exponential schedule: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    k = torch.arange(T, dtype=_F64) / (T - 1)
    sigma = sigma_min * (sigma_max / sigma_min) ** k
    return betas_from_alpha_bar(1.0 / (1.0 + sigma**2))


@SCHEDULES.register("scaled_linear")
def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (linear in sqrt(beta)).

    Stable Diffusion's schedule (Rombach et al. 2022; diffusers ``"scaled_linear"``), defaults
    0.00085 .. 0.012, no 1000/T scaling. Its alpha_bar_T = 4.7e-3 at T=1000: x_T keeps some signal,
    which the terminal-SNR check flags.
    """
    _check_beta_range("scaled_linear", beta_start, beta_end)
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=_F64) ** 2


@SCHEDULES.register("geometric")
def geometric(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_i = beta_start (beta_end/beta_start)^((i-1)/(T-1)): betas geometric from 1e-4 to 0.02.

    The naive "exponential" schedule (betas, not the log-SNR, exponential in t). Its alpha_bar_T =
    0.023 at T=1000, so x_T is far from pure noise; registered under an explicit name so that it is
    never mistaken for ``exponential``.
    """
    _check_beta_range("geometric", beta_start, beta_end)
    k = torch.arange(T, dtype=_F64) / (T - 1)
    return beta_start * (beta_end / beta_start) ** k


@SCHEDULES.register("sigmoid_beta")
def sigmoid_beta(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta = sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start.

    Sigmoid in *beta* space: GeoDiff (Xu et al. 2022), what diffusers calls ``"sigmoid"``. Not the
    same thing as ``sigmoid`` above (Chen 2023), which is sigmoid in alpha_bar.
    """
    _check_beta_range("sigmoid_beta", beta_start, beta_end)
    return torch.sigmoid(torch.linspace(-6, 6, T, dtype=_F64)) * (beta_end - beta_start) + beta_start


@SCHEDULES.register("laplace")
def laplace(T: int, laplace_mu: float = 0.0, laplace_b: float = 0.5) -> torch.Tensor:
    """log-SNR lambda(u) = mu - b sgn(0.5 - u) log(1 - 2|u - 0.5|); alpha_bar = sigmoid(lambda).

    Hang et al. 2024, "Improved Noise Schedule for Diffusion Training" (Laplace, mu = 0, b = 0.5),
    discretised at u = t/T; beta_t = min(1 - alpha_bar_t/alpha_bar_{t-1}, 0.999) (u = 1 gives
    lambda = -inf, i.e. beta capped at 0.999).
    """
    if laplace_b <= 0:
        raise InputError(f"laplace schedule: laplace_b must be > 0, got {laplace_b}")
    u = torch.arange(1, T + 1, dtype=_F64) / T
    lam = laplace_mu - laplace_b * torch.sign(0.5 - u) * torch.log1p(-2 * torch.abs(u - 0.5))
    return betas_from_alpha_bar(torch.sigmoid(lam))


#: simple_linear clips alpha_bar(u) = 1 - u from below here (Chen 2023, Algorithm 1, ``clip_min``).
SIMPLE_LINEAR_CLIP = 1e-9


@SCHEDULES.register("simple_linear")
def simple_linear(T: int) -> torch.Tensor:
    """alpha_bar(u) = clip(1 - u, 1e-9, 1) at u = i/T; beta_i = min(1 - alpha_bar(i/T)/alpha_bar((i-1)/T), 0.999).

    Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models", Algorithm 1
    (``simple_linear_schedule``), discretised like ``cosine``; the "simple linear" schedule of the MNIST
    study this suite grew from. The product telescopes: alpha_bar_t = 1 - t/T for t < T (to float64
    rounding; beta_i = 1/(T - i + 1)). At t = T the clip makes beta_T = 1 - 1e-9 T, capped at 0.999,
    so alpha_bar_T = 1e-3/T: 1e-6 at T=1000 (without the cap it would be the clip value, 1e-9).
    """
    u = torch.arange(T + 1, dtype=_F64) / T
    a = torch.clamp(1.0 - u, min=SIMPLE_LINEAR_CLIP, max=1.0)
    return torch.clamp(1.0 - a[1:] / a[:-1], max=MAX_BETA)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that sqrt(alpha_bar_T) = 0 exactly and sqrt(alpha_bar_1) is kept.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
    s_t = sqrt(alpha_bar_t), s'_t = (s_t - s_T) s_1 / (s_1 - s_T), alpha_bar'_t = s'_t^2,
    beta'_t = 1 - alpha_bar'_t / alpha_bar'_{t-1}. Then alpha_bar'_T = 0 and beta'_T = 1 exactly: no
    0.999 cap (a capped last beta leaves alpha_bar_T = 1e-3 alpha_bar_{T-1}, e.g. 4.2e-12 for linear,
    which eps-prediction turns into a ~5e5-fold amplified x_0 estimate at t = T). Every other beta
    stays in (0, 1). x_0 cannot be read from pure noise with eps-prediction: ``Diffusion`` rejects
    that combination and accepts ``v`` or ``x0`` (DESIGN.md section 3).
    """
    s = torch.sqrt(torch.cumprod(1.0 - betas, 0))
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * s0 / (s0 - sT)
    s[-1] = 0.0  # (s_T - s_T) is 0 already; stated so that nothing depends on rounding
    return betas_from_alpha_bar(s**2, max_beta=1.0)


def schedule_params(name: str) -> dict[str, object]:
    """The keyword parameters of schedule ``name`` and their defaults."""
    sig = inspect.signature(SCHEDULES.get(name))
    return {p.name: p.default for p in list(sig.parameters.values())[1:]}


def make_betas(name: str, T: int, zero_terminal_snr: bool = False, **params) -> torch.Tensor:
    """Betas of schedule ``name`` at ``T`` steps, validated. ``params`` that are ``None`` or that the
    schedule does not take are ignored, so one flat config can carry every schedule's parameters."""
    fn = SCHEDULES.get(name)
    if not isinstance(T, int) or T < 2:
        raise InputError(f"schedule {name}: T must be an integer >= 2, got {T!r}")
    accepted = schedule_params(name)
    kwargs = {k: v for k, v in params.items() if k in accepted and v is not None}
    for k, v in kwargs.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"schedule {name}: parameter {k} must be finite, got {v}")
    betas = fn(T, **kwargs)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    check_betas(betas, f"schedule {name} (T={T}, {kwargs})", zero_terminal_snr=zero_terminal_snr)
    return betas


def check_betas(betas: torch.Tensor, what: str = "betas", zero_terminal_snr: bool = False) -> None:
    """Raise InputError unless every beta is finite and in the open interval (0, 1).

    With ``zero_terminal_snr`` the last beta must be exactly 1 (alpha_bar_T = 0, Lin et al. 2023) and
    every other beta in (0, 1): beta = 1 anywhere else would zero alpha_bar before t = T."""
    if betas.dtype != _F64 or betas.ndim != 1:
        raise InputError(f"{what}: betas must be a 1-d float64 tensor, got {betas.dtype} {tuple(betas.shape)}")
    if not torch.isfinite(betas).all():
        raise InputError(f"{what}: betas contain NaN or inf")
    body = betas[:-1] if zero_terminal_snr else betas
    if zero_terminal_snr and betas[-1].item() != 1.0:
        raise InputError(f"{what}: zero terminal SNR needs beta_T = 1 exactly, got {betas[-1].item():.17g}")
    if not ((body > 0) & (body < 1)).all():
        where = " before t = T" if zero_terminal_snr else ""
        raise InputError(
            f"{what}: every beta{where} must lie in (0, 1); got min {body.min().item():.3g}, max {body.max().item():.3g}"
        )


@dataclass(frozen=True)
class TerminalReport:
    """How close x_T is to pure noise (the prior the sampler starts from)."""

    alpha_bar_T: float
    snr_T: float
    log_snr_T: float
    pure_noise: bool

    def describe(self) -> str:
        verdict = "x_T ~ pure noise" if self.pure_noise else "x_T is NOT pure noise: it keeps visible signal"
        return f"alpha_bar_T = {self.alpha_bar_T:.3g}, SNR_T = {self.snr_T:.3g} ({verdict})"


def terminal_report(betas: torch.Tensor, threshold: float = PURE_NOISE_ALPHA_BAR) -> TerminalReport:
    """Terminal alpha_bar / SNR / log-SNR of ``betas`` and whether x_T is pure noise (alpha_bar_T < threshold).

    Zero terminal SNR (beta_T = 1) gives alpha_bar_T = SNR_T = 0 and log-SNR_T = -inf."""
    ab = float(torch.prod(1.0 - betas))
    snr = ab / (1.0 - ab)
    return TerminalReport(ab, snr, math.log(snr) if snr > 0 else -math.inf, ab < threshold)


def timestep_subsequence(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced 0-based timesteps of 0..T-1, ascending, always ending at T-1.

    s_i = round(i (T-1)/(steps-1)), i = 0..steps-1 (improved-diffusion's ``space_timesteps`` with one
    section, rounding half up), so both 0 and T-1 are included and steps = T gives 0..T-1.
    steps = 1 gives [T-1]: one step from x_T straight to the x_0 prediction.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise InputError(f"sampling steps must be an integer in 1..T = 1..{T} (the schedule's timesteps), got {steps!r}")
    if steps == 1:
        return [T - 1]
    stride = (T - 1) / (steps - 1)
    ts = [int(math.floor(i * stride + 0.5)) for i in range(steps)]
    assert len(set(ts)) == steps and ts[0] == 0 and ts[-1] == T - 1, ts
    return ts


def shift_schedule(betas: torch.Tensor, shift: float) -> torch.Tensor:
    """The schedule shifted in log-SNR by ``shift`` = a: lambda' = lambda - 2 log a, i.e.
    alpha_bar' = alpha_bar / (alpha_bar + a^2 (1 - alpha_bar)) (Hoogeboom et al. 2023, simple diffusion's
    shifted schedules; DESIGN.md section 6: on vp the shift is defined in lambda), as betas
    beta'_i = 1 - alpha_bar'_i/alpha_bar'_{i-1}. a = 1 returns ``betas`` itself; a zero terminal SNR stays 0."""
    if shift == 1.0:
        return betas
    ab = torch.cumprod(1.0 - betas.to(torch.float64), 0)
    shifted = ab / (ab + shift**2 * (1.0 - ab))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    out = 1.0 - shifted / prev
    if betas[-1].item() == 1.0:
        out[-1] = 1.0
    return out
