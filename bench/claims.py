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

("A's advantage over B is larger than C's over D", e.g. "the gap between DDIM and DDPM shrinks
from 10 to 100 steps"), so c_s > 0 is what the source claims. The mean of c over the seeds both
sides finished gets a paired t-interval (``bench.stats.paired``; DESIGN.md section 5), and Holm's
correction runs over every contrast of the run. The verdict reads the 95% interval:

- directional claim: *agrees* when it lies above 0, *disagrees* when below 0, *not resolved* when
  it covers 0 (the report then says what it excludes);
- ``margin`` m (simple claims only; non-inferiority): with M = m |mean score of B|, *agrees* when the
  interval lies above -M (A is at most M worse than B, or better), *disagrees* when it lies below -M,
  *not resolved* otherwise; p is the paired t of c + M.

Claims are interpretation, not trials: they are kept in the run's grid.toml for the report, and a
``--resume`` may update them without touching a finished trial (``bench.rundir.check``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench import stats
from bench.registry import InputError

KEYS = ("claim", "source", "metric", "better", "than", "for_each", "margin", "setting")
REQUIRED = ("claim", "source", "metric", "better", "than")
#: the columns of a claim evaluation (``evaluate``), one row per claim x for_each value
COLUMNS = ["claim", "source", "setting", "metric", "group", "contrast", "n", "diff", "lo", "hi", "p", "p_holm",
           "margin", "margin_abs", "verdict", "problem"]
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
    from bench.config import RunConfig

    return {f.name for f in fields(RunConfig)} | {"sampler", "sample_steps"}


def parse_claims(raw: Any, where: str) -> list[Claim]:
    """``[[claims]]`` of a grid file -> Claims; InputError naming ``where`` and the claim on bad input."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise InputError(f"{where}: claims must be [[claims]] tables")
    return [_parse_one(c, f"{where}: claim {i + 1}") for i, c in enumerate(raw)]


def _parse_one(c: dict, where: str) -> Claim:
    from bench.metrics import METRICS

    unknown, missing = sorted(set(c) - set(KEYS)), [k for k in REQUIRED if k not in c]
    if unknown or missing:
        raise InputError(f"{where}: " + "; ".join(([f"unknown keys {unknown} (known: {', '.join(KEYS)})"] if unknown else [])
                                                 + ([f"missing {', '.join(missing)}"] if missing else [])))
    if c["metric"] not in METRICS:
        raise InputError(f"{where}: unknown metric {c['metric']!r}")
    better, than = _side(c["better"], f"{where}: better"), _side(c["than"], f"{where}: than")
    if len(better) != len(than):
        raise InputError(f"{where}: better and than must both be one cell or both a list of two cells")
    margin = c.get("margin")
    if margin is not None and (len(better) != 1 or not isinstance(margin, (int, float)) or not 0 < margin <= 1):
        raise InputError(f"{where}: margin must be a fraction in (0, 1] and needs single cells, got {margin!r}")
    for_each = c.get("for_each")
    if for_each is not None and for_each not in cell_keys():
        raise InputError(f"{where}: for_each {for_each!r} is not a column (a RunConfig field, sampler or sample_steps)")
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
    """The values of ``for_each`` in ``rows`` (first-seen order), or [None]."""
    if not claim.for_each:
        return [None]
    return list(dict.fromkeys(rows[claim.for_each])) if claim.for_each in rows.columns else []


def per_seed(rows: pd.DataFrame, cell: dict, metric: str) -> tuple[pd.Series, str | None]:
    """seed -> the score of ``metric`` that ``cell`` picks; a problem when a seed has several."""
    sel = select(rows, cell)
    dup = sel["seed"][sel["seed"].duplicated()]
    if len(dup):
        return pd.Series(dtype=float), (f"{cell_name(cell)} picks {int((sel['seed'] == dup.iloc[0]).sum())} "
                                        f"scores of seed {dup.iloc[0]}: name the column that tells them apart")
    vals = pd.to_numeric(sel[metric], errors="coerce") if metric in sel.columns else pd.Series(np.nan, index=sel.index)
    return pd.Series(vals.to_numpy(float), index=sel["seed"].astype(int).to_numpy()), None


def check(claims: list[Claim], trials: list, where: str, strict: bool = True) -> list[Claim]:
    """The claims measurable on ``trials`` x their evaluations. InputError before any work when a cell
    picks more than one score per seed (the claim is ambiguous), and, with ``strict`` (the full grid
    as written, where a typo must not pass silently), when a claim's metric is not scored or a cell
    picks nothing. Without ``strict`` (the smaller presets narrow the evaluations on purpose) such a
    claim is left out of the run."""
    if not claims:
        return []
    rows, kept = planned_rows(trials), []
    for i, c in enumerate(claims):
        problem = None if any(c.metric in str(m).split(",") for m in rows["metrics"]) else f"reads {c.metric}, which no trial scores"
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
        kept += [] if problem else [c]
    return kept


def planned_rows(trials: list) -> pd.DataFrame:
    """One row per trial x evaluation, as rows.csv will have them (config fields, sampler, sample_steps)."""
    from dataclasses import asdict

    return pd.DataFrame([{**asdict(cfg), "sampler": s, "sample_steps": n} for cfg in trials for s, n in cfg.evaluations])


# --- evaluating ------------------------------------------------------------------------------------
def evaluate(claims: list[Claim], rows: pd.DataFrame, higher_is_better: Callable[[str], bool]) -> pd.DataFrame:
    """One row per claim x for_each value, with ``COLUMNS``; ``rows``: the run's final rows (status
    ok). Holm's correction over every contrast with a p-value."""
    out = [_one(c, g, rows, higher_is_better(c.metric)) for c in claims for g in groups(c, rows)]
    table = pd.DataFrame(out, columns=COLUMNS)
    ok = table["p"].notna()
    table["p_holm"] = np.nan
    if ok.any():
        table.loc[ok, "p_holm"] = stats.holm(table.loc[ok, "p"].to_numpy(float))
    return table


def _one(c: Claim, g: Any, rows: pd.DataFrame, hib: bool) -> dict:
    sub = rows if g is None else rows[_matches(rows[c.for_each], g)]
    row = {"claim": c.claim, "source": c.source, "setting": c.setting, "metric": c.metric,
           "group": "" if g is None else f"{c.for_each} = {g}", "contrast": contrast_text(c, hib),
           "n": 0, "diff": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan, "margin": c.margin,
           "margin_abs": np.nan, "verdict": UNRESOLVED, "problem": ""}
    series = []
    for cell in c.cells:
        s, problem = per_seed(sub, cell, c.metric)
        if problem:
            return {**row, "problem": problem}
        series.append(s if hib else -s)
    wide = pd.concat(series, axis=1).dropna()
    contrast = wide[0] - wide[1] - ((wide[2] - wide[3]) if len(series) == 4 else 0.0)
    shift = 0.0
    if c.margin is not None:
        shift = c.margin * abs(float(pd.concat(series, axis=1).dropna()[1].mean()))  # M: a fraction of |B|
        row["margin_abs"] = shift
    res = stats.paired(contrast.to_numpy(float) + shift, np.zeros(len(contrast)))
    row.update(n=res.n, diff=res.mean - shift, lo=res.lo - shift, hi=res.hi - shift, p=res.p)
    if res.n < 2:
        return {**row, "problem": f"{res.n} seed(s) with every cell scored: no interval"}
    row["verdict"] = AGREES if row["lo"] > -shift else DISAGREES if row["hi"] < -shift else UNRESOLVED
    return row


def cell_name(cell: dict) -> str:
    """'ddpm:10, schedule=linear': a cell in words (sampler:steps first where both are given)."""
    rest = dict(cell)
    head = [f"{rest.pop('sampler')}:{rest.pop('sample_steps')}"] if {"sampler", "sample_steps"} <= set(cell) else []
    return ", ".join(head + [f"{k}={_value(v)}" for k, v in rest.items()])


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def contrast_text(c: Claim, hib: bool) -> str:
    """The measured quantity in the metric's own units, positive where the claim holds, e.g.
    'fd(ddpm:10) - fd(ddim:10)' (lower is better) or '[fd(ddpm:10) - fd(ddim:10)] - [fd(ddpm:100) - fd(ddim:100)]'."""
    def adv(a: dict, b: dict) -> str:
        x, y = (a, b) if hib else (b, a)
        return f"{c.metric}({cell_name(x)}) - {c.metric}({cell_name(y)})"

    if len(c.better) == 1:
        return adv(c.better[0], c.than[0])
    return f"[{adv(*c.better)}] - [{adv(*c.than)}]"


def fmt_margin(row) -> str:
    m = row["margin"]
    return "" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.0%}"
