"""What an arm is called: one rule for the progress lines, the report's tables and a grid's published rankings
(``[[reference_ranks]]``, whose arms are named as the report names them).

An arm's label is ``RunConfig.arm()`` (schedule / noise, or SD3's name of a path, density and weighting), with
``[k=v, ...]`` for any other field that varies within an (arm, dataset) pair apart from the seed (``label_fields``);
in a formulation run the plain vp arms take SD3 Table 1's names (``sd3_names``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from bench.experiment.config import NOT_IN_LABEL, RunConfig, trial_id

#: SD3 Table 1's short names of the vp schedules (Esser et al. 2024: eps/linear, v/cos). SD3's "linear" is
#: LDM-Linear (sec. 3.1: "LDM-Linear ... (eps/linear)"; Rombach et al. 2022), Stable Diffusion's betas linear in
#: sqrt space from 0.00085 to 0.012: this suite's ``scaled_linear``. DDPM's linear betas (1e-4 to 0.02, ``linear``)
#: are another schedule (alpha_bar_T 4e-5 against 4.7e-3) and say so: ``ddpm-linear``.
SD3_SCHEDULES = {"scaled_linear": "linear", "linear": "ddpm-linear", "cosine": "cos"}


def sd3_names(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In a run whose arms differ in ``path`` (a formulation run), each plain vp arm (its schedule's default
    parameters, Gaussian noise, no weighting, uniform time, nothing else set: its arm label is the plain
    config's) is named as SD3 Table 1 names it, target/schedule: ``eps/linear`` (scaled_linear), ``v/cos``, and
    DDPM's linear betas ``eps/ddpm-linear`` (``SD3_SCHEDULES``). rf and edm arms
    carry SD3's names already (``RunConfig.arm``); every other run keeps its labels."""
    if len({r.get("path", "vp") for r in records}) < 2:
        return records
    plain: dict[tuple[str, str], str] = {}  # (schedule, prediction) -> the plain config's arm: one per pair, not per row
    out = []
    for r in records:
        short = SD3_SCHEDULES.get(str(r.get("schedule")))
        key = (str(r.get("schedule")), str(r.get("prediction")))
        if r.get("path", "vp") == "vp" and short and key[1] in ("eps", "x0", "v") and key not in plain:
            plain[key] = RunConfig(path="vp", schedule=key[0], prediction=key[1]).arm()
        named = r.get("path", "vp") == "vp" and short and plain.get(key) == r["arm"]
        out.append({**r, "arm": f"{r['prediction']}/{short}"} if named else r)
    return out


def label_fields(records: list[dict[str, Any]]) -> list[str]:
    """The one rule for what an arm's label names besides the arm: the RunConfig fields (not
    ``NOT_IN_LABEL``) whose value differs between records of the same arm and dataset, e.g. model, lr
    and batch_size in the budget grid. ``records``: configs as dicts with an ``arm`` key (a trial's
    ``asdict`` or a rows.csv record); a field a record lacks counts as one more value."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["arm"], r["dataset"]), []).append(r)
    return [f.name for f in fields(RunConfig) if f.name not in NOT_IN_LABEL
            and any(len({repr(r.get(f.name)) for r in g}) > 1 for g in groups.values())]


def arm_label(record: dict[str, Any], names: list[str]) -> str:
    """``arm [k=v, ...]`` over ``names`` (``label_fields``): floats as %g, "" (a field's own default, e.g. the
    path's spacing) as ``default``, the rest as text."""
    tail = ", ".join(f"{k}={record[k]:g}" if isinstance(record[k], float) else f"{k}={record[k] if record[k] != '' else 'default'}"
                     for k in names)
    return f"{record['arm']} [{tail}]" if names else str(record["arm"])


def trial_labels(cfgs: list) -> dict[str, str]:
    """The progress lines' name of each trial, by trial_id: ``arm [k=v, ...] | dataset | seed s``, the
    arm as the report names it (``arm_labels_of``)."""
    records = [{**dataclasses.asdict(c), "arm": c.arm()} for c in cfgs]
    out = {trial_id(c): f"{label} | {c.dataset} | seed {c.seed}" for c, label in zip(cfgs, arm_labels_of(records))}
    if len(set(out.values())) < len(out):  # trials that differ only in NOT_IN_LABEL fields (sample_seed)
        out = {tid: f"{label} | trial {tid}" for tid, label in out.items()}
    return out


def arm_labels_of(records: list[dict[str, Any]]) -> list[str]:
    """Each record's arm label (module docstring); ``records``: configs as dicts with an ``arm`` key."""
    named = sd3_names(records)
    names = label_fields(named)
    return [arm_label(r, names) for r in named]
