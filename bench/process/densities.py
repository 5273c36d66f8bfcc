"""Training time densities: which noise levels the loss visits (DESIGN.md section 6; ``t_density``).

A density draws u in (0, 1), the path's time t (0 = data, 1 = noise; on ``vp`` the index ceil(u T)),
from the trainer's batch generator. Its constructor's keyword parameters are RunConfig fields
(``None`` = the default), and a parameter set without its density is bad input.

* ``uniform`` (default): on ``vp`` today's uniform integer draw ``torch.randint(T)``, kept as it is (a
  float u mapped to ceil(u T) would consume the generator differently and change existing trials);
  elsewhere u ~ U(0, 1).
* ``logit_normal`` (SD3 eq. 19): u = sigmoid(n), n ~ N(t_mean, t_std^2); t = u as in the paper
  (t = 1 is noise, so t_mean > 0 favours noisier inputs). Drawn exactly as diffusers'
  ``training_utils.compute_density_for_timestep_sampling("logit_normal", ...)`` (same generator, same u).
* ``mode`` (SD3 eq. 20): u = 1 - v - s (cos^2(pi v/2) - 1 + v), v ~ U(0, 1), s = ``t_mode_scale``
  (the sample transform; monotone only for s in [-1, 2/(pi - 2)]), as diffusers' ``"mode"``.
* ``cosmap`` (SD3 eq. 21): u = 1 - 1/(tan(pi v/2) + 1), v ~ U(0, 1); CDF F(t) = (2/pi) arctan(t/(1 - t)).
* ``lognormal`` (EDM, Karras et al. 2022): ln sigma~ ~ N(P_mean, P_std^2), mapped to the path's t
  (t of lambda = -2 ln sigma~). Under rf and edm this is logit_normal(P_mean, P_std) exactly.

Add a density: subclass ``Density`` with ``draw(n, generator, path) -> t`` (float64) and register it.
"""

from __future__ import annotations

import inspect
import math

import torch

from bench.registry import InputError, Registry

DENSITIES: Registry = Registry("t_density")


def _finite(name: str, what: str, value, positive: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise InputError(f"t_density {name}: {what} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


class Density:
    """A training time density. ``draw(n, generator, path)``: float64 t [n] in [0, 1]."""

    #: whether on ``vp`` it is the integer draw of the first release (``uniform`` only)
    integer_on_vp = False

    def draw(self, n: int, generator: torch.Generator, path) -> torch.Tensor:
        raise NotImplementedError

    def cdf(self, t: torch.Tensor, path) -> torch.Tensor:
        """P(T <= t) of the drawn time (float64): what the effective-weighting figure pushes to lambda
        exactly (a histogram of draws is noisy where a weighting is large and the density small)."""
        raise NotImplementedError

    def label(self) -> str:
        """How arm labels name it (SD3 Table 1's names)."""
        raise NotImplementedError

    def params_label(self) -> str:
        """Its parameters alone, e.g. ``(-1.20,1.20)`` (a path whose own density it is names only these)."""
        return ""


@DENSITIES.register("uniform")
class Uniform(Density):
    """uniform: t ~ U(0, 1) (on vp: t ~ U{1..T}, ``torch.randint``, the first release's draw)."""

    description = "uniform: t ~ U(0, 1); on vp t ~ U{1..T} by torch.randint (the first release's draw)"

    integer_on_vp = True

    def draw(self, n, generator, path):
        return torch.rand(n, generator=generator, dtype=torch.float64)

    def cdf(self, t, path):
        return t.clamp(0.0, 1.0)

    def label(self):
        return ""


@DENSITIES.register("logit_normal")
class LogitNormal(Density):
    """logit_normal: t = sigmoid(n), n ~ N(t_mean, t_std^2) (Esser et al. 2024, eq. 19; defaults 0, 1)."""

    description = "logit_normal: t = sigmoid(n), n ~ N(t_mean, t_std^2), defaults 0, 1 (SD3 eq. 19)"

    def __init__(self, t_mean: float = 0.0, t_std: float = 1.0):
        self.m = _finite("logit_normal", "t_mean", t_mean)
        self.s = _finite("logit_normal", "t_std", t_std, positive=True)

    def draw(self, n, generator, path):
        # float32 as diffusers draws it (the same u from the same generator), then float64
        return torch.sigmoid(torch.normal(mean=self.m, std=self.s, size=(n,), generator=generator)).double()

    def cdf(self, t, path):
        return torch.special.ndtr((torch.logit(t) - self.m) / self.s)

    def label(self):
        return f"lognorm({self.m:.2f},{self.s:.2f})"


@DENSITIES.register("mode")
class Mode(Density):
    """mode: t = 1 - v - s (cos^2(pi v/2) - 1 + v), v ~ U(0, 1) (Esser et al. 2024, eq. 20; s = t_mode_scale,
    default 1.29, SD3 Table 1's mode(1.29)); monotone only for s in [-1, 2/(pi - 2)]."""

    description = "mode: t = 1 - v - s (cos^2(pi v/2) - 1 + v), v ~ U(0, 1), s = t_mode_scale, default 1.29 (SD3 eq. 20)"

    def __init__(self, t_mode_scale: float = 1.29):
        s = _finite("mode", "t_mode_scale", t_mode_scale)
        if not -1.0 <= s <= 2.0 / (math.pi - 2.0):
            raise InputError(f"t_density mode: t_mode_scale must lie in [-1, 2/(pi - 2) = 1.752] (where the map is "
                             f"monotone), got {s:g}")
        self.s = s

    def draw(self, n, generator, path):
        v = torch.rand(n, generator=generator).double()  # float32 as diffusers draws it
        return self._transform(v)

    def _transform(self, v):
        return 1.0 - v - self.s * (torch.cos(math.pi * v / 2.0) ** 2 - 1.0 + v)

    def cdf(self, t, path):
        """The transform decreases in v (on the valid range of s): P(T <= t) = 1 - v(t), v(t) by bisection."""
        lo, hi = torch.zeros_like(t), torch.ones_like(t)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self._transform(mid) > t  # not yet far enough along v
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 1.0 - (lo + hi) / 2

    def label(self):
        return f"mode({self.s:.2f})"


@DENSITIES.register("cosmap")
class CosMap(Density):
    """cosmap: t = 1 - 1/(tan(pi v/2) + 1), v ~ U(0, 1) (Esser et al. 2024, eq. 21; Nichol & Dhariwal's
    cosine schedule as a density for rf); CDF F(t) = (2/pi) arctan(t/(1 - t))."""

    description = "cosmap: t = 1 - 1/(tan(pi v/2) + 1), v ~ U(0, 1) (SD3 eq. 21)"

    def draw(self, n, generator, path):
        v = torch.rand(n, generator=generator, dtype=torch.float64)
        return 1.0 - 1.0 / (torch.tan(math.pi * v / 2.0) + 1.0)

    def cdf(self, t, path):
        return (2.0 / math.pi) * torch.atan(t / (1.0 - t))

    def label(self):
        return "cosmap"


@DENSITIES.register("lognormal")
class LogNormal(Density):
    """lognormal: ln sigma~ ~ N(P_mean, P_std^2) (Karras et al. 2022, EDM training; defaults -1.2, 1.2),
    mapped to the path's t through lambda = -2 ln sigma~."""

    description = "lognormal: ln sigma~ ~ N(P_mean, P_std^2), defaults -1.2, 1.2 (EDM, Karras et al. 2022)"

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2):
        self.m = _finite("lognormal", "P_mean", P_mean)
        self.s = _finite("lognormal", "P_std", P_std, positive=True)

    def draw(self, n, generator, path):
        ln_sigma = torch.normal(mean=self.m, std=self.s, size=(n,), generator=generator, dtype=torch.float64)
        return path.t_of_log_snr(-2.0 * ln_sigma)

    def cdf(self, t, path):
        """T <= t when lambda >= lambda(t), i.e. ln sigma~ <= -lambda(t)/2."""
        return torch.special.ndtr((-path.log_snr_of_t(t) / 2.0 - self.m) / self.s)

    def label(self):
        return f"lognormal{self.params_label()}"

    def params_label(self):
        return f"({self.m:.2f},{self.s:.2f})"


def density_params(name: str) -> dict[str, object]:
    """The keyword parameters of density ``name`` and their defaults."""
    sig = inspect.signature(DENSITIES.get(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[1:] if p.kind == p.POSITIONAL_OR_KEYWORD}


def all_density_params() -> tuple[str, ...]:
    """Every density's parameter fields, in registry order."""
    return tuple(dict.fromkeys(k for name in DENSITIES.names() for k in density_params(name)))


def make_density(name: str, **params) -> Density:
    """Density ``name`` with ``params`` (``None`` = unset); a parameter of another density is an
    InputError (one line: a density parameter without its density means nothing)."""
    accepted = density_params(name)
    stray = sorted(k for k, v in params.items() if v is not None and k not in accepted)
    if stray:
        owners = {k: n for n in DENSITIES.names() for k in density_params(n)}
        raise InputError(f"{', '.join(stray)} set without {' / '.join(sorted({owners.get(k, '?') for k in stray}))}: "
                         f"t_density {name} takes {', '.join(accepted) or 'no parameters'}")
    return DENSITIES.get(name)(**{k: v for k, v in params.items() if v is not None})
