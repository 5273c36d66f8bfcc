"""Published rankings a grid's own ranking is read against: ``[[reference_ranks]]`` in a grid file.

A claim (``bench.experiment.claims``) checks one published contrast; a paper that ranks many formulations
(SD3's Table 1) states an order, and how far a run's order agrees with it is one number over all arms:

    [[reference_ranks]]
    source = "SD3 (Esser et al. 2024), Table 1, rank averaged over 5 steps"
    over = ["euler:5"]                      # the run's settings (sampler:steps) its average rank is taken over
    ranks = {"rf" = 6.50, "v/cos" = 12.25, "eps/linear" = 4.25}  # arm label (as the report names it) = rank
    setting = "..."                         # optional: how the source's ranking differs from the run's

The report (``bench.report.reference_ranks``) puts the source's ranks beside the run's average front over
``over`` (non-dominated sorting, as the source, among the arms both rank) and gives Kendall's tau-b between them,
its 95% range over the same seed resamples as the average ranks, and a permutation p of no association. Only the
order matters: a source that ranked 61 variants and a run of 11 arms are compared on the arms they share (three
at least: ``check``).

Like claims, reference ranks are interpretation, not trials: they sit after every trial-defining line of
the run's grid.toml, and a ``--resume`` may add or correct them (``bench.experiment.rundir.trial_part``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from bench.experiment.labels import arm_labels_of
from bench.registry import InputError

KEYS = ("source", "over", "ranks", "setting")
SETTING = re.compile(r"^[a-z0-9_]+:[1-9][0-9]*$")  # sampler:steps, as the report names an evaluation


@dataclass(frozen=True)
class ReferenceRanks:
    source: str
    over: tuple[str, ...]  # settings, "sampler:steps"
    ranks: tuple[tuple[str, float], ...]  # (arm label, the source's rank), in the file's order
    setting: str = ""

    def as_dict(self) -> dict[str, float]:
        return dict(self.ranks)


def parse(raw: Any, where: str) -> list[ReferenceRanks]:
    """The ``[[reference_ranks]]`` tables of a grid file (None: none); InputError naming the first problem."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise InputError(f"{where}: reference_ranks must be [[reference_ranks]] tables")
    return [_one(r, f"{where}: [[reference_ranks]] number {i + 1}") for i, r in enumerate(raw)]


def _one(r: dict, where: str) -> ReferenceRanks:
    unknown = sorted(set(r) - set(KEYS))
    if unknown:
        raise InputError(f"{where} has unknown keys {unknown} (expected {', '.join(KEYS)})")
    missing = [k for k in ("source", "over", "ranks") if k not in r]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}")
    if not isinstance(r["source"], str) or not r["source"].strip() or not isinstance(r.get("setting", ""), str):
        raise InputError(f"{where}: source must be a non-empty string, setting a string")
    over = r["over"]
    if not isinstance(over, list) or not over or not all(isinstance(x, str) and SETTING.match(x) for x in over):
        raise InputError(f"{where}: over must be a list of settings like [\"euler:5\", \"euler:50\"], got {over!r}")
    if len(set(over)) != len(over):
        raise InputError(f"{where}: over repeats a setting: {over}")
    ranks = r["ranks"]
    ok = isinstance(ranks, dict) and len(ranks) >= 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in ranks.values())
    if not ok:
        raise InputError(f"{where}: ranks must be a table of three or more arm labels = positive ranks (an order needs "
                         f"three), e.g. {{\"rf\" = 5.67, \"v/cos\" = 9.17, \"eps/linear\" = 2.88}}")
    return ReferenceRanks(r["source"], tuple(over), tuple((str(k), float(v)) for k, v in ranks.items()),
                          r.get("setting", ""))


def check(refs: list[ReferenceRanks], trials: list, where: str, strict: bool = True,
          notes: list[str] | None = None) -> list[ReferenceRanks]:
    """The references this run can compare: every setting of ``over`` evaluated by a trial, and three or more of
    the ranked arms trained (by the labels the report gives them, ``bench.experiment.labels``). With ``strict`` (the
    full grid as written, where a typo must not pass silently) InputError before any work otherwise; without it (a
    smaller preset narrows the evaluations or arms on purpose) the reference is left out, with a line in ``notes``.
    Ranked arms the grid does not train are fine (a paper ranks more than a grid trains) and named in ``notes``."""
    have = sorted({f"{s}:{n}" for cfg in trials for s, n in cfg.evaluations})
    arms = set(arm_labels_of([{**dataclasses.asdict(c), "arm": c.arm()} for c in trials]))
    kept = []
    for i, r in enumerate(refs):
        missing = [x for x in r.over if x not in have]
        known = [lb for lb, _ in r.ranks if lb in arms]
        problem = (f"names {missing[0]}, which no trial evaluates (the trials evaluate {', '.join(have)})" if missing
                   else f"ranks {len(known)} of this grid's arms, 3 needed for an order (its arms: "
                        f"{', '.join(sorted(arms))})" if len(known) < 3 else "")
        if problem and strict:
            raise InputError(f"{where}: [[reference_ranks]] number {i + 1} ({r.source!r}) {problem}")
        if notes is not None and problem:
            notes.append(f"reference ranks {r.source!r} are not compared by this run: the table {problem}")
        elif notes is not None and len(known) < len(r.ranks):
            notes.append(f"reference ranks {r.source!r}: {', '.join(lb for lb, _ in r.ranks if lb not in arms)} "
                         f"name no arm of this run (compared on the other {len(known)})")
        kept += [] if problem else [r]
    return kept
