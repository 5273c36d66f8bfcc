"""Corruptions: forward processes that corrupt x_0 by a linear operator, not only by adding noise
(DESIGN.md section 3, "Mild corruptions"; ``bench ls corruptions``; the config field ``corruption``).

A corruption is registered in ``CORRUPTIONS`` as the ``Diffusion`` subclass that implements it, so
the trainer and the samplers call one interface and never branch on the corruption's name:

    how x_t is made                 q_sample(x0, t, eps)            (the loss and the denoising strip use it)
    the one model-output conversion split(out, x_t, t, clip_x0), target(x0, t, eps)
    the reverse step                p_sample (ancestral), ddim_step (DDIM), or none (``has_posterior``
                                    False: only the ``cold`` sampler, Bansal et al.'s Algorithm 2,
                                    which needs only q_sample)
    where generation starts         x_T(noise, shape, generators, device), fit_start(training images)
    respacing                       restrict(timesteps)

What a corruption accepts is data on the class (``predictions``, ``weightings``, ``noises``,
``corruption_params``), checked by ``make_process`` before anything is built, so a bad combination is
an ``InputError`` (exit 2) before any work.

* ``none``: x_t = a_t x_0 + s_t eps (a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t)): the
  ``Diffusion`` class itself, every code path unchanged.
* ``blur``: Blurring Diffusion Models (Hoogeboom & Salimans 2023, arXiv 2209.05557), ``BlurDiffusion``.
* ``cold_blur``: Cold Diffusion's Gaussian blur (Bansal et al. 2022, arXiv 2208.09392), ``ColdBlur``.

Add a corruption: subclass ``Diffusion`` (formula and reference in the docstring, a one-line
``description``), override what differs, declare its parameters (RunConfig fields) in
``corruption_params`` and register it with ``@CORRUPTIONS.register("name")``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.process.diffusion import PREDICTIONS, WEIGHTINGS, Diffusion
from bench.registry import InputError, Registry

CORRUPTIONS: Registry = Registry("corruption")
CORRUPTIONS.register("none")(Diffusion)


# ---------------------------------------------------------------------------------------------
# the orthonormal 2-D DCT-II (as matmuls)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix C [n, n], float64: C[k, i] = sqrt(2/n) c_k cos(pi (2i + 1) k / (2n)),
    c_0 = 1/sqrt(2), c_k = 1 otherwise. u = C x is ``scipy.fft.dct(x, type=2, norm="ortho")`` and
    C^T C = C C^T = I, so x = C^T u."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


_DCT: dict[tuple[int, torch.device], torch.Tensor] = {}


def _dct_of(n: int, device: torch.device) -> torch.Tensor:
    key = (n, device)
    if key not in _DCT:
        _DCT[key] = dct_matrix(n).to(device)
    return _DCT[key]


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes (per channel): u = C_H x C_W^T, returned in x's dtype.

    The matmuls run in float64 whatever x's dtype: bf16 autocast (the trainer's, on CUDA) leaves float64
    alone and TF32 does not apply to it, so x_t and the targets keep float32 precision on every device."""
    return (_dct_of(x.shape[-2], x.device) @ x.double() @ _dct_of(x.shape[-1], x.device).T).to(x.dtype)


def idct2(u: torch.Tensor) -> torch.Tensor:
    """The inverse of ``dct2`` (its transpose): x = C_H^T u C_W (float64 matmuls, u's dtype)."""
    return (_dct_of(u.shape[-2], u.device).T @ u.double() @ _dct_of(u.shape[-1], u.device)).to(u.dtype)


# ---------------------------------------------------------------------------------------------
# blurring diffusion


@CORRUPTIONS.register("blur")
class BlurDiffusion(Diffusion):
    """Blurring Diffusion (Hoogeboom & Salimans 2023): a Gaussian diffusion per DCT frequency, u = V^T x.

    Per channel, in the orthonormal 2-D DCT-II basis of an H x W image, frequencies f_k = pi k / N
    (k = 0..N-1 per axis, N = H or W) and lambda_ij = f_i^2 + f_j^2. With s = t/T (0-based index i is
    t = i + 1): sigma_B(s) = sigma_B_max sin^2(pi s / 2), tau_s = sigma_B(s)^2 / 2 and

        d_s = (1 - d_min) exp(-lambda tau_s) + d_min,  d_min = 0.001      (computed as 1 + (1 - d_min) expm1(-lambda tau_s))
        u_t = a_t d_t u_0 + s_t eps                                      (a_t, s_t from the beta schedule)

    so each frequency is a Gaussian diffusion with alpha_t(f) = a_t d_t(f) and sigma_t = s_t (eps is
    standard Gaussian in either basis, V being orthonormal). The posterior from t to an earlier s is
    the usual one per frequency: alpha_ts = alpha_t / alpha_s, sigma2_ts = s_t^2 - alpha_ts^2 s_s^2,

        mean = (alpha_ts s_s^2 / s_t^2) u_t + (sigma2_ts alpha_s / s_t^2) u_0^,   var = sigma2_ts s_s^2 / s_t^2

    (``q_posterior``, the ``ddpm`` sampler, respaced too: the respaced process keeps the original
    times s; ``var_type="large"`` is sigma2_ts). DDIM falls out per frequency (``ddim_step``):
    u_s = alpha_s u_0^ + sqrt(s_s^2 - sigma^2) eps^ + sigma z, sigma^2 = eta^2 sigma2_ts s_s^2 / s_t^2,
    deterministic at eta = 0; and so does the ``cold`` sampler (DDIM at eta = 0 up to rounding).
    Generation starts from x_T = s_T eps as for ``none``.

    sigma_B_max (``sigma_blur_max``, None -> 20, the paper's default; mild corruptions are small values)
    must be a finite number >= 0; at 0, d = 1 exactly and the process is the Gaussian diffusion (same
    x_t, posterior and samples to float32 rounding of the DCT round trip, ~1e-7; tested).

    Prediction targets: eps (the paper's), x0, and v, all through the one conversion per frequency:
    with r = sqrt(alpha_t(f)^2 + s_t^2) the targets are taken in the variance-preserving coordinates
    (u_t / r, alpha_t / r, s_t / r); this is exact algebra for eps and x0, and defines
    v(f) = (alpha_t eps - s_t u_0) / r, which is Salimans & Ho's v at d = 1 (an extension: the paper
    uses eps). Zero terminal SNR works with x0 and v as for ``none``. Noise: gaussian only (the
    posterior is the Gaussian one). Weightings: any; w(SNR_t) is the schedule's SNR_t, the DC
    frequency's (per frequency SNR_t(f) = SNR_t d_t(f)^2, so the target conversions of DESIGN.md hold
    per frequency, not for the image). Clipping x_0^ to [-1, 1] (``clip_x0``) acts in pixel space as
    for ``none``; with eps-prediction x_0^ = (u_t - s_t eps^)/(a_t d_t) amplifies the network's error
    by up to 1/(a_t d_min) at the high frequencies, which a pixel-space clamp folds into the low ones,
    so eps with clipping is the weak combination (x0 and v never divide by d).
    """

    has_ve_view = False  # x_t = a_t d_t * x_0 + s_t eps per frequency: alpha differs per frequency
    description = "blur: u_t = a_t d_t u_0 + s_t eps per DCT frequency (Hoogeboom & Salimans 2023), sigma_blur_max"
    corruption_params = ("sigma_blur_max",)
    noises = ("gaussian",)
    D_MIN = 0.001
    DEFAULT_SIGMA_BLUR_MAX = 20.0

    def __init__(self, betas: torch.Tensor, prediction: str = "eps", weighting: str = "none", *,
                 sigma_blur_max: float | None = DEFAULT_SIGMA_BLUR_MAX, times: torch.Tensor | None = None, **weighting_kwargs):
        super().__init__(betas, prediction, weighting, **weighting_kwargs)
        sigma = self.DEFAULT_SIGMA_BLUR_MAX if sigma_blur_max is None else sigma_blur_max
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
            raise InputError(f"corruption blur: sigma_blur_max must be a finite number >= 0, got {sigma!r}")
        self.sigma_blur_max = float(sigma)
        # s = t/T of each index (the paper's continuous time); a respaced process keeps the original s
        self.times = (torch.arange(1, self.T + 1, dtype=torch.float64) / self.T if times is None
                      else torch.as_tensor(times, dtype=torch.float64))
        if self.times.shape != (self.T,):
            raise ValueError(f"times must have one entry per timestep ({self.T}), got {tuple(self.times.shape)}")
        self._f64: dict[tuple[str, int, int], torch.Tensor] = {}
        self._fcache: dict[tuple, torch.Tensor] = {}

    def _restricted(self, betas, ts):
        return BlurDiffusion(betas, prediction=self.prediction_name, weighting=self.weighting_name,
                             sigma_blur_max=self.sigma_blur_max, times=self.times[torch.tensor(ts)], **self.weighting_kwargs)

    # --- per-frequency tables ------------------------------------------------------------------

    TABLES = ("lam", "tau", "d", "alpha", "a_n", "s_n", "r_inv", "sigma2_ts", "coef_x0", "coef_xt", "var", "logvar")

    def frequency_table(self, name: str, h: int, w: int) -> torch.Tensor:
        """One float64 table of an H x W image, [T, H, W] (``lam`` [H, W], ``tau`` [T]; see ``TABLES``),
        computed on first use and kept (training needs only alpha, a_n, s_n, r_inv; sampling the rest)."""
        key = (name, h, w)
        if key not in self._f64:
            self._f64[key] = self._compute(name, h, w)
        return self._f64[key]

    def frequency_tables(self, h: int, w: int) -> dict[str, torch.Tensor]:
        """Every table of ``TABLES`` for an H x W image."""
        return {name: self.frequency_table(name, h, w) for name in self.TABLES}

    def _compute(self, name: str, h: int, w: int) -> torch.Tensor:
        tab = lambda n: self.frequency_table(n, h, w)  # noqa: E731
        s = self.sqrt_one_minus_alpha_bar[:, None, None]
        if name == "lam":
            f_h = math.pi * torch.arange(h, dtype=torch.float64) / h
            f_w = math.pi * torch.arange(w, dtype=torch.float64) / w
            return f_h[:, None] ** 2 + f_w[None, :] ** 2
        if name == "tau":
            return (self.sigma_blur_max * torch.sin(math.pi * self.times / 2) ** 2) ** 2 / 2
        if name == "d":
            return 1.0 + (1.0 - self.D_MIN) * torch.expm1(-tab("lam")[None] * tab("tau")[:, None, None])
        if name == "alpha":
            return self.sqrt_alpha_bar[:, None, None] * tab("d")
        if name == "r_inv":
            return 1.0 / torch.sqrt(tab("alpha") ** 2 + s**2)
        if name == "a_n":
            return tab("alpha") * tab("r_inv")
        if name == "s_n":
            return s * tab("r_inv")
        # the posterior from index i to i - 1 (index -1 is x_0: a = d = 1, s = 0)
        alpha = tab("alpha")
        alpha_prev = torch.cat([torch.ones(1, h, w, dtype=torch.float64), alpha[:-1]])
        s_prev = torch.cat([torch.zeros(1, 1, 1, dtype=torch.float64), s[:-1]])
        if name == "sigma2_ts":
            return (s**2 - (alpha / alpha_prev) ** 2 * s_prev**2).clamp(min=0.0)
        if name == "coef_x0":
            return tab("sigma2_ts") * alpha_prev / s**2
        if name == "coef_xt":
            return alpha / alpha_prev * s_prev**2 / s**2
        if name == "var":
            return tab("sigma2_ts") * s_prev**2 / s**2
        if name == "logvar":
            var = tab("var")
            return torch.log(torch.cat([var[1:2], var[1:]]) if self.T > 1 else var)
        raise KeyError(f"no frequency table {name!r}: {', '.join(self.TABLES)}")

    def _f(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at timesteps t for images like ``like`` [B, C, H, W]: [B, 1, H, W] (float64 for a
        float64 ``like``, else float32), indexed on t's device (no host copy per call)."""
        h, w = like.shape[-2:]
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (name, h, w, t.device, dtype)
        table = self._fcache.get(key)
        if table is None:
            table = self._fcache[key] = self.frequency_table(name, h, w).to(device=t.device, dtype=dtype)
        return table[t].to(like.device).unsqueeze(1)

    # --- the interface -------------------------------------------------------------------------

    def q_sample(self, x0, t, eps):
        """x_t = V (a_t d_t * V^T x_0) + s_t eps."""
        _, s = self._a_s(t, x0)
        return idct2(self._f("alpha", t, x0) * dct2(x0)) + s * eps

    def target(self, x0, t, eps):
        """The prediction's target per frequency in (alpha/r, s/r), back in pixel space."""
        an, sn = self._f("a_n", t, x0), self._f("s_n", t, x0)
        return idct2(self.prediction.target(dct2(x0), dct2(eps), an, sn))

    def split(self, model_out, x_t, t, clip_x0=False):
        """(x0_hat, eps_hat) per frequency; with ``clip_x0`` x0_hat is clamped to [-1, 1] in pixel space and
        eps_hat recomputed from it, eps_hat = V (u_t - alpha_t V^T x0_hat) / s_t."""
        u = dct2(x_t)
        u0, e = self.prediction.split(dct2(model_out), u * self._f("r_inv", t, x_t), self._f("a_n", t, x_t),
                                      self._f("s_n", t, x_t))
        x0 = idct2(u0)
        if not clip_x0:
            return x0, idct2(e)
        x0 = x0.clamp(-1.0, 1.0)
        _, s = self._a_s(t, x_t)
        return x0, idct2((u - self._f("alpha", t, x_t) * dct2(x0)) / s)

    def predict_x0(self, x_t, t, eps):
        """x_0 = V ((u_t - s_t V^T eps) / (a_t d_t)); divides by zero at alpha_bar = 0."""
        _, s = self._a_s(t, x_t)
        return idct2((dct2(x_t) - s * dct2(eps)) / self._f("alpha", t, x_t))

    def q_posterior(self, x0, x_t, t):
        """Mean (pixel space), variance and clipped log-variance (per DCT frequency, [B, 1, H, W]) of q(x_{t-1} | x_t, x_0)."""
        mean = idct2(self._f("coef_x0", t, x_t) * dct2(x0) + self._f("coef_xt", t, x_t) * dct2(x_t))
        return mean, self._f("var", t, x_t), self._f("logvar", t, x_t)

    def p_mean_variance(self, model_out, x_t, t, var_type="small", clip_x0=True):
        """Mean (pixel space), variance per DCT frequency and x0_hat: ``small`` = the posterior variance,
        ``large`` = sigma2_ts (the forward transition's, beta_t at d = 1)."""
        x0, _ = self.split(model_out, x_t, t, clip_x0)
        mean, small_var, _ = self.q_posterior(x0, x_t, t)
        variances = {"small": small_var, "large": self._f("sigma2_ts", t, x_t)}
        if var_type not in variances:
            raise InputError(f"var_type must be one of {', '.join(variances)}, got {var_type!r}")
        return mean, variances[var_type], x0

    def p_sample(self, model_out, x_t, t, z, var_type="small", clip_x0=True):
        """mean + V (sqrt(var) * V^T z): the posterior's noise is added per frequency."""
        mean, var, _ = self.p_mean_variance(model_out, x_t, t, var_type, clip_x0)
        return mean if z is None else mean + idct2(var.sqrt() * dct2(z))

    def ddim_step(self, x0, eps, t, s, eta, z):
        """DDIM per frequency: u_s = alpha_s u_0^ + sqrt(s_s^2 - sigma^2) eps^ + sigma z,
        sigma^2 = eta^2 sigma2_ts s_s^2 / s_t^2, sigma2_ts = s_t^2 - (alpha_t/alpha_s)^2 s_s^2 (float64)."""
        alpha = self.frequency_table("alpha", *x0.shape[-2:])
        alpha_t, alpha_s = alpha[t], alpha[s]
        s_t, s_s = float(self.sqrt_one_minus_alpha_bar[t]), float(self.sqrt_one_minus_alpha_bar[s])
        sigma2_ts = (s_t**2 - (alpha_t / alpha_s) ** 2 * s_s**2).clamp(min=0.0)
        sig2 = eta**2 * sigma2_ts * s_s**2 / s_t**2
        cast = {"device": x0.device, "dtype": x0.dtype}
        u = alpha_s.to(**cast) * dct2(x0) + (s_s**2 - sig2).clamp(min=0.0).sqrt().to(**cast) * dct2(eps)
        if eta > 0:
            u = u + sig2.sqrt().to(**cast) * dct2(z)
        return idct2(u)


# ---------------------------------------------------------------------------------------------
# cold diffusion (deterministic blur)


def gaussian_kernel2d(size: int, std: float) -> torch.Tensor:
    """torchgeometry's ``get_gaussian_kernel2d((size, size), (std, std))`` (the Cold Diffusion code's blur),
    float64: g(x) = exp(-x^2 / (2 std^2)) for x = -(size//2)..size//2, normalised to sum 1; the 2-D
    kernel is the outer product g g^T (sums to 1)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * std**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


class ChannelMeanPrior:
    """A Gaussian mixture (full covariances) on the per-channel means of the training images, fitted by
    EM in float64 with a deterministic initialisation (the images sorted by their first channel's mean,
    split into K equal groups); ``reg`` is added to every covariance's diagonal (scikit-learn's
    ``reg_covar``). Cold Diffusion's generation fits such a mixture (their code: pycave, 10 components,
    full covariance) and starts from a sample."""

    def __init__(self, means: np.ndarray, components: int = 10, iters: int = 200, reg: float = 1e-6, tol: float = 1e-10):
        x = np.asarray(means, dtype=np.float64)
        if x.ndim != 2 or len(x) < 1:
            raise ValueError(f"need channel means [N, C], got shape {x.shape}")
        n, c = x.shape
        k = max(1, min(components, n))
        groups = np.array_split(np.argsort(x[:, 0], kind="stable"), k)
        mu = np.stack([x[g].mean(0) for g in groups])
        cov = np.stack([np.cov(x.T, bias=True).reshape(c, c) + reg * np.eye(c)] * k)
        w = np.full(k, 1.0 / k)
        prev = -np.inf
        for _ in range(iters):
            logp = self._log_gauss(x, mu, cov) + np.log(w)[None]  # [N, K]
            top = logp.max(1, keepdims=True)
            lse = top + np.log(np.exp(logp - top).sum(1, keepdims=True))
            resp = np.exp(logp - lse)
            nk = resp.sum(0) + 1e-12
            w = nk / n
            mu = (resp.T @ x) / nk[:, None]
            diff = x[None] - mu[:, None]  # [K, N, C]
            cov = np.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None] + reg * np.eye(c)[None]
            ll = float(lse.sum())
            if ll - prev < tol * n:
                break
            prev = ll
        self.weights, self.means, self.covs = w, mu, cov
        self.chol = np.linalg.cholesky(cov)

    @staticmethod
    def _log_gauss(x, mu, cov):
        c = x.shape[1]
        chol = np.linalg.cholesky(cov)  # [K, C, C]
        diff = x[None] - mu[:, None]  # [K, N, C]
        sol = np.stack([np.linalg.solve(chol[k], diff[k].T) for k in range(len(mu))])  # [K, C, N]
        maha = (sol**2).sum(1)  # [K, N]
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
        return (-0.5 * (maha + logdet[:, None] + c * math.log(2 * math.pi))).T

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One draw [C] (float64) from ``generator`` alone: a component, then its Gaussian."""
        k = int(torch.multinomial(torch.as_tensor(self.weights), 1, generator=generator))
        z = torch.randn(self.means.shape[1], generator=generator, dtype=torch.float64)
        return torch.as_tensor(self.means[k]) + torch.as_tensor(self.chol[k]) @ z


@CORRUPTIONS.register("cold_blur")
class ColdBlur(Diffusion):
    """Cold Diffusion's deterministic blur (Bansal et al. 2022; code arpitbansal297/Cold-Diffusion-Models).

    D(x_0, t) = the 11 x 11 Gaussian blur of std 7 applied t times (0-based index i is t = i + 1),
    exactly their MNIST setting (``mnist_train.py --time_steps 20 --blur_size 11 --blur_std 7.0
    --blur_routine Constant``): torchgeometry's ``get_gaussian_kernel2d((11, 11), (7, 7))`` in a
    depthwise ``nn.Conv2d(..., padding=5, padding_mode='circular')`` (``get_conv``'s default mode; the
    "Constant" routine uses the same kernel at every step). A circular convolution is a product in
    the 2-D DFT basis, so D(x, t) = irfft2(rfft2(x) K^t), K the DFT of the kernel wrapped onto the
    image; equal to applying their conv t times up to float32 rounding (tested), one FFT pair
    whatever t. D(x_0, 0) = x_0 exactly. Circular padding preserves each channel's mean, and 20
    passes leave the lowest frequency of a 28 x 28 image at ~1% (the truncated 11-tap kernel has
    std ~3.0 per pass, not 7: blurring t times is a blur of std ~3.0 sqrt(t) before wrap-around).

    x_t = D(x_0, t) has no noise and no posterior (``has_posterior`` False): the network restores
    x_0 (prediction ``x0``, their ``train_routine='Final'``; train with ``loss = "l1"`` as the paper)
    and samples come from the ``cold`` sampler, their improved Algorithm 2 (``x0_step_down``):
    x_{t-1} = x_t - D(x_0^, t) + D(x_0^, t - 1). The beta schedule is not used (only T, the number of
    blur steps, via ``timesteps``). Only prediction ``x0``, weighting ``none`` and noise ``gaussian``
    (the start's symmetry-breaking noise) are accepted.

    Generation needs a stochastic start, because D(x_0, T) is nearly the constant image of x_0's
    channel means. We follow the paper's generation procedure for blur (sec. 5, their
    ``sample_as_a_mean_blur_torch_gmm`` / ``gen_sample``): fit a Gaussian mixture (10 components, full
    covariance) to the per-channel means of the training images (``fit_start``), draw one channel-mean
    vector per image, start from the constant image of those means, and add i.i.d. Gaussian noise of
    std 0.002 once, to x_T only (their ``noise_level``; the paper's symmetry breaking). Differences
    from their generation runs: they trained the generative models with ``--discrete`` (the last blur
    step replaced by the exact channel mean, x_t quantised to 8 bits) and an exponential blur routine;
    here D stays the paper's MNIST "Constant" blur at every t, so x_T is the GMM mean plus the noise
    while D(x_0, T) keeps ~1% of the lowest frequencies.
    """

    description = "cold_blur: x_t = D(x_0, t), 11x11 std-7 circular blur applied t times (Bansal et al. 2022); cold sampler"
    uses_schedule = False  # x_t = D(x_0, t): no betas, no noise (labels show cold_blur(T=...) alone)
    predictions = ("x0",)
    weightings = ("none",)
    noises = ("gaussian",)
    has_posterior = False
    has_ve_view = False  # x_t = D(x_0, t): no alpha_t x_0 + sigma_t eps
    needs_data = True
    KERNEL_SIZE = 11
    KERNEL_STD = 7.0
    START_NOISE_STD = 0.002
    GMM_COMPONENTS = 10
    START = ("x_T = the constant image of per-channel means drawn from a 10-component Gaussian mixture fitted to the "
             "training images' channel means, plus i.i.d. N(0, 0.002^2) noise once (Cold Diffusion's generation "
             "procedure, sec. 5); then Algorithm 2 (x_{t-1} = x_t - D(x0^, t) + D(x0^, t-1)) with no further noise")

    def __init__(self, betas: torch.Tensor, prediction: str = "x0", weighting: str = "none", *,
                 blur_counts: torch.Tensor | None = None, **weighting_kwargs):
        super().__init__(betas, prediction, weighting, **weighting_kwargs)
        # how many times index i blurs x_0 (i + 1; a respaced process keeps the original counts)
        self.blur_counts = (torch.arange(1, self.T + 1) if blur_counts is None else torch.as_tensor(blur_counts)).long()
        self.start_prior: ChannelMeanPrior | None = None
        self._kcache: dict[tuple, torch.Tensor] = {}

    def _restricted(self, betas, ts):
        out = ColdBlur(betas, prediction=self.prediction_name, weighting=self.weighting_name,
                       blur_counts=self.blur_counts[torch.tensor(ts)], **self.weighting_kwargs)
        out.start_prior = self.start_prior
        return out

    def kernel_powers(self, h: int, w: int) -> torch.Tensor:
        """K^n for n = 0..max count: [N + 1, H, W // 2 + 1] float64, K = rfft2 of the kernel wrapped onto H x W
        (centre at pixel (0, 0)); real because the kernel is symmetric."""
        k = gaussian_kernel2d(self.KERNEL_SIZE, self.KERNEL_STD)
        if self.KERNEL_SIZE // 2 > min(h, w):
            raise InputError(f"cold_blur: an {h}x{w} image is smaller than the circular padding of the "
                             f"{self.KERNEL_SIZE}x{self.KERNEL_SIZE} kernel")
        wrapped = torch.zeros(h, w, dtype=torch.float64)
        r = self.KERNEL_SIZE // 2
        for i in range(self.KERNEL_SIZE):
            for j in range(self.KERNEL_SIZE):
                wrapped[(i - r) % h, (j - r) % w] += k[i, j]
        spectrum = torch.fft.rfft2(wrapped).real
        n = torch.arange(int(self.blur_counts.max()) + 1, dtype=torch.float64)
        return spectrum[None] ** n[:, None, None]

    def degrade(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """D(x, n): the blur applied n[b] times to image b (n [B] long, 0 allowed: x itself)."""
        h, w = x.shape[-2:]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (h, w, n.device, dtype)
        powers = self._kcache.get(key)
        if powers is None:
            powers = self._kcache[key] = self.kernel_powers(h, w).to(device=n.device, dtype=dtype)
        blurred = torch.fft.irfft2(torch.fft.rfft2(x.to(dtype)) * powers[n].to(x.device).unsqueeze(1), s=(h, w))
        return torch.where((n == 0).to(x.device).view(-1, 1, 1, 1), x, blurred.to(x.dtype))

    def q_sample(self, x0, t, eps):
        """x_t = D(x_0, t + 1) for 0-based t (eps is not used: the process has no noise)."""
        counts = self._kcache.get(("counts", t.device))
        if counts is None:
            counts = self._kcache[("counts", t.device)] = self.blur_counts.to(t.device)
        return self.degrade(x0, counts[t])

    def target(self, x0, t, eps):
        return x0

    def split(self, model_out, x_t, t, clip_x0=False):
        """(x0_hat, 0): the network restores x_0 (clamped to [-1, 1] with ``clip_x0``); there is no noise."""
        x0 = model_out.clamp(-1.0, 1.0) if clip_x0 else model_out
        return x0, torch.zeros_like(x0)

    def _no_posterior(self, *args, **kwargs):
        raise InputError("cold_blur is deterministic: it has no posterior q(x_s | x_t, x_0); sample it with the `cold` "
                         "sampler (Bansal et al. 2022, Algorithm 2)")

    predict_x0 = q_posterior = p_mean_variance = p_sample = ddim_step = _no_posterior

    def fit_start(self, data: torch.Tensor) -> None:
        """Fit the start's Gaussian mixture to the per-channel means of the training images [N, C, H, W]."""
        means = data.detach().to("cpu", torch.float64).mean(dim=(2, 3)).numpy()
        self.start_prior = ChannelMeanPrior(means, self.GMM_COMPONENTS)

    def x_T(self, noise, shape, generators, device):
        """The paper's stochastic start (``START``): per image, N(0, 0.002^2) noise (the noise type's draw at
        index T-1 times 0.002) plus a constant image of channel means from the fitted mixture."""
        if self.start_prior is None:
            raise InputError("cold_blur starts generation from channel means fitted to the training images: build the "
                             "process with them (config.build_process(cfg, data)) before sampling")
        if self.start_prior.means.shape[1] != shape[1]:
            raise InputError(f"cold_blur: the start was fitted on {self.start_prior.means.shape[1]}-channel images, "
                             f"asked for {shape[1]} channels")
        n = noise.sample_per_item(shape, self.T - 1, generators, device).float() * self.START_NOISE_STD
        means = torch.stack([self.start_prior.sample(g) for g in generators]).float()
        return n + means.to(n.device)[:, :, None, None]


# ---------------------------------------------------------------------------------------------
# building a process


def corruption_params(name: str) -> tuple[str, ...]:
    """The RunConfig fields corruption ``name`` takes, e.g. ("sigma_blur_max",)."""
    return CORRUPTIONS.get(name).corruption_params


def check_compatible(name: str, prediction: str, weighting: str, noise: str | None = None) -> None:
    """InputError (one line, naming what works) when corruption ``name`` cannot take this prediction
    target, weighting or noise type."""
    cls = CORRUPTIONS.get(name)
    for what, value, allowed, registry in (("prediction", prediction, cls.predictions, PREDICTIONS),
                                           ("weighting", weighting, cls.weightings, WEIGHTINGS),
                                           ("noise", noise, cls.noises, None)):
        if value is None or allowed is None or value in allowed:
            continue
        if registry is not None:
            registry.get(value)  # an unknown name is reported as such
        raise InputError(f"corruption {name} works only with {what} {' or '.join(allowed)}, got {what} {value!r} "
                         f"({cls.description})")


def make_process(name: str, betas: torch.Tensor, prediction: str = "eps", weighting: str = "none",
                 weighting_kwargs: dict | None = None, noise: str | None = None, **params) -> Diffusion:
    """The forward process of corruption ``name``: its ``Diffusion`` class built on ``betas`` with the
    prediction target, weighting and the corruption's parameters (``None`` = the default; a parameter
    it does not take is an InputError). ``noise`` (a noise type's name) is checked when given."""
    check_compatible(name, prediction, weighting, noise)
    cls = CORRUPTIONS.get(name)
    unknown = sorted(k for k, v in params.items() if v is not None and k not in cls.corruption_params)
    if unknown:
        raise InputError(f"corruption {name} takes {', '.join(cls.corruption_params) or 'no parameters'}; got {', '.join(unknown)}")
    kw = {k: v for k, v in params.items() if v is not None}
    return cls(betas, prediction, weighting, **kw, **dict(weighting_kwargs or {}))

