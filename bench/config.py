"""RunConfig: the one flat, frozen config of a trial.

A field name is a grid axis is a Ray ``param_space`` key is a results column: there is no renaming
layer anywhere. Schedule and noise parameters are fields too (``None`` = that component's default),
named as the keyword parameters of the schedule / noise functions that take them.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

from bench.registry import InputError


@dataclass(frozen=True)
class RunConfig:
    # --- data -------------------------------------------------------------------------------
    dataset: str = "mnist"
    data_root: str = ""  # "" -> $BENCH_DATA_ROOT, else ~/.cache/bench/data
    image_size: int = 0  # 0 -> the dataset's native size (mnist 28, craters 64)
    max_train_images: int = 0  # 0 -> the whole training split
    # --- forward process: schedule -------------------------------------------------------------
    schedule: str = "linear"
    timesteps: int = 1000
    zero_terminal_snr: bool = False
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    cosine_s: Optional[float] = None
    tau: Optional[float] = None
    sigmoid_start: Optional[float] = None
    sigmoid_end: Optional[float] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    laplace_mu: Optional[float] = None
    laplace_b: Optional[float] = None
    # --- forward process: noise ----------------------------------------------------------------
    noise: str = "gaussian"
    theta_0: Optional[float] = None
    # --- model ----------------------------------------------------------------------------------
    model: str = "tiny"  # a UNet size preset (bench ls models)
    dropout: float = 0.1
    # --- training -------------------------------------------------------------------------------
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss: str = "mse"  # mse | l1
    checkpoint_every: int = 500
    seed: int = 0
    # --- evaluation -----------------------------------------------------------------------------
    evals: str = "ddim:50"  # comma-separated SAMPLER:STEPS, e.g. "ddim:10,ddim:50,ddpm:1000"
    n_samples: int = 256
    ddim_eta: float = 0.0
    var_type: str = "small"  # ddpm reverse variance: small (posterior) | large (beta_t)
    metrics: str = "fid,kid"  # comma-separated metric names (bench ls metrics)
    n_reference: int = 0  # reference (training) images for the metrics; 0 -> min(train size, 10000)
    sample_seed: int = 0  # image i of every evaluation starts from seed sample_seed + i

    # ---------------------------------------------------------------------------------------------
    def replace(self, **changes) -> "RunConfig":
        return from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def eval_list(self) -> list[tuple[str, int]]:
        """``evals`` parsed into (sampler, steps) pairs."""
        out = []
        for item in filter(None, (s.strip() for s in self.evals.split(","))):
            name, sep, steps = item.partition(":")
            if not sep or not steps.strip().isdigit() or int(steps) < 1:
                raise InputError(f"evals: {item!r} is not SAMPLER:STEPS (e.g. ddim:50)")
            out.append((name.strip(), int(steps)))
        if not out:
            raise InputError("evals: at least one SAMPLER:STEPS is needed")
        return out

    def metric_list(self) -> list[str]:
        return [m.strip() for m in self.metrics.split(",") if m.strip()]

    def schedule_kwargs(self) -> dict[str, Any]:
        from bench.schedules import schedule_params

        return {k: getattr(self, k) for k in schedule_params(self.schedule) if getattr(self, k) is not None}

    def noise_kwargs(self) -> dict[str, Any]:
        from bench.noise import noise_params

        return {k: getattr(self, k) for k in noise_params(self.noise) if getattr(self, k) is not None}

    def canonical(self) -> "RunConfig":
        """The same trial with the parameters that do not apply to its schedule / noise set to None,
        so that e.g. gaussian x theta_0 in {0.001, 0.01} is one trial, not two identical ones."""
        from bench.noise import NOISES, noise_params
        from bench.schedules import SCHEDULES, schedule_params

        every = {p for n in SCHEDULES for p in schedule_params(n)} | {p for n in NOISES for p in noise_params(n)}
        keep = set(schedule_params(self.schedule)) | set(noise_params(self.noise))
        drop = {k: None for k in sorted(every - keep) if getattr(self, k) is not None}
        return dataclasses.replace(self, **drop) if drop else self

    def arm(self) -> str:
        """Short label of the forward process: schedule[params] + noise[params]."""
        def fmt(name, kw):
            return name + (f"({', '.join(f'{k}={v:g}' for k, v in kw.items())})" if kw else "")

        zt = "+zt" if self.zero_terminal_snr else ""
        return f"{fmt(self.schedule, self.schedule_kwargs())}{zt} / {fmt(self.noise, self.noise_kwargs())}"


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
NONNEGATIVE_INT = ("image_size", "max_train_images", "warmup_steps", "seed", "sample_seed", "n_reference")
POSITIVE_INT = ("timesteps", "train_steps", "batch_size", "checkpoint_every", "n_samples")


def _base_type(tp):
    """float for Optional[float], else tp itself."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def coerce(key: str, value: Any) -> Any:
    """``value`` (from TOML or a ``--set`` string) as field ``key``'s type, or InputError."""
    if key not in FIELD_TYPES:
        import difflib

        close = difflib.get_close_matches(key, FIELD_TYPES, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise InputError(f"unknown config key {key!r}{hint}; run `python -m bench ls config` for the fields")
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
    if base is float and not math.isfinite(value):
        raise InputError(f"{key} must be a finite number, got {value}")
    return value


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
    and that the schedule and noise can actually be built with the given parameters."""
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
    _validate_names(cfg)
    from bench.noise import make_noise
    from bench.schedules import make_betas
    import torch

    betas = make_betas(cfg.schedule, cfg.timesteps, cfg.zero_terminal_snr, **cfg.schedule_kwargs())
    make_noise(cfg.noise, torch.cumprod(1 - betas, 0), **cfg.noise_kwargs())
    for sampler, steps in cfg.eval_list():
        if steps > cfg.timesteps:
            raise InputError(f"evals: {sampler}:{steps} asks for more steps than timesteps={cfg.timesteps}")


def _validate_names(cfg: RunConfig) -> None:
    """Every name in cfg must be registered (imports the registries lazily)."""
    import importlib

    checks = [("bench.schedules", "SCHEDULES", [cfg.schedule]), ("bench.noise", "NOISES", [cfg.noise])]
    optional = [
        ("bench.data", "DATASETS", [cfg.dataset]),
        ("bench.unet", "MODELS", [cfg.model]),
        ("bench.sample", "SAMPLERS", [s for s, _ in cfg.eval_list()]),
        ("bench.metrics", "METRICS", cfg.metric_list()),
    ]
    for module, reg, names in checks + optional:
        registry = getattr(importlib.import_module(module), reg)
        for name in names:
            registry.get(name)
    if cfg.loss not in ("mse", "l1") or cfg.var_type not in ("small", "large"):
        raise InputError(f"loss must be mse|l1 and var_type small|large, got {cfg.loss!r}, {cfg.var_type!r}")


def describe_fields() -> list[tuple[str, str, Any]]:
    """(name, type, default) of every field, for ``bench ls config``."""
    return [(f.name, getattr(_base_type(FIELD_TYPES[f.name]), "__name__", str(f.type)), f.default) for f in fields(RunConfig)]
