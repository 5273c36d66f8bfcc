"""Noise types: standardised (mean 0, variance 1 per element), time-aware samplers of eps.

Every type returns eps such that x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, so the
diffusion math never branches on the noise type: the noise is *passed into* the math
(improved-diffusion's ``noise=`` argument, k-diffusion's ``noise_sampler``).

Timesteps are 0-based indices into the schedule (index i is the paper's t = i + 1). On a CPU every
draw comes from CPU ``torch.Generator`` s, image by image in sampling (``sample_per_item``), so a
seed gives the same noise whatever the batch. On a CUDA device the samplers' draws are one batched
draw on the device per step instead (``draw_on``, from a device generator seeded by the batch's first
image seed, its size and the timestep): no Python loop per image and no host-to-device copy, and image
i still gets the same noise in every arm (the arms sample the same images in the same batches).

Add a noise type: subclass ``Noise``, implement ``draw`` (and ``draw_on``, the same distribution from
a device generator; without it a GPU draws on the CPU and copies), decorate with
``@NOISES.register("name")``; its constructor's keyword parameters are RunConfig fields (``None`` = the
default).
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import numpy as np
import torch

from bench.registry import InputError, Registry

NOISES: Registry = Registry("noise")


class Noise:
    """Base class. ``alpha_bar`` is the schedule's alpha_bar_1..alpha_bar_T (float64, shape [T])."""

    #: whether its distribution is the same at every timestep (then continuous paths, rf and edm, and the
    #: immiscible assignment, which moves draws between timesteps, can use it); a new type says so itself
    time_invariant = False

    def __init__(self, alpha_bar: torch.Tensor):
        self.alpha_bar = alpha_bar.to(torch.float64).cpu()

    def draw(self, shape: Sequence[int], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Standardised noise of ``shape`` (first dim = len(t)) at 0-based timesteps ``t``, float32, CPU."""
        raise NotImplementedError

    def draw_on(self, shape: Sequence[int], t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``draw``'s distribution from a generator on any device (``t`` on that device), float32 there.
        The default draws on the CPU (from a CPU generator seeded by this one) and copies."""
        cpu = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
        return self.draw(tuple(shape), t.cpu(), cpu).to(generator.device)

    def sample(self, shape, t, generator, device=None) -> torch.Tensor:
        """``draw`` on a batch with one generator (training), moved to ``device``."""
        t = _as_index(t, shape[0])
        return self.draw(tuple(shape), t, generator).to(device or "cpu")

    def sample_per_item(self, shape, t, generators: Sequence[torch.Generator], device=None) -> torch.Tensor:
        """Item i drawn from ``generators[i]`` alone (per-image seeds: image i gets the same noise
        whatever the batch it is in)."""
        t = _as_index(t, shape[0])
        if len(generators) != shape[0]:
            raise ValueError(f"need one generator per item: {len(generators)} for batch {shape[0]}")
        if device is not None and torch.device(device).type == "cuda":
            gen = torch.Generator(device=device).manual_seed(batch_seed(generators, t))
            same = bool((t == t[0]).all())  # a sampler's step: one timestep, filled on the device (no copy)
            t_dev = torch.full((shape[0],), int(t[0]), dtype=torch.long, device=device) if same else t.to(device)
            return self.draw_on(tuple(shape), t_dev, gen)
        items = [self.draw((1, *shape[1:]), t[i : i + 1], g) for i, g in enumerate(generators)]
        return torch.cat(items).to(device or "cpu")


def batch_seed(generators: Sequence[torch.Generator], t: torch.Tensor) -> int:
    """The seed of a batch's device draw: a 62-bit mix (SplitMix64's finalizer) of the first image's
    seed, the batch size and the timesteps at both ends, so every step and every batch of a sampling
    run draws differently, and every arm that samples the same batch at the same step draws the same."""
    x = 0
    for part in (generators[0].initial_seed(), len(generators), int(t[0]), int(t[-1])):
        x = (x ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 2


def _as_index(t, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.long).cpu()
    return t.expand(batch) if t.ndim == 0 else t


@NOISES.register("gaussian")
class Gaussian(Noise):
    """eps ~ N(0, I) (Ho et al. 2020)."""

    time_invariant = True

    def draw(self, shape, t, generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def draw_on(self, shape, t, generator):
        return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)


@NOISES.register("gamma")
class Gamma(Noise):
    """Standardised Gamma noise of "Denoising Diffusion Gamma Models" (Nachmani, San Roman, Wolf 2021).

    k_bar_t = (1/alpha_bar_t - 1) / theta_0^2, G ~ Gamma(shape k_bar_t, scale 1),
    eps = (G - k_bar_t) / sqrt(k_bar_t): mean 0, variance 1, skewness 2/sqrt(k_bar_t)
    = 2 theta_0 sqrt(SNR_t), i.e. non-Gaussian only at high SNR (small t). Paper: theta_0 = 0.001.

    Numerics: drawn and centred in float64 (numpy's generator seeded from the torch generator);
    k_bar_t reaches ~1e14 (cosine, t = T), where float32 "G - k" would leave a handful of values.

    Gaussian limit: as k_bar -> inf, eps -> N(0, 1) (central limit; skewness 2/sqrt(k_bar) -> 0). At
    zero terminal SNR (alpha_bar_T = 0, Lin et al. 2023) k_bar_T = inf and the formula gives NaN, so
    where k_bar >= ``GAUSSIAN_LIMIT_K`` (inf included) eps is drawn as N(0, 1) from the same
    generator. The limit is exact in distribution at inf; at 1e20 the skewness is 2e-10, and beyond it
    float64 "G - k" would start to lose resolution. Rows with finite k_bar below the limit draw exactly
    the values they drew before this rule existed.
    """

    #: k_bar at or above which eps is the Gaussian limit (always at k_bar = inf, i.e. alpha_bar = 0).
    GAUSSIAN_LIMIT_K = 1e20

    time_invariant = False  # k_bar_t depends on alpha_bar_t: explicit, not only the base's default

    def __init__(self, alpha_bar: torch.Tensor, theta_0: float = 0.001):
        super().__init__(alpha_bar)
        if not (theta_0 > 0 and math.isfinite(theta_0)):
            raise InputError(f"gamma noise: theta_0 must be a finite number > 0, got {theta_0}")
        self.theta_0 = theta_0
        self.k_bar = (1.0 / self.alpha_bar - 1.0) / theta_0**2  # inf where alpha_bar = 0
        self._k_on: dict[torch.device, torch.Tensor] = {}

    def draw(self, shape, t, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        k = self.k_bar[t].numpy().reshape((-1,) + (1,) * (len(shape) - 1))
        limit = k >= self.GAUSSIAN_LIMIT_K
        if not limit.any():
            g = rng.standard_gamma(np.broadcast_to(k, shape))
            return torch.from_numpy((g - k) / np.sqrt(k)).to(torch.float32)
        k_safe = np.where(limit, 1.0, k)  # placeholder shape where the Gaussian limit is used
        g = rng.standard_gamma(np.broadcast_to(k_safe, shape))
        z = rng.standard_normal(shape)
        return torch.from_numpy(np.where(limit, z, (g - k_safe) / np.sqrt(k_safe))).to(torch.float32)

    def draw_on(self, shape, t, generator):
        """The same distribution drawn on the generator's device, in float64 as ``draw`` (one batched draw)."""
        dev = generator.device
        if dev not in self._k_on:  # the table once per device: no host-to-device copy per step
            self._k_on[dev] = self.k_bar.to(dev)
        k = self._k_on[dev][t].reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape)
        limit = k >= self.GAUSSIAN_LIMIT_K
        k_safe = torch.where(limit, torch.ones_like(k), k).contiguous()
        g = torch._standard_gamma(k_safe, generator=generator)
        z = torch.randn(shape, generator=generator, dtype=torch.float64, device=dev)  # always: no sync to ask
        return torch.where(limit, z, (g - k_safe) / k_safe.sqrt()).to(torch.float32)


@NOISES.register("laplace")
class Laplace(Noise):
    """eps ~ Laplace(0, b = 1/sqrt(2)) per element (variance 2 b^2 = 1, excess kurtosis 3):
    a heavy-tailed, symmetric, time-independent alternative to Gaussian, drawn by inverse CDF."""

    time_invariant = True

    def draw(self, shape, t, generator):
        return self.draw_on(shape, t, generator)

    def draw_on(self, shape, t, generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device) - 0.5
        eps = -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)
        return eps.to(torch.float32)


def noise_params(name: str) -> dict[str, object]:
    """Keyword parameters (and defaults) of noise type ``name``."""
    sig = inspect.signature(NOISES.get(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[2:]}


def make_noise(name: str, alpha_bar: torch.Tensor, **params) -> Noise:
    """Noise type ``name`` for a schedule's alpha_bar; ``None`` or inapplicable params are ignored."""
    cls = NOISES.get(name)
    accepted = noise_params(name)
    return cls(alpha_bar, **{k: v for k, v in params.items() if k in accepted and v is not None})
