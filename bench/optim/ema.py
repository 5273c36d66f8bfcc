"""The weight average that is sampled and scored (``bench ls emas``): after optimizer step k = 1, 2, ...
the trainer sets ema <- beta_k ema + (1 - beta_k) weights, with beta_k from the profile:

* ``fixed``: beta_k = min(ema_decay, k / (9 + k)), a constant decay with the usual warmup
  (TensorFlow's ExponentialMovingAverage with num_updates; every run before issue 36).
* ``power``: beta_k = (1 - 1/k)^(gamma + 1), the power-function EMA of EDM2 (Karras et al. 2024,
  "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3.1, eq. 2-3; NVlabs/edm2
  ``training/phema.py``, ``power_function_beta`` with t_delta / t_next = 1 / k). Its weights after k
  steps, w_i = (1 - beta_i) prod_{j > i} beta_j = (i/k)^(gamma+1) - ((i-1)/k)^(gamma+1), grow like
  i^gamma: the average's width is a fixed fraction of the training so far, its relative standard
  deviation sigma_rel = ``ema_std``, with gamma the largest real root of
  gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0 (EDM2 eq. 123, ``std_to_exp``).
  sigma_rel lies in (0, sqrt(1/12)): 1/12 is the uniform average's (gamma = 0). It does not depend on
  ``train_steps``, so a longer trial continues a shorter one's EMA as it would have gone on.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bench.registry import InputError, Registry

EMAS: Registry = Registry("ema")
#: the largest relative standard deviation a power-function profile has (gamma -> 0: the uniform average)
MAX_STD = math.sqrt(1 / 12)


@functools.lru_cache(maxsize=64)  # read once per training step
def std_to_exp(std: float) -> float:
    """gamma of the power-function profile with relative standard deviation ``std`` (EDM2 eq. 123)."""
    t = std ** -2
    return float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max())


def exp_to_std(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


@dataclass(frozen=True)
class EMAProfile:
    """``beta(k, cfg)``: the decay applied with optimizer step k (1-based)."""

    beta: Callable[[int, Any], float]
    description: str  # what `bench ls` prints
    params: tuple[str, ...] = ()  # the RunConfig fields it reads (RunConfig.canonical resets the others)


EMAS.register("fixed")(EMAProfile(lambda k, cfg: min(cfg.ema_decay, k / (9 + k)),
                                  "beta_k = min(ema_decay, k / (9 + k)) (every run before issue 36)", params=("ema_decay",)))
EMAS.register("power")(EMAProfile(lambda k, cfg: (1.0 - 1.0 / k) ** (std_to_exp(cfg.ema_std) + 1.0),
                                  "EDM2 power function (Karras et al. 2024): beta_k = (1 - 1/k)^(gamma + 1), sigma_rel = ema_std",
                                  params=("ema_std",)))


def check(cfg) -> None:
    """InputError for an unknown profile or an ``ema_std`` out of (0, sqrt(1/12)) where it is read (a
    grid's trials are canonical: the fields a profile does not read are at their defaults)."""
    profile = EMAS.get(cfg.ema)
    if "ema_std" in profile.params and not 0 < cfg.ema_std < MAX_STD:
        raise InputError(f"ema {cfg.ema} needs 0 < ema_std < {MAX_STD:.4f} (sqrt(1/12), the uniform average), "
                         f"got {cfg.ema_std}")
