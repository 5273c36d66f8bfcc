"""Samplers: ``ddpm`` (ancestral, all T steps or a respaced subset), ``ddim`` (any steps, eta),
``cold`` (Cold Diffusion's Algorithm 2, any steps), and on the VE view of every path ``euler``, ``heun``,
``dpmpp_2m`` (DPM-Solver++(2M)) and ``unipc`` (UniPC-2, bh2); and ``sample_images``, which draws n images in batches.

Where things are: the contract and the shared step helpers in ``bench.sampling.contract``; the samplers of a
discrete chain or a corruption (ddpm, ddim, cold) in ``bench.sampling.chain``; the VE-view solvers (euler, heun,
dpmpp_2m, unipc) in ``bench.sampling.solvers``. This module imports both, so importing it registers every
sampler, and re-exports the contract for its callers.

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

Add a sampler (in ``chain.py``, or ``solvers.py`` for one on the VE view): write a function ``fn(model,
diffusion, noise, shape, steps, generators, device="cpu", *, clip_x0=True, progress=False, <options>)`` whose
keyword-only options are RunConfig fields with defaults, declared in ``bench.experiment.config.RunConfig``
with the ``SAMPLER_OPTION`` role (which keeps it out of the training key and puts it in the learning-curve
key); get (x_0, eps) from ``diffusion.split``, loop over the steps with ``_loop(indices, progress, desc)`` (a
bar or ticks: ``Ticks``), and decorate it with ``@register_sampler("name", options={"option": check, ...},
evals_per_step=k, needs_posterior=...)``, where ``check(value)`` raises InputError on a bad value
(needs_posterior False when it uses only ``q_sample`` and ``split``, as ``cold``). Registration checks that
the declared options are exactly the function's keyword-only options and that an option two samplers share has
one check. A new option is therefore two edits: its sampler and its RunConfig field with its role.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from bench.images import save_grid, to_uint8  # noqa: F401  (re-exported: their home is the leaf bench.images)
from bench.process.diffusion import Diffusion
from bench.process.noise import Noise
from bench.process.schedules import timestep_subsequence  # noqa: F401  (its home is the leaf schedules)
from bench.registry import InputError

# the samplers register on import: the chain's (chain.py), then the VE view's (solvers.py)
from bench.sampling.chain import VAR_TYPES, cold, ddim, ddpm, respace, start_T  # noqa: F401
from bench.sampling.contract import (  # noqa: F401  (the contract, re-exported for the callers of this module)
    OPTION_CHECKS,
    SAMPLERS,
    Sampler,
    Ticks,
    _check_steps,
    check_options,
    image_generators,
    register_sampler,
    sampler_options,
)
from bench.sampling.solvers import GRID_OPTIONS, dpmpp_2m, euler, heun, unipc  # noqa: F401

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
