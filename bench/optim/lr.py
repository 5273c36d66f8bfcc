"""Learning-rate schedules: the multiplier of ``lr`` at each optimizer step (``bench ls lr_schedules``).

Every schedule starts with the linear warmup the trainer always had, min(1, k / warmup_steps) at
optimizer step k = 1, 2, ... (1 without a warmup), and multiplies it by its own decay:

* ``constant``: no decay (every run before issue 36).
* ``inv_sqrt``: 1 / sqrt(max((k - 1) / t_ref, 1)) with t_ref = ``lr_ref_steps``: constant for the first
  t_ref steps, then the inverse square root of the training time, EDM2's schedule (Karras et al. 2024,
  "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3 and Appendix;
  ``learning_rate_schedule`` in NVlabs/edm2 ``training/training_loop.py``, there in images seen before
  the step: cur_nimg / (ref_batches x batch_size) = (k - 1) / t_ref here). It does not depend on
  ``train_steps``: a longer trial may continue a shorter one's checkpoint (``bench.training.trained``).
* ``cosine``: (1 + cos(pi (k - 1) / train_steps)) / 2, torch's ``CosineAnnealingLR`` with T_max =
  train_steps and eta_min = 0 (Loshchilov & Hutter 2017). It depends on ``train_steps``
  (``needs_total``), so no trial continues another of this schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from bench.registry import InputError, Registry

LR_SCHEDULES: Registry = Registry("lr_schedule")


@dataclass(frozen=True)
class LRSchedule:
    """``decay(k, cfg)``: the schedule's factor at optimizer step k (1-based), before the warmup's."""

    decay: Callable[[int, Any], float]
    description: str  # what `bench ls` prints
    params: tuple[str, ...] = ()  # the RunConfig fields it reads (RunConfig.canonical resets the others)
    needs_total: bool = False  # reads train_steps: the first steps of a longer trial are not a shorter one's

    def factor(self, k: int, cfg) -> float:
        """The multiplier of ``cfg.lr`` at optimizer step k: warmup x decay."""
        warm = min(1.0, k / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warm * self.decay(k, cfg)


LR_SCHEDULES.register("constant")(LRSchedule(lambda k, cfg: 1.0, "no decay after the warmup (every run before issue 36)"))
LR_SCHEDULES.register("inv_sqrt")(LRSchedule(
    lambda k, cfg: 1.0 / math.sqrt(max((k - 1) / cfg.lr_ref_steps, 1.0)),
    "EDM2 (Karras et al. 2024): x 1/sqrt(max((k - 1) / lr_ref_steps, 1)); continuable", params=("lr_ref_steps",)))
LR_SCHEDULES.register("cosine")(LRSchedule(
    lambda k, cfg: 0.5 * (1.0 + math.cos(math.pi * (k - 1) / cfg.train_steps)),
    "x (1 + cos(pi (k - 1) / train_steps)) / 2, CosineAnnealingLR to 0; reads train_steps", needs_total=True))

def check(cfg) -> None:
    """InputError for an unknown schedule or a parameter it reads that is not > 0 (a grid's trials are
    canonical: the fields a schedule does not read are at their defaults, ``RunConfig.canonical``)."""
    schedule = LR_SCHEDULES.get(cfg.lr_schedule)
    for name in schedule.params:
        if getattr(cfg, name) <= 0:
            raise InputError(f"lr_schedule {cfg.lr_schedule} needs {name} > 0, got {getattr(cfg, name)}")
