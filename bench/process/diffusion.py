"""Gaussian-diffusion coefficients and formulas from a beta schedule (Ho et al. 2020, eqs. 4-15),
the prediction target and the loss weighting.

``Diffusion`` caches every coefficient in float64 and hands out per-batch slices (float32, or float64
for float64 inputs). Noise is an argument of every formula (never drawn here), so gaussian, gamma or
any registered noise type use the same code. Timesteps are 0-based indices (index i is the paper's
t = i + 1).

Notation (DESIGN.md section 3): x_t = a x_0 + s eps with a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t),
SNR_t = a^2/s^2, eps standardised (any noise type).

* **Prediction target** (``PREDICTIONS``: eps | x0 | v). The network predicts the target, the loss is
  on the target, and ``Diffusion.split`` is the one conversion of a model output to (x_0, eps) that
  every sampler uses, so no sampler branches on the target.
* **Loss weighting** (``WEIGHTINGS``: none | min_snr | p2), the weight w(SNR_t) on the per-example loss
  of the chosen target. At fixed x_t the targets' squared errors convert as
  x0-MSE = eps-MSE / SNR and v-MSE = eps-MSE (SNR + 1)/SNR, so a weighting defined by an
  eps-equivalent weight w_eps becomes w_x0 = w_eps SNR and w_v = w_eps SNR/(SNR + 1) on the other
  targets: the same objective whatever the target (``Prediction.eps_weight_factor``).
* **Zero terminal SNR** (alpha_bar_T = 0, beta_T = 1; ``schedules.rescale_zero_terminal_snr``) is
  accepted by the targets that recover x_0 from pure noise (v, x0); with eps it is an ``InputError``.
  Nothing divides by sqrt(alpha_bar_t) or uses the log-SNR numerically, so the tables stay finite
  at t = T (``log_snr`` is -inf there: a label, not an input to any formula).

* **Corruptions** (``bench.process.corruptions``, DESIGN.md section 3 "Mild corruptions"): ``Diffusion`` is also the
  interface of a forward process that corrupts x_0 by an operator; the corruption ``none`` is this class,
  ``blur`` and ``cold_blur`` are subclasses (see ``Diffusion``'s docstring for the methods they override).

Add a prediction target or a weighting: subclass ``Prediction`` / ``Weighting`` below (formula and
reference in the docstring) and register it; a weighting's constructor keyword parameters are
RunConfig fields (``weighting_params``). ``tests/test_objectives.py`` checks every registered one
against the conversion identities.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from bench.process.paths import SIGMA_DATA, VP
from bench.process.schedules import check_betas
from bench.process.spacings import SPACINGS
from bench.registry import InputError, Registry

PREDICTIONS: Registry = Registry("prediction")
WEIGHTINGS: Registry = Registry("weighting")


# ---------------------------------------------------------------------------------------------
# prediction targets


class Prediction:
    """A prediction target: what the network outputs, as static formulas in a = sqrt(alpha_bar_t),
    s = sqrt(1 - alpha_bar_t) (tensors broadcasting over the batch)."""

    #: whether x_0 can be recovered at alpha_bar = 0 (zero terminal SNR): a = 0, s = 1
    recovers_x0_at_zero_snr: bool = False
    #: what the loss is on, in the report's words ("the per-element MSE loss on <words>")
    words: str = ""

    @staticmethod
    def target(x0: torch.Tensor, eps: torch.Tensor, a, s) -> torch.Tensor:
        """The training target for x_t = a x0 + s eps."""
        raise NotImplementedError

    @staticmethod
    def split(out: torch.Tensor, x_t: torch.Tensor, a, s) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the model output ``out`` at x_t."""
        raise NotImplementedError

    @staticmethod
    def eps_weight_factor(snr: torch.Tensor) -> torch.Tensor:
        """eps-MSE / target-MSE at fixed x_t: an eps-equivalent weight w_eps is w_eps * this on the target."""
        raise NotImplementedError


@PREDICTIONS.register("eps")
class EpsPrediction(Prediction):
    """eps: target eps; x_0 = (x_t - s eps)/a, undefined at a = 0 (Ho et al. 2020).

    Weight factor 1. At zero terminal SNR the division by a = sqrt(alpha_bar_T) = 0 makes x_0
    unrecoverable at t = T, so that combination is rejected (Lin et al. 2023)."""

    recovers_x0_at_zero_snr = False
    words = "the predicted noise eps"

    @staticmethod
    def target(x0, eps, a, s):
        return eps

    @staticmethod
    def split(out, x_t, a, s):
        return (x_t - s * out) / a, out

    @staticmethod
    def eps_weight_factor(snr):
        return torch.ones_like(snr)


@PREDICTIONS.register("x0")
class X0Prediction(Prediction):
    """x0: target x_0; eps = (x_t - a x_0)/s (s > 0 for every t; Ho et al. 2020 sec. 3.2 "predict x_0").

    x0-MSE = (s/a)^2 eps-MSE = eps-MSE / SNR, so w_x0 = w_eps SNR."""

    recovers_x0_at_zero_snr = True
    words = "the predicted clean image x_0"

    @staticmethod
    def target(x0, eps, a, s):
        return x0

    @staticmethod
    def split(out, x_t, a, s):
        return out, (x_t - a * out) / s

    @staticmethod
    def eps_weight_factor(snr):
        return snr


@PREDICTIONS.register("v")
class VPrediction(Prediction):
    """v: target v = a eps - s x_0; x_0 = a x_t - s v, eps = s x_t + a v (Salimans & Ho 2022, sec. 4).

    v_hat - v = (eps_hat - eps)/a at fixed x_t, so v-MSE = eps-MSE/alpha_bar = eps-MSE (SNR + 1)/SNR
    and w_v = w_eps SNR/(SNR + 1). At a = 0: x_0 = -v, eps = x_t (no division)."""

    recovers_x0_at_zero_snr = True
    words = "the predicted velocity v"

    @staticmethod
    def target(x0, eps, a, s):
        return a * eps - s * x0

    @staticmethod
    def split(out, x_t, a, s):
        return a * x_t - s * out, s * x_t + a * out

    @staticmethod
    def eps_weight_factor(snr):
        return snr / (snr + 1.0)


@PREDICTIONS.register("flow")
class FlowPrediction(Prediction):
    """flow: target u = eps - x_0, the velocity of x_t = (1 - t) x_0 + t eps (rectified flow: Liu et al.
    2022; Esser et al. 2024, eq. 3; diffusers' flow-matching schedulers' ``noise - latents``).

    For x_t = a x_0 + s eps: x_0 = (x_t - s u)/(a + s), eps = (x_t + a u)/(a + s); on ``rf`` (a + s = 1)
    that is x0_hat = x_t - t u_hat, eps_hat = x_t + (1 - t) u_hat. The path ``rf`` only (``vp`` takes
    eps, x0, v). eps_hat - eps = a/(a + s) (u_hat - u) at fixed x_t, so the eps-equivalent factor is
    (a/(a + s))^2 = 1/(1 + sigma~)^2 with sigma~ = SNR^(-1/2); 0 at SNR = 0 (t = 1), where x_0 = -u + x_t
    needs no division."""

    recovers_x0_at_zero_snr = True
    words = "the predicted flow u = eps - x_0"

    @staticmethod
    def target(x0, eps, a, s):
        return eps - x0

    @staticmethod
    def split(out, x_t, a, s):
        return (x_t - s * out) / (a + s), (x_t + a * out) / (a + s)

    @staticmethod
    def eps_weight_factor(snr):
        return 1.0 / (1.0 + snr.rsqrt()) ** 2  # snr = 0: rsqrt = inf -> 0


# ---------------------------------------------------------------------------------------------
# loss weightings


def _positive(name: str, what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"weighting {name}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


class Weighting:
    """A loss weighting w(SNR_t). Subclasses define the eps-equivalent weight ``eps_weight(snr)``;
    ``weight(snr, prediction)`` is that weight in the form right for the target (times
    ``prediction.eps_weight_factor``). ``snr`` is float64 [T], may contain 0 (zero terminal SNR)."""

    def eps_weight(self, snr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, snr: torch.Tensor, prediction: type[Prediction]) -> torch.Tensor:
        return self.eps_weight(snr) * prediction.eps_weight_factor(snr)


@WEIGHTINGS.register("none")
class NoWeighting(Weighting):
    """none: w = 1 on the chosen target's loss (the plain loss of that target, whatever it is).

    Not an eps-equivalent weight: the plain x0 and v losses are the eps loss times 1/SNR and
    (SNR + 1)/SNR, so ``none`` with different targets are different objectives (Kingma & Gao 2023)."""

    def weight(self, snr, prediction):
        return torch.ones_like(snr)


@WEIGHTINGS.register("min_snr")
class MinSNR(Weighting):
    """min_snr: eps-target w = min(SNR, gamma)/SNR; x0-target min(SNR, gamma); v-target min(SNR, gamma)/(SNR + 1).

    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", gamma = 5
    (``min_snr_gamma``). Computed as w_eps = min(1, gamma/SNR) times the target's factor, which is
    exact at SNR = 0 (zero terminal SNR: w_eps = 1, the x0 and v forms 0). The v form is the one
    diffusers first got wrong (#5654: min(SNR, gamma)/SNR applied to the v loss)."""

    def __init__(self, min_snr_gamma: float = 5.0):
        self.gamma = _positive("min_snr", "min_snr_gamma", min_snr_gamma)

    def eps_weight(self, snr):
        return torch.clamp(self.gamma / snr, max=1.0)  # gamma/0 = inf -> 1


@WEIGHTINGS.register("p2")
class P2(Weighting):
    """p2: eps-target w = (k + SNR)^-gamma; x0-target SNR (k + SNR)^-gamma; v-target SNR/(SNR + 1) (k + SNR)^-gamma.

    Choi et al. 2022, "Perception Prioritized Training of Diffusion Models", k = 1 (``p2_k``),
    gamma = 1 (``p2_gamma``; the paper also uses 0.5; 0 is the plain eps loss), as lucidrains'
    ``p2_loss_weight_k`` / ``p2_loss_weight_gamma``."""

    def __init__(self, p2_k: float = 1.0, p2_gamma: float = 1.0):
        self.k = _positive("p2", "p2_k", p2_k)
        if isinstance(p2_gamma, bool) or not isinstance(p2_gamma, (int, float)) or not (math.isfinite(p2_gamma) and p2_gamma >= 0):
            raise InputError(f"weighting p2: p2_gamma must be a finite number >= 0, got {p2_gamma!r}")
        self.gamma = float(p2_gamma)

    def eps_weight(self, snr):
        return (self.k + snr) ** -self.gamma


@WEIGHTINGS.register("edm")
class EDMWeighting(Weighting):
    """edm: EDM's loss weight (sigma^2 + sd^2)/(sigma sd)^2 on ||D - x_0||^2 (Karras et al. 2022, Table 1;
    NVlabs/edm ``EDMLoss``), sd = sigma_data = 0.5, as an eps-equivalent weight
    w_eps = 1 + 1/(SNR sd^2) = 1 + e^(-lambda)/sd^2 (x0-target: SNR + 1/sd^2 = 1/sigma^2 + 1/sd^2).
    Infinite at SNR = 0, so not usable with zero terminal SNR."""

    def __init__(self):
        self.sd2 = SIGMA_DATA**2

    def eps_weight(self, snr):
        return 1.0 + 1.0 / (snr * self.sd2)


@WEIGHTINGS.register("sigmoid")
class SigmoidWeighting(Weighting):
    """sigmoid: w_eps(lambda) = sigmoid(b - lambda), b = ``weight_bias`` (Kingma & Gao 2023, "Understanding
    Diffusion Objectives", sec. 5; default 0: w = 1/2 at lambda = 0; the paper sweeps b). Computed as
    1/(1 + SNR e^(-b)), exact at SNR = 0 (w = 1) and SNR = inf (w = 0). Applied on top of the time
    density, as every weighting here: Kingma & Gao's sigmoid is the *total* weighting over lambda, which
    this arm is only where the density is uniform in lambda; the effective-weighting figure shows the total."""

    def __init__(self, weight_bias: float = 0.0):
        if isinstance(weight_bias, bool) or not isinstance(weight_bias, (int, float)) or not math.isfinite(weight_bias):
            raise InputError(f"weighting sigmoid: weight_bias must be a finite number, got {weight_bias!r}")
        self.b = float(weight_bias)

    def eps_weight(self, snr):
        return 1.0 / (1.0 + snr * math.exp(-self.b))


def eps_equivalent(weighting: Weighting, snr: torch.Tensor, prediction: type[Prediction]) -> torch.Tensor:
    """The eps-equivalent weight of ``weighting`` on ``prediction``'s loss: w_target / factor (so ``none``
    on the v loss is (SNR + 1)/SNR; Kingma & Gao 2023). Where the factor is 0 (SNR = 0 for x0, v and flow)
    it is undefined: nan there (the effective-weighting figure counts no mass at SNR = 0)."""
    factor = prediction.eps_weight_factor(snr)
    w = weighting.weight(snr, prediction) / factor
    return torch.where(factor > 0, w, torch.full_like(w, float("nan")))


def weighting_params(name: str) -> tuple[str, ...]:
    """The keyword parameters of weighting ``name`` (RunConfig field names), e.g. ("min_snr_gamma",)."""
    sig = inspect.signature(WEIGHTINGS.get(name).__init__)
    return tuple(p.name for p in list(sig.parameters.values())[1:] if p.kind == p.POSITIONAL_OR_KEYWORD)


def make_weighting(name: str, **params) -> Weighting:
    """Weighting ``name`` with ``params`` (``None`` = the default); a parameter it does not take is an InputError."""
    cls = WEIGHTINGS.get(name)
    accepted = weighting_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no parameters"
        raise InputError(f"weighting {name} takes {takes}; got {', '.join(unknown)}")
    return cls(**{k: v for k, v in params.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# the diffusion


class Diffusion:
    """Tables of one forward process, its prediction target and loss weighting.

    ``Diffusion(betas, prediction="eps", weighting="none", **weighting_params)``; an invalid
    combination (unknown names, bad weighting parameters, zero terminal SNR with a target that cannot
    recover x_0 from pure noise) raises ``InputError`` with one line.

    This class is also the interface of a forward process that corrupts x_0 by an operator
    (``bench.process.corruptions``, DESIGN.md section 3 "Mild corruptions"): the corruption ``none`` is this
    class itself, x_t = a x_0 + s eps, and every other corruption is a subclass that overrides how x_t
    is made (``q_sample``), the one conversion of a model output (``split``, ``target``), the reverse
    step (``p_sample`` for ancestral samplers, ``ddim_step`` for DDIM, ``has_posterior`` when it has no
    Gaussian posterior), the start of generation (``x_T``), respacing (``restrict``) and what it needs
    from the training data (``fit_start``). The trainer and the samplers call only these methods, so
    neither branches on the corruption. The class attributes below state what a corruption accepts.
    """

    #: the corruption's one-line description (``bench ls corruptions``)
    description = "none: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, no operator on x_0 (Ho et al. 2020)"
    #: RunConfig fields that parametrise the corruption (keyword-only constructor arguments)
    corruption_params: tuple[str, ...] = ()
    #: the prediction targets / weightings / noise types it accepts (None: every registered one)
    predictions: tuple[str, ...] | None = None
    weightings: tuple[str, ...] | None = None
    noises: tuple[str, ...] | None = None
    #: whether q(x_s | x_t, x_0) is Gaussian and known (the ``ddpm`` and ``ddim`` samplers need it)
    has_posterior: bool = True
    uses_schedule: bool = True  # x_t depends on the beta schedule and the noise (labels show both)
    #: whether the start of generation needs statistics of the training images (``fit_start``)
    needs_data: bool = False
    #: whether it is a discrete chain on integer timesteps (ddpm, ddim, cold step it; PathDiffusion is not)
    discrete: bool = True
    #: whether x_t = a x_0 + s eps holds for the model's (x0_hat, eps_hat), so the VE-view solvers
    #: (euler) can step it (not under blur / cold_blur, whose operator acts on x_0)
    has_ve_view: bool = True
    #: the training time density (``bench.process.densities``); None: the first release's uniform integer draw
    density = None

    def __init__(self, betas: torch.Tensor, prediction: str = "eps", weighting: str = "none", **weighting_kwargs):
        zero_terminal = bool(betas.ndim == 1 and len(betas) and betas[-1].item() == 1.0)
        check_betas(betas, zero_terminal_snr=zero_terminal)
        self.prediction_name = prediction
        self.prediction: type[Prediction] = PREDICTIONS.get(prediction)
        if prediction not in VP.predictions:
            raise InputError(f"prediction {prediction} on path vp: path vp takes {', '.join(VP.predictions)} "
                             f"(flow is the rf path's target, u = eps - x_0)")
        self.weighting_name = weighting
        self.weighting_kwargs = dict(weighting_kwargs)
        self.weighting: Weighting = make_weighting(weighting, **weighting_kwargs)
        if zero_terminal and not self.prediction.recovers_x0_at_zero_snr:
            works = " or ".join(f"`{n}`" for n, p in PREDICTIONS.items() if p.recovers_x0_at_zero_snr and n in VP.predictions)
            raise InputError(
                f"zero terminal SNR (alpha_bar_T = 0) with prediction `{prediction}`: x_0 = (x_T - sqrt(1 - alpha_bar_T) eps)"
                f"/sqrt(alpha_bar_T) divides by zero at t = T, so no sampler can start; use prediction {works}"
            )
        self.zero_terminal_snr = zero_terminal
        self.T = len(betas)
        self._tables: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}  # per device/dtype (_at)
        b = betas.to(torch.float64).cpu()
        self.betas = b
        self.alphas = 1.0 - b
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        if zero_terminal:
            self.alpha_bar[-1] = 0.0  # (1 - 1) * ... is 0 already; stated so that nothing depends on rounding
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()  # > 0: alpha_bar_1 = 1 - beta_1 < 1
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)  # 0 at zero terminal SNR
        self.log_snr = torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)  # -inf there: a label only
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde)   (Ho et al. eq. 7); 1 - alpha_bar_t > 0
        self.posterior_variance = b * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        # beta_tilde_1 = 0: log of the variance uses beta_tilde_2 there (improved-diffusion's clipping)
        # (T = 1, e.g. a one-step respaced sampler: nothing to clip with, log(0) = -inf)
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if self.T > 1 else self.posterior_variance
        )
        self.posterior_mean_coef1 = b * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_mean_coef2 = (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bar)
        # the weight w(SNR_t) on the per-example loss of the target, per timestep
        self.loss_weight = self.weighting.weight(self.snr, self.prediction).to(torch.float64)
        if not (torch.isfinite(self.loss_weight).all() and (self.loss_weight >= 0).all()):
            raise InputError(f"weighting {weighting} with prediction {prediction}: the loss weight is not a finite "
                             f"number >= 0 at every timestep of this schedule")
        self._unit_weight = bool((self.loss_weight == 1.0).all())

    def label(self) -> str:
        """How messages name this process."""
        return f"path vp, {type(self).__name__}"

    # --- time: what the trainer and the solvers ask of any process ------------------------------------

    def draw_t(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` training timesteps (0-based indices, CPU): t ~ U{0..T-1} by ``torch.randint`` (the first
        release's draw, so existing trials stay bit-identical), or the ``density``'s u mapped to
        index ceil(u T) - 1 (DESIGN.md section 6)."""
        if self.density is None or self.density.integer_on_vp:
            return torch.randint(self.T, (n,), generator=generator)
        u = self.density.draw(n, generator, self)
        return (torch.ceil(u * self.T).long() - 1).clamp(0, self.T - 1)

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The time of the first index i whose log-SNR is <= lam (the table is decreasing), as the middle
        (i + 1/2)/T of the interval that ``draw_t`` maps to index i (ceil(u T) - 1 = i): how the
        ``lognormal`` density reaches a discrete schedule, with no rounding at the interval's ends."""
        i = torch.searchsorted(-self.log_snr, -torch.as_tensor(lam, dtype=torch.float64), right=False)
        return (i.clamp(0, self.T - 1) + 0.5).double() / self.T

    def log_snr_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """lambda at time t in [0, 1]: the table's value at index ceil(t T) - 1 (+inf at t = 0, the data),
        the step function the index draw sees (the ``Path.log_snr_of_t`` of the vp chain)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        i = (torch.ceil(t * self.T).long() - 1).clamp(0, self.T - 1)
        return torch.where(t > 0, self.log_snr[i], torch.full_like(t, float("inf")))

    def log_snr_mass(self, edges: torch.Tensor) -> torch.Tensor:
        """The training density's probability of each log-SNR bin [edges_k, edges_k+1) (float64). Index i has
        probability 1/T (the uniform integer draw) or F((i + 1)/T) - F(i/T) (a density with CDF F; the draw is
        index ceil(u T) - 1), spread evenly over the log-SNR gap (lambda_i, lambda_{i-1}] to the previous index
        (the chain's time step i - 1 -> i; index 0 over a gap as wide as the next): the discrete chain read as
        a density over lambda, smooth where its steps are wider than a bin. A zero-terminal -inf is left out."""
        i = torch.arange(self.T, dtype=torch.float64)
        if self.density is None or self.density.integer_on_vp:
            q = torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        else:
            q = self.density.cdf((i + 1) / self.T, self) - self.density.cdf(i / self.T, self)
        lam = self.log_snr
        first = lam[:1] + (lam[:1] - lam[1:2]) if self.T > 1 else lam[:1] + 1.0
        lo, hi = lam, torch.cat([first, lam[:-1]])
        fin = torch.isfinite(lo)
        lo, hi, q = lo[fin, None], hi[fin, None], q[fin, None]
        a, b = edges.double()[None, :-1], edges.double()[None, 1:]
        overlap = (torch.minimum(hi, b) - torch.maximum(lo, a)).clamp(min=0.0)
        return (q * overlap / (hi - lo).clamp(min=1e-300)).sum(0)

    def t_bin(self, t: torch.Tensor, nbins: int) -> torch.Tensor:
        """The bin of each training timestep among ``nbins`` equal parts of the time range (loss_by_t.csv)."""
        return t * nbins // self.T

    def noise_index(self, t: torch.Tensor) -> torch.Tensor:
        """The index a noise type draws at for training timesteps ``t`` (the timestep itself here)."""
        return t

    def time_of_index(self, i: int):
        """The process's time at 0-based index i of its T steps (the index itself on a discrete chain)."""
        return i

    def start_alpha_bar(self) -> float:
        """alpha_bar where generation starts (alpha_bar_T; rows.csv's ``alpha_bar_T``)."""
        return float(torch.prod(1.0 - self.betas))

    def times_on(self, x: torch.Tensor, time) -> torch.Tensor:
        """Solver time ``time`` (an index here) for every image of ``x``, made on x's device."""
        return torch.full((x.shape[0],), int(time), dtype=torch.long, device=x.device)

    def model_input(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network is called with at (x_t, t): x_t and the timestep index itself here."""
        return x_t, t

    def sigma_tilde(self) -> torch.Tensor:
        """The VE noise level sigma~ = sqrt((1 - alpha_bar)/alpha_bar) at every index (float64; inf at zero terminal SNR)."""
        ab = self.alpha_bar.to(torch.float64)
        return torch.sqrt((1.0 - ab) / ab)

    def sigma_range(self) -> tuple[float, float]:
        """[sigma~_min, sigma~_max]: the table's first and last index (k-diffusion's ``DiscreteSchedule``)."""
        st = self.sigma_tilde()
        return float(st[0]), float(st[-1])

    def solver_grid(self, steps: int, sample_shift: float = 1.0, spacing: str = "", rho: float = 7.0,
                    sigma_cap: float = math.inf) -> list[tuple[object, float, float]]:
        """The VE-view solvers' grid (time, alpha, sigma) from noise to data, ``steps`` + 1 points: the
        timesteps of ``spacing`` (``bench.process.spacings``; "" = linspace, the evenly spaced timesteps
        DDIM uses), descending, then data (1, 0); ``sigma_cap`` caps the largest noise level of the karras and
        uniform_lambda grids (``solver_sigma_max``). On vp the sampling shift must equal the training shift
        (``train_shift`` shifts the schedule itself: a discrete chain has no noise levels between its T),
        which the config checks."""
        ts = SPACINGS.get(spacing or "linspace")(self, steps, rho, sigma_cap)
        if len(ts) != steps or len(set(ts)) != steps or not all(0 <= t < self.T for t in ts) or ts != sorted(ts, reverse=True):
            raise AssertionError(f"spacing {spacing or 'linspace'} gave {ts} for {steps} steps of T = {self.T}")
        grid = [(t, float(self.sqrt_alpha_bar[t]), float(self.sqrt_one_minus_alpha_bar[t])) for t in ts]
        return grid + [(None, 1.0, 0.0)]

    def _at(self, coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """coef[t] on like's device, shaped to broadcast over like's trailing dims; float64 when ``like``
        is float64 (closed-form checks), else float32.

        Indexes a copy of the table kept on t's device (the same values as casting coef[t]), so a CUDA t
        is never copied back to the host: that copy waited for the GPU once per call, several times per
        training step."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (id(coef), t.device, dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = coef.to(device=t.device, dtype=dtype)
        return table[t].to(like.device).reshape(-1, *([1] * (like.ndim - 1)))

    def _a_s(self, t: torch.Tensor, like: torch.Tensor):
        return self._at(self.sqrt_alpha_bar, t, like), self._at(self.sqrt_one_minus_alpha_bar, t, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        a, s = self._a_s(t, x0)
        return a * x0 + s * eps

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The training target of this diffusion's prediction for x_t = q_sample(x0, t, eps)."""
        a, s = self._a_s(t, x0)
        return self.prediction.target(x0, eps, a, s)

    def split(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False):
        """(x0_hat, eps_hat) from a model output of this diffusion's prediction target: the one
        conversion every sampler uses.

        With ``clip_x0`` x0_hat is clamped to [-1, 1] and eps_hat recomputed from it,
        eps_hat = (x_t - sqrt(ab) x0_hat)/sqrt(1 - ab) (improved-diffusion), so that (x0_hat, eps_hat)
        stay consistent with x_t. No formula divides by sqrt(ab) except eps's x_0 (rejected at ab = 0).
        """
        a, s = self._a_s(t, x_t)
        x0, eps = self.prediction.split(model_out, x_t, a, s)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x_t - a * x0) / s
        return x0, eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) from an eps (whatever the target;
        for a model output use ``split``). Divides by zero at alpha_bar = 0."""
        a, s = self._a_s(t, x_t)
        return (x_t - s * eps) / a

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped, t, x_t)

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, var_type: str = "small",
                        clip_x0: bool = True):
        """Reverse step p(x_{t-1} | x_t) from a model output (this diffusion's target): mean, variance, x0_hat.

        x0_hat from ``split`` (clipped to [-1, 1] when ``clip_x0``), mean = posterior mean at x0_hat;
        var_type ``small`` = posterior variance beta_tilde_t, ``large`` = beta_t (Ho et al. sec. 3.2).
        """
        x0, _ = self.split(model_out, x_t, t, clip_x0)
        mean, small_var, _ = self.q_posterior(x0, x_t, t)
        variances = {"small": small_var, "large": self._at(self.betas, t, x_t)}
        if var_type not in variances:
            raise InputError(f"var_type must be one of {', '.join(variances)}, got {var_type!r}")
        return mean, variances[var_type], x0

    def loss(self, model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, kind: str = "mse",
             eps_in: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss [B]: w(SNR_t) * mean over pixels of (model(x_t, t) - target)^2 (``mse``) or
        |model(x_t, t) - target| (``l1``), x_t = ``q_sample``, target = ``target`` (the prediction's, in the
        corruption's terms) and w from the weighting. ``eps_in``: the noise x_t is made of when it is not
        the target's (input perturbation, DDPM-IP); None = ``eps``.

        The weights are derived for the squared error (DESIGN.md); with ``l1`` they are applied as written."""
        losses = {"mse": F.mse_loss, "l1": F.l1_loss}
        if kind not in losses:
            raise InputError(f"loss must be one of {', '.join(losses)}, got {kind!r}")
        pred = model(self.q_sample(x0, t, eps if eps_in is None else eps_in), t)
        target = self.target(x0, t, eps)
        per = losses[kind](pred.to(target.dtype), target, reduction="none").flatten(1).mean(1)
        return per if self._unit_weight else per * self._at(self.loss_weight, t, per)

    # --- the reverse steps and the start: what the samplers call (a corruption overrides them) ---------

    def p_sample(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None,
                 var_type: str = "small", clip_x0: bool = True) -> torch.Tensor:
        """One ancestral step from x_t: the posterior mean at the model's x0_hat plus sqrt(var) z
        (``p_mean_variance``); the mean alone when ``z`` is None (the last step)."""
        mean, var, _ = self.p_mean_variance(model_out, x_t, t, var_type, clip_x0)
        return mean if z is None else mean + var.sqrt() * z

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t: int, s: int, eta: float,
                  z: torch.Tensor | None) -> torch.Tensor:
        """DDIM (Song, Meng, Ermon 2021, eq. 12) from timestep t to s < t (0-based indices of this diffusion):
        x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - ab_s)/(1 - ab_t)) sqrt(1 - ab_t/ab_s); ``z`` is needed only when eta > 0."""
        ab = self.alpha_bar
        a_t, a_s = float(ab[t]), float(ab[s])
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * z
        return x

    def x_T(self, noise, shape, generators, device) -> torch.Tensor:
        """Where generation starts: x_T = sqrt(1 - alpha_bar_T) * (standardised noise at index T-1)
        (gamma paper, Algorithm 2; ``generators[i]`` drives image i)."""
        n = noise.sample_per_item(shape, self.T - 1, generators, device).float()
        return n * float(self.sqrt_one_minus_alpha_bar[-1])

    def fit_start(self, data: torch.Tensor) -> None:
        """Statistics of the training images [N, C, H, W] that ``x_T`` needs (``needs_data``); none here."""

    def restrict(self, timesteps) -> "Diffusion":
        """This process on an ascending subsequence s_0 < ... < s_{K-1} of its timesteps.

        beta'_i = 1 - alpha_bar_{s_i} / alpha_bar_{s_{i-1}} (alpha_bar_{s_{-1}} = 1), so that the new
        process has alpha_bar'_i = alpha_bar_{s_i} exactly (Nichol & Dhariwal 2021, sec. 4;
        improved-diffusion's ``SpacedDiffusion``); it keeps the prediction target, the weighting and the
        corruption at the original timesteps (at zero terminal SNR the last beta' is 1 again). The full
        sequence returns the process itself.
        """
        ts = list(timesteps)
        if ts == list(range(self.T)):
            return self
        ab = self.alpha_bar[torch.tensor(ts, dtype=torch.long)]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return self._restricted(1.0 - ab / prev, ts)

    def _restricted(self, betas: torch.Tensor, ts: list[int]) -> "Diffusion":
        return Diffusion(betas, prediction=self.prediction_name, weighting=self.weighting_name, **self.weighting_kwargs)
