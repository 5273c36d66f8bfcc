"""Published claims a grid is checked against: ``[[claims]]`` in a grid file, a verdict in its report.

A benchmark earns trust by reproducing what is already known, so a grid may state the published
results its run should reproduce, each as a paired contrast of its own cells:

    [[claims]]
    claim = "DDIM (eta = 0) samples better than DDPM at 10 steps"
    source = "Song et al. 2021 (DDIM), Table 1: CIFAR-10 FID 13.36 (eta = 0) vs 41.07 (eta = 1)"
    metric = "fd_mnist_clf"
    better = {sampler = "ddim", sample_steps = 10}
    than = {sampler = "ddpm", sample_steps = 10}
    for_each = "schedule"     # optional: one verdict per value of this column
    margin = 0.1              # optional: "not worse than, by more than 10%" (non-inferiority)
    setting = "..."           # optional: how the source's setting differs from this run's

A *cell* is a table of column = value (RunConfig fields, ``sampler``, ``sample_steps``) that picks,
for every training seed, exactly one final score of ``metric``. With g the score read in the metric's
own direction (g = value where higher is better, g = -value where lower is), the claim's contrast
per seed s is

    simple:  c_s = g(A) - g(B)                        better = A, than = B
    gap:     c_s = [g(A) - g(B)] - [g(C) - g(D)]      better = [A, B], than = [C, D]

("A's advantage over B is larger than C's over D", e.g. "ancestral sampling gains more than DDIM
from 10 to 100 steps"), so c_s > 0 is what the source claims. The mean of c over the seeds both
sides finished gets a paired t-interval (``bench.scoring.stats.paired``; DESIGN.md section 5), and Holm's
correction runs over every contrast of the run. The verdict reads the 95% interval:

- directional claim: *agrees* when it lies above 0, *disagrees* when below 0, *not resolved* when
  it covers 0 (the report then says what it excludes);
- ``margin`` m (simple claims only; non-inferiority, "A is not worse than B by more than m of B"):
  the contrast per seed is c_s = g(A) - g(B) + m |score of B|, e.g. 1.1 fd(B) - fd(A) with m = 0.1
  where lower is better, so the margin carries each seed's own B and B's spread enters the interval;
  read like a directional claim.

A verdict of *agrees* or *disagrees* also needs Holm's p below 0.05: an interval that excludes 0 only
before the correction is *not resolved*, and the report says so. Seeds without a score in every cell
are left out of the contrast and named.

Claims are interpretation, not trials: they are kept in the run's grid.toml for the report, and a
``--resume`` may update them without touching a finished trial (``bench.experiment.rundir.check``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.registry import InputError
from bench.scoring import stats

KEYS = ("claim", "source", "metric", "better", "than", "for_each", "margin", "setting")
REQUIRED = ("claim", "source", "metric", "better", "than")
#: the columns of a claim evaluation (``evaluate``), one row per claim x for_each value
COLUMNS = ["index", "claim", "source", "setting", "metric", "group", "contrast", "n", "diff", "lo", "hi", "p",
           "p_holm", "margin", "left_out", "verdict", "problem"]
AGREES, DISAGREES, UNRESOLVED = "agrees", "disagrees", "not resolved"


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    metric: str
    better: tuple[dict, ...]  # one cell, or two: [A, B]
    than: tuple[dict, ...]
    for_each: str | None = None
    margin: float | None = None
    setting: str = ""

    @property
    def cells(self) -> tuple[dict, ...]:
        return self.better + self.than


def cell_keys() -> set[str]:
    from bench.experiment.config import RunConfig

    return {f.name for f in fields(RunConfig)} | {"sampler", "sample_steps"}


def parse_claims(raw: Any, where: str) -> list[Claim]:
    """``[[claims]]`` of a grid file -> Claims; InputError naming ``where`` and the claim on bad input."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise InputError(f"{where}: claims must be [[claims]] tables")
    return [_parse_one(c, f"{where}: claim {i + 1}") for i, c in enumerate(raw)]


def _parse_one(c: dict, where: str) -> Claim:
    from bench.scoring.metrics import METRICS

    unknown, missing = sorted(set(c) - set(KEYS)), [k for k in REQUIRED if k not in c]
    if unknown or missing:
        raise InputError(f"{where}: " + "; ".join(([f"unknown keys {unknown} (known: {', '.join(KEYS)})"] if unknown else [])
                                                 + ([f"missing {', '.join(missing)}"] if missing else [])))
    if c["metric"] not in METRICS:
        raise InputError(f"{where}: unknown metric {c['metric']!r}")
    better, than = _side(c["better"], f"{where}: better"), _side(c["than"], f"{where}: than")
    if len(better) != len(than):
        raise InputError(f"{where}: better and than must both be one cell or both a list of two cells")
    if better == than or (len(better) == 2 and (better[0] == better[1] or than[0] == than[1])):  # a contrast of a cell with itself is 0
        raise InputError(f"{where}: better and than name the same cell(s) {list(better)}: the claim compares a cell with itself")
    margin = c.get("margin")
    if margin is not None and (len(better) != 1 or not isinstance(margin, (int, float)) or not 0 < margin <= 1):
        raise InputError(f"{where}: margin must be a fraction in (0, 1] and needs single cells, got {margin!r}")
    for_each = c.get("for_each")
    if for_each is not None and for_each not in cell_keys():
        raise InputError(f"{where}: for_each {for_each!r} is not a column (a RunConfig field, sampler or sample_steps)")
    if for_each is not None and any(for_each in cell for cell in better + than):
        raise InputError(f"{where}: for_each {for_each!r} is also set in a cell: a cell may not fix the column the claim runs over")
    return Claim(str(c["claim"]), str(c["source"]), str(c["metric"]), better, than, for_each,
                 None if margin is None else float(margin), str(c.get("setting", "")))


def _side(v: Any, where: str) -> tuple[dict, ...]:
    cells = (v,) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else ()
    if len(cells) not in (1, 2) or not all(isinstance(x, dict) and x for x in cells):
        raise InputError(f"{where}: a cell {{column = value, ...}} or a list of two cells, got {v!r}")
    bad = sorted({k for x in cells for k in x} - cell_keys())
    if bad:
        raise InputError(f"{where}: {bad} are not columns (RunConfig fields, sampler, sample_steps)")
    return cells


# --- selecting scores ------------------------------------------------------------------------------
def _matches(col: pd.Series, value: Any) -> pd.Series:
    """Rows whose ``col`` equals ``value``: booleans and numbers compared as such (rows.csv holds text)."""
    if isinstance(value, bool):
        return col.astype(str).str.lower().isin({"true", "1", "1.0"} if value else {"false", "0", "0.0"})
    if isinstance(value, (int, float)):
        num = pd.to_numeric(col, errors="coerce")
        return pd.Series(np.isclose(num.astype(float), float(value), rtol=1e-9, atol=0.0), index=col.index)
    return col.astype(str) == str(value)


def select(rows: pd.DataFrame, cell: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for k, v in cell.items():
        mask &= _matches(rows[k], v) if k in rows.columns else False
    return rows[mask]


def groups(claim: Claim, rows: pd.DataFrame) -> list[Any]:
    """The values of ``for_each`` in ``rows`` (first-seen order), or [None] (no for_each, or a column
    that ``rows`` lacks: the claim is then reported as not measured, never left out)."""
    if not claim.for_each or claim.for_each not in rows.columns:
        return [None]
    return list(dict.fromkeys(rows[claim.for_each]))


def per_seed(rows: pd.DataFrame, cell: dict, metric: str) -> tuple[pd.Series, str | None]:
    """seed -> the score of ``metric`` that ``cell`` picks; a problem when a seed has several."""
    sel = select(rows, cell)
    dup = sel["seed"][sel["seed"].duplicated()]
    if len(dup):
        return pd.Series(dtype=float), (f"{cell_name(cell)} picks {int((sel['seed'] == dup.iloc[0]).sum())} "
                                        f"scores of seed {dup.iloc[0]}: name the column that tells them apart")
    vals = pd.to_numeric(sel[metric], errors="coerce") if metric in sel.columns else pd.Series(np.nan, index=sel.index)
    return pd.Series(vals.to_numpy(float), index=sel["seed"].astype(int).to_numpy()), None


def check(claims: list[Claim], trials: list, where: str, strict: bool = True,
          notes: list[str] | None = None) -> list[Claim]:
    """The claims measurable on ``trials`` x their evaluations. InputError before any work when a cell
    picks more than one score per seed (the claim is ambiguous), and, with ``strict`` (the full grid
    as written, where a typo must not pass silently), when a claim's metric is not scored or a cell
    picks nothing. Without ``strict`` (the smaller presets narrow the evaluations on purpose) such a
    claim is left out of the run, with a line in ``notes`` (the dry run and the run print them)."""
    if not claims:
        return []
    rows, kept = planned_rows(trials), []
    for i, c in enumerate(claims):
        problem = None if any(c.metric in cfg.metric_names for cfg in trials) else f"reads {c.metric}, which no trial scores"
        for g in groups(c, rows) if problem is None else []:
            for cell in c.cells:
                full = {**cell, **({c.for_each: g} if c.for_each else {})}
                sel = select(rows, full)
                if not len(sel):
                    problem = problem or f"{cell_name(full)} picks no trial evaluation"
                    continue
                ambiguous = per_seed(sel.assign(**{c.metric: 0.0}), full, c.metric)[1]
                if ambiguous:
                    raise InputError(f"{where}: claim {i + 1} ({c.claim!r}): {ambiguous}")
        if problem and strict:
            raise InputError(f"{where}: claim {i + 1} ({c.claim!r}) {problem}")
        if problem and notes is not None:
            notes.append(f"claim {c.claim!r} is not measured by this run: it {problem}")
        kept += [] if problem else [c]
    return kept


def planned_rows(trials: list) -> pd.DataFrame:
    """One row per trial x evaluation, as rows.csv will have them (config fields, sampler, sample_steps)."""
    from dataclasses import asdict

    return pd.DataFrame([{**asdict(cfg), "sampler": s, "sample_steps": n} for cfg in trials for s, n in cfg.evaluations])


# --- evaluating ------------------------------------------------------------------------------------
def evaluate(claims: list[Claim], rows: pd.DataFrame, higher_is_better: Callable[[str], bool]) -> pd.DataFrame:
    """One row per claim x for_each value, with ``COLUMNS``; ``rows``: the run's final rows (the
    scores of status ok are used; groups come from every row, so a group whose trials all failed is
    reported as not measured). Holm's correction over every contrast with a p-value, and the verdicts
    read it (module docstring)."""
    out = [_one(i, c, g, rows, higher_is_better(c.metric)) for i, c in enumerate(claims) for g in groups(c, rows)]
    table = pd.DataFrame(out, columns=COLUMNS)
    ok = table["p"].notna()
    table["p_holm"] = np.nan
    if ok.any():
        table.loc[ok, "p_holm"] = stats.holm(table.loc[ok, "p"].to_numpy(float))
    measured = (table["problem"] == "") & table["lo"].notna()
    table.loc[measured, "verdict"] = [verdict(r) for _, r in table[measured].iterrows()]
    return table


def verdict(r) -> str:
    """AGREES / DISAGREES where the interval excludes 0 and Holm's p < 0.05, else UNRESOLVED."""
    if not r["p_holm"] < 0.05:
        return UNRESOLVED
    return AGREES if r["lo"] > 0 else DISAGREES if r["hi"] < 0 else UNRESOLVED


def _one(i: int, c: Claim, g: Any, rows: pd.DataFrame, hib: bool) -> dict:
    row = {"index": i, "claim": c.claim, "source": c.source, "setting": c.setting, "metric": c.metric,
           "group": "" if g is None else f"{c.for_each} = {g}", "contrast": contrast_text(c, hib),
           "n": 0, "diff": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan, "margin": c.margin, "left_out": "",
           "verdict": UNRESOLVED, "problem": ""}
    if c.for_each and c.for_each not in rows.columns:
        return {**row, "problem": f"the rows have no column {c.for_each} (for_each)"}
    sub = rows if g is None else rows[_matches(rows[c.for_each], g)]
    sub = sub[sub["status"] == "ok"] if "status" in sub.columns else sub
    values = []
    for cell in c.cells:
        s, problem = per_seed(sub, cell, c.metric)
        if problem:
            return {**row, "problem": problem}
        values.append(s)
    wide = pd.concat(values, axis=1)
    seeds = sorted({int(x) for x in sub["seed"]}) if "seed" in sub.columns else []
    complete = wide.dropna()
    row["left_out"] = ", ".join(str(x) for x in seeds if x not in set(complete.index))
    res = stats.paired(contrast(c, complete, hib).to_numpy(float), np.zeros(len(complete)))
    row.update(n=res.n, diff=res.mean, lo=res.lo, hi=res.hi, p=res.p)
    if res.n < 2:
        return {**row, "problem": f"{res.n} seed(s) with a score in every cell: no interval"}
    return row


def contrast(c: Claim, wide: pd.DataFrame, hib: bool) -> pd.Series:
    """Per seed (rows of ``wide``: one column of scores per cell, in ``c.cells`` order) the claim's
    contrast, positive where the claim holds (module docstring)."""
    g = wide if hib else -wide
    out = g[0] - g[1]
    if len(c.cells) == 4:
        out = out - (g[2] - g[3])
    if c.margin is not None:
        out = out + c.margin * wide[1].abs()
    return out


def cell_name(cell: dict) -> str:
    """'ddpm:10, schedule=linear': a cell in words (sampler:steps first where both are given)."""
    rest = dict(cell)
    head = [f"{rest.pop('sampler')}:{rest.pop('sample_steps')}"] if {"sampler", "sample_steps"} <= set(cell) else []
    return ", ".join(head + [f"{k}={_value(v)}" for k, v in rest.items()])


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def contrast_text(c: Claim, hib: bool) -> str:
    """The measured quantity in the metric's own units, positive where the claim holds, e.g.
    'fd(ddpm:10) - fd(ddim:10)' (lower is better), '[fd(ddpm:10) - fd(ddim:10)] - [fd(ddpm:100) -
    fd(ddim:100)]' (a gap), '1.1 fd(B) - fd(A)' (margin 0.1, lower is better; scores taken as positive)."""
    def name(cell: dict, factor: float = 1.0) -> str:
        return (f"{factor:g} " if factor != 1.0 else "") + f"{c.metric}({cell_name(cell)})"

    a, b = c.better[0], c.than[0]
    if c.margin is not None:
        return f"{name(a)} - {name(b, 1 - c.margin)}" if hib else f"{name(b, 1 + c.margin)} - {name(a)}"
    if len(c.better) == 1:
        return f"{name(a)} - {name(b)}" if hib else f"{name(b)} - {name(a)}"
    (a, b), (x, y) = c.better, c.than
    adv = (lambda p, q: f"{name(p)} - {name(q)}") if hib else (lambda p, q: f"{name(q)} - {name(p)}")
    return f"[{adv(a, b)}] - [{adv(x, y)}]"

