"""Noise-side training knobs (DESIGN.md section 6), applied to one batch's noise before the loss.

Each is off by default and then draws nothing, so existing trials consume the noise generator as before.

* ``immiscible`` (Li et al. 2024, "Immiscible Diffusion"): the batch's noise draws are permuted by the
  linear assignment minimising sum_i ||x_0,i - eps_pi(i)||_2, the *unsquared* L2 distance over flattened
  tensors (scipy ``linear_sum_assignment`` on ``torch.cdist``, as lucidrains' ``noise_assignment`` and the
  paper's code); x_t and the target use the permuted noise. (The squared cost would be minibatch optimal
  transport, torchcfm's: a different assignment.)
* ``offset_noise`` s (Guttenberg 2023): eps + s n, n ~ N(0, 1) of shape (B, C, 1, 1), in x_t and the target.
* ``input_perturbation`` gamma (Ning et al. 2023, DDPM-IP): x_t is made of eps + gamma xi, xi ~ N(0, I),
  while the target keeps eps.

Order: assignment, then offset, then perturbation (the perturbation is never part of the target).
"""

from __future__ import annotations

import torch


def immiscible_assignment(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The permutation pi (LongTensor [B], on eps's device) minimising sum_i ||x0_i - eps_pi(i)||_2."""
    from scipy.optimize import linear_sum_assignment  # here: scipy costs an import in every trainer otherwise

    cost = torch.cdist(x0.flatten(1).double(), eps.flatten(1).double()).cpu().numpy()
    _, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols, dtype=torch.long, device=eps.device)


def apply_knobs(cfg, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator):
    """(eps for the target, eps for x_t or None when the same) after the knobs ``cfg`` switches on.
    Extra draws come from ``generator`` (the trainer's CPU noise generator) and move to eps's device."""
    if cfg.immiscible:
        eps = eps[immiscible_assignment(x0, eps)]
    if cfg.offset_noise:
        n = torch.randn((eps.shape[0], eps.shape[1], 1, 1), generator=generator)
        eps = eps + cfg.offset_noise * n.to(eps.device)
    if cfg.input_perturbation:
        xi = torch.randn(tuple(eps.shape), generator=generator)
        return eps, eps + cfg.input_perturbation * xi.to(eps.device)
    return eps, None
