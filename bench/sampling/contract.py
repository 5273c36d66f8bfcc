"""The sampler contract: ``Sampler``, ``register_sampler`` and the registry ``SAMPLERS``, the option
checks every sampler declares (``OPTION_CHECKS``), and the step helpers every sampler shares (the
model call, per-image generators, progress ticks).

A sampler is a registered ``Sampler``: its function plus its contract as data, ``options`` (the
RunConfig fields it reads, passed to the function as keyword arguments of the same names),
``evals_per_step`` (model evaluations per sampling step) and what it needs of a process. The samplers
themselves live in ``bench.sampling.chain`` (ddpm, ddim, cold: a discrete chain or a corruption) and
``bench.sampling.solvers`` (euler, heun, dpmpp_2m, unipc: the VE view of every path);
``bench.sampling.sample`` imports both, so importing it registers them all.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from tqdm.auto import tqdm

from bench.process.diffusion import Diffusion
from bench.process.noise import Noise
from bench.registry import InputError, Registry

SAMPLERS: Registry = Registry("sampler")

#: every sampler option (a RunConfig field) and the check of its value, as the samplers declare them
#: (``register_sampler``): filled at registration, never written by hand
OPTION_CHECKS: dict[str, Callable[[Any], None]] = {}

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
# steps, generators, the model call, progress


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
