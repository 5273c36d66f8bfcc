"""Sampling grids (``spacing``): where the VE-view solvers evaluate the model (DESIGN.md section 6).

A grid is N evaluation points from noise to data, then data itself (sigma~ = 0). On the ``vp`` path
(a discrete chain) the points are 0-based timestep indices into its T-step table; on a continuous
path (``rf``, ``edm``) they are times t in (0, 1]. ``sample_shift`` applies after the spacing
(``Diffusion.solver_grid``), in lambda.

vp only (diffusers' ``timestep_spacing``; Lin et al. 2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Table 2), with T the table's steps and N the sampling steps:

    linspace   round(linspace(0, T-1, N)), descending (improved-diffusion's rounding, half up; diffusers'
               np.round rounds half to even, which differs only where i(T-1)/(N-1) is exactly k + 1/2)
    leading    k * (T // N), k = N-1..0: starts at T - T//N, not at the last index (Lin et al.'s flaw)
    trailing   round(T (N - k)/N) - 1, k = 0..N-1: starts at T-1, ends at T/N - 1 (diffusers'
               np.round(np.arange(T, 0, -T/N)) - 1 computed exactly, rounding half to even: diffusers' float
               arange differs by one index at an exact half for 49 of N = 1..1000 at T = 1000, and for 62
               others returns N + 1 points, the last index -1, i.e. the noisiest entry, as its final step)

any path, from the path's own noise range [smin, smax] of sigma~ (vp: its table's first and last
index; edm: 0.002 and 80, ``edm_sampler``'s defaults; rf: t in [0, 1], so smax is infinite):

    uniform_t       t_i = t_max (1 - i/N), i = 0..N-1 (torch.linspace) (rf: t from 1; on vp t = (index + 1)/T, which is trailing)
    karras          sigma~_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1
                    (Karras et al. 2022, eq. 5; k-diffusion ``get_sigmas_karras``; ``rho``, default 7)
    uniform_lambda  log sigma~ evenly spaced from log smax to log smin (lambda = -2 log sigma~ uniform:
                    karras as rho -> infinity; k-diffusion ``get_sigmas_exponential``)

karras and uniform_lambda need a finite smax: not rf (t = 1 is sigma~ = inf) nor a vp schedule with zero
terminal SNR, unless ``solver_sigma_max`` caps it (EDM's ``sigma_max``: 80 in ``edm_sampler``; a cap
below the path's own smax starts generation from pure noise at that level, as EDM samples its VP model
from sigma ~ 152 and not from the table's end). On the cosine table, whose betas are clipped at 0.999,
smax is 2.0e4 (the level before it 642): Heun's first step from there multiplies the change of the
predicted noise by ~1e4 (results/probe_solvers), which a cap avoids. On vp their sigma~ fall between the
table's entries, and a chain has no noise levels there, so the grid itself is moved to the nearest index
in log sigma~ (the index k-diffusion's ``DiscreteSchedule.sigma_to_t(quantize=True)`` gives the model;
k-diffusion keeps stepping on the unsnapped sigmas, which a model trained on the table's T levels never
saw); where two land on one index the grid is refused (fewer steps, or a continuous path).

The default (``spacing = ""``) is each path's own grid, as before this field existed: vp linspace,
rf uniform_t, edm karras with rho = 7.

Add a spacing: a function ``(diffusion, steps, rho) -> points`` (descending: indices on vp, a float64
tensor of t on a continuous path; raise InputError where it does not apply), registered with
``@register_spacing("name", "one line")``; a grid spaced by noise levels between the process's
[smin, smax] takes ``sigma_cap`` as a fourth parameter and registers with ``by_sigma=True``, so that
``solver_sigma_max`` applies to it (and is refused for the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch

from bench.process.schedules import timestep_subsequence
from bench.registry import InputError, Registry

SPACINGS: Registry = Registry("spacing")


@dataclass(frozen=True)
class Spacing:
    name: str
    fn: Callable[..., Any]
    description: str

    #: whether its points are noise levels between [smin, smax] (karras, uniform_lambda), so a cap on smax applies
    by_sigma: bool = False

    def __call__(self, diffusion, steps: int, rho: float = 7.0, sigma_cap: float = math.inf):
        if sigma_cap != math.inf and not self.by_sigma:
            raise InputError(f"solver_sigma_max caps the noise levels of the karras and uniform_lambda grids; spacing "
                             f"{self.name or 'of the path'} is set by times, not noise levels")
        return self.fn(diffusion, steps, rho, sigma_cap) if self.by_sigma else self.fn(diffusion, steps, rho)


def register_spacing(name: str, description: str, by_sigma: bool = False):
    def deco(fn: Callable) -> Callable:
        SPACINGS.register(name)(Spacing(name, fn, description, by_sigma))
        return fn
    return deco


def check_spacing(value: Any) -> None:
    """InputError unless ``value`` is "" (the path's own grid) or a registered spacing."""
    if not isinstance(value, str):
        raise InputError(f"spacing must be a name (bench ls spacings), got {value!r}")
    if value:
        SPACINGS.get(value)


def check_rho(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"rho (the karras grid's exponent) must be a finite number > 0, got {value!r}")


def _vp_only(diffusion, name: str) -> None:
    if not diffusion.discrete:
        raise InputError(f"spacing {name} spaces the timesteps of a discrete vp chain; a continuous path "
                         f"({diffusion.label()}) takes uniform_t, karras or uniform_lambda")


def _check_count(name: str, T: int, steps: int) -> None:
    if not 1 <= steps <= T:
        raise InputError(f"spacing {name}: {steps} steps do not fit T = {T} timesteps")


@register_spacing("linspace", "vp: round(linspace(0, T-1, N)), both ends included (improved-diffusion; the vp default)")
def linspace(diffusion, steps: int, rho: float = 7.0) -> list[int]:
    _vp_only(diffusion, "linspace")
    return list(reversed(timestep_subsequence(diffusion.T, steps)))


@register_spacing("leading", "vp: k (T // N), k = N-1..0 (diffusers' leading; starts short of the last index)")
def leading(diffusion, steps: int, rho: float = 7.0) -> list[int]:
    _vp_only(diffusion, "leading")
    _check_count("leading", diffusion.T, steps)
    ratio = diffusion.T // steps
    return [k * ratio for k in reversed(range(steps))]


def _trailing(T: int, steps: int) -> list[int]:
    """diffusers' ``trailing``, round(T (N - k)/N) - 1, in exact rational arithmetic (half to even, as np.round)."""
    return [round(Fraction(T * (steps - k), steps)) - 1 for k in range(steps)]


@register_spacing("trailing", "vp: round(T (N - k)/N) - 1, k = 0..N-1 (diffusers' trailing, exact; Lin et al. 2024)")
def trailing(diffusion, steps: int, rho: float = 7.0) -> list[int]:
    _vp_only(diffusion, "trailing")
    _check_count("trailing", diffusion.T, steps)
    return _trailing(diffusion.T, steps)


@register_spacing("uniform_t", "any path: t_i = t_max (1 - i/N) (rf's default; on vp the trailing indices)")
def uniform_t(diffusion, steps: int, rho: float = 7.0):
    if diffusion.discrete:
        _check_count("uniform_t", diffusion.T, steps)
        return _trailing(diffusion.T, steps)
    t_max = float(diffusion.path.t_of_sigma(torch.tensor(diffusion.path.sigma_max, dtype=torch.float64)))
    return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)[:-1]


def check_sigma_cap(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise InputError(f"solver_sigma_max must be a number > 0 (inf = the path's own largest sigma~), got {value!r}")


def _sigma_range(diffusion, name: str, sigma_cap: float = math.inf) -> tuple[float, float]:
    """[smin, smax] of the process, smax capped at ``sigma_cap`` (``solver_sigma_max``: EDM's sampler's sigma_max)."""
    smin, smax = diffusion.sigma_range()
    smax = min(smax, sigma_cap)
    if smax <= smin:
        raise InputError(f"spacing {name}: solver_sigma_max = {sigma_cap:g} is not above the smallest noise level "
                         f"sigma~_min = {smin:g} of this process ({diffusion.label()})")
    if not math.isfinite(smax):
        others = "linspace, leading, trailing or uniform_t" if diffusion.discrete else "uniform_t"
        raise InputError(f"spacing {name} needs a finite largest noise level sigma~_max, and this process "
                         f"({diffusion.label()}) starts at sigma~ = inf: set solver_sigma_max (e.g. 80) or sample "
                         f"it with {others}")
    return smin, smax


#: how far above ``solver_sigma_max`` vp's nearest table level may lie (a tenth: 80 -> 80.2 on cosine; not 5000 -> 2.0e4)
CAP_SLACK = 1.1


def _on_path(diffusion, sigmas: torch.Tensor, name: str, sigma_cap: float = math.inf):
    """The sigma~ of a grid as the process's points: t on a continuous path; on vp the nearest table index
    in log sigma~ (k-diffusion's quantize=True), refused where two points share an index, or where the
    first lands more than ``CAP_SLACK`` above ``sigma_cap`` (the cap exists to keep the start off the
    table's top levels)."""
    if not diffusion.discrete:
        return diffusion.path.t_of_sigma(sigmas)
    table = diffusion.sigma_tilde()
    idx = [int(torch.argmin((table.log() - math.log(s)).abs())) for s in sigmas.tolist()]
    if float(table[idx[0]]) > CAP_SLACK * sigma_cap:
        below = int((table <= sigma_cap).nonzero().max())
        raise InputError(f"spacing {name}: the table level nearest solver_sigma_max = {sigma_cap:g} is sigma~ = "
                         f"{float(table[idx[0]]):.3g} (index {idx[0]}); the level below it is {float(table[below]):.3g} "
                         f"(index {below}): set the cap there, or near a level of the table")
    if len(set(idx)) != len(idx):
        raise InputError(f"spacing {name}: {len(idx)} steps put two grid points on one of the T = {diffusion.T} "
                         f"timesteps (vp's noise levels are its table's); take fewer steps or another spacing")
    return idx


def karras_sigmas(smin: float, smax: float, steps: int, rho: float) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: the N noise levels (float64, descending; no trailing 0)."""
    ramp = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@register_spacing("karras", "any path with a finite sigma~_max (or solver_sigma_max): Karras et al.'s rho-spacing of sigma~ (rho, default 7)",
                  by_sigma=True)
def karras(diffusion, steps: int, rho: float = 7.0, sigma_cap: float = math.inf):
    check_rho(rho)
    return _on_path(diffusion, karras_sigmas(*_sigma_range(diffusion, "karras", sigma_cap), steps, rho), "karras", sigma_cap)


@register_spacing("uniform_lambda", "any path with a finite sigma~_max (or solver_sigma_max): log-SNR evenly spaced (log sigma~ linear)",
                  by_sigma=True)
def uniform_lambda(diffusion, steps: int, rho: float = 7.0, sigma_cap: float = math.inf):
    smin, smax = _sigma_range(diffusion, "uniform_lambda", sigma_cap)
    ramp = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    sig = torch.exp(math.log(smax) + ramp * (math.log(smin) - math.log(smax)))
    return _on_path(diffusion, sig, "uniform_lambda", sigma_cap)
