"""Timing by alternating repetitions, shared by ``bench perf`` and the dry run's estimate. (Leaf module.)"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: dict[str, tuple[Callable[[], Any], float]], device: torch.device, reps: int,
            calls: int = 1, warmup: int = 1) -> dict[str, list[float]]:
    """Rates (units per second) of each case in each of ``reps`` repetitions.

    ``cases`` maps a name to (fn, units per call). Every case is warmed up ``warmup`` calls, then the
    cases are timed in alternating order within each repetition (A B, B A, ...), ``calls`` calls each,
    so that drift in the machine's load hits every case alike.
    """
    for fn, _ in cases.values():
        for _ in range(warmup):
            fn()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, units = cases[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            rates[name].append(units * calls / (time.perf_counter() - t0))
    return rates


def spread(values: list[float]) -> dict[str, float]:
    """median, min, max and count of repeated measurements."""
    return {"median": statistics.median(values), "lo": min(values), "hi": max(values), "reps": len(values)}


def ratios(a: list[float], b: list[float]) -> dict[str, float]:
    """a/b per repetition (paired: timed back to back), summarised like ``spread``."""
    s = spread([x / y for x, y in zip(a, b)])
    return {"ratio": s["median"], "ratio_lo": s["lo"], "ratio_hi": s["hi"]}
