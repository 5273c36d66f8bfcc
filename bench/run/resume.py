"""What a --resume keeps: the rows of the trials that finished in an earlier session (from their work
dirs, or from a complete rows.csv where _work is gone), and the trained-model index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.experiment import rundir
from bench.experiment.config import RunConfig, trial_id
from bench.experiment.rundir import trial_dir
from bench.registry import InputError
from bench.run.collect import Collector
from bench.run.trial import finished_rows
from bench.training import trained
from bench.training.train import CHECKPOINT


def resume_state(run_dir: Path, trials: list[RunConfig]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The rows of the trials that finished in an earlier session of ``run_dir`` and notes on what
    was not usable. Writes nothing.

    rows.csv is a derived file: a trial's rows come from its work dir's result.json when there is
    one, and from rows.csv only where _work is gone (a fresh checkout of committed results) — and
    then only if they are complete (every field of every row, every evaluation, every metric
    present or skipped with a reason); a trial whose rows are cut short runs again. A rows.csv
    that is not a rows table at all is rebuilt from the results in _work; with _work gone too,
    nothing can be recovered and that is an InputError."""
    df, bad, problem = rundir.parse_rows(run_dir)
    finished: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for cfg in trials:
        tid = trial_id(cfg)
        wd = trial_dir(run_dir, cfg)
        rows = finished_rows(wd)
        if rows is None and not problem and not wd.exists():  # a work dir, when there is one, is the truth
            rows, why = _complete_rows(cfg, df[df["trial_id"] == tid], bad.get(tid, ""))
            if why:
                notes.append(f"trial {tid} ({cfg.arm()}, seed {cfg.seed}): {why}; it runs again")
        if rows:
            finished[tid] = rows
    if problem:
        if not (run_dir / "_work" / "trials").is_dir():
            raise InputError(f"{problem}, and {run_dir / '_work'} is gone, so the finished trials cannot be recovered: "
                             f"restore it (e.g. `git checkout -- {run_dir / rundir.ROWS}`), or move it aside to run the grid again")
        notes.append(f"{problem}: rebuilt from the {len(finished)} finished trials in {run_dir / '_work' / 'trials'}; "
                     f"the other {len(trials) - len(finished)} run")
    return finished, notes


def _complete_rows(cfg: RunConfig, mine: pd.DataFrame, bad: str) -> tuple[list[dict[str, Any]] | None, str]:
    """A trial's rows from rows.csv if they show it finished (ok or diverged) completely, else None
    and why not ("" when it simply has not finished)."""
    if bad:
        return None, bad
    if mine.empty or not mine["status"].isin(["ok", "diverged"]).all():
        return None, ""
    rows = [{k: v for k, v in r.items() if pd.notna(v)} for r in mine.to_dict("records")]
    final: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        try:
            key = (str(r["sampler"]), int(float(r["sample_steps"])))
        except (KeyError, TypeError, ValueError):
            return None, "a row of rows.csv has no sampler or sample_steps"
        if key not in final or float(r.get("train_step", 0)) >= float(final[key].get("train_step", 0)):
            final[key] = r
    for key in cfg.evaluations:
        r = final.get((key[0], key[1]))
        if r is None:
            return None, f"rows.csv has no row for its evaluation {key[0]}:{key[1]}"
        if r["status"] == "ok":
            lost = [m for m in cfg.metric_names if m not in r and f"{m}_skipped" not in r]
            if lost:
                return None, f"rows.csv has no {', '.join(lost)} for {key[0]}:{key[1]} (a row cut short?)"
    return rows, ""


def index_trained(trials: list[RunConfig], run_dir: Path, collector: Collector) -> None:
    """Point the trained-model index (bench.training.trained) at every trial of the run that trained to the
    end, also those finished in an earlier session or before the index existed, so that an
    evaluation-only grid (reuse_training) can adopt them."""
    for cfg in trials:
        rows = collector.rows.get(trial_id(cfg)) or []
        wd = trial_dir(run_dir, cfg)
        if rows and rows[0].get("status") == "ok" and rows[0].get("train_steps_done") == cfg.train_steps \
                and (wd / CHECKPOINT).exists():
            trained.register(cfg, wd, trial_id(cfg))
