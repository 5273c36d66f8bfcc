"""One trial, top to bottom: data -> schedule + noise -> train -> sample at every evaluation -> score.

``run_trial`` is the only thing both ``--local`` and the Ray Tune trainable call, so the two paths
cannot disagree. A trial's files live in its work dir (checkpoints, loss logs, sample grids,
``result.json``); its rows are what ``rows.csv`` gets, one per evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from bench.data.datasets import DATASETS, load_dataset
from bench.env import device_name, enable_tf32, pick_device
from bench.experiment.config import RunConfig, build_process, from_dict, trial_id
from bench.files import load_torch_checked, save_npz_atomic, write_json_atomic
from bench.images import save_grid, to_uint8
from bench.process.corruptions import CORRUPTIONS
from bench.registry import InputError
from bench.sampling.sample import SAMPLERS, sample_images, sampler_options
from bench.sampling.snapshots import denoise_strip, strip_timesteps
from bench.scoring.metrics import score
from bench.training import trained
from bench.training.train import CHECKPOINT, load_ema, train

RESULT = "result.json"
STATUSES = ("ok", "diverged", "error")


def run_trial(cfg: RunConfig, workdir: Path, device: str | None = None, progress: bool | None = None,
              report: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Train, sample and score one config (validated by the driver); returns one row per evaluation
    and writes result.json."""
    device = device or pick_device()
    if str(device).startswith("cuda"):
        enable_tf32()
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / "config.json", cfg.to_dict())  # what `bench sample` rebuilds the model from
    t_start = time.time()

    # Data: the whole training split in memory, on the device (no DataLoader per step).
    data = train_images(cfg)

    # The forward process the config's TRAINS fields describe (schedule, noise, corruption, objective);
    # everything after it is the one shared trainer and sampler.
    _, diffusion, noise = build_process(cfg, data)  # data: for a corruption whose start is fitted to it

    with trained.training_lock(cfg) if cfg.reuse_training else contextlib.nullcontext():
        # a finished model of the same training (evaluation only), or a shorter one's to continue, if there is one
        adopted = trained.adopt(cfg, workdir, device) if cfg.reuse_training else ""
        curve = _Curve(cfg, diffusion, noise, data.shape[1:], workdir, device, report)  # after adoption: it may bring the curve
        _log_attempt(workdir, adopted)  # after adoption: the step it resumes from is the adopted model's
        # this attempt's adoption or an earlier one's (a stopped attempt resumes from the adopted checkpoint)
        trained_in, adopted_step = adopted_before(workdir)
        result, ema = train(cfg, data.to(device), diffusion, noise, workdir, device=device, progress=progress,
                            report=report, evaluate=curve)
        # indexed under the lock (a trial waiting on it then finds the model), and only where it trained: an
        # evaluation-only copy would shadow its source, whose curve and logs are the complete ones
        if result.status == "ok" and result.steps == cfg.train_steps and not (trained_in and adopted_step == cfg.train_steps):
            trained.register(cfg, workdir, trial_id(cfg))
    base = {
        **cfg.to_dict(),
        "trial_id": trial_id(cfg),
        "arm": cfg.arm(),
        "status": result.status,
        "error": "",
        "params": result.params,
        "train_steps_done": result.steps,
        "final_loss": result.final_loss,
        "train_s": result.wall_s,
        "train_seconds": result.train_seconds,  # to the last step, over every attempt, without curve evaluations
        "train_images_per_s": result.images_per_s,
        "alpha_bar_T": diffusion.start_alpha_bar(),  # vp: prod(1 - beta), as terminal_report
        "n_train_images": len(data),
        "device": device_name(device),
        "trained_in": trained_in,  # the work dir whose model this trial adopted ("" = trained here)
        "adopted_step": adopted_step,  # that model's step: train_steps = evaluation only, fewer = continued from it
    }
    if result.status == "ok":
        _denoise_strip(cfg, ema, diffusion, noise, workdir, device)
    rows = [{**base, **r} for r in curve.rows() if r["train_step"] <= result.steps]
    for sampler, steps in cfg.evaluations:
        row = {**base, "sampler": sampler, "sample_steps": steps, "train_step": result.steps,
               "nfe": SAMPLERS.get(sampler).nfe(steps, diffusion, sampler_options(sampler, cfg))}
        if result.status == "ok":
            row.update(_evaluate(cfg, ema, diffusion, noise, sampler, steps, data.shape[1:], workdir, device, progress,
                                 cfg.metric_names, f"{sampler}-{steps}.png", report))
        rows.append(row)
    for row in rows:
        row["trial_s"] = time.time() - t_start
    write_json_atomic(workdir / RESULT, rows)
    return rows


class _Curve:
    """The learning curve: ``evaluate(step, ema)`` at each of ``cfg.curve_steps`` samples with the
    first evaluation of ``evals`` and scores with ``curve_metrics``; rows are kept in curve.json, so a
    resumed trial neither loses nor repeats them."""

    def __init__(self, cfg, diffusion, noise, chw, workdir: Path, device, report=None):
        self.args, self.cfg, self.path = (diffusion, noise, chw, workdir, device, report), cfg, workdir / "curve.json"
        self.done = {r["train_step"]: r for r in _read_json_list(self.path)}

    def __call__(self, step: int, ema, train_seconds: float = float("nan")) -> None:
        if step in self.done:
            return
        sampler, steps = self.cfg.evaluations[0]
        diffusion, noise, chw, workdir, device, report = self.args
        scores = _evaluate(self.cfg, ema, diffusion, noise, sampler, steps, chw, workdir, device, False,
                           self.cfg.curve_metric_names, f"{sampler}-{steps}-step{step}.png", report)
        nfe = SAMPLERS.get(sampler).nfe(steps, diffusion, sampler_options(sampler, self.cfg))
        self.done[step] = {"sampler": sampler, "sample_steps": steps, "nfe": nfe,
                           "train_step": step, "train_seconds": train_seconds,
                           **scores}
        write_json_atomic(self.path, self.rows())

    def rows(self) -> list[dict[str, Any]]:
        return [self.done[s] for s in sorted(self.done)]


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []  # none yet, or a torn file from a killed process: the evaluations are redone
    return rows if isinstance(rows, list) else []


def _evaluate(cfg, ema, diffusion, noise, sampler, steps, chw, workdir, device, progress, metrics,
              grid_name: str, report: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Sample ``n_samples`` images (image i from seed ``cfg.image_seed0`` + i: the same in every arm)
    and score them with ``metrics``; the first 64 go to samples/``grid_name``. With ``report``, the
    sampling's progress goes there (``sampling_ticks``) instead of a bar."""
    t0 = time.time()
    progress = sys.stderr.isatty() if progress is None else bool(progress)  # None: a bar on a terminal, as training's
    ticks = sampling_ticks(report, f"{sampler}:{steps}") if report else progress
    x = sample_images(ema, diffusion, noise, sampler, steps, cfg.n_samples, tuple(chw), cfg.image_seed0,
                      batch_size=min(cfg.n_samples, 256), device=device, options=sampler_options(sampler, cfg),
                      progress=ticks)
    sample_s = time.time() - t0
    images = to_uint8(x.cpu())
    save_grid(x[:64].cpu(), workdir / "samples" / grid_name)
    t1 = time.time()
    features: dict[str, torch.Tensor] = {}
    scores = score(list(metrics), images, cfg.dataset, data_root=cfg.data_root, image_size=chw[-1],
                   n_reference=cfg.n_reference or None, progress=progress, device=device, features_out=features)
    save_per_image(workdir / "per_image" / grid_name.replace(".png", ".npz"), features)
    return {**scores, "sample_s": sample_s, "score_s": time.time() - t1,
            "sample_images_per_s": cfg.n_samples / max(sample_s, 1e-9)}


def sampling_ticks(report: Callable[[dict], None], what: str, reports: int = 100) -> Callable[[int, int], None]:
    """A sampler's ``tick(done, total)`` that sends ``{"eval": what, "eval_step": done, "eval_steps": total,
    "eval_s": seconds since sampling began}`` to ``report`` about ``reports`` times per evaluation
    (every ceil(total / reports) steps, and at the last): the driver's progress line while a trial samples
    (``Progress.note``); the trainer's reports stop at its last step."""
    t0 = time.time()

    def tick(done: int, total: int) -> None:
        if done % math.ceil(total / reports) == 0 or done == total:
            report({"eval": what, "eval_step": done, "eval_steps": total, "eval_s": time.time() - t0})

    return tick


PER_IMAGE_MAX_DIM = 256  # Inception's 2048-d features are too large to commit for every image


def save_per_image(path: Path, features: dict[str, torch.Tensor]) -> None:
    """The per-image features (float16; extractors of at most PER_IMAGE_MAX_DIM dimensions) of one
    evaluation, row i = image i (its seed image_seed0 + i, the same in every arm): what the report's
    two-level bootstrap resamples."""
    small = {name: f.to(torch.float16).numpy() for name, f in features.items() if f.shape[1] <= PER_IMAGE_MAX_DIM}
    if small:
        save_npz_atomic(path, small)


def _denoise_strip(cfg, ema, diffusion, noise, workdir, device, k: int = 6):
    """x_0 | x_t | predicted x_0 for k held-out images at several t: where the model stops recovering."""
    x0 = load_dataset(cfg.dataset, "heldout", cfg.data_root, cfg.image_size)[:k].to(device)
    with torch.no_grad():
        denoise_strip(ema, diffusion, noise, x0, strip_timesteps(cfg.timesteps),
                      torch.Generator().manual_seed(cfg.sample_seed), workdir / "samples" / "denoise.png")


def error_rows(cfg: RunConfig, exc: BaseException) -> list[dict[str, Any]]:
    """The rows of a trial that raised: status error and the message, one per evaluation."""
    msg = f"{type(exc).__name__}: {exc}"
    base = {**cfg.to_dict(), "trial_id": trial_id(cfg), "arm": cfg.arm(), "status": "error", "error": msg[:4000]}
    try:
        evals = cfg.evaluations
    except Exception:
        evals = [("", 0)]
    return [{**base, "sampler": s, "sample_steps": n} for s, n in evals]


def run_trial_safe(cfg: RunConfig, workdir: Path, **kw) -> list[dict[str, Any]]:
    """run_trial, with any exception turned into error rows (and the traceback kept in the work dir):
    one broken trial never stops a grid."""
    try:
        return run_trial(cfg, workdir, **kw)
    except Exception as e:  # noqa: BLE001 - failure isolation is the point
        rows = error_rows(cfg, e)
        try:  # the handler must not fail in turn (a full disk): the rows still reach the driver
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "error.txt").write_text(traceback.format_exc())
            write_json_atomic(workdir / RESULT, rows)
        except OSError as w:
            import sys

            print(f"bench: warning: trial {rows[0]['trial_id']}: error.txt / {RESULT} not written ({w.strerror or w})",
                  file=sys.stderr, flush=True)
        return rows


def finished_rows(workdir: Path) -> list[dict[str, Any]] | None:
    """The rows of a trial that already finished (ok or diverged) in ``workdir``, else None."""
    path = workdir / RESULT
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rows if rows and all(r.get("status") in ("ok", "diverged") for r in rows) else None


def adopted_before(workdir: Path) -> tuple[str, int]:
    """The work dir whose model an attempt of this trial adopted, and that model's step (``("", 0)``
    if none did): adoption copies a finished checkpoint, so a later attempt resumes from it (or from a
    later checkpoint of its own, where it continues a shorter training)."""
    try:
        lines = (workdir / "attempts.jsonl").read_text().splitlines()
    except OSError:
        return "", 0
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if entry.get("adopted_from"):
            return str(entry["adopted_from"]), int(entry.get("resumed_from_step", 0))
    return "", 0


def _log_attempt(workdir: Path, adopted_from: str = "") -> None:
    """Append this attempt (pid, start time, the step its checkpoint resumes from, the work dir of an
    adopted model) to attempts.jsonl, so resumes and retries can be audited (and are, by the tests)."""
    entry = {"pid": os.getpid(), "started": time.time(), "resumed_from_step": checkpoint_step(workdir / CHECKPOINT),
             **({"adopted_from": adopted_from} if adopted_from else {})}
    with open(workdir / "attempts.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def checkpoint_step(path: Path) -> int:
    """The optimizer step a training checkpoint file is at (0 if there is none or it is unreadable)."""
    try:
        return int(load_torch_checked(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - missing, truncated or corrupt: the trainer moves a corrupt one aside
        return 0


def train_images(cfg: RunConfig) -> torch.Tensor:
    """The trial's training images (CPU): the dataset's train split, or its first ``max_train_images`` of a
    fixed permutation."""
    data = load_dataset(cfg.dataset, "train", cfg.data_root, cfg.image_size)
    if cfg.max_train_images:
        data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: cfg.max_train_images]]
    return data


def sample_from_workdir(path: Path, sampler: str, steps: int, n: int, seed: int, out: Path) -> None:
    """``bench sample``: ``n`` images from a finished trial's EMA model (its config.json says what was
    trained: schedule, noise, objective), saved as a PNG grid."""
    workdir = path if path.is_dir() else path.parent
    cfg_file = workdir / "config.json"
    if not cfg_file.exists():
        raise InputError(f"{path} is not a trial work dir (no config.json): pass e.g. RUN/_work/trials/<id>")
    SAMPLERS.get(sampler)
    cfg = from_dict(json.loads(cfg_file.read_text()))
    if not 1 <= steps <= cfg.timesteps or n < 1:
        raise InputError(f"--steps must be in 1..{cfg.timesteps} and -n >= 1")
    spec = DATASETS.get(cfg.dataset)
    size = cfg.image_size or spec.size
    device = pick_device()
    model = load_ema(workdir, cfg, spec.channels, size, device)
    _, diffusion, noise = build_process(cfg, train_images(cfg) if CORRUPTIONS.get(cfg.corruption).needs_data else None)
    x = sample_images(model, diffusion, noise, sampler, steps, n, (spec.channels, size, size), seed,
                      batch_size=min(n, 256), device=device, options=sampler_options(sampler, cfg), progress=True)
    save_grid(x.cpu(), out)
