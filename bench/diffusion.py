"""Gaussian-diffusion coefficients and formulas from a beta schedule (Ho et al. 2020, eqs. 4-15).

``Diffusion`` caches every coefficient in float64 and hands out float32 per-batch slices. Noise is an
argument of every formula (never drawn here), so gaussian, gamma or any registered noise type use the
same code. Timesteps are 0-based indices (index i is the paper's t = i + 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.schedules import check_betas


class Diffusion:
    def __init__(self, betas: torch.Tensor):
        check_betas(betas)
        self.T = len(betas)
        self._tables: dict[tuple[int, torch.device], torch.Tensor] = {}  # float32 copies per device (_at)
        b = betas.to(torch.float64).cpu()
        self.betas = b
        self.alphas = 1.0 - b
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        self.log_snr = torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde)   (Ho et al. eq. 7)
        self.posterior_variance = b * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        # beta_tilde_1 = 0: log of the variance uses beta_tilde_2 there (improved-diffusion's clipping)
        # (T = 1, e.g. a one-step respaced sampler: nothing to clip with, log(0) = -inf)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if self.T > 1 else self.posterior_variance
        )
        self.posterior_mean_coef1 = b * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bar)

    def _at(self, coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """coef[t] as float32 on like's device, shaped to broadcast over like's trailing dims.

        Indexes a float32 copy of the table kept on t's device (the same values as casting coef[t]),
        so a CUDA t is never copied back to the host: that copy waited for the GPU once per call,
        several times per training step."""
        key = (id(coef), t.device)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = coef.to(device=t.device, dtype=torch.float32)
        return table[t].to(like.device).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        return self._at(self.sqrt_alpha_bar, t, x0) * x0 + self._at(self.sqrt_one_minus_alpha_bar, t, x0) * eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (x_t - self._at(self.sqrt_one_minus_alpha_bar, t, x_t) * eps) / self._at(self.sqrt_alpha_bar, t, x_t)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, var_type: str = "small",
                        clip_x0: bool = True):
        """Reverse step p(x_{t-1} | x_t) from predicted eps: mean, variance, predicted x_0.

        var_type ``small`` = posterior variance beta_tilde_t, ``large`` = beta_t (Ho et al. sec. 3.2).
        """
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean, small_var, _ = self.q_posterior(x0, x_t, t)
        variances = {"small": small_var, "large": self._at(self.betas, t, x_t)}
        if var_type not in variances:
            raise ValueError(f"var_type must be one of {sorted(variances)}, got {var_type!r}")
        return mean, variances[var_type], x0

    def loss(self, model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, kind: str = "mse") -> torch.Tensor:
        """Per-example eps-prediction loss ||eps - model(x_t, t)|| (mean over pixels); kind mse or l1."""
        pred = model(self.q_sample(x0, t, eps), t)
        losses = {"mse": F.mse_loss, "l1": F.l1_loss}
        if kind not in losses:
            raise ValueError(f"loss must be one of {sorted(losses)}, got {kind!r}")
        return losses[kind](pred.float(), eps, reduction="none").flatten(1).mean(1)
