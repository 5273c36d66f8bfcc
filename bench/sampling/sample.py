"""Samplers: ``ddpm`` (ancestral, all T steps or a respaced subset), ``ddim`` (any steps, eta),
``cold`` (Cold Diffusion's Algorithm 2, any steps), and on the VE view of every path ``euler``, ``heun``,
``dpmpp_2m`` (DPM-Solver++(2M)) and ``unipc`` (UniPC-2, bh2).

A sampler is a registered ``Sampler``: its function plus its contract as data, ``options`` (the
RunConfig fields it reads, passed to the function as keyword arguments of the same names) and
``evals_per_step`` (model evaluations per sampling step). ``SAMPLERS.get(name)`` is callable::

    SAMPLERS.get(name)(model, diffusion, noise, shape, steps, generators, device="cpu",
                       clip_x0=True, progress=False, **options) -> x_0   (float32, on ``device``)

    ddpm: options ("var_type", "skip_start")   1 model evaluation per step   needs a Gaussian posterior
    ddim: options ("ddim_eta", "skip_start")   1 model evaluation per step   needs a Gaussian posterior
    cold: options ()              1 model evaluation per step   any forward process
    euler, dpmpp_2m, unipc: the grid options (sample_shift, spacing, rho, solver_sigma_max)   1 model evaluation per step   any path with the VE view
    heun: the grid options and EDM's churn (s_churn, s_tmin, s_tmax, s_noise)   2 per step (2N - 1)

Corruptions (``bench.process.corruptions``; DESIGN.md section 3, "Mild corruptions"): the forward process is a
``Diffusion`` (sub)class, and every sampler reaches it only through its methods: ``x_T`` (the start),
``split`` (the conversion), ``p_sample`` (ddpm's step), ``ddim_step`` (ddim's step) and ``q_sample``
(cold's degradation D). A sampler that needs the Gaussian posterior (``Sampler.needs_posterior``) is
refused, as an ``InputError``, for a process without one (``Diffusion.has_posterior``: cold_blur).

``sample_images(..., options=sampler_options(name, cfg))`` passes each sampler only the options it
declares (a key that is no sampler's option is an ``InputError``).

``model(x_t, t)`` predicts the diffusion's target (``diffusion.prediction``: eps, x0 or v); every
sampler turns its output into (x_0, eps) through ``Diffusion.split`` and never branches on the target.
``t`` is a LongTensor [B] of 0-based indices into the ORIGINAL schedule (also when a respaced
subsequence is sampled). Timesteps are 0-based throughout: index i is the papers' t = i + 1, index
T-1 is t = T.

Noise types (DESIGN.md section 3; Nachmani, San Roman, Wolf 2021, "Denoising Diffusion Gamma
Models", Algorithm 2). The sampler never branches on the noise type; every draw is
``noise.sample_per_item(shape, index, generators, device)`` (standardised: mean 0, variance 1):

* x_T = sqrt(1 - alpha_bar_T) * n, n = standardised noise at index T-1. This is the gamma paper's
  x_T = g_bar_T - k_bar_T theta_T (variance k_bar_T theta_T^2 = 1 - alpha_bar_T); for gaussian
  noise it differs from the usual x_T ~ N(0, I) by the factor sqrt(1 - alpha_bar_T) = 1 - O(alpha_bar_T),
  i.e. < 1e-4 relative for schedules whose x_T is pure noise, and exactly 1 at zero terminal SNR.
  (The true marginal of x_T also has mean sqrt(alpha_bar_T) E[x_0], which no sampler can know;
  ``schedules.terminal_report`` flags the schedules where that matters.)
* Each stochastic step from timestep t to its target s (the next, smaller timestep of the
  subsequence; the paper's "t - 1") adds sigma * z with z the standardised noise at index s.
* No noise is added by the last step (to x_0), and DDIM with eta = 0 draws nothing after x_T.

Per-image seeds (EDM's stacked generators): ``generators[i]`` drives image i alone, so image i gets
the same x_T and the same z's whatever the batch size, the arm of a grid, or the device.
``image_generators`` / ``sample_images`` seed image i with ``seed0 + i``.

Numerics: the state x is float32 on ``device``; every coefficient is computed in float64 from the
diffusion's tables and cast at use (``Diffusion._at``). With eps-prediction, x_0 = (x_t - sqrt(1 - ab)
eps) / sqrt(ab) amplifies float32 rounding by 1/sqrt(ab_T) (~2e4 for cosine at T=1000) in the first
steps; clipping x_0 to [-1, 1] (``clip_x0``, on by default as in Ho et al. and improved-diffusion)
bounds that, and the last step reads x_0 at the smallest timestep, where the amplification is ~1.
v and x0 predictions never divide by sqrt(ab), so zero terminal SNR (ab_T = 0) samples from pure
noise with finite coefficients throughout.

Add a sampler: write a function ``fn(model, diffusion, noise, shape, steps, generators, device="cpu",
*, clip_x0=True, progress=False, <options>)`` whose keyword-only options are RunConfig fields with
defaults, declared in ``bench.experiment.config.RunConfig`` with the ``SAMPLER_OPTION`` role (which keeps it out
of the training key and puts it in the learning-curve key); get (x_0, eps) from
``diffusion.split``, loop over the steps with ``_loop(indices, progress, desc)`` (a bar or ticks: ``Ticks``),
and decorate it with ``@register_sampler("name", options={"option": check, ...}, evals_per_step=k,
needs_posterior=...)``, where ``check(value)`` raises InputError on a bad value (needs_posterior False
when it uses only ``q_sample`` and ``split``, as ``cold``). Registration checks that the declared
options are exactly the function's keyword-only options and that an option two samplers share has one
check. A new option is therefore two edits: its sampler (here) and its RunConfig field with its role.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from tqdm.auto import tqdm

from bench.images import save_grid, to_uint8  # noqa: F401  (re-exported: their home is the leaf bench.images)
from bench.process.diffusion import Diffusion
from bench.process.noise import Noise
from bench.process.paths import check_shift
from bench.process.schedules import timestep_subsequence  # noqa: F401  (its home is the leaf schedules)
from bench.process.spacings import check_rho, check_sigma_cap, check_spacing
from bench.registry import InputError, Registry

SAMPLERS: Registry = Registry("sampler")

VAR_TYPES = ("small", "large")


# ---------------------------------------------------------------------------------------------
# sampler options (RunConfig fields) and the Sampler contract


def _check_var_type(value: Any) -> None:
    if value not in VAR_TYPES:
        raise InputError(f"var_type must be one of {', '.join(VAR_TYPES)}, got {value!r}")


def _check_ddim_eta(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise InputError(f"ddim_eta must be a finite number >= 0, got {value!r}")


def _check_skip_start(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value < 1):
        raise InputError(f"skip_start must be a fraction in [0, 1) of the reverse process to skip, got {value!r}")


#: every sampler option (a RunConfig field) and the check of its value, as the samplers declare them
#: (``register_sampler``): filled at registration, never written by hand
OPTION_CHECKS: dict[str, Callable[[Any], None]] = {}


def start_T(T: int, skip_start: float = 0.0) -> int:
    """T' = T - round(skip_start * T): with ``skip_start`` the reverse process starts at the papers'
    t = T' (0-based index T' - 1) instead of T, and samples at most T' steps."""
    return T - round(skip_start * T)

_COMMON_KEYWORDS = ("clip_x0", "progress")


def check_options(options: dict[str, Any]) -> None:
    """InputError unless every key is a sampler option and every value passes its check."""
    unknown = sorted(set(options) - set(OPTION_CHECKS))
    if unknown:
        raise InputError(f"unknown sampler option(s) {', '.join(unknown)}: known {', '.join(sorted(OPTION_CHECKS))}")
    for k, v in options.items():
        OPTION_CHECKS[k](v)


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its function and its contract (the RunConfig fields it reads, ``options``,
    and its model evaluations per step, ``evals_per_step``). Calling it calls the function."""

    name: str
    fn: Callable[..., torch.Tensor]
    options: tuple[str, ...]
    evals_per_step: int
    #: whether it needs the process's Gaussian posterior (``Diffusion.has_posterior``; not cold_blur)
    needs_posterior: bool = True
    #: whether it steps a discrete chain of integer timesteps (``Diffusion.discrete``: vp, not rf / edm)
    needs_chain: bool = True
    #: whether it steps the VE view x_s = alpha_s x0_hat + sigma_s eps_hat (``Diffusion.has_ve_view``; not blur)
    needs_ve_view: bool = False
    #: its model evaluations for ``steps`` on a process, ``nfe(steps, diffusion, **options)``; None: steps * evals_per_step
    nfe_of: Callable[..., int] | None = None
    #: the checks of one call that need the process, ``prepare(diffusion, steps, **options)`` (InputError), or None
    prepare: Callable[..., Any] | None = None

    @property
    def description(self) -> str:
        first = (self.fn.__doc__ or "").strip().split("\n")[0]
        cost = (self.nfe_of.__doc__ or "").strip() if self.nfe_of else f"{self.evals_per_step} model eval(s)/step"
        return f"{first} [options: {', '.join(self.options) or 'none'}; {cost}]"

    def missing(self, diffusion: Diffusion) -> str:
        """What ``diffusion`` lacks for this sampler ("" when it can sample it)."""
        needs = ((self.needs_posterior, "has_posterior", "a Gaussian posterior q(x_s | x_t, x_0)"),
                 (self.needs_chain, "discrete", "a discrete chain of timesteps (the vp path)"),
                 (self.needs_ve_view, "has_ve_view", "the VE view x_t = alpha_t x_0 + sigma_t eps (no operator on x_0)"))
        return " and ".join(what for needed, attr, what in needs if needed and not getattr(diffusion, attr))

    def nfe(self, steps: int, diffusion: Diffusion, options: dict[str, Any] | None = None) -> int:
        """Model evaluations of ``steps`` steps on ``diffusion`` with ``options`` (this sampler's; heun's count
        depends on where its grid starts: see its docstring)."""
        if self.nfe_of is None:
            return steps * self.evals_per_step
        return self.nfe_of(steps, diffusion, **{k: v for k, v in (options or {}).items() if k in self.options})

    def steps_for_nfe(self, nfe: int, diffusion: Diffusion, options: dict[str, Any] | None = None) -> int:
        """The step count whose NFE is ``nfe`` on ``diffusion``; InputError when none gives it (every sampler
        makes at least one evaluation a step, so only 1..nfe steps are tried)."""
        tried = {k: self.nfe(k, diffusion, options) for k in range(1, min(diffusion.T, nfe + 1) + 1)}
        for steps, n in tried.items():
            if n == nfe:
                return steps
        near = sorted(set(tried.values()), key=lambda n: abs(n - nfe))[:2]
        raise InputError(f"{self.name}@{nfe}: no step count of {self.name} makes {nfe} model evaluations on this "
                         f"process ({diffusion.label()}); the nearest are {' and '.join(map(str, sorted(near)))}")

    def check_call(self, diffusion: Diffusion, steps: int, options: dict[str, Any]) -> None:
        """InputError, before any work, for a call this sampler cannot make: the process, the steps, the options."""
        self.check_process(diffusion)
        _check_steps(diffusion.T, steps)
        check_options(options)
        if self.prepare is not None:
            self.prepare(diffusion, steps, **options)

    def check_process(self, diffusion: Diffusion) -> None:
        """InputError when this sampler cannot sample ``diffusion`` (what it needs and the process lacks)."""
        lacks = self.missing(diffusion)
        if lacks:
            works = ", ".join(n for n, s in SAMPLERS.items() if not s.missing(diffusion))
            raise InputError(f"sampler {self.name} needs {lacks}, which this forward process ({diffusion.label()}) does "
                             f"not have: sample it with {works}")

    def __call__(self, model, diffusion: Diffusion, noise: Noise, shape, steps: int,
                 generators: Sequence[torch.Generator], device="cpu", *, clip_x0: bool = True, progress: Ticks = False,
                 **options) -> torch.Tensor:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(f"sampler {self.name} takes the option(s) {', '.join(self.options) or '(none)'}; "
                             f"got {', '.join(unknown)}")
        self.check_process(diffusion)
        return self.fn(model, diffusion, noise, shape, steps, generators, device, clip_x0=clip_x0, progress=progress,
                       **options)


def register_sampler(name: str, options: dict[str, Callable[[Any], None]] | None = None, evals_per_step: int = 1,
                     needs_posterior: bool = True, needs_chain: bool = True, needs_ve_view: bool = False,
                     nfe: Callable[..., int] | None = None, prepare: Callable[..., Any] | None = None):
    """Decorator: register ``Sampler(name, fn, options, evals_per_step, needs_posterior)`` in ``SAMPLERS``,
    and each option's value check (``options``: option name -> check) in ``OPTION_CHECKS``; returns
    ``fn`` itself (so the module attribute stays the plain, picklable function)."""
    options = dict(options or {})

    def deco(fn: Callable) -> Callable:
        kwonly = {p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY}
        if kwonly - set(_COMMON_KEYWORDS) != set(options) or not set(_COMMON_KEYWORDS) <= kwonly:
            raise TypeError(f"sampler {name}: keyword-only parameters {sorted(kwonly)} must be {list(_COMMON_KEYWORDS)} "
                            f"plus the declared options {list(options)}")
        if not all(callable(c) for c in options.values()):
            raise TypeError(f"sampler {name}: options maps each option to the check of its value")
        clash = [o for o, c in options.items() if OPTION_CHECKS.get(o, c) is not c]
        if clash:
            raise TypeError(f"sampler {name}: option(s) {clash} already have another check in OPTION_CHECKS (one "
                            f"option, one meaning: share the check)")
        if not (isinstance(evals_per_step, int) and evals_per_step >= 1):
            raise TypeError(f"sampler {name}: evals_per_step must be an integer >= 1")
        SAMPLERS.register(name)(Sampler(name, fn, tuple(options), evals_per_step, bool(needs_posterior), bool(needs_chain),
                                        bool(needs_ve_view), nfe, prepare))
        OPTION_CHECKS.update(options)
        return fn

    return deco


def sampler_options(sampler: str, cfg_like: Any) -> dict[str, Any]:
    """The options sampler ``sampler`` declares, read off ``cfg_like`` (any object with those attributes,
    e.g. a RunConfig) and checked: ``{"ddim_eta": cfg.ddim_eta}`` for ddim."""
    opts = {k: getattr(cfg_like, k) for k in SAMPLERS.get(sampler).options}
    check_options(opts)
    return opts


# ---------------------------------------------------------------------------------------------
# timesteps, respacing, validation


def respace(diffusion: Diffusion, timesteps: Sequence[int]) -> Diffusion:
    """The diffusion restricted to an ascending subsequence s_0 < ... < s_{K-1} of its timesteps.

    beta'_i = 1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}} (alpha_bar_{s_{-1}} = 1), so that the new
    process has alpha_bar'_i = alpha_bar_{s_i} exactly (Nichol & Dhariwal 2021, sec. 4;
    improved-diffusion's ``SpacedDiffusion``); it keeps the prediction target, the weighting and the
    corruption (``Diffusion.restrict``; at zero terminal SNR the last beta' is 1 again). The full
    sequence returns ``diffusion`` itself.
    """
    return diffusion.restrict(timesteps)


def _check_steps(T: int, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise InputError(f"sampling steps must be an integer, got {steps!r}")
    if not 1 <= steps <= T:
        raise InputError(f"sampling steps must lie in 1..T = 1..{T} (the schedule's timesteps), got {steps}")


def _validate(diffusion: Diffusion, noise: Noise, shape, steps, generators) -> None:
    _check_steps(diffusion.T, steps)
    if len(generators) != shape[0]:
        raise InputError(f"need one generator per image: got {len(generators)} for a batch of {shape[0]}")
    if noise.alpha_bar.shape != diffusion.alpha_bar.shape or not torch.allclose(
        noise.alpha_bar, diffusion.alpha_bar, rtol=1e-10, atol=0
    ):
        raise InputError("the noise was built for a different schedule than the diffusion (alpha_bar differs)")


def image_generators(n: int, seed0: int, start: int = 0) -> list[torch.Generator]:
    """CPU generators for images start .. start+n-1, image i seeded with ``seed0 + start + i``."""
    return [torch.Generator().manual_seed(seed0 + start + i) for i in range(n)]


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


#: A sampler's ``progress``: True for a bar on the terminal, False for none, or ``tick(done, total)``
#: (a trial's evaluation reports through it to the driver, bench.run.trial). A sampler's loop ticks the
#: steps done before each step after the first; ``sample_images`` ticks the last one when the sampler
#: returns (DDIM returns from inside its loop: a generator never hears that its last step ended).
Ticks = Union[bool, Callable[[int, int], None]]


def _loop(indices, progress: Ticks, desc: str):
    indices = list(indices)
    if callable(progress):
        return _ticking(indices, progress)
    return tqdm(indices, desc=desc, unit="step", leave=False, disable=not progress)


def _ticking(indices: list, tick: Callable[[int, int], None]):
    for k, i in enumerate(indices):
        if k:
            tick(k, len(indices))  # k steps done: the loop asks for the next index
        yield i


def _model_out(model: Callable, x: torch.Tensor, t: int, device) -> torch.Tensor:
    """The model at timestep ``t`` (filled on x's device: no host-to-device copy)."""
    return _call(model, x, _steps_on(x, t))


def _call(model: Callable, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
    """model(x_in, t_in) under the trainer's bf16 autocast on CUDA (``bench.training.train``; none on a
    CPU, where results stay as they were), as float32 (float64 for a float64 state: ``STATE_DTYPE``)."""
    dtype = torch.float64 if x_in.dtype == torch.float64 else torch.float32
    if x_in.device.type != "cuda":
        return model(x_in, t_in).to(dtype)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(x_in, t_in).to(dtype)


def _steps_on(x: torch.Tensor, t: int) -> torch.Tensor:
    """Timestep ``t`` for every image of ``x``, made on x's device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


# ---------------------------------------------------------------------------------------------
# samplers


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


# ---------------------------------------------------------------------------------------------
# batches, images


def sample_images(model, diffusion: Diffusion, noise: Noise, sampler: str, steps: int, n: int, shape_chw,
                  seed0: int, batch_size: int, device, options: dict[str, Any] | None = None,
                  progress: Ticks = False, clip_x0: bool = True) -> torch.Tensor:
    """``n`` samples [n, C, H, W] (float32, CPU; in [-1, 1] when ``clip_x0``) in batches of ``batch_size``.

    ``options``: sampler options by RunConfig field name (``sampler_options(sampler, cfg)``); the
    sampler gets the ones it declares, its defaults for the rest; a key that is no sampler's option is
    an InputError. Image i always comes from generator seed ``seed0 + i``, whatever ``batch_size`` and
    the device, so every arm of a grid starts image i from the same seed. ``progress`` shows a bar over
    images (rate, ETA) and a per-batch bar over steps; a ``tick(done, total)`` instead counts the
    steps of all batches together (total = batches x steps).
    """
    smp = SAMPLERS.get(sampler)
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_CHECKS))
    if unknown:
        raise InputError(f"unknown sampler option(s) {', '.join(unknown)}: known {', '.join(sorted(OPTION_CHECKS))}")
    mine = {k: v for k, v in options.items() if k in smp.options}
    _check_steps(diffusion.T, steps)
    for name, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    out = []
    batches = range(0, n, batch_size)
    with tqdm(total=n, desc=f"sampling {sampler}:{steps}", unit="img", disable=progress is not True) as bar:
        for j, start in enumerate(batches):
            b = min(batch_size, n - start)
            x = smp(model, diffusion, noise, (b, *shape_chw), steps, image_generators(b, seed0, start),
                    device=device, clip_x0=clip_x0, progress=_batch_ticks(progress, j, len(batches)), **mine)
            if callable(progress):
                progress((j + 1) * steps, len(batches) * steps)  # the batch's last step (see Ticks)
            out.append(x.float().cpu())
            bar.update(b)
    return torch.cat(out)


def _batch_ticks(progress: Ticks, j: int, batches: int) -> Ticks:
    """Batch ``j``'s ticks as steps of the whole call: tick(j * total + done, batches * total)."""
    if not callable(progress):
        return progress
    return lambda done, total: progress(j * total + done, batches * total)
