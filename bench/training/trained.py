"""Trained models reused across trials whose training is identical (evaluation-only trials).

A probe that asks "how does this model sample with 10 / 20 / 50 / 100 steps, with DDIM and DDPM, or
when the first 20% of its reverse process is skipped?" changes only evaluation fields. With
``reuse_training = true`` such a trial does not train again: it adopts the final checkpoint of a
finished trial with the same **training key** and goes straight to sampling.

Training key: SHA-256 of every RunConfig field that can change the trained weights, i.e. all but
``EVAL_ONLY`` (the fields declared with the evaluations, scoring, sampler option, curve and
bookkeeping roles in ``bench.experiment.config``; ``train_steps``, the budget, must match exactly here). Learning-curve
evaluations run under a forked RNG (``train.Trainer.run``), so ``eval_at`` does not change the weights
either; a reusing trial itself cannot have ``eval_at`` (it does not train, so it has no curve).

The index: every trial that finishes training with status ok writes ``$BENCH_CACHE/trained/<key>.json``
(``$BENCH_TRAINED/<key>.json`` where that is set)
pointing at its checkpoint (a pointer, not a copy: a deleted run simply stops being found). Before a
trial with ``reuse_training`` trains, it takes ``<key>.lock`` (so two trials of one key under Ray
train once: the second waits, then adopts) and copies the checkpoint and loss logs into its work
dir, where the trainer resumes at the last step and does nothing. A pointer whose checkpoint is gone,
unreadable, of another training config or not at the end of training is ignored.

A reusing trial *with* a learning curve (``eval_at``: e.g. the noise grid's Gaussian arm, trained
exactly as the schedules grid's) adopts only a source whose curve is the one it would have drawn
(``curve_key``: the same curve steps, sampler and steps, images, image seeds, reference and curve
metrics), and copies the source's curve.json and curve sample grids with the model; where no such
source exists it trains, curve included.

**Continuing a shorter training** (issue 36: a longer run continues the checkpoints of a shorter one).
Where no finished trial of the same key exists, a reusing trial looks for the longest finished trial
of the same *budget key* (the training key without ``train_steps``) that trained fewer steps, copies
its final checkpoint and trains on from there. The weights are those of training from step 0: the
learning-rate schedules and weight averages count in steps taken (``bench.optim``), and the checkpoint
carries every generator's state (``bench.training.train``), so no part of the first n steps depends on
how many follow (``tests/test_trained.py`` checks it); a schedule that reads ``train_steps`` (cosine)
keeps it in the budget key and never continues. Curve points below the
source's step must be in the source's curve with the same evaluation and scoring (they are copied);
otherwise it trains from step 0. Only the loss log's row spacing (``train_steps`` / 5000 steps a row)
and the "second half" loss-by-t window follow the new length (the window then holds the steps trained
after the adopted one: ``Trainer.try_resume``). Only a checkpoint made on the same kind of device is
continued (bf16 autocast on CUDA, fp32 on the CPU), and only trials that trained are indexed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from bench.experiment.config import BOOKKEEPING, CURVE, EVALUATIONS, SAMPLER_OPTION, SCORING, RunConfig, fields_with
from bench.files import cache_dir, copy_atomic, file_lock, load_torch_checked, write_json_atomic
from bench.optim.lr import LR_SCHEDULES
from bench.training.train import CHECKPOINT

#: fields that never change the trained weights (the BUDGET, train_steps, does: it is part of the key)
EVAL_ONLY = fields_with(EVALUATIONS, SCORING, SAMPLER_OPTION, CURVE, BOOKKEEPING)
#: what every evaluation, a curve point included, reads beyond its own steps, evaluation and metrics
CURVE_FIELDS = fields_with(SCORING, SAMPLER_OPTION)
LOGS = ("loss.csv", "loss_by_t.csv")
#: the RunConfig fields when the keys were introduced: always hashed (never edit this tuple)
KEY_FIELDS_V1 = frozenset((
    "dataset", "data_root", "image_size", "max_train_images", "schedule", "timesteps", "zero_terminal_snr", "beta_start",
    "beta_end", "cosine_s", "tau", "sigmoid_start", "sigmoid_end", "sigma_min", "sigma_max", "laplace_mu", "laplace_b",
    "noise", "theta_0", "corruption", "sigma_blur_max", "prediction", "weighting", "min_snr_gamma", "p2_k", "p2_gamma",
    "model", "dropout", "train_steps", "batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "loss",
    "checkpoint_every", "seed", "evals", "n_samples", "ddim_eta", "var_type", "skip_start", "metrics", "n_reference",
    "sample_seed", "image_seeds", "eval_at", "curve_metrics", "reuse_training"))


def _keyed(cfg: RunConfig, names) -> dict:
    """The fields ``names`` that enter a key: those of the first release (``ID_FIELDS_V1``, always) and
    any later one whose value is not its default, as ``trial_id`` does, so a field added since (issue 33:
    path, t_density, ...) leaves every existing key, and so every adopted model and curve, as it was."""
    values, defaults = cfg.to_dict(), {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return {k: values[k] for k in sorted(names) if k in KEY_FIELDS_V1 or values[k] != defaults[k]}


def train_key(cfg: RunConfig) -> str:
    """16 hex digits of SHA-256 over the training fields (sorted JSON; ``_keyed``)."""
    return _hash(_keyed(cfg, [k for k in cfg.to_dict() if k not in EVAL_ONLY]))


def budget_key(cfg: RunConfig) -> str:
    """The training key without ``train_steps``: trials that share it take the same first steps. A
    learning-rate schedule that reads ``train_steps`` (``needs_total``: cosine) keeps it in the key, so
    such a trial continues no other."""
    drop = set() if LR_SCHEDULES.get(cfg.lr_schedule).needs_total else {"train_steps"}
    return "budget-" + _hash(_keyed(cfg, [k for k in cfg.to_dict() if k not in EVAL_ONLY and k not in drop]))


def curve_key(cfg: RunConfig) -> str:
    """What a learning-curve point depends on beyond the training: its steps, its evaluation (the first
    of ``evals``) and how it is scored. Two trials with equal train and curve keys draw the same curve."""
    return _hash({"steps": cfg.curve_steps, **_point_fields(cfg)})


def point_key(cfg: RunConfig) -> str:
    """``curve_key`` without the steps: two trials of one budget key with equal point keys draw the
    same point at any step both evaluate."""
    return _hash(_point_fields(cfg))


def _point_fields(cfg: RunConfig) -> dict:
    return {"metrics": cfg.curve_metric_names, "eval": cfg.evaluations[0], **_keyed(cfg, CURVE_FIELDS)}


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _index() -> Path:
    """$BENCH_TRAINED, else $BENCH_CACHE/trained (the tests point it at a temporary folder)."""
    return Path(os.environ.get("BENCH_TRAINED") or cache_dir() / "trained")


def register(cfg: RunConfig, workdir: Path, tid: str) -> None:
    """Point the index at this trial's final checkpoint (best effort: a failure is one warning)."""
    try:
        folder = _index()
        folder.mkdir(parents=True, exist_ok=True)
        pointer = {"checkpoint": str((Path(workdir) / CHECKPOINT).resolve()), "trial_id": tid}
        write_json_atomic(folder / f"{train_key(cfg)}.json", pointer)
        write_json_atomic(folder / f"{budget_key(cfg)}-{cfg.train_steps}.json", pointer)  # for longer trials to continue
    except OSError as e:
        print(f"bench: warning: trained model of trial {tid} not indexed for reuse ({e.strerror or e})", file=sys.stderr)


def find(cfg: RunConfig) -> Path | None:
    """The checkpoint of a finished trial with ``cfg``'s training key, verified; None if there is none."""
    return _verified(_index() / f"{train_key(cfg)}.json", train_key, cfg, cfg.train_steps)


def shorter(cfg: RunConfig, device: str = "cpu") -> list[tuple[Path, int]]:
    """(checkpoint, its step) of every finished trial with ``cfg``'s budget key and fewer steps, made
    on this kind of ``device``, verified, longest first. The kind of device must match: bf16 autocast
    on CUDA and fp32 on the CPU are different steps (checkpoints before the field: the CPU)."""
    prefix = f"{budget_key(cfg)}-"
    lengths = sorted((int(p.stem[len(prefix):]) for p in _index().glob(f"{prefix}*.json")
                      if p.stem[len(prefix):].isdigit()), reverse=True)
    found = [(_verified(_index() / f"{prefix}{n}.json", budget_key, cfg, n, device), n)
             for n in lengths if n < cfg.train_steps]
    return [(ckpt, n) for ckpt, n in found if ckpt is not None]


def source(cfg: RunConfig, device: str = "cpu") -> tuple[Path, int] | None:
    """What a trial of ``cfg`` with ``reuse_training`` starts from: (checkpoint, its step), a finished
    trial of the same training whose curve is ``cfg``'s (evaluation only), else the longest shorter one
    whose curve points below its step are ``cfg``'s (continued; the module docstring); None: it trains."""
    exact = find(cfg)
    if exact is not None and _same_curve(cfg, exact.parent):
        return exact, cfg.train_steps
    return next(((ckpt, n) for ckpt, n in shorter(cfg, device) if _same_curve(cfg, ckpt.parent, below=n)), None)


def _verified(pointer: Path, key, cfg: RunConfig, steps: int, device: str | None = None) -> Path | None:
    """The checkpoint ``pointer`` names if it reads, is finished (status ok at ``steps``, its own
    train_steps), was trained with ``cfg``'s ``key`` (and, where ``device`` is given, on that kind of
    device); None otherwise."""
    try:
        ckpt = Path(json.loads(pointer.read_text())["checkpoint"])
        ck = load_torch_checked(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - no pointer, a torn one, or a checkpoint gone or unreadable: train instead
        return None
    theirs = RunConfig(**{k: v for k, v in ck.get("cfg", {}).items() if k in RunConfig.__dataclass_fields__})
    if key(theirs) != key(cfg) or ck.get("step") != steps or theirs.train_steps != steps or ck.get("status") != "ok":
        return None
    if device is not None and ck.get("device", "cpu") != torch.device(device).type:
        return None
    return ckpt


@contextmanager
def training_lock(cfg: RunConfig) -> Iterator[None]:
    """Held while a trial of this training key adopts or trains, so that the key trains once."""
    folder = _index()
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f"{train_key(cfg)}.lock"):
        yield


def adopt(cfg: RunConfig, workdir: Path, device: str = "cpu") -> str:
    """Copy a finished checkpoint of this training key (and its loss logs) into ``workdir``; returns
    the source work dir, or "" when there is none (the trial then trains)."""
    workdir = Path(workdir)
    if (workdir / CHECKPOINT).exists():
        return ""  # its own (resumed) training comes first
    found = source(cfg, device)
    if found is None:
        return ""
    src = found[0]
    workdir.mkdir(parents=True, exist_ok=True)
    for name in LOGS:
        if (src.parent / name).exists():
            shutil.copyfile(src.parent / name, workdir / name)
    _copy_curve(cfg, src.parent, workdir)  # the curve's rows and sample grids, before the model (then the state is complete)
    copy_atomic(src, workdir / CHECKPOINT)
    return str(src.parent)


def _copy_curve(cfg: RunConfig, src_dir: Path, workdir: Path) -> None:
    """The source's curve points at ``cfg``'s curve steps, with their sample grids (``_same_curve``
    checked that they are the points ``cfg`` would draw)."""
    steps = set(cfg.curve_steps)
    if not steps or not (src_dir / "curve.json").exists():
        return
    rows = [r for r in json.loads((src_dir / "curve.json").read_text()) if r["train_step"] in steps]
    (workdir / "samples").mkdir(exist_ok=True)
    for png in (src_dir / "samples").glob("*-step*.png"):
        step = png.stem.rsplit("-step", 1)[1]
        if step.isdigit() and int(step) in steps:
            shutil.copyfile(png, workdir / "samples" / png.name)
    write_json_atomic(workdir / "curve.json", rows)


def _same_curve(cfg: RunConfig, src_dir: Path, below: int | None = None) -> bool:
    """Whether the source trial in ``src_dir`` drew, at every curve step of ``cfg`` (those below step
    ``below`` when it continues the source), the curve point ``cfg`` would draw."""
    wanted = {s for s in cfg.curve_steps if below is None or s < below}
    if not wanted:
        return True
    try:
        theirs = RunConfig(**{k: v for k, v in json.loads((src_dir / "config.json").read_text()).items()
                              if k in RunConfig.__dataclass_fields__})
        done = {r["train_step"] for r in json.loads((src_dir / "curve.json").read_text())}
    except Exception:  # noqa: BLE001 - a source without its config or curve: train instead
        return False
    same = curve_key(theirs) == curve_key(cfg) if below is None else point_key(theirs) == point_key(cfg)
    return same and wanted <= done
