"""RunConfig: the one flat, frozen config of a trial, its identity, and the one builder from a
config to the forward process.

A field name is a grid axis is a Ray ``param_space`` key is a results column: there is no renaming
layer anywhere. Component parameters are fields too (``None`` = that component's default), named as
the keyword parameters of the schedule / noise / weighting functions that take them.

Identity (``trial_id``): a hash of what the trial computes. The fields of the first release
(``ID_FIELDS_V1``) are always hashed; a field added since enters the hash only when it differs from
its default, so adding a defaulted field never re-keys an existing trial and committed runs keep
resuming and re-reporting (tests/test_config.py checks every committed rows.csv).
"""

import dataclasses
import hashlib
import inspect
import json
import math
import typing
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from bench.data.datasets import DATASETS
from bench.models.unet import MODELS
from bench.optim.ema import EMAS
from bench.optim.ema import check as ema_check
from bench.optim.lr import LR_SCHEDULES
from bench.optim.lr import check as lr_check
from bench.process.continuous import PathDiffusion
from bench.process.corruptions import CORRUPTIONS, corruption_params, make_process
from bench.process.densities import DENSITIES, all_density_params, density_params, make_density
from bench.process.diffusion import WEIGHTINGS, Diffusion, weighting_params
from bench.process.noise import NOISES, Noise, make_noise, noise_params
from bench.process.paths import PATHS, check_shift
from bench.process.schedules import SCHEDULES, make_betas, schedule_params, shift_schedule
from bench.registry import InputError, did_you_mean
from bench.sampling.sample import OPTION_CHECKS, SAMPLERS, check_options, sampler_options, start_T
from bench.scoring.metrics import METRICS

# --- each field's role, declared once with the field (issue 30) ------------------------------------
# Every list of fields that behave alike (the training key, what a resume must match, the curve key,
# what arm labels leave out) is derived from these; tests/test_config.py requires one role per field.
TRAINS = "trains"  # changes the trained weights: in the training key, and a resumed checkpoint must match it
BUDGET = "budget"  # how long training runs: in the training key, but a resume may continue to more steps
EVALUATIONS = "evaluations"  # which evaluations the final model gets (a learning curve has its own)
SCORING = "scoring"  # how every evaluation, curve points included, draws its images and scores them
SAMPLER_OPTION = "sampler option"  # an option samplers declare (bench ls samplers): read by every evaluation
CURVE = "curve"  # the learning-curve points
BOOKKEEPING = "bookkeeping"  # where files are, how often to checkpoint, whether to adopt: never changes a number
ROLES = (TRAINS, BUDGET, EVALUATIONS, SCORING, SAMPLER_OPTION, CURVE, BOOKKEEPING)


def role(kind: str, default: Any, label: bool = True, help: str = "") -> Any:
    """A RunConfig field's default with its role (``ROLES``), whether arm labels may name it
    (``label=False``: the seed and dataset are named on their own, the rest never differ between the
    arms of one comparison), and its phrase for ``bench ls config`` (``help``; a component parameter
    leaves it out and is described from its registry by ``param_owners``)."""
    if kind not in ROLES:
        raise ValueError(f"unknown field role {kind!r}: one of {ROLES}")
    return dataclasses.field(default=default, metadata={"role": kind, "label": label, "help": help})


@dataclass(frozen=True)
class RunConfig:
    # --- data -------------------------------------------------------------------------------
    dataset: str = role(TRAINS, "mnist", label=False, help='training and reference images (bench ls datasets)')
    data_root: str = role(BOOKKEEPING, "", label=False, help="where the dataset lies; '' = $BENCH_DATA_ROOT, else ~/.cache/bench/data")
    image_size: int = role(TRAINS, 0, help='side in pixels the images are resized to; 0 = native (mnist 28, craters 64)')
    max_train_images: int = role(TRAINS, 0, help='use only the first N training images; 0 = all')
    # --- forward process: schedule -------------------------------------------------------------
    schedule: str = role(TRAINS, "linear", help='beta schedule (bench ls schedules)')
    timesteps: int = role(TRAINS, 1000, help='T, the number of forward steps')
    zero_terminal_snr: bool = role(TRAINS, False, help='rescale the schedule to alpha_bar_T = 0 exactly (Lin et al. 2023; needs prediction v or x0)')
    beta_start: Optional[float] = role(TRAINS, None)
    beta_end: Optional[float] = role(TRAINS, None)
    cosine_s: Optional[float] = role(TRAINS, None)
    tau: Optional[float] = role(TRAINS, None)
    sigmoid_start: Optional[float] = role(TRAINS, None)
    sigmoid_end: Optional[float] = role(TRAINS, None)
    sigma_min: Optional[float] = role(TRAINS, None)
    sigma_max: Optional[float] = role(TRAINS, None)
    laplace_mu: Optional[float] = role(TRAINS, None)
    laplace_b: Optional[float] = role(TRAINS, None)
    # --- forward process: noise ----------------------------------------------------------------
    noise: str = role(TRAINS, "gaussian", help='distribution of the forward noise (bench ls noises)')
    theta_0: Optional[float] = role(TRAINS, None)
    # --- forward process: corruption of x_0 by an operator (DESIGN.md section 3, "Mild corruptions";
    # bench ls corruptions). "none" is x_t = a x_0 + s eps; blur = Blurring Diffusion (Hoogeboom & Salimans
    # 2023); cold_blur = Cold Diffusion's blur (Bansal et al. 2022: prediction x0, sampler cold, T = 20, l1)
    corruption: str = role(TRAINS, "none", help='operator applied to x_0 besides the noise: none | blur | cold_blur (bench ls corruptions)')
    sigma_blur_max: Optional[float] = role(TRAINS, None)  # blur: sigma_B,max (None -> 20, the paper's default; 0 = no blur)
    # --- objective (DESIGN.md section 3: prediction target, loss weighting) ---------------------
    prediction: str = role(TRAINS, "eps", help='what the network predicts and the loss is on: eps | x0 | v')
    weighting: str = role(TRAINS, "none", help='per-example loss weight w(SNR_t): none | min_snr | p2 (bench ls weightings)')
    min_snr_gamma: Optional[float] = role(TRAINS, None)
    p2_k: Optional[float] = role(TRAINS, None)
    p2_gamma: Optional[float] = role(TRAINS, None)
    weight_bias: Optional[float] = role(TRAINS, None)
    # --- formulation (DESIGN.md section 6: path, training time density, shift; bench ls paths / densities).
    # The defaults are the first release's trials (vp, the uniform integer draw, no shift): unchanged ids.
    path: str = role(TRAINS, "vp", help='how x_t mixes data and noise: vp (the beta schedule) | rf (rectified flow) | edm (bench ls paths)')
    t_density: str = role(TRAINS, "uniform", help='training time density: uniform | logit_normal | mode | cosmap | lognormal (bench ls densities)')
    t_mean: Optional[float] = role(TRAINS, None)
    t_std: Optional[float] = role(TRAINS, None)
    t_mode_scale: Optional[float] = role(TRAINS, None)
    P_mean: Optional[float] = role(TRAINS, None)
    P_std: Optional[float] = role(TRAINS, None)
    train_shift: float = role(TRAINS, 1.0, help="shift of the training noise levels, sigma~' = a sigma~ (lambda - 2 log a; SD3 eq. 23 on rf); >= 1")
    # --- noise-side training knobs (DESIGN.md section 6; each off by default)
    input_perturbation: float = role(TRAINS, 0.0,
        help='DDPM-IP gamma: x_t made of eps + gamma xi, target eps (Ning et al. 2023; 0 = off)')
    immiscible: bool = role(TRAINS, False,
        help="Immiscible Diffusion: each batch's noise assigned to its images by linear assignment on L2 distance (Li et al. 2024)")
    offset_noise: float = role(TRAINS, 0.0,
        help='offset noise s: eps + s n, n ~ N(0, 1) per image and channel, in x_t and the target (Guttenberg 2023; 0 = off)')
    # --- model ----------------------------------------------------------------------------------
    model: str = role(TRAINS, "tiny", help='UNet size preset (bench ls models)')
    dropout: float = role(TRAINS, 0.1, help="dropout rate in the UNet's residual blocks")
    # --- training -------------------------------------------------------------------------------
    train_steps: int = role(BUDGET, 2000, help='optimizer steps of training')
    batch_size: int = role(TRAINS, 64, help='images per training step')
    lr: float = role(TRAINS, 2e-4, help='peak learning rate of AdamW')
    warmup_steps: int = role(TRAINS, 100, help='steps of linear learning-rate warm-up')
    grad_clip: float = role(TRAINS, 1.0, help='gradient-norm clip; 0 = none')
    ema_decay: float = role(TRAINS, 0.999, help='decay of the exponential moving average of the weights that is evaluated')
    lr_schedule: str = role(TRAINS, "constant",
        help="learning rate after the warmup: constant | inv_sqrt (EDM2) | cosine (bench ls lr_schedules)")
    lr_ref_steps: int = role(TRAINS, 0, help="inv_sqrt: the rate falls as 1/sqrt(step / lr_ref_steps) after this step (EDM2's t_ref); 0 otherwise")
    ema: str = role(TRAINS, "fixed",
        help="the weight average that is evaluated: fixed (ema_decay, warmed up) | power (EDM2, ema_std) (bench ls emas)")
    ema_std: float = role(TRAINS, 0.0, help="ema power: the profile's relative standard deviation sigma_rel (EDM2: 0.05, 0.10); 0 otherwise")
    loss: str = role(TRAINS, "mse", help='distance of the loss: mse | l1')
    checkpoint_every: int = role(BOOKKEEPING, 500, help='steps between checkpoints (a killed trial resumes from the last)')
    seed: int = role(TRAINS, 0, label=False, help='training seed: initialisation, batches, timesteps and noise draws')
    # --- evaluation -----------------------------------------------------------------------------
    # comma-separated SAMPLER:STEPS, e.g. "ddim:10,ddim:50,ddpm:1000"
    evals: str = role(EVALUATIONS, "ddim:50", help='evaluations at the end of training, SAMPLER:STEPS comma-separated (bench ls samplers)')
    n_samples: int = role(SCORING, 256, help="generated images per evaluation (the metrics' sample size)")
    ddim_eta: float = role(SAMPLER_OPTION, 0.0, help='DDIM stochasticity: 0 deterministic, 1 DDPM-like')
    var_type: str = role(SAMPLER_OPTION, "small", help='DDPM reverse variance: small (posterior) | large (beta_t)')
    sample_shift: float = role(SAMPLER_OPTION, 1.0,
        help="VE-view solvers (euler, heun, dpmpp_2m, unipc): shift of the sampling grid, sigma~' = a sigma~, applied last; "
             "on vp it must equal train_shift")
    spacing: str = role(SAMPLER_OPTION, "",
        help="VE-view solvers' grid: linspace | leading | trailing (vp) | uniform_t | karras | uniform_lambda; "
             "'' = the path's own (bench ls spacings)")
    rho: float = role(SAMPLER_OPTION, 7.0, help="the karras grid's exponent (Karras et al. 2022, eq. 5)")
    solver_sigma_max: float = role(SAMPLER_OPTION, math.inf,
        help="largest sigma~ of the karras and uniform_lambda grids (EDM's sigma_max, e.g. 80; before sample_shift); inf = the path's own")
    s_churn: float = role(SAMPLER_OPTION, 0.0, help="heun: EDM's S_churn, fresh noise per step (0 = deterministic)")
    s_tmin: float = role(SAMPLER_OPTION, 0.0, help="heun: churn only where sigma~ >= S_tmin")
    s_tmax: float = role(SAMPLER_OPTION, math.inf, help="heun: churn only where sigma~ <= S_tmax")
    s_noise: float = role(SAMPLER_OPTION, 1.0, help="heun: EDM's S_noise, the scale of the churn's noise")
    skip_start: float = role(SAMPLER_OPTION, 0.0,
        help='ddpm/ddim: fraction f of the reverse process skipped, starting from noise at t = T - round(f T) (Nichol & Dhariwal 2021)')
    metrics: str = role(EVALUATIONS, "fid,kid", help='metrics of each evaluation, comma-separated (bench ls metrics)')
    n_reference: int = role(SCORING, 0, help='reference (training) images for the metrics; 0 = min(training set, 10000)')
    # image i of every evaluation starts from seed sample_seed + i ("shared" image_seeds)
    sample_seed: int = role(SCORING, 0, label=False, help='first seed of the generated images')
    # image seeds: "shared" = the same for every trial (the first release); "per_seed" = derived from
    # (sample_seed, seed, i): identical in every arm, different across training seeds (DESIGN.md section 5)
    image_seeds: str = role(SCORING, "shared",
        help='shared = the same image seeds in every trial; per_seed = the same in every arm, new per training seed')
    # --- learning curves ------------------------------------------------------------------------
    eval_at: str = role(CURVE, "", help='learning-curve points: fractions of train_steps or step counts, comma-separated')
    curve_metrics: str = role(CURVE, "", help="metrics of the learning-curve points; '' = metrics")
    # --- evaluation-only trials (bench.training.trained) ---------------------------------------------------
    reuse_training: bool = role(BOOKKEEPING, False, help=(
        "adopt the final model (and, with eval_at, the same learning curve) of a finished trial with identical "
        "training fields instead of training (bench.training.trained)"))

    # ---------------------------------------------------------------------------------------------
    def replace(self, **changes) -> "RunConfig":
        return from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @cached_property
    def eval_items(self) -> tuple[tuple[str, str, int], ...]:
        """``evals`` parsed into (sampler, ":" or "@", number): SAMPLER:STEPS, or SAMPLER@NFE (model evaluations)."""
        out = []
        for item in filter(None, (s.strip() for s in self.evals.split(","))):
            sep = "@" if "@" in item else ":"
            name, found, number = item.partition(sep)
            if not found or not number.strip().isdigit() or int(number) < 1:
                raise InputError(f"evals: {item!r} is not SAMPLER:STEPS or SAMPLER@NFE (e.g. ddim:50, heun@35)")
            out.append((name.strip(), sep, int(number)))
        if not out:
            raise InputError("evals: at least one SAMPLER:STEPS is needed")
        return tuple(out)

    @cached_property
    def evaluations(self) -> tuple[tuple[str, int], ...]:
        """``evals`` as (sampler, steps) pairs (parsed once per config); SAMPLER@NFE becomes the step count
        that makes NFE model evaluations on this config's process (``Sampler.steps_for_nfe``)."""
        if all(sep == ":" for _, sep, _ in self.eval_items):
            return tuple((name, n) for name, _, n in self.eval_items)
        diffusion = build_process(self).diffusion
        return tuple((name, n) if sep == ":" else (name, SAMPLERS.get(name).steps_for_nfe(n, diffusion, sampler_options(name, self)))
                     for name, sep, n in self.eval_items)

    @cached_property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.metrics.split(",") if m.strip())

    @cached_property
    def curve_metric_names(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.curve_metrics.split(",") if m.strip()) or self.metric_names

    @cached_property
    def curve_steps(self) -> tuple[int, ...]:
        """``eval_at`` as training steps in 1..train_steps-1, ascending: a fraction f in (0, 1) is
        round(f * train_steps), an integer is a step count (the final evaluation is always made)."""
        steps = set()
        for item in filter(None, (s.strip() for s in self.eval_at.split(","))):
            try:
                v = float(item)
            except ValueError:
                raise InputError(f"eval_at: {item!r} is neither a fraction of train_steps nor a step count") from None
            step = round(v * self.train_steps) if 0 < v < 1 else int(v) if v.is_integer() else -1
            if not 1 <= step < self.train_steps:
                raise InputError(f"eval_at: {item!r} is not a fraction in (0, 1) or a step in 1..{self.train_steps - 1}")
            steps.add(step)
        return tuple(sorted(steps))

    @property
    def image_seed0(self) -> int:
        """Image i of an evaluation starts from generator seed image_seed0 + i (``image_seeds``)."""
        return IMAGE_SEEDS[self.image_seeds](self)

    def schedule_kwargs(self) -> dict[str, Any]:
        return self._set_params(schedule_params(self.schedule))

    def corruption_kwargs(self) -> dict[str, Any]:
        return self._set_params(corruption_params(self.corruption)) if self.corruption in CORRUPTIONS else {}

    def noise_kwargs(self) -> dict[str, Any]:
        return self._set_params(noise_params(self.noise))

    def weighting_kwargs(self) -> dict[str, Any]:
        return self._set_params(_weighting_params(self.weighting))

    def density_kwargs(self) -> dict[str, Any]:
        """Every density parameter that is set (``make_density`` refuses those of another density)."""
        return self._set_params(DENSITY_PARAMS)

    def _set_params(self, names) -> dict[str, Any]:
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def canonical(self) -> "RunConfig":
        """The same trial with the parameters that do not apply to its schedule / noise set to None,
        so that e.g. gaussian x theta_0 in {0.001, 0.01} is one trial, not two identical ones.
        Names that are not registered are left alone (validation reports them)."""
        if self.schedule not in SCHEDULES or self.noise not in NOISES or self.corruption not in CORRUPTIONS:
            return self
        every = set(COMPONENT_PARAMS)
        keep = set(schedule_params(self.schedule)) | set(noise_params(self.noise)) | set(_weighting_params(self.weighting))
        keep |= set(corruption_params(self.corruption))
        drop = {k: None for k in sorted(every - keep) if getattr(self, k) is not None}
        drop |= self._unread_optim_params()
        return dataclasses.replace(self, **drop) if drop else self

    def _unread_optim_params(self) -> dict[str, Any]:
        """The optimisation fields the trial's learning-rate schedule and weight average do not read, at
        their defaults (ema_decay under the power EMA, lr_ref_steps under constant, ...)."""
        if self.lr_schedule not in LR_SCHEDULES or self.ema not in EMAS:
            return {}
        read = set(LR_SCHEDULES.get(self.lr_schedule).params) | set(EMAS.get(self.ema).params)
        defaults = {f.name: f.default for f in fields(RunConfig)}
        return {k: defaults[k] for k in OPTIM_PARAMS if k not in read and getattr(self, k) != defaults[k]}

    def schedule_label(self) -> str:
        """The schedule with its parameters, e.g. ``sigmoid(tau=0.5)+zt``."""
        return f"{_fmt(self.schedule, self.schedule_kwargs())}{'+zt' if self.zero_terminal_snr else ''}"

    def process_label(self) -> str:
        """The forward process: schedule[params] / noise[params] [/ corruption[params]]; a corruption
        that uses neither the beta schedule nor the noise (cold_blur) is itself with its T."""
        if self.corruption in CORRUPTIONS and not CORRUPTIONS.get(self.corruption).uses_schedule:
            return f"{_fmt(self.corruption, {**self.corruption_kwargs(), 'T': self.timesteps})}"
        corruption = ""  # "none" adds nothing to the label (the first release's labels stay as they were)
        if self.corruption != "none":
            corruption = f" / {_fmt(self.corruption, self.corruption_kwargs())}"
        return f"{self.schedule_label()} / {_fmt(self.noise, self.noise_kwargs())}{corruption}"

    def arm(self) -> str:
        """Short label of the arm: the forward process (``process_label``) [/ prediction, weighting]; on
        rf and edm SD3 Table 1's names (``rf/lognorm(0.00,1.00)``, ``edm(-1.20,1.20)``); then whatever of
        the density, shift and noise-side knobs is not the default (the first release's labels stay as
        they were)."""
        if self.path not in PATHS or PATHS.get(self.path).discrete:
            objective = ""
            if (self.prediction, self.weighting) != ("eps", "none"):
                objective = f" / {self.prediction}, {_fmt(self.weighting, self.weighting_kwargs())}"
            density = self._density_label()
            head = f"{self.process_label()}{objective}{f' / {density}' if density else ''}"
        else:
            head = self._path_label()
        return head + "".join(f" / {part}" for part in self._knob_labels())

    def _density_label(self) -> str:
        return self._density_labels()[0]

    def _density_labels(self) -> tuple[str, str]:
        """(label, parameters alone) of the density; its name when it cannot be built (validation says why)."""
        if self.t_density not in DENSITIES:
            return self.t_density, ""
        try:
            density = make_density(self.t_density, **self.density_kwargs())
        except InputError:
            return self.t_density, ""
        return density.label(), density.params_label()

    def _path_label(self) -> str:
        """rf[/density] [/ weighting] or edm(P_mean,P_std) [/ weighting] (SD3 Table 1's names)."""
        path = PATHS.get(self.path)()
        head = path.arm_label(self.t_density, *self._density_labels())
        if self.weighting != path.natural_weighting:
            head += f" / {_fmt(self.weighting, self.weighting_kwargs())}"
        return head

    def _knob_labels(self) -> list[str]:
        parts = [f"shift {self.train_shift:g}"] if self.train_shift != 1.0 else []
        parts += [f"ip {self.input_perturbation:g}"] if self.input_perturbation else []
        parts += ["immiscible"] if self.immiscible else []
        parts += [f"offset {self.offset_noise:g}"] if self.offset_noise else []
        parts += [f"lr {self.lr_schedule}" + (f"({self.lr_ref_steps})" if self.lr_ref_steps else "")] \
            if self.lr_schedule != "constant" else []
        parts += [f"ema {self.ema}({self.ema_std:g})"] if self.ema != "fixed" else []
        return parts


def _fmt(name: str, kw: dict[str, Any]) -> str:
    return name + (f"({', '.join(f'{k}={v:g}' for k, v in kw.items())})" if kw else "")


IMAGE_SEEDS = {  # image_seeds -> the first image's seed
    "shared": lambda cfg: cfg.sample_seed,
    # a 40-bit seed from (sample_seed, seed): far apart for different training seeds (n < 2**20 images each)
    "per_seed": lambda cfg: int(np.random.SeedSequence([cfg.sample_seed, cfg.seed]).generate_state(1, np.uint64)[0] >> 24) << 20,
}


def _weighting_params(name: str) -> tuple[str, ...]:
    """The weighting's parameter fields; none for a name that is not registered (validation says so)."""
    return weighting_params(name) if name in WEIGHTINGS else ()


# Every component parameter field (schedules, noises, weightings): None unless the trial's component takes it.
COMPONENT_PARAMS = ("beta_start", "beta_end", "cosine_s", "tau", "sigmoid_start", "sigmoid_end", "sigma_min",
                    "sigma_max", "laplace_mu", "laplace_b", "theta_0", "min_snr_gamma", "p2_k", "p2_gamma",
                    "sigma_blur_max", "weight_bias")
# The fields of the learning-rate schedules and weight averages (bench.optim): reset by ``canonical`` where unread.
OPTIM_PARAMS = ("lr_ref_steps", "ema_decay", "ema_std")
# The time densities' parameters: never dropped by ``canonical`` (one set without its density is bad input).
DENSITY_PARAMS = all_density_params()

# The fields of the first release (commit 2508968), hashed as they were then (None included): the
# trial ids of every run made since stay valid. Never edit this tuple.
ID_FIELDS_V1 = (
    "dataset", "data_root", "image_size", "max_train_images", "schedule", "timesteps", "zero_terminal_snr",
    "beta_start", "beta_end", "cosine_s", "tau", "sigmoid_start", "sigmoid_end", "sigma_min", "sigma_max",
    "laplace_mu", "laplace_b", "noise", "theta_0", "model", "dropout", "train_steps", "batch_size", "lr",
    "warmup_steps", "grad_clip", "ema_decay", "loss", "checkpoint_every", "seed", "evals", "n_samples",
    "ddim_eta", "var_type", "metrics", "n_reference", "sample_seed",
)


def trial_id(cfg) -> str:
    """Stable id of a trial: sha1 of the JSON of its identity fields, first 10 hex digits.

    The identity fields are ``ID_FIELDS_V1`` plus every later field whose value is not its default
    (``cfg`` may be any dataclass with RunConfig's fields and more: the tests add one)."""
    values = dataclasses.asdict(cfg)
    identity = {f.name: values[f.name] for f in fields(cfg)
                if f.name in ID_FIELDS_V1 or values[f.name] != f.default}
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def undeclared_roles(cls: type = RunConfig) -> list[str]:
    """Fields of ``cls`` declared without ``role(...)`` (tests/test_config.py requires none)."""
    return [f.name for f in fields(cls) if f.metadata.get("role") not in ROLES]


def fields_with(*roles: str) -> frozenset[str]:
    """The RunConfig fields whose declared role is one of ``roles``."""
    return frozenset(f.name for f in fields(RunConfig) if f.metadata.get("role") in roles)


#: fields a trial's name leaves out (declared with ``label=False``)
NOT_IN_LABEL = frozenset(f.name for f in fields(RunConfig) if not f.metadata.get("label", True))


class ForwardProcess(NamedTuple):
    """What a config's forward process is made of: the beta schedule's float64 betas, the diffusion
    (coefficients, objective, posterior; the ``Diffusion`` subclass of the config's corruption, which
    the trainer and the samplers call through the one interface, ``bench.process.corruptions``) and the noise
    type bound to its alpha_bar."""

    betas: torch.Tensor
    diffusion: Diffusion
    noise: Noise


def build_process(cfg: RunConfig, data: Optional[torch.Tensor] = None) -> ForwardProcess:
    """The one builder from a config to the forward process (validation, trials, ``bench sample``
    and perf all call it). Raises InputError for anything that cannot be built, including a
    corruption with a prediction target, weighting or noise type it cannot take, and an evaluation
    whose sampler cannot sample the process (ddpm/ddim under cold_blur).

    ``data``: the training images [N, C, H, W], for a corruption whose generation starts from their
    statistics (``diffusion.needs_data``: cold_blur's channel-mean mixture); validation passes none."""
    path = check_formulation(cfg)
    density = make_density(cfg.t_density, **cfg.density_kwargs())
    if path.discrete:
        betas = make_betas(cfg.schedule, cfg.timesteps, cfg.zero_terminal_snr, **cfg.schedule_kwargs())
        betas = shift_schedule(betas, cfg.train_shift)
        diffusion = make_process(cfg.corruption, betas, cfg.prediction, cfg.weighting, cfg.weighting_kwargs(), cfg.noise,
                                 **cfg.corruption_kwargs())
        diffusion.density = None if density.integer_on_vp else density
    else:
        diffusion = PathDiffusion(path, cfg.prediction, cfg.weighting, cfg.weighting_kwargs(), density, cfg.train_shift)
        betas = None  # a continuous path has no beta schedule
    for sampler, _, _ in cfg.eval_items:
        SAMPLERS.get(sampler).check_process(diffusion)
    if data is not None and diffusion.needs_data:
        diffusion.fit_start(data)
    return ForwardProcess(betas, diffusion, make_noise(cfg.noise, diffusion.alpha_bar, **cfg.noise_kwargs()))


#: the fields of the beta schedule: they mean nothing on a continuous path (rf, edm)
SCHEDULE_FIELDS = ("schedule", "timesteps", "zero_terminal_snr",
                   *dict.fromkeys(k for name in SCHEDULES.names() for k in schedule_params(name)))
#: the formulation fields that act through the noise and the schedule (none of them reaches cold_blur's x_t = D(x_0, t))
NOISE_SIDE = {"input_perturbation": 0.0, "immiscible": False, "offset_noise": 0.0, "train_shift": 1.0, "t_density": "uniform"}


def _check_knobs_have_noise(cfg: RunConfig) -> None:
    """A knob that acts on eps or the schedule is refused on a corruption that uses neither (cold_blur):
    it would change the trial's id and label and nothing it computes."""
    if cfg.corruption not in CORRUPTIONS or CORRUPTIONS.get(cfg.corruption).uses_schedule:
        return
    stray = [k for k, off in NOISE_SIDE.items() if getattr(cfg, k) != off]
    if stray:
        raise InputError(f"{', '.join(stray)} set with corruption {cfg.corruption}, whose x_t = D(x_0, t) uses no noise and no "
                         f"schedule: they would change nothing")


def check_formulation(cfg: RunConfig):
    """The path of ``cfg`` after checking what DESIGN.md section 6 makes bad input: a target the path does not
    take (flow on vp), beta-schedule fields or a corruption on a continuous path, a time-dependent noise
    type there, a shift < 1, a sampling shift on vp other than the training shift, negative knobs."""
    path = PATHS.get(cfg.path)()
    if cfg.prediction not in path.predictions:
        raise InputError(f"prediction {cfg.prediction} on path {cfg.path}: path {cfg.path} takes {', '.join(path.predictions)}"
                         f" (rf: flow u = eps - x_0; edm: x0 through Karras' preconditioning)")
    check_shift("train_shift", cfg.train_shift)
    check_shift("sample_shift", cfg.sample_shift)
    for k in ("input_perturbation", "offset_noise"):
        if not (math.isfinite(getattr(cfg, k)) and getattr(cfg, k) >= 0):
            raise InputError(f"{k} must be a finite number >= 0 (0 = off), got {getattr(cfg, k)}")
    if cfg.immiscible and cfg.noise in NOISES and not NOISES.get(cfg.noise).time_invariant:
        raise InputError(f"immiscible with noise {cfg.noise}: the assignment gives an image noise drawn for another "
                         f"example's timestep, and {cfg.noise}'s law depends on the timestep")
    _check_knobs_have_noise(cfg)
    if path.discrete:
        if cfg.sample_shift != cfg.train_shift:
            raise InputError(f"sample_shift={cfg.sample_shift:g} != train_shift={cfg.train_shift:g} on path vp: the shift "
                             f"shifts the discrete schedule itself, which has no noise levels between its T steps")
        return path
    defaults = {f.name: f.default for f in fields(RunConfig)}
    stray = [k for k in SCHEDULE_FIELDS if getattr(cfg, k) != defaults[k]]
    if stray:
        raise InputError(f"{', '.join(stray)} set on path {cfg.path}: the beta-schedule fields mean nothing on a continuous "
                         f"path (its formula is fixed; bench ls paths)")
    if cfg.corruption != "none":
        raise InputError(f"corruption {cfg.corruption} on path {cfg.path}: corruptions are defined on the vp chain only")
    if cfg.noise in NOISES and not NOISES.get(cfg.noise).time_invariant:
        invariant = ", ".join(n for n, c in NOISES.items() if c.time_invariant)
        raise InputError(f"noise {cfg.noise} depends on the vp timestep (alpha_bar_t), which path {cfg.path} does not have: "
                         f"use {invariant}")
    return path


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
NONNEGATIVE_INT = ("image_size", "max_train_images", "warmup_steps", "seed", "sample_seed", "n_reference", "lr_ref_steps")
POSITIVE_INT = ("timesteps", "train_steps", "batch_size", "checkpoint_every", "n_samples")
LOSSES = ("mse", "l1")
VAR_TYPES = ("small", "large")


def _base_type(tp):
    """float for Optional[float], else tp itself."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def coerce(key: str, value: Any) -> Any:
    """``value`` (from TOML or a ``--set`` string) as field ``key``'s type, or InputError."""
    if key not in FIELD_TYPES:
        raise InputError(f"unknown config key {key!r}: {did_you_mean(key, FIELD_TYPES, 0.6)}"
                         "run `python -m bench ls config` for the fields")
    tp = FIELD_TYPES[key]
    base = _base_type(tp)
    optional = base is not tp
    if isinstance(value, str):
        value = _parse_str(key, value, base, optional)
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise InputError(f"{key} must be {base.__name__}, got {type(value).__name__} {value!r}")
    if base is float and not math.isfinite(value) and not (key in UNBOUNDED and value == math.inf):
        raise InputError(f"{key} must be a finite number, got {value}" + (" (or inf)" if key in UNBOUNDED else ""))
    return value


#: float fields whose value may be +inf (an upper bound that bounds nothing: heun's S_tmax, EDM's default)
UNBOUNDED = ("s_tmax", "solver_sigma_max")


def _parse_str(key: str, text: str, base, optional: bool):
    if base is str:
        return text
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.strip().lower()]
        return base(text)
    except (ValueError, KeyError):
        raise InputError(f"{key} must be {base.__name__}, got {text!r}") from None


def from_dict(d: dict[str, Any]) -> RunConfig:
    """RunConfig from a mapping, every value type-checked (extra keys are an error)."""
    return RunConfig(**{k: coerce(k, v) for k, v in d.items()})


def config_from_row(row: dict[str, Any], cls=None) -> RunConfig:
    """The config of a results row (a rows.csv record read by pandas): its RunConfig columns with
    pandas' types undone (an empty cell -> the field's default: None for a parameter, "" for a text
    field that defaults to "", the default of a field the row predates; numpy scalars -> Python).
    Columns of fields a run predates are absent and take their defaults. ``cls`` defaults to RunConfig."""
    cls = cls or RunConfig
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in row:
            continue
        v = row[f.name]
        v = v.item() if hasattr(v, "item") else v
        base = _base_type(hints[f.name])
        if isinstance(v, float) and math.isnan(v):
            # an empty cell: a field this row predates (a run resumed across a release), or an empty
            # text / unset parameter; either way the field's default ("" for the text fields whose default is "")
            v = f.default
        elif base is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        elif base is str and not isinstance(v, str):
            v = str(v)
        values[f.name] = v
    return cls(**{k: coerce(k, v) if k in FIELD_TYPES else v for k, v in values.items()})


def fill_defaults(rows):
    """``config_from_row``'s rule for a whole rows.csv table (a pandas DataFrame): an empty cell of a
    config column whose default is not None takes that default, so rows written before a field existed
    (a run resumed across a release) read as the trials they were instead of differing from later rows
    in that column; an unset parameter (default None) stays empty."""
    rows = rows.copy()
    for f in fields(RunConfig):
        if f.name in rows.columns and f.default is not None and rows[f.name].isna().any():
            rows[f.name] = rows[f.name].astype(object).where(rows[f.name].notna(), f.default).infer_objects()
    return rows


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["schedule=cosine", "train_steps=500"]`` -> typed dict (for ``--set``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = coerce(key.strip(), value.strip())
    return out


def validate(cfg: RunConfig) -> None:
    """Check everything that can be checked before a trial starts: ranges, names in every registry,
    and that the forward process can actually be built with the given parameters. The driver calls
    it once per trial, before any starts."""
    for k in POSITIVE_INT:
        if getattr(cfg, k) < 1:
            raise InputError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    for k in NONNEGATIVE_INT:
        if getattr(cfg, k) < 0:
            raise InputError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    for k in ("lr", "grad_clip"):
        if getattr(cfg, k) <= 0:
            raise InputError(f"{k} must be > 0, got {getattr(cfg, k)}")
    if not 0 <= cfg.dropout < 1 or not 0 <= cfg.ema_decay < 1 or cfg.ddim_eta < 0:
        raise InputError("dropout and ema_decay must lie in [0, 1) and ddim_eta must be >= 0")
    if cfg.image_seeds not in IMAGE_SEEDS:
        raise InputError(f"image_seeds must be one of {', '.join(IMAGE_SEEDS)}, got {cfg.image_seeds!r}")
    cfg.curve_steps  # noqa: B018 - parses eval_at (InputError when malformed)
    for name in cfg.curve_metric_names:
        METRICS.get(name)
    if cfg.loss not in LOSSES or cfg.var_type not in VAR_TYPES:
        raise InputError(f"loss must be {'|'.join(LOSSES)} and var_type {'|'.join(VAR_TYPES)}, "
                         f"got {cfg.loss!r}, {cfg.var_type!r}")
    for registry, names in ((DATASETS, [cfg.dataset]), (MODELS, [cfg.model]), (METRICS, cfg.metric_names),
                            (SAMPLERS, [s for s, _, _ in cfg.eval_items]), (PATHS, [cfg.path]), (DENSITIES, [cfg.t_density])):
        for name in names:
            registry.get(name)
    lr_check(cfg)
    ema_check(cfg)
    check_options({k: getattr(cfg, k) for k in OPTION_CHECKS})  # every sampler option, read or not by these evals
    diffusion = build_process(cfg).diffusion
    for sampler, steps in cfg.evaluations:
        SAMPLERS.get(sampler).check_call(diffusion, min(steps, diffusion.T), sampler_options(sampler, cfg))
        if steps > cfg.timesteps:
            raise InputError(f"evals: {sampler}:{steps} asks for more steps than timesteps={cfg.timesteps}")
        if "skip_start" in SAMPLERS.get(sampler).options and steps > start_T(cfg.timesteps, cfg.skip_start):
            raise InputError(f"evals: {sampler}:{steps} asks for more steps than the {start_T(cfg.timesteps, cfg.skip_start)} "
                             f"timesteps left by skip_start={cfg.skip_start:g}")


def param_owners() -> dict[str, list[str]]:
    """Component parameter field -> the components that take it with their default, e.g.
    ``tau -> ["schedule sigmoid (default 1)"]``, read from the registries."""
    owners: dict[str, list[str]] = {k: [] for k in (*COMPONENT_PARAMS, *DENSITY_PARAMS)}
    kinds = (("schedule", SCHEDULES, schedule_params), ("noise", NOISES, noise_params), ("t_density", DENSITIES, density_params),
             ("weighting", WEIGHTINGS, _init_defaults(WEIGHTINGS, weighting_params)),
             ("corruption", CORRUPTIONS, _init_defaults(CORRUPTIONS, corruption_params)))
    for kind, registry, params in kinds:
        for name in registry.names():
            for field_name, default in params(name).items():
                owners[field_name].append(f"{kind} {name}" + (f" (default {default:g})" if isinstance(default, (int, float)) else ""))
    return owners


def _init_defaults(registry, names_of):
    """name -> {field: default} for components (classes) whose parameters are constructor keywords."""
    def params(name: str) -> dict[str, Any]:
        init = inspect.signature(registry.get(name).__init__).parameters
        return {k: init[k].default for k in names_of(name)}
    return params


def describe_fields() -> list[tuple[str, str, Any, str, str]]:
    """(name, type, default, role, phrase) of every field, for ``bench ls config``."""
    owners = param_owners()
    out = []
    for f in fields(RunConfig):
        phrase = f.metadata["help"] or "parameter of " + ", ".join(owners.get(f.name, [])) + "; None = the component's default"
        out.append((f.name, getattr(_base_type(FIELD_TYPES[f.name]), "__name__", str(f.type)), f.default, f.metadata["role"], phrase))
    return out
