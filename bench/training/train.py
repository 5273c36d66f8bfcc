"""The training loop every trial shares: the chosen target and loss weighting, AdamW + warmup, EMA, checkpoints, resume.

One optimizer step (Ho et al. 2020, Algorithm 1): draw a batch x_0 from the in-memory training tensor
and t ~ U{0..T-1} (one seeded CPU generator), eps from the noise type (a second seeded CPU
generator; the loop never branches on the noise type), loss = ``Diffusion.loss(model, x0, t, eps)``,
AdamW step with linear warmup and the learning-rate schedule (``bench.optim.lr``), gradient clipping,
then an update of the weight average (``bench.optim.ema``). The averaged model is what gets sampled and
scored.

Reproducibility:
- every random draw comes from generators seeded from ``cfg.seed``: model init and dropout from the
  global torch RNG, *forked* for the duration of ``train`` (the caller's RNG state is untouched),
  batches/timesteps and eps from two CPU ``torch.Generator`` s. With the same seed, arms that differ
  only in the schedule see the same batches, timesteps and Gaussian draws (common random numbers);
- a checkpoint holds the model, EMA, optimizer, LR scheduler, step, every RNG state and the logs,
  so resuming from it reproduces the uninterrupted run exactly (bitwise on CPU);
- the checkpoint is one file, ``<workdir>/checkpoint.pt``, replaced atomically every
  ``cfg.checkpoint_every`` steps and at the end.

Outputs in ``workdir``: ``checkpoint.pt``, ``loss.csv`` (step, loss, lr, images_per_s) and
``loss_by_t.csv`` (mean loss per tenth of the timestep range, over the whole run and over its second
half, with the log-SNR at the bin edges, so schedules can be compared on where their loss lies).
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from bench.experiment.config import (
    BOOKKEEPING,
    BUDGET,
    CURVE,
    EVALUATIONS,
    FIELD_TYPES,
    SAMPLER_OPTION,
    SCORING,
    fields_with,
    from_dict,
)
from bench.files import atomic_write, checksum_path, load_torch_checked, save_torch_atomic
from bench.models.unet import build_model, count_params
from bench.optim.ema import EMAS
from bench.optim.lr import LR_SCHEDULES
from bench.training.knobs import apply_knobs

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
N_T_BINS = 10
FINAL_LOSS_WINDOW = 100  # final_loss = mean loss of the last this-many steps
MAX_LOG_ROWS = 5000  # loss.csv gets at most ~this many rows (one row = mean over log_every steps)
# RunConfig fields that do not change what training computes: a checkpoint stays valid across them
# (train_steps may grow to extend a run).
# what a resumed checkpoint need not match: every field but those declared TRAINS (bench.experiment.config roles)
NOT_TRAINING_FIELDS = fields_with(BUDGET, EVALUATIONS, SCORING, SAMPLER_OPTION, CURVE, BOOKKEEPING)


@dataclass
class TrainResult:
    status: str  # "ok" | "diverged"
    steps: int  # optimizer steps done (in total, including resumed-away ones)
    final_loss: float  # mean loss of the last ~100 steps (nan if diverged)
    wall_s: float  # training wall time of this call (excludes resumed-away steps)
    images_per_s: float  # of this call
    params: int
    train_seconds: float = 0.0  # training time to ``steps``, over every attempt, without curve evaluations


def train(cfg, data: torch.Tensor, diffusion, noise, workdir: Path, device="cpu", progress: Optional[bool] = None,
          report: Optional[Callable[[dict], None]] = None, *, report_every: int = 0,
          num_threads: Optional[int] = None,
          evaluate: Optional[Callable[[int, nn.Module, float], None]] = None) -> tuple[TrainResult, nn.Module]:
    """Train the UNet ``cfg.model`` on ``data`` (float [-1, 1], [N, C, H, W], on ``device``) for
    ``cfg.train_steps`` optimizer steps, resuming from ``workdir/checkpoint.pt`` if there is one.

    Returns the result and the EMA model (eval mode). A loss that becomes NaN/inf ends training with
    status "diverged" (no exception). ``report(metrics)`` is called every ``report_every`` steps
    (0 = about 100 times a run) with {step, loss, images_per_s, start_step}. ``progress`` shows a tqdm bar
    (default: when stderr is a terminal). ``num_threads`` sets torch's CPU threads (global) if given.
    ``evaluate(step, ema, train_seconds)`` is called after each step of ``cfg.curve_steps`` (the
    learning curve); it must leave the EMA model as it found it. ``train_seconds``: the wall time spent
    training so far, over every attempt (kept in the checkpoint), without the curve evaluations
    themselves: the x-axis of "wall time to reach an FD".
    """
    device = torch.device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if data.ndim != 4 or not data.is_floating_point():
        raise ValueError(f"data must be a float [N, C, H, W] tensor, got {data.dtype} {tuple(data.shape)}")
    if num_threads:
        torch.set_num_threads(num_threads)
    data = data.to(device)  # a no-op when the caller put it there already (the contract)
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # model init and dropout draw from the global RNG
        return Trainer(cfg, data, diffusion, noise, workdir, device).run(progress, report, report_every, evaluate)


def load_ema(workdir, cfg=None, channels: Optional[int] = None, image_size: Optional[int] = None,
             device="cpu") -> nn.Module:
    """The EMA model (eval mode, on ``device``) from ``workdir/checkpoint.pt`` (or a checkpoint file).

    ``cfg`` / ``channels`` / ``image_size`` default to those stored in the checkpoint.
    """
    path = checkpoint_path(workdir)
    ckpt = _read(path)
    arch = dict(ckpt["arch"])
    if cfg is not None and cfg.model != arch["preset"]:
        raise ValueError(f"{path} holds a {arch['preset']!r} model, not {cfg.model!r}")
    arch.update({k: v for k, v in (("channels", channels), ("image_size", image_size)) if v is not None})
    model = build_model(arch["preset"], channels=arch["channels"], image_size=arch["image_size"], dropout=arch["dropout"])
    model.load_state_dict(ckpt["ema"])
    return model.to(device).eval().requires_grad_(False)


def read_config(path):
    """The RunConfig a checkpoint was trained with (fields unknown to this version are dropped)."""
    return from_dict({k: v for k, v in _read(checkpoint_path(path))["cfg"].items() if k in FIELD_TYPES})


def checkpoint_path(path) -> Path:
    """``path`` itself if it is a file, else ``path/checkpoint.pt``."""
    path = Path(path)
    return path if path.is_file() else path / CHECKPOINT


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return load_torch_checked(path, map_location="cpu", weights_only=True)  # CorruptFile on a flipped byte


def _seeds(seed: int) -> list[int]:
    """Independent 63-bit seeds for (model init + dropout, batches + timesteps, noise)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64) >> np.uint64(1)]


class Trainer:
    """The training state of one trial (model, EMA, optimizer, generators, logs) and its loop (``run``)."""

    def __init__(self, cfg, data, diffusion, noise, workdir: Path, device: torch.device):
        self.cfg, self.data, self.diffusion, self.noise, self.workdir, self.device = cfg, data, diffusion, noise, workdir, device
        self.T = diffusion.T
        self.total = cfg.train_steps
        self.log_every = max(1, math.ceil(self.total / MAX_LOG_ROWS))
        self.amp = device.type == "cuda"  # bf16 autocast on CUDA only; fp32 on CPU
        self.cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if self.amp else []
        init_seed, batch_seed, noise_seed = _seeds(cfg.seed)

        torch.manual_seed(init_seed)  # global RNG (forked by train): weights, then dropout masks
        self.arch = dict(preset=cfg.model, channels=data.shape[1], image_size=data.shape[-1], dropout=cfg.dropout)
        self.model = build_model(cfg.model, channels=data.shape[1], image_size=data.shape[-1], dropout=cfg.dropout)
        # channels_last: faster convs with oneDNN on CPU (~1.8x here) and with bf16 on CUDA
        self.model.to(device, memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        # weight_decay=0: plain Adam as in DDPM / improved-diffusion.
        self.opt = _adamw(self.model.parameters(), cfg.lr)
        schedule = LR_SCHEDULES.get(cfg.lr_schedule)  # LambdaLR's s = steps taken: the next is step s + 1
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: schedule.factor(s + 1, cfg))
        self.ema_beta = EMAS.get(cfg.ema).beta
        self.batch_gen = torch.Generator().manual_seed(batch_seed)
        self.noise_gen = torch.Generator().manual_seed(noise_seed)

        self.step = 0
        self.status = "ok"
        self.log: list[tuple[int, float, float, float]] = []  # loss.csv rows
        self.recent: deque = deque(maxlen=FINAL_LOSS_WINDOW)
        self.nbins = min(N_T_BINS, self.T)
        self.bin_sum = {w: torch.zeros(self.nbins, dtype=torch.float64) for w in ("all", "second_half")}
        self.bin_n = {w: torch.zeros(self.nbins, dtype=torch.int64) for w in ("all", "second_half")}
        self._row_losses: list[float] = []  # losses of the loss.csv row being filled
        self.train_seconds = 0.0  # training wall time to self.step, over every attempt, without curve evaluations

    # --- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "cfg": self.cfg.to_dict(), "arch": self.arch, "params": count_params(self.model),
            "step": self.step, "status": self.status,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "batch": self.batch_gen.get_state(), "noise": self.noise_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "log": list(self.log), "recent": list(self.recent), "row_losses": list(self._row_losses),
            "bin_sum": dict(self.bin_sum), "bin_n": dict(self.bin_n), "train_seconds": self.train_seconds,
            "device": self.device.type,  # a longer trial continues only a checkpoint of its kind of device
        }

    def save(self) -> None:
        save_torch_atomic(self.state(), self.workdir / CHECKPOINT)
        self.write_logs()

    def try_resume(self) -> bool:
        """Load ``checkpoint.pt`` if there is one. A file that cannot be read (truncated, corrupt) is
        moved aside to ``checkpoint.pt.corrupt-<time>`` with one line on stderr, and training starts
        from step 0, instead of failing on every resume for ever."""
        path = self.workdir / CHECKPOINT
        if not path.exists():
            return False
        try:
            ck = _read(path)
            if not isinstance(ck, dict) or "step" not in ck:
                raise ValueError("not a bench checkpoint")
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same case
            aside = path.with_name(f"{CHECKPOINT}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(aside)
            if checksum_path(path).exists():  # its checksum goes with it: the next checkpoint writes its own
                checksum_path(path).replace(checksum_path(aside))
            print(f"bench: warning: {path} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); "
                  f"moved aside to {aside.name}, the trial starts again from step 0", file=sys.stderr, flush=True)
            return False
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {ck.get('format')} is not {CHECKPOINT_FORMAT}; use a fresh work dir")
        mine, theirs = self.cfg.to_dict(), ck["cfg"]
        diff = sorted(k for k in mine.keys() & theirs.keys() if k not in NOT_TRAINING_FIELDS and mine[k] != theirs[k])
        if diff:
            changes = ", ".join(f"{k}: {theirs[k]!r} != {mine[k]!r}" for k in diff)
            raise ValueError(f"{path} was trained with a different config ({changes}); use a fresh work dir")
        if ck["step"] > self.total:
            raise ValueError(f"{path} is at step {ck['step']}, beyond train_steps={self.total}")
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.batch_gen.set_state(ck["rng"]["batch"])
        self.noise_gen.set_state(ck["rng"]["noise"])
        if ck["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        self.step, self.status = ck["step"], ck["status"]
        self.log = [tuple(r) for r in ck["log"]]
        self.recent.extend(ck["recent"])
        self._row_losses = list(ck["row_losses"])
        self.bin_sum, self.bin_n = dict(ck["bin_sum"]), dict(ck["bin_n"])
        if theirs.get("train_steps", self.total) != self.total:  # a shorter trial's checkpoint, continued here:
            # its "second half" was of its own length; this one's holds the steps trained from here on
            self.bin_sum["second_half"] = torch.zeros_like(self.bin_sum["second_half"])
            self.bin_n["second_half"] = torch.zeros_like(self.bin_n["second_half"])
        self.train_seconds = float(ck.get("train_seconds", 0.0))  # checkpoints before the field: unknown, counted from 0
        return True

    # --- logs -----------------------------------------------------------------------------------
    def write_logs(self) -> None:
        _write_csv(self.workdir / "loss.csv", ("step", "loss", "lr", "images_per_s"), self.log)
        edges = [(b * self.T + self.nbins - 1) // self.nbins for b in range(self.nbins + 1)]  # first t of each bin
        rows = []
        for w in ("all", "second_half"):
            for b in range(self.nbins):
                lo, hi = edges[b], edges[b + 1] - 1
                n = int(self.bin_n[w][b])
                loss = float(self.bin_sum[w][b]) / n if n else float("nan")
                rows.append((w, b, lo, hi, float(self.diffusion.log_snr[lo]), float(self.diffusion.log_snr[hi]), n, loss))
        header = ("window", "bin", "t_lo", "t_hi", "log_snr_lo", "log_snr_hi", "n", "loss")
        _write_csv(self.workdir / "loss_by_t.csv", header, rows)

    # --- the loop -------------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (per-example losses [B] on the device, t [B] on the CPU)."""
        cfg, dev = self.cfg, self.device
        idx = torch.randint(len(self.data), (cfg.batch_size,), generator=self.batch_gen)
        t = self.diffusion.draw_t(cfg.batch_size, self.batch_gen)  # vp + uniform: the first release's randint
        x0 = self.data[_to(idx, dev)]
        eps = self.noise.sample(x0.shape, self.diffusion.noise_index(t), self.noise_gen)  # on the CPU: same on every device
        eps, eps_in = apply_knobs(cfg, x0, _to(eps, dev), self.noise_gen)
        x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
        eps_in = None if eps_in is None else eps_in.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            losses = self.diffusion.loss(self.model, x0, _to(t, dev), eps, kind=cfg.loss, eps_in=eps_in)
        self.opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.update_ema()
        return losses.detach(), t

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * model with d the profile's beta for this step (``bench.optim.ema``;
        ``fixed``: min(ema_decay, k / (9 + k)), the usual warmup of the decay, so short runs do not keep
        a large share of the random init in the EMA). ``self.step`` is the steps before this one."""
        d = self.ema_beta(self.step + 1, self.cfg)
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, p, 1.0 - d)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)

    def record(self, step: int, loss_values: list[float], t: torch.Tensor, lr: float, rate: float) -> bool:
        """Book one step's per-example losses; False if the loss is not finite."""
        loss = sum(loss_values) / len(loss_values)
        if not math.isfinite(loss):
            return False
        self.recent.append(loss)
        tbin = self.diffusion.t_bin(t, self.nbins)
        vals = torch.tensor(loss_values, dtype=torch.float64)
        for w in ("all", "second_half") if step > self.total // 2 else ("all",):
            self.bin_sum[w].index_add_(0, tbin, vals)
            self.bin_n[w] += torch.bincount(tbin, minlength=self.nbins)
        self._row_losses.append(loss)
        if step % self.log_every == 0 or step == self.total:
            self.log.append((step, sum(self._row_losses) / len(self._row_losses), lr, round(rate, 1)))
            self._row_losses = []
        return True

    def run(self, progress, report, report_every, evaluate=None) -> tuple[TrainResult, nn.Module]:
        """The loop: step, book the losses (read back in batches), checkpoint, report, evaluate."""
        self.try_resume()
        params = count_params(self.model)
        if self.status != "ok" or self.step >= self.total:  # finished (or diverged) before: nothing to do
            return self.result(0.0, 0, params), self.ema
        report_every = report_every or max(1, math.ceil(self.total / 100))
        readback = Readback(every=1 if self.device.type == "cpu" else 10)  # a readback waits for the GPU
        bar = _progress_bar(self.total, self.step, progress, f"train {self.cfg.model}")
        start_step, t_start = self.step, time.perf_counter()
        t_mark = t_start  # training time is booked up to here (evaluations are not training)
        curve_steps = set(getattr(self.cfg, "curve_steps", ()))
        if self.status == "ok" and self.step in curve_steps and evaluate is not None:
            # a checkpoint at a curve step whose point may be missing: killed between saving and evaluating,
            # or a longer trial continuing a shorter one's final checkpoint (bench.training.trained)
            with torch.random.fork_rng(devices=self.cuda_devices):
                evaluate(self.step, self.ema, self.train_seconds)
            t_mark = time.perf_counter()
        self.model.train()
        try:
            while self.step < self.total and self.status == "ok":
                lr = self.opt.param_groups[0]["lr"]
                losses, t = self.train_step()
                self.step += 1
                due_report = self.step % report_every == 0 or self.step == self.total
                due_ckpt = self.step % self.cfg.checkpoint_every == 0 or self.step == self.total
                due_eval = self.step in curve_steps
                readback.add(self.step, losses, t, lr)
                if not (due_report or due_ckpt or due_eval or self.step % self.log_every == 0 or readback.full()):
                    continue
                now = time.perf_counter()
                self.train_seconds, t_mark = self.train_seconds + (now - t_mark), now
                self.book(readback.flush(), readback.rate(self.step, self.cfg.batch_size))
                bar.update(self.step - bar.n)
                if self.recent:
                    bar.set_postfix(loss=f"{self.recent[-1]:.4f}", img_s=f"{readback.last_rate:.0f}", refresh=False)
                if self.status == "ok" and due_ckpt:
                    self.save()
                if self.status == "ok" and due_report and report is not None:
                    recent = list(self.recent)[-report_every:]
                    report({"step": self.step, "loss": sum(recent) / len(recent), "images_per_s": readback.last_rate,
                            "start_step": start_step})  # where this attempt began (a resumed trial: its checkpoint)
                if self.status == "ok" and due_eval and evaluate is not None:
                    with torch.random.fork_rng(devices=self.cuda_devices):  # evaluations never move training's RNG
                        evaluate(self.step, self.ema, self.train_seconds)
                    t_mark = time.perf_counter()
        finally:
            bar.close()
        if self.status != "ok":
            self.save()  # a diverged run is a result: resuming it returns at once
        return self.result(time.perf_counter() - t_start, self.step - start_step, params), self.ema

    def book(self, steps: list[tuple[int, list[float], torch.Tensor, float]], rate: float) -> None:
        """Record read-back steps in order; the first non-finite loss marks the run diverged (the
        checkpoint keeps ``self.step``, the step its weights are at; loss.csv shows where it diverged)."""
        for step, values, t, lr in steps:
            if not self.record(step, values, t, lr, rate):
                self.status = "diverged"
                self.log.append((step, float("nan"), lr, round(rate, 1)))
                return

    def result(self, wall: float, steps_here: int, params: int) -> TrainResult:
        ok = self.status == "ok" and len(self.recent) > 0
        return TrainResult(
            status=self.status, steps=self.step,
            final_loss=float(np.mean(self.recent)) if ok else float("nan"),
            wall_s=wall, images_per_s=steps_here * self.cfg.batch_size / wall if wall > 0 else 0.0, params=params,
            train_seconds=self.train_seconds,
        )


class Readback:
    """Per-step losses kept on the device and read back to the host in one batch every ``every``
    steps (or when the loop needs them): on CUDA each readback waits for the GPU."""

    def __init__(self, every: int):
        self.every, self.pending = every, []
        self.window_t, self.window_step, self.last_rate = time.perf_counter(), None, 0.0

    def add(self, step: int, losses: torch.Tensor, t: torch.Tensor, lr: float) -> None:
        if self.window_step is None:
            self.window_step = step - 1
        self.pending.append((step, losses, t, lr))

    def full(self) -> bool:
        return len(self.pending) >= self.every

    def flush(self) -> list[tuple[int, list[float], torch.Tensor, float]]:
        """(step, per-example losses, t, lr) of every pending step: the loop's one readback."""
        if not self.pending:
            return []
        values = torch.stack([p[1].float() for p in self.pending]).cpu().tolist()
        out = [(step, vals, t, lr) for (step, _, t, lr), vals in zip(self.pending, values)]
        self.pending = []
        return out

    def rate(self, step: int, batch_size: int) -> float:
        """Training images/s since the last call."""
        now = time.perf_counter()
        self.last_rate = (step - self.window_step) * batch_size / max(now - self.window_t, 1e-9)
        self.window_t, self.window_step = now, step
        return self.last_rate


def _progress_bar(total: int, initial: int, progress: Optional[bool], desc: str):
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, initial=initial, disable=not show, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def _adamw(params, lr: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over all parameters instead of the default loop of
    small kernels per tensor), or the default where this torch has no fused AdamW for the device
    (CPU support came in torch 2.4)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU tensor -> device; on CUDA through pinned memory without waiting for the GPU."""
    if device.type == "cpu":
        return x
    return x.pin_memory().to(device, non_blocking=True)


def _write_csv(path: Path, header, rows) -> None:
    """Whole-file CSV write through a temp file + rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, write)
