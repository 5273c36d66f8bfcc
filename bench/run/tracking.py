"""Experiment tracking through Ray Tune's own logger callbacks: ``--track mlflow,wandb``. (Leaf module.)

Without ``--track``, Ray Tune already writes TensorBoard event files of every trial's reported
metrics (step, loss, images/s; the final scores) under ``RUN_DIR/_work/ray/tune/``; view them with
``tensorboard --logdir RUN_DIR/_work/ray/tune`` (docs/cli.md, "Experiment tracking").

A tracker is one registered ``Tracker``: the package it needs, and how to make its callback from
the run directory and the grid's name. Both trackers here write locally by default, so a run never
needs a network or an account:

- ``mlflow``: Ray's ``MLflowLoggerCallback`` into a file store ``RUN_DIR/mlruns`` (or
  ``$MLFLOW_TRACKING_URI``), experiment ``bench-GRID``, one MLflow run per trial; view with
  ``mlflow ui --backend-store-uri RUN_DIR/mlruns``.
- ``wandb``: Ray's ``WandbLoggerCallback`` in offline mode (unless ``$WANDB_MODE`` says otherwise)
  into ``RUN_DIR/wandb/``, project ``bench-GRID``, group = the run directory's name; upload later
  with ``wandb sync RUN_DIR/wandb/offline-run-*``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.registry import InputError, Registry

TRACKERS: Registry = Registry("tracker")


@dataclass(frozen=True)
class Tracker:
    package: str  # the import name the callback needs
    pip: str  # what to install for it
    description: str
    make: Callable[[Path, str], Any]  # (run dir, grid name) -> a ray.tune.Callback

    def check(self, name: str) -> None:
        if importlib.util.find_spec(self.package) is None:
            raise InputError(f"--track {name} needs the package {self.package!r}: pip install {self.pip} "
                             f"(or pip install -e '.[track]')")


def _mlflow(run_dir: Path, grid: str) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
    # MLflow 3 refuses a file store unless told (it wants a database, which needs SQLAlchemy); a
    # local directory of plain files is what a run directory should hold
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"bench-{grid}", tags={"run_dir": str(run_dir)})


def _wandb(run_dir: Path, grid: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    # Ray asks for an API key unless WANDB_MODE is offline/disabled in the driver's environment;
    # the logging actors get mode= through wandb.init's keywords
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    return WandbLoggerCallback(project=f"bench-{grid}", group=run_dir.name, mode=mode, dir=str(run_dir.resolve()),
                               excludes=["rows_json"])


TRACKERS.register("mlflow")(Tracker("mlflow", "mlflow-skinny", "MLflow, local file store RUN_DIR/mlruns (or $MLFLOW_TRACKING_URI)", _mlflow))
TRACKERS.register("wandb")(Tracker("wandb", "wandb", "Weights & Biases, offline into RUN_DIR/wandb (unless $WANDB_MODE)", _wandb))


def parse_track(value: str | None) -> tuple[str, ...]:
    """``"mlflow,wandb"`` -> ("mlflow", "wandb"), every name registered and its package installed."""
    names = tuple(dict.fromkeys(n.strip() for n in (value or "").split(",") if n.strip()))
    for name in names:
        TRACKERS.get(name).check(name)
    return names


def callbacks(names: tuple[str, ...], run_dir: Path, grid: str) -> list[Any]:
    return [TRACKERS.get(name).make(run_dir, grid) for name in names]
