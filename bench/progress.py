"""Progress of long loops, on a terminal and in a log file. (Leaf module.)

On a terminal a tqdm bar; without one (a log file, Ray's captured output, CI) a bar would write
hundreds of carriage-return updates, so ``bar`` returns ``Lines`` instead: one line at most every
``PROGRESS_EVERY_S`` seconds with the count, the rate and the ETA, and a last line when done.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

PROGRESS_EVERY_S = 30.0  # without a terminal: at most one progress line per this many seconds


def say(msg: str) -> None:
    """One line of the driver's own narration (``bench: ...`` on stderr, flushed: also in a log)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """3 s, 4.5 min, 2.3 h, 3.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class Lines:
    """A tqdm stand-in for streams that are not terminals: ``update(n)`` counts, and at most every
    ``every`` seconds (and once at the end) writes ``desc: done/total unit (pct), rate unit/s, ETA``.
    ETA = (total - done) / rate, rate = done / elapsed."""

    def __init__(self, total: int, desc: str, unit: str = "it", stream: TextIO | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.every = PROGRESS_EVERY_S if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.t0 = self.last = clock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.n / elapsed
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if self.n >= self.total:
            tail = f"done in {duration(elapsed)}"
        else:
            tail = f"ETA {duration((self.total - self.n) / rate)}" if rate > 0 else "ETA unknown"
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {rate:.1f} {self.unit}/s, {tail}"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self.last = self.clock()
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.n and self.clock() - self.t0 >= self.every:  # a loop shorter than one interval stays silent
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_Off":
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A progress context for ``total`` units: a tqdm bar on a terminal, ``Lines`` otherwise, nothing
    when not ``enabled``."""
    if not enabled:
        return _Off()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return Lines(total, desc, unit)
