"""The driver's progress while trials run: a line per finished trial with the grid's ETA, lines
between them at most every ``PROGRESS_EVERY_S`` seconds, and the fail-fast rule (``SharedFailure``):
the first trials failing alike on data or the environment stop the grid."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Sequence

from bench.progress import PROGRESS_EVERY_S, duration, say

SHARED_AFTER = 2  # trials failing alike before the grid stops


SHARED_CAUSES = ("DataError", "ModuleNotFoundError", "ImportError", "PermissionError", "FileNotFoundError")


class SharedFailure(RuntimeError):
    """Every trial so far failed with the same data or environment error (``Progress.shared_failure``)."""


class Progress:
    """What the driver says while trials run: a line per finished trial with its time and the grid's
    ETA, and, between them, at most one line every ``PROGRESS_EVERY_S`` seconds (on a terminal the
    trainer's bar shows the steps instead under --local).

    ETA = (pending trials x T + the running trials' step fraction left x T) / trials at once, and at
    least the longest running trial's time left (T once any trial is pending). T is the mean
    duration of the trials this session trained from their start: a --resume restarts trials from
    their checkpoints, and an adopted (``reuse_training``) trial only evaluates, so a trial counts
    in T only if its attempt began at most ``FRESH`` into its steps (the trainer's ``start_step``,
    or ``begin``) and it trained here; one that continued a shorter trial, from the step it adopted.
    Until one such trial has finished, T is the running trials' step rate (from when this session
    first saw them to their latest reported step, so that an evaluation in progress does not slow it;
    earlier curve evaluations still count) x their steps: training only, a lower bound; unless trials
    finished in earlier sessions of the run (``earlier``, from ``earlier_seconds``): then T is their median
    cost, said as such (they ran under those sessions' load; the median, because one that shared the cores
    with other work is no typical trial)."""

    FRESH = 0.05  # a trial whose attempt began at most this far into its steps ran from its start

    def __init__(self, total: int, done_before: int, at_once: int, earlier: Sequence[float] = ()):
        self.total, self.done_before, self.at_once = total, done_before, max(1, at_once)
        self.earlier = list(earlier)  # seconds of the trials earlier sessions trained (earlier_seconds)
        self.t0 = self.last = time.time()
        self.finished: list[str] = []  # statuses of trials finished in this session
        self.errors: list[str] = []  # their error messages ("" for a trial that did not raise)
        self.stopped_by = ""  # the shared error that stopped the grid (shared_failure)
        self.durations: list[float] = []  # seconds of the trials finished in this session that trained from their start
        self.running: dict[str, tuple[int, int]] = {}  # trial id -> (step, of steps)
        self.first_seen: dict[str, tuple[int, float]] = {}  # trial id -> (step, time) when this session first saw it
        self.stepped_at: dict[str, float] = {}  # trial id -> when its step last advanced (its evaluations take no steps)
        self.start: dict[str, int] = {}  # trial id -> the step its latest attempt began at
        self.started: set[str] = set()  # trials started and not finished, training or only evaluating (⊇ running)
        self.sampled_by: dict[str, float] = {}  # trial id -> when its sampling under way should end, at its rate

    def begin(self, tid: str, start: int, steps: int) -> None:
        """A trial's attempt starts at step ``start`` (its checkpoint's; 0 for a new trial), silently."""
        self.running[tid], self.start[tid] = (start, steps), start
        self.first_seen[tid] = (start, time.time())
        self.started.add(tid)

    def launched(self, tid: str) -> None:
        """A trial started whose steps are not known yet (Ray: before its first report; an adopted
        trial never reports steps, it only evaluates): counted as running, not in the ETA."""
        self.started.add(tid)

    def _training_s(self, tid: str, step: int, steps: int) -> float | None:
        """A running trial's whole training time at its step rate since first seen (None: no rate yet)."""
        s0, t0 = self.first_seen.get(tid, (0, self.t0))
        rate = (step - s0) / max(self.stepped_at.get(tid, time.time()) - t0, 1e-9)
        return steps / rate if rate > 0 else None

    def eta(self) -> str:
        left = self.total - self.done_before - len(self.finished)
        if not left:
            return "all finished"
        basis = ""
        if self.durations:
            per_trial, bound = sum(self.durations) / len(self.durations), ""
        elif self.earlier:
            per_trial, bound = statistics.median(self.earlier), ""  # the median: a session that shared the cores is no typical trial
            basis = f" (at the median of {len(self.earlier)} trials of earlier sessions, {duration(per_trial)} a trial)"
        else:
            estimates = [t for tid, (s, n) in self.running.items() if (t := self._training_s(tid, s, n))]
            if not estimates:
                return "ETA after the first trial trained from its start" if self.finished else "ETA after the first trial"
            per_trial, bound = sum(estimates) / len(estimates), "> "
        fractions_left = [1 - s / n for s, n in self.running.values() if n]
        todo = left - sum(1 - f for f in fractions_left)
        longest = max([*fractions_left, 1.0 if left > len(self.running) else 0.0])  # a slot cannot split a trial
        eta_s = max(todo / self.at_once, longest) * per_trial
        if not bound:
            return f"ETA {duration(eta_s)}{basis}"
        sampling_s = max((t - time.time() for t in self.sampled_by.values()), default=0.0)
        if sampling_s > eta_s:  # every running trial has trained: what is known is the sampling under way
            return f"ETA > {duration(sampling_s)} (the sampling under way only, until a trial finishes)"
        return f"ETA > {duration(eta_s)} (training only, until a trial finishes)"

    def shared_failure(self) -> str:
        """The error every trial of this session has met so far, when it is one that every other
        trial would meet too (``SHARED_CAUSES``: data, environment) and at least ``SHARED_AFTER``
        trials met it; else "". Then the grid stops instead of failing each trial after its minutes
        of work (issue 31: 20 trials failed one by one on a data root the workers could not see)."""
        if not self.stopped_by and len(self.errors) >= SHARED_AFTER and len(set(self.errors)) == 1:
            error = self.errors[0]
            self.stopped_by = error if error.split(":", 1)[0] in SHARED_CAUSES else ""
        return self.stopped_by  # latched: a trial finishing after the stop does not undo it

    def counts(self) -> str:
        failed = sum(s == "error" for s in self.finished)
        done = self.done_before + len(self.finished)
        return f"{done} finished ({failed} failed), {len(self.started)} running of {self.total}"

    def trial_done(self, label: str, rows: list[dict[str, Any]], seconds: float | None = None) -> None:
        status = rows[0]["status"]
        tid = rows[0]["trial_id"]
        _, steps = self.running.pop(tid, (0, 0))
        self.first_seen.pop(tid, None)
        self.stepped_at.pop(tid, None)
        self.sampled_by.pop(tid, None)
        self.started.discard(tid)
        start = self.start.pop(tid, None)  # None: never seen starting or training (adopted, failed early, ...)
        self.finished.append(status)
        self.errors.append(str(rows[0].get("error", "")) if status == "error" else "")
        seconds = seconds if seconds is not None else max((r.get("trial_s") or 0 for r in rows), default=0)
        # a continued trial (reuse_training from a shorter one) trained from the adopted step: it counts when
        # its attempt began there (the long presets continue every trial from the same fraction)
        adopted = _int(rows[0].get("adopted_step")) if rows[0].get("trained_in") else 0
        continued = 0 < adopted < steps  # adopted and evaluated only: trained_in without a step below steps
        trained_here = (start is not None and steps > 0 and start - adopted <= self.FRESH * steps
                        and (continued or not rows[0].get("trained_in")))
        if status == "ok" and seconds > 0 and trained_here:
            self.durations.append(seconds)
        extra = f": {rows[0].get('error', '')}" if status == "error" else ""  # whole: a cut message hides its cause
        say(f"[{self.done_before + len(self.finished)}/{self.total}] {label}: {status} in {duration(seconds)}{extra}; "
             f"{self.counts()}; {self.eta()}")
        self.last = time.time()

    def note(self, tid: str, label: str, steps: int, m: dict[str, Any]) -> None:
        """A running trial's report (the trainer's or, while it samples, ``bench.run.trial.sampling_ticks``'),
        to ``step`` or ``evaluating``; anything else (Tune's own results) is ignored."""
        if "eval_step" in m:
            self.evaluating(tid, label, str(m.get("eval", "")), int(m["eval_step"]), int(m["eval_steps"]),
                            float(m.get("eval_s") or 0.0))
        elif "step" in m:
            self.step(tid, label, int(m["step"]), steps, m.get("images_per_s"), start=m.get("start_step"))

    def evaluating(self, tid: str, label: str, what: str, done: int, total: int, seconds: float) -> None:
        """A running trial samples for an evaluation (``what``, e.g. ddpm:1000; ``done`` of ``total``
        sampler steps over all batches, ``seconds`` in): at most one line per ``PROGRESS_EVERY_S`` with the
        rate and this sampling's ETA = (total - done) / rate; scoring follows it."""
        self.started.add(tid)
        rate = done / seconds if seconds > 0 else 0.0
        if rate > 0:
            self.sampled_by[tid] = time.time() + (total - done) / rate
        if time.time() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.time()
        left = f"ETA {duration((total - done) / rate)}" if rate > 0 else "ETA unknown"
        say(f"running {label}: sampling {what}, step {done}/{total}, {rate:.2f} steps/s, {left}; {self.counts()}; "
             f"{self.eta()}")

    def step(self, tid: str, label: str, step: int, steps: int, rate: float | None = None, force: bool = False,
             start: int | None = None) -> None:
        """A progress report of a running trial; ``start``: where its attempt began (the latest attempt
        wins: a Ray retry from a checkpoint is not a trial trained from its start)."""
        self.running[tid] = (step, steps)
        self.started.add(tid)
        self.first_seen.setdefault(tid, (step, time.time()))
        self.stepped_at[tid] = time.time()  # the trainer reports only as its steps advance
        if start is not None:
            self.start[tid] = int(start)
            if int(start) > self.first_seen[tid][0]:  # begun at 0 before it adopted a shorter trial's checkpoint
                self.first_seen[tid] = (int(start), time.time())
        else:
            self.start.setdefault(tid, step)
        if not force and time.time() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.time()
        rate_s = f", {rate:.0f} img/s" if rate else ""
        say(f"running {label}: step {step}/{steps}{rate_s}; {self.counts()}; {self.eta()}")


def earlier_seconds(finished: dict[str, list[dict[str, Any]]]) -> list[float]:
    """What each trial finished by an earlier session of the run cost, for the ETA of a --resume until one
    of its own finishes: the training time to its last step over every attempt (``train_seconds``, its
    largest) plus every evaluation's sampling and scoring (``sample_s`` + ``score_s``, curve points
    included). Only trials that finished ok and trained in their own work dir (``trained_in`` empty: not
    adopted, not continued); rows made before these columns give nothing."""
    out = []
    for rows in finished.values():
        if not rows or rows[0].get("status") != "ok" or _text(rows[0].get("trained_in")):
            continue
        train = max((v for r in rows if math.isfinite(v := _num(r.get("train_seconds")))), default=math.nan)
        evals = sum(_num(r.get("sample_s")) + _num(r.get("score_s")) for r in rows)
        if math.isfinite(train) and math.isfinite(evals) and train > 0:
            out.append(train + evals)
    return out


def _num(value) -> float:
    """A row's number (NaN where absent, empty or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(value) -> str:
    """A row's text cell ("" where absent or empty, which rows.csv reads back as NaN)."""
    return value if isinstance(value, str) else ""


def _int(value) -> int:
    """A row's integer cell (0 where absent or empty: rows made before the column)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
