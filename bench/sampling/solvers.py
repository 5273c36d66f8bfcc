"""The solvers on the VE view of every path (DESIGN.md section 6): ``euler``, ``heun`` (EDM's Algorithm 2
with churn), ``dpmpp_2m`` (DPM-Solver++(2M)) and ``unipc`` (UniPC-2, bh2).

Each steps x_s = alpha_s x0_hat + sigma_s eps_hat on the process's grid (``Diffusion.solver_grid``: the
``spacing``, ``rho``, ``solver_sigma_max`` and ``sample_shift`` options, ``GRID_OPTIONS``) and gets
(x0_hat, eps_hat) from the one conversion ``_denoise``. Oracles: tests/test_solvers.py (k-diffusion's
samplers transcribed, diffusers' schedulers). The contract they register under is ``bench.sampling.contract``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from bench.process.diffusion import Diffusion
from bench.process.noise import Noise
from bench.process.paths import check_shift
from bench.process.spacings import check_rho, check_sigma_cap, check_spacing
from bench.registry import InputError
from bench.sampling.contract import Ticks, _call, _check_steps, _loop, _validate, check_options, register_sampler


def _check_sample_shift(value: Any) -> None:
    check_shift("sample_shift", value)  # the one rule for a shift (bench.process.paths)


def _check_nonneg(name: str, inf_ok: bool = False):
    def check(value: Any) -> None:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0
                or (math.isinf(value) and not inf_ok)):
            raise InputError(f"{name} must be a {'' if inf_ok else 'finite '}number >= 0, got {value!r}")
    check.__name__ = f"_check_{name}"
    return check


_check_s_churn, _check_s_tmin, _check_s_noise = map(_check_nonneg, ("s_churn", "s_tmin", "s_noise"))
_check_s_tmax = _check_nonneg("s_tmax", inf_ok=True)  # EDM's default: churn at every noise level

#: the options of every VE-view solver: the grid (bench.process.spacings) and the sampling shift
GRID_OPTIONS = {"sample_shift": _check_sample_shift, "spacing": check_spacing, "rho": check_rho,
                "solver_sigma_max": check_sigma_cap}


def _grid(diffusion: Diffusion, steps: int, sample_shift: float = 1.0, spacing: str = "", rho: float = 7.0,
          solver_sigma_max: float = math.inf, **_):
    """The checked grid of a VE-view solver (InputError for a spacing the process cannot take)."""
    _check_steps(diffusion.T, steps)
    check_options({"sample_shift": sample_shift, "spacing": spacing, "rho": rho, "solver_sigma_max": solver_sigma_max})
    return diffusion.solver_grid(steps, float(sample_shift), spacing, float(rho), float(solver_sigma_max))


#: the dtype of the VE-view solvers' state x: float32 (as on a GPU); the oracle tests set float64 to compare
#: trajectories with float64 reference code to ~1e-6 instead of float32's rounding
STATE_DTYPE = torch.float32


def _ve_start(diffusion: Diffusion, noise: Noise, shape, steps: int, generators, device, grid) -> torch.Tensor:
    """The VE-view solvers' start on their (checked) ``grid``: x_0 = sigma_0 n, n the run's standardised noise at
    the last index (vp: ddim's x_T), after checking the call; x in ``STATE_DTYPE``."""
    _validate(diffusion, noise, shape, steps, generators)
    return noise.sample_per_item(shape, diffusion.T - 1, generators, device).to(STATE_DTYPE) * grid[0][2]


def _denoise(model, diffusion: Diffusion, x: torch.Tensor, time, clip_x0: bool):
    """(x0_hat, eps_hat) at x and the process's time ``time`` (an index on vp, t on a path): the one conversion."""
    tt = diffusion.times_on(x, time)
    return diffusion.split(_call(model, *diffusion.model_input(x, tt)), x, tt, clip_x0)


def _ve_solver(name: str):
    """Register a VE-view solver of 1 model evaluation a step that reads the grid options (euler,
    dpmpp_2m, unipc), run without autograd."""
    def register(fn):
        return register_sampler(name, options=GRID_OPTIONS, evals_per_step=1, needs_posterior=False, needs_chain=False,
                                needs_ve_view=True, prepare=_grid)(torch.no_grad()(fn))
    return register


@_ve_solver("euler")
def euler(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
          device="cpu", *, clip_x0: bool = True, progress: Ticks = False, sample_shift: float = 1.0, spacing: str = "",
          rho: float = 7.0, solver_sigma_max: float = math.inf) -> torch.Tensor:
    """Euler on the VE view (Karras et al. 2022, Algorithm 1 without the second order; DESIGN.md section 6), every path.

    On the process's grid (time_i, alpha_i, sigma_i), i = 0..N, from noise to data (``solver_grid``: the
    ``spacing``, default the path's own: vp DDIM's linspace timesteps, rf uniform t from 1, edm Karras
    rho = 7; ``sample_shift`` last, in lambda), with D_i = x0_hat and eps_hat from the one conversion
    (``split``) at x_i:

        x~_{i+1} = D_i + (sigma~_{i+1}/sigma~_i)(x~_i - D_i),   sigma~ = sigma/alpha, x~ = x/alpha
        written in x space:  x_{i+1} = alpha_{i+1} D_i + sigma_{i+1} eps_hat_i,  eps_hat_i = (x_i - alpha_i D_i)/sigma_i

    so a start at t = 1 (rf, zero terminal SNR: alpha_0 = 0, sigma~ infinite) is defined; 1 model
    evaluation per step. It starts from x_0 = sigma_0 n, n the run's standardised noise at the last index
    (vp: ddim's x_T). Identities (tests/test_formulations.py, tests/test_solvers.py): on vp it is DDIM at
    eta 0 on the same timesteps; on rf with the flow target, x_{i+1} = x_i + (t_{i+1} - t_i) u_hat (diffusers'
    ``FlowMatchEulerDiscreteScheduler.step``); on edm Karras' Euler step x_{i+1} = D + (sigma_{i+1}/sigma_i)(x_i - D).
    """
    grid = _grid(diffusion, steps, sample_shift, spacing, rho, solver_sigma_max)
    x = _ve_start(diffusion, noise, shape, steps, generators, device, grid)
    for i in _loop(range(steps), progress, f"euler:{steps}"):
        x0, eps = _denoise(model, diffusion, x, grid[i][0], clip_x0)
        _, a_next, s_next = grid[i + 1]
        x = a_next * x0 + s_next * eps if s_next else x0
    return x


def _heun_nfe(steps: int, diffusion: Diffusion, **grid_options) -> int:
    """2N - 1 model evaluations (the last step is Euler); 2N - 2 from sigma~ = inf (rf, zero terminal SNR: the first is Euler too)"""
    starts_at_inf = _grid(diffusion, steps, **grid_options)[0][1] == 0
    return 2 * steps - 1 - (1 if steps >= 2 and starts_at_inf else 0)


def _heun_prepare(diffusion: Diffusion, steps: int, sample_shift: float = 1.0, spacing: str = "", rho: float = 7.0,
                  solver_sigma_max: float = math.inf, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                  s_noise: float = 1.0):
    grid = _grid(diffusion, steps, sample_shift, spacing, rho, solver_sigma_max)
    check_options({"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise})
    if s_churn > 0 and diffusion.discrete:
        raise InputError("heun with s_churn > 0 evaluates the model between the noise levels of vp's T timesteps, which "
                         "a discrete chain does not have: use s_churn = 0 on vp, or a continuous path (rf, edm)")
    if s_tmin > s_tmax:
        raise InputError(f"heun: s_tmin = {s_tmin:g} > s_tmax = {s_tmax:g} leaves no noise level for churn")
    return grid


@register_sampler("heun", options={**GRID_OPTIONS, "s_churn": _check_s_churn, "s_tmin": _check_s_tmin,
                                   "s_tmax": _check_s_tmax, "s_noise": _check_s_noise},
                  evals_per_step=2, needs_posterior=False, needs_chain=False, needs_ve_view=True, nfe=_heun_nfe,
                  prepare=_heun_prepare)
@torch.no_grad()
def heun(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
         device="cpu", *, clip_x0: bool = True, progress: Ticks = False, sample_shift: float = 1.0, spacing: str = "",
         rho: float = 7.0, solver_sigma_max: float = math.inf, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf, s_noise: float = 1.0) -> torch.Tensor:
    """Heun's 2nd order method with churn (Karras et al. 2022, Algorithm 2; k-diffusion ``sample_heun``) on the VE view.

    On euler's grid sigma~_0 > ... > sigma~_N = 0, in x~ = x/alpha, with D(x~; s) = x0_hat at the process's
    point of noise level s (the model sees alpha(s) x~) and d(x~; s) = (x~ - D)/s:

        gamma_i   = min(S_churn/N, sqrt(2) - 1) if S_tmin <= sigma~_i <= S_tmax else 0
        s^        = sigma~_i (1 + gamma_i);   x^ = x~_i + sqrt(s^2 - sigma~_i^2) S_noise z   (z: the run's noise type)
        x'        = x^ + (sigma~_{i+1} - s^) d(x^; s^)                                         (Euler)
        x~_{i+1}  = x^ + (sigma~_{i+1} - s^) (d(x^; s^) + d(x'; sigma~_{i+1}))/2            (unless sigma~_{i+1} = 0)

    2 model evaluations a step, the last step (to sigma~ = 0) Euler: 2N - 1 in all (EDM's 18 steps = 35
    NFE). From sigma~ = inf (rf at t = 1, vp at zero terminal SNR) x~ is infinite and the correction
    undefined, so that first step is euler's in x space and the count is 2N - 2. With S_churn = 0 it is
    deterministic after the start; z is drawn only where gamma > 0 (k-diffusion draws it every step).
    S_churn > 0 needs noise levels between vp's timesteps and is refused there.
    """
    grid = _heun_prepare(diffusion, steps, sample_shift, spacing, rho, solver_sigma_max, s_churn, s_tmin, s_tmax, s_noise)
    x = _ve_start(diffusion, noise, shape, steps, generators, device, grid)
    path = getattr(diffusion, "path", None)
    x = x / grid[0][1] if grid[0][1] > 0 else x  # x~ from here on (x itself while sigma~ = inf)
    for i in _loop(range(steps), progress, f"heun:{steps}"):
        (t, a, s), (t_next, a_next, s_next) = grid[i], grid[i + 1]
        if a == 0:  # sigma~_i = inf: euler's step in x space, to x~ at the next point
            x0, eps = _denoise(model, diffusion, x, t, clip_x0)
            x = (a_next * x0 + s_next * eps) / a_next if s_next else x0
            continue
        sig, sig_next = s / a, s_next / a_next
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sig <= s_tmax else 0.0
        t_hat, a_hat, sig_hat = t, a, sig
        if gamma > 0:  # churn: up to sigma~ (1 + gamma) with fresh noise of the run's type (continuous paths only)
            sig_hat = sig * (1 + gamma)
            t_hat = float(path.t_of_sigma(torch.tensor(sig_hat, dtype=torch.float64)))
            a_hat = float(path.alpha(torch.tensor(t_hat, dtype=torch.float64)))
            index = int(diffusion.noise_index(torch.tensor([t_hat], dtype=torch.float64))[0])
            z = noise.sample_per_item(shape, index, generators, device)
            x = x + math.sqrt(sig_hat**2 - sig**2) * s_noise * z.to(x.dtype)
        d = (x - _denoise(model, diffusion, a_hat * x, t_hat, clip_x0)[0]) / sig_hat
        x_next = x + (sig_next - sig_hat) * d
        if sig_next > 0:
            d_next = (x_next - _denoise(model, diffusion, a_next * x_next, t_next, clip_x0)[0]) / sig_next
            x_next = x + (sig_next - sig_hat) * (d + d_next) / 2
        x = x_next
    return x


@_ve_solver("dpmpp_2m")
def dpmpp_2m(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
             device="cpu", *, clip_x0: bool = True, progress: Ticks = False, sample_shift: float = 1.0, spacing: str = "",
             rho: float = 7.0, solver_sigma_max: float = math.inf) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; k-diffusion ``sample_dpmpp_2m``) on the VE view, every path.

    On euler's grid, with l_i = log(alpha_i/sigma_i) = -log sigma~_i (half the log-SNR), h = l_{i+1} - l_i,
    r = (l_i - l_{i-1})/h and D_i = x0_hat at x_i:

        D'  = (1 + 1/(2r)) D_i - (1/(2r)) D_{i-1}     (D_i at the first step and on the last step to sigma = 0)
        x~_{i+1} = (sigma~_{i+1}/sigma~_i) x~_i - expm1(-h) D'
        in x space: x_{i+1} = alpha_{i+1} D' + sigma_{i+1} (x_i - alpha_i D')/sigma_i

    (euler's step with D' for D, so a start at t = 1 is defined: there l = -inf, r = inf and D' = D_i).
    1 model evaluation per step; deterministic after the start (drawn as euler's).
    """
    grid = _grid(diffusion, steps, sample_shift, spacing, rho, solver_sigma_max)
    x = _ve_start(diffusion, noise, shape, steps, generators, device, grid)
    half_log_snr = [math.log(a) - math.log(s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf) for _, a, s in grid]
    old = None
    for i in _loop(range(steps), progress, f"dpmpp_2m:{steps}"):
        (t, a, s), (_, a_next, s_next) = grid[i], grid[i + 1]
        x0, _ = _denoise(model, diffusion, x, t, clip_x0)
        d = x0
        if old is not None and s_next > 0:
            r = (half_log_snr[i] - half_log_snr[i - 1]) / (half_log_snr[i + 1] - half_log_snr[i])
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old
        x = a_next * d + s_next * (x - a * d) / s if s_next else d
        old = x0
    return x


def _unipc_b(hh: float, order: int) -> list[float]:
    """UniPC's b_k = h phi_k(hh) k! / B(h), k = 1..order, with B(h) = expm1(hh) ('bh2') and hh = -h
    (Zhao et al. 2023, eq. 8 and Algorithm 2; diffusers' ``multistep_uni_*_bh_update``, the same recursion)."""
    h_phi_k, fact, b_h, out = math.expm1(hh) / hh - 1, 1, math.expm1(hh), []
    for k in range(1, order + 1):
        out.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return out


def _unipc_step(x, grid, lam, i, D, order, d_new=None):
    """UniPC-p (B(h) = expm1(-h), data prediction) from point i to i + 1 in x space: the predictor, or
    with ``d_new`` = D at the predicted point the corrector (which reuses that evaluation: no extra NFE).

        x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} expm1(-h) D_i - a_{i+1} expm1(-h) (rho_1 D1 + rho_2 (d_new - D_i))
        D1 = (D_{i-1} - D_i)/r,  r = (l_{i-1} - l_i)/h,  h = l_{i+1} - l_i   (the D1 term at order 2 only)

    predictor: rho_1 = 1/2 (diffusers' order-2 simplification), no d_new term; corrector: rho = 1/2 at
    order 1, else R rho = b with R = [[1, 1], [r, 1]]. From sigma~ = inf (l_{i-1} = -inf) r is -inf and the
    D1 term vanishes: D1 -> 0 and rho -> (0, b_1), the limit of the solve."""
    (_, _, s), (_, a_next, s_next) = grid[i], grid[i + 1]
    h = lam[i + 1] - lam[i]
    hh = -h
    b_h = math.expm1(hh)
    x_next = (s_next / s) * x - a_next * b_h * D[-1]  # h phi_1 = expm1(-h) = B(h): the order-1 step (DDIM's)
    r = (lam[i - 1] - lam[i]) / h if order == 2 else None
    d1 = (D[-2] - D[-1]) / r if order == 2 and math.isfinite(r) else None
    if d_new is None:
        return x_next - a_next * b_h * 0.5 * d1 if d1 is not None else x_next
    b = _unipc_b(hh, order)
    if order == 1:
        rho_1, rho_2 = 0.0, 0.5
    elif not math.isfinite(r):
        rho_1, rho_2 = 0.0, b[0]
    else:  # [[1, 1], [r, 1]] (rho_1, rho_2) = (b_1, b_2)
        rho_1 = (b[0] - b[1]) / (1 - r)
        rho_2 = b[0] - rho_1
    corr = rho_2 * (d_new - D[-1]) + (rho_1 * d1 if d1 is not None else 0.0)
    return x_next - a_next * b_h * corr


@_ve_solver("unipc")
def unipc(model, diffusion: Diffusion, noise: Noise, shape, steps: int, generators: Sequence[torch.Generator],
          device="cpu", *, clip_x0: bool = True, progress: Ticks = False, sample_shift: float = 1.0, spacing: str = "",
          rho: float = 7.0, solver_sigma_max: float = math.inf) -> torch.Tensor:
    """UniPC-2, B(h) = expm1(-h) (Zhao et al. 2023, Algorithms 1-2; diffusers' ``UniPCMultistepScheduler``) on the VE view, every path.

    Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models":
    order 2, 'bh2', data prediction, diffusers' defaults (solver_order 2, lower_order_final, the corrector
    after every step but the last, final sigma 0).

    On euler's grid with l_i = log(alpha_i/sigma_i): at each point the model gives D_i at the predicted x_i;
    the corrector then recomputes x_i from x_{i-1} with D_i (UniC, ``_unipc_step``), and the predictor steps
    from the corrected x_i (UniP; order 1 at the first and the last step, else 2). 1 model evaluation per
    step; deterministic after the start (drawn as euler's).
    """
    grid = _grid(diffusion, steps, sample_shift, spacing, rho, solver_sigma_max)
    x = _ve_start(diffusion, noise, shape, steps, generators, device, grid)
    lam = [math.log(a) - math.log(s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf) for _, a, s in grid]
    D: list[torch.Tensor] = []
    last_x, last_order = None, 0
    for i in _loop(range(steps), progress, f"unipc:{steps}"):
        d_i = _denoise(model, diffusion, x, grid[i][0], clip_x0)[0]
        if last_x is not None:  # UniC: x_i again from x_{i-1}, with the evaluation at the predicted x_i
            x = _unipc_step(last_x, grid, lam, i - 1, D, last_order, d_new=d_i)
        D = (D + [d_i])[-2:]
        order = min(2, steps - i, len(D))
        last_x, last_order = x, order
        x = _unipc_step(x, grid, lam, i, D, order) if grid[i + 1][2] > 0 else d_i  # to sigma = 0: x = D_i
    return x
