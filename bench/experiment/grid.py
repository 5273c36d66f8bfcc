"""Grids as data: ``experiments/<name>.toml`` -> a validated list of RunConfigs.

A grid file has a ``[base]`` table of RunConfig fields, an ``[axes]`` table whose lists form the
Cartesian product (each axis is a RunConfig field), and ``[presets.<name>.base]`` /
``[presets.<name>.axes]`` overrides (``full`` is the file as written). The evaluation list is the
``evals`` field (SAMPLER:STEPS, ...) with ``n_samples`` images each.

Arms that are not a product of axes (a published model against the best combination found
elsewhere, which differ in several fields at once) are ``[[arms]]`` tables of fields, each crossed
with the axes (``[[presets.<name>.arms]]`` replaces them in a preset); a field is an arm field or an
axis, not both.

    name = "schedules"
    description = "..."
    [base]
    dataset = "mnist"
    evals = "ddim:10,ddim:50,ddpm:1000"
    [axes]
    schedule = ["linear", "cosine"]
    seed = [0, 1, 2]
    [presets.quick.base]
    train_steps = 1500
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.experiment import claims as claims_mod
from bench.experiment import reference_ranks as ranks_mod
from bench.experiment.config import COMPONENT_PARAMS, RunConfig, coerce, from_dict, param_owners, trial_id, validate
from bench.registry import InputError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@dataclass
class Grid:
    name: str
    description: str
    preset: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    notes: list[str] = field(default_factory=list)  # what the preset changed, for the report
    claims: list[claims_mod.Claim] = field(default_factory=list)  # published results the run is checked against
    arms: list[dict[str, Any]] = field(default_factory=list)  # [[arms]]: field settings, each crossed with the axes
    source: str = ""  # how to name it again on the command line: a registered name, or its file's absolute path
    reference_ranks: list[ranks_mod.ReferenceRanks] = field(default_factory=list)  # published rankings to read against

    def trials(self) -> list[RunConfig]:
        """Each arm (in file order) x the Cartesian product of the axes over the base. Parameters
        that do not apply to a trial's schedule or noise are dropped and the resulting duplicates
        removed (gaussian x three theta_0 values is one gaussian trial)."""
        keys = list(self.axes)
        unique: dict[str, RunConfig] = {}
        for arm in self.arms or [{}]:
            for combo in itertools.product(*(self.axes[k] for k in keys)) if keys else [()]:
                cfg = from_dict({**self.base, **arm, **dict(zip(keys, combo))}).canonical()
                unique.setdefault(trial_id(cfg), cfg)
        return list(unique.values())

    def varied(self) -> list[str]:
        """The fields that can differ between trials: the axes, then the arms' fields."""
        return [*self.axes, *(k for k in dict.fromkeys(k for a in self.arms for k in a) if k not in self.axes)]

    def to_toml(self) -> str:
        """The resolved grid (preset and --set applied), from which the run can be repeated."""
        lines = [f"name = {_toml(self.name)}", f"description = {_toml(self.description)}",
                 f"preset = {_toml(self.preset)}", "", "[base]"]
        lines += [f"{k} = {_toml(v)}" for k, v in self.base.items() if v is not None]
        lines += ["", "[axes]"] + [f"{k} = {_toml(v)}" for k, v in self.axes.items()]
        lines += [line for a in self.arms for line in ["", "[[arms]]", *(f"{k} = {_toml(v)}" for k, v in a.items())]]
        lines += [line for c in self.claims for line in ["", *_claim_toml(c)]]
        lines += [line for r in self.reference_ranks for line in ["", *_reference_toml(r)]]
        return "\n".join(lines) + "\n"


def _claim_toml(c: claims_mod.Claim) -> list[str]:
    """A claim as a ``[[claims]]`` table (``bench.experiment.claims``)."""
    def cell(x: dict) -> str:
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in x.items()) + "}"

    def side(cs: tuple[dict, ...]) -> str:
        return cell(cs[0]) if len(cs) == 1 else "[" + ", ".join(cell(x) for x in cs) + "]"

    lines = ["[[claims]]", f"claim = {_toml(c.claim)}", f"source = {_toml(c.source)}", f"metric = {_toml(c.metric)}",
             f"better = {side(c.better)}", f"than = {side(c.than)}"]
    lines += [f"for_each = {_toml(c.for_each)}"] if c.for_each else []
    lines += [f"margin = {_toml(c.margin)}"] if c.margin is not None else []
    return lines + ([f"setting = {_toml(c.setting)}"] if c.setting else [])


def _reference_toml(r: ranks_mod.ReferenceRanks) -> list[str]:
    """Published ranks as a ``[[reference_ranks]]`` table (``bench.experiment.reference_ranks``)."""
    ranks = "{" + ", ".join(f"{_toml_str(k)} = {_toml(v)}" for k, v in r.ranks) + "}"
    lines = ["[[reference_ranks]]", f"source = {_toml(r.source)}", f"over = {_toml(list(r.over))}", f"ranks = {ranks}"]
    return lines + ([f"setting = {_toml(r.setting)}"] if r.setting else [])


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_str(s: str) -> str:
    """A TOML basic string: JSON's escapes, and every character beyond ASCII (and DEL, which TOML
    forbids raw) as \\uXXXX or, beyond the Basic Multilingual Plane, \\UXXXXXXXX (JSON would write a
    surrogate pair there, which TOML rejects). For BMP characters this is exactly json.dumps's output,
    so grid.toml files written before keep their bytes."""
    return "".join(c if ord(c) < 0x7F else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
                   for c in json.dumps(s, ensure_ascii=False))


def grid_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))


def find_grid(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise InputError(f"grid file {path} does not exist")
        return path
    candidate = EXPERIMENTS / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise InputError(f"unknown grid {name_or_path!r}: {did_you_mean(name_or_path, grid_names())}known: {', '.join(grid_names())}")
    return candidate


def preset_names(name_or_path: str) -> list[str]:
    """The presets a grid file defines, ``full`` (the file as written) first."""
    return ["full", *read_toml(find_grid(name_or_path)).get("presets", {})]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:  # the message carries "(at line L, column C)"
        raise InputError(f"{path}: malformed TOML: {e}") from None


def load_grid(name_or_path: str, preset: str = "full", overrides: dict[str, Any] | None = None) -> Grid:
    """Read a grid, apply a preset and ``--set`` overrides (typed dict); every value is type-checked.

    An override of an axis field fixes that axis to the one value."""
    path = find_grid(name_or_path)
    raw = read_toml(path)
    unknown = set(raw) - {"name", "description", "base", "axes", "arms", "presets", "preset", "claims", "reference_ranks"}
    if unknown:
        raise InputError(f"{path}: unknown top-level keys {sorted(unknown)} (expected name, description, base, axes, "
                         f"arms, presets, claims, reference_ranks)")
    presets = raw.get("presets", {})
    if preset != "full" and preset not in presets:  # name only the presets this grid has (a custom grid may lack smoke)
        raise InputError(f"{path}: grid has no [presets.{preset}]; its presets: {', '.join(['full', *presets])}")
    base = {k: coerce(k, v) for k, v in raw.get("base", {}).items()}
    axes = {k: _axis(path, k, v) for k, v in raw.get("axes", {}).items()}
    arms = _arms(path, raw.get("arms"), "[[arms]]")
    notes: list[str] = []
    if preset != "full":
        p = presets[preset]
        bad = set(p) - {"base", "axes", "arms", "note"}
        if bad:
            raise InputError(f"{path}: [presets.{preset}] has unknown keys {sorted(bad)} (expected base, axes, arms, note)")
        if "arms" in p:
            arms = _arms(path, p["arms"], f"[[presets.{preset}.arms]]")
            both = sorted(set(p.get("base", {})) & {k for a in arms for k in a})
            if both:
                raise InputError(f"{path}: [presets.{preset}] sets {both[0]} both in its base and in its arms; "
                                 f"make it one or the other")
        for k, v in p.get("base", {}).items():  # like --set: a preset value fixes an axis or arm field of the file
            axes.pop(k, None)
            arms = _without(arms, k)
            base[k] = coerce(k, v)
        axes.update({k: _axis(path, k, v) for k, v in p.get("axes", {}).items()})
        notes += [f"preset {preset} sets the arms to {arms}"] if "arms" in p else []
        notes += [p["note"]] if "note" in p else []
        notes += [f"preset {preset} sets {k} = {v}" for k, v in p.get("base", {}).items()]
        notes += [f"preset {preset} sets axis {k} = {v}" for k, v in p.get("axes", {}).items()]
    both = sorted({k for a in arms for k in a} & set(axes))
    if both:
        raise InputError(f"{path}: {both[0]} is both an axis and a field of [[arms]]; make it one or the other")
    for k in list(base):
        if k in axes:  # in the file itself an axis wins over a [base] value of the same field (an arm
            del base[k]  # field over [base] in the arms that set it: Grid.trials)
    for k, v in (overrides or {}).items():  # --set fixes an axis or arm field to one value
        axes.pop(k, None)
        arms = _without(arms, k)
        base[k] = v
        notes.append(f"--set {k}={v}")
    source = name_or_path if path == EXPERIMENTS / f"{name_or_path}.toml" else str(path.resolve())
    return Grid(raw.get("name", path.stem), raw.get("description", ""), preset, base, axes, notes,
                claims_mod.parse_claims(raw.get("claims"), str(path)), arms, source,
                ranks_mod.parse(raw.get("reference_ranks"), str(path)))


def grid_of_record(g: dict[str, Any]) -> Grid:
    """The Grid a run's grid.toml (as a dict) describes, without claims."""
    return Grid(g["name"], g.get("description", ""), g.get("preset", "full"), g.get("base", {}), g.get("axes", {}),
                arms=g.get("arms", []))


def _arms(path: Path, arms: Any, where: str) -> list[dict[str, Any]]:
    """``where`` ([[arms]] or a preset's): a non-empty list of non-empty tables of RunConfig fields (type-checked)."""
    if arms is None:
        return []
    if not isinstance(arms, list) or not arms or not all(isinstance(a, dict) and a for a in arms):
        raise InputError(f"{path}: {where} must be one or more tables of fields, e.g. {where} schedule = \"linear\"")
    out = [{k: coerce(k, v) for k, v in a.items()} for a in arms]
    for i, a in enumerate(out):
        if a in out[:i]:  # would be merged into one arm in silence
            raise InputError(f"{path}: {where} number {i + 1} repeats number {out.index(a) + 1} ({a}): remove one")
    return out


def _without(arms: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The arms with field ``key`` fixed elsewhere (a preset's base, --set): arms left empty or equal to
    an earlier one are dropped, so grid.toml never holds an empty [[arms]] table."""
    out: list[dict[str, Any]] = []
    for a in ({f: x for f, x in arm.items() if f != key} for arm in arms):
        if a and a not in out:
            out.append(a)
    return out


def _axis(path: Path, key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise InputError(f"{path}: axis {key} must be a non-empty list, got {values!r}")
    out = [coerce(key, v) for v in values]
    repeated = [v for i, v in enumerate(out) if v in out[:i]]
    if repeated:  # would be merged into one trial in silence
        raise InputError(f"{path}: axis {key} lists {repeated[0]!r} more than once: remove the repeat")
    return out


def validate_trials(trials: list[RunConfig]) -> None:
    """Validate every trial before any starts (names, ranges, schedule/noise construction)."""
    for i, cfg in enumerate(trials):
        try:
            validate(cfg)
        except InputError as e:
            raise InputError(f"trial {i} (schedule={cfg.schedule}, noise={cfg.noise}, dataset={cfg.dataset}, "
                             f"seed={cfg.seed}): {e}") from None


def check_params_apply(grid: Grid, trials: list[RunConfig], overrides: dict[str, Any] | None = None) -> None:
    """InputError when a component parameter set by ``--set`` (``overrides``), or anywhere in a grid
    file's full preset, applies to none of the trials, e.g. ``tau`` with only linear schedules.
    ``Grid.trials`` drops parameters a trial's components do not take (so that gaussian x three
    theta_0 is one trial), which would otherwise turn a typo'd experiment into a silent run of the
    defaults. The smaller presets inherit the full base and narrow its axes on purpose, so there
    only ``--set`` is checked."""
    def named(mapping):
        return {k for k, v in mapping.items() if k in COMPONENT_PARAMS and any(x is not None for x in (v if isinstance(v, list) else [v]))}

    set_here = named(overrides or {})
    if grid.preset == "full":
        set_here |= named(grid.base) | named(grid.axes) | {k for a in grid.arms for k in named(a)}
    used = {k for cfg in trials for k in COMPONENT_PARAMS if getattr(cfg, k) is not None}
    unused = sorted(set_here - used)
    if unused:
        k = unused[0]
        takers = ", ".join(o.split(" (")[0] for o in param_owners()[k])
        components = sorted({f"{cfg.schedule}/{cfg.noise}/{cfg.corruption}/{cfg.weighting}" for cfg in trials})
        raise InputError(f"{k} is set but applies to no trial of grid {grid.name!r}: it is a parameter of {takers}; "
                         f"the trials' schedule/noise/corruption/weighting are {', '.join(components[:4])}"
                         + (" ..." if len(components) > 4 else ""))
