"""Files that are never half-written: atomic writes, advisory locks, the cache folder. (Leaf module.)

Every write goes to a unique temp file in the target's folder, then ``os.replace`` renames it over
the target, so a reader (or a run killed at any instant) sees the old complete file or the new
complete file. A write that fails (disk full, a bad object) removes its temp file and re-raises, so
a failure never leaves a partial file behind to fill the disk. Temp files are named ``.NAME.*.tmp``;
``remove_stale_temps`` clears those a killed process left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """JSON with indent 1; tensors become numbers or lists, anything else its str()."""
    return write_text_atomic(path, json.dumps(obj, indent=1, default=_json_default, allow_nan=True))


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """torch.save through a temp file + rename."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def copy_atomic(src: Path, dst: Path) -> Path:
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def remove_stale_temps(folder: Path) -> None:
    """Delete the temp files (``.NAME.*.tmp``) that killed writers left under ``folder``."""
    for stale in Path(folder).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _json_default(o):
    if hasattr(o, "numel") and hasattr(o, "tolist"):  # a torch tensor (no torch import in a leaf)
        return o.item() if o.numel() == 1 else o.tolist()
    return str(o)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX flock; a no-op where fcntl is missing), so that
    concurrent processes compute a cached artefact once and the others wait for it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_dir() -> Path:
    """Derived files (decompressed MNIST, reference statistics, the classifier): $BENCH_CACHE, else
    ~/.cache/bench."""
    path = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
