"""Files that are never half-written: atomic writes, advisory locks, the cache folder. (Leaf module.)

Every write goes to a unique temp file in the target's folder, then ``os.replace`` renames it over
the target, so a reader (or a run killed at any instant) sees the old complete file or the new
complete file. A write that fails (disk full, a bad object) removes its temp file and re-raises, so
a failure never leaves a partial file behind to fill the disk. Temp files are named ``.NAME.*.tmp``;
``remove_stale_temps`` clears those a killed process left.
"""

from __future__ import annotations

import contextlib
import hashlib
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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a run's files get the ordinary mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it from several threads at once could leave it changed


def current_umask() -> int:
    return _UMASK


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """JSON with indent 1; tensors become numbers or lists, anything else its str()."""
    return write_text_atomic(path, json.dumps(obj, indent=1, default=_json_default, allow_nan=True))


class CorruptFile(ValueError):
    """A file whose bytes no longer match the checksum written with it (a flipped bit, a torn copy)."""


def checksum_path(path: Path) -> Path:
    """The sidecar ``NAME.sha256`` that holds the SHA-256 of ``NAME`` as it was written."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listed_checksums(path: Path) -> list[str]:
    """The SHA-256 digests the sidecar of ``path`` accepts (one per line; two while a write is under way)."""
    try:
        return [line.split()[0] for line in checksum_path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def atomic_write_checked(path: Path, write: Callable[[Path], None]) -> Path:
    """``atomic_write`` plus the sidecar checksum of the bytes written. A kill at any instant leaves a
    pair that verifies: the sidecar first lists the new digest and the old one, then the file is
    renamed into place, then the sidecar is rewritten with the new digest alone."""
    path = Path(path)
    digests: list[str] = []

    def write_and_sum(tmp: Path) -> None:
        write(tmp)
        digests.append(sha256_file(tmp))
        old = [d for d in listed_checksums(path)[:1] if d != digests[0]] if path.exists() else []
        write_text_atomic(checksum_path(path), "".join(f"{d}  {path.name}\n" for d in [*digests, *old]))

    atomic_write(path, write_and_sum)
    write_text_atomic(checksum_path(path), f"{digests[0]}  {path.name}\n")
    return path


def verify(path: Path) -> None:
    """Raise ``CorruptFile`` when ``path`` disagrees with its sidecar checksum. A file without one
    (written before bench kept checksums) passes: there is nothing to check it against."""
    path = Path(path)
    expected = listed_checksums(path)
    if not expected:
        return
    actual = sha256_file(path)
    if actual not in expected:
        raise CorruptFile(f"{path} does not match its checksum ({checksum_path(path).name}: sha256 {expected[0][:12]}..., "
                          f"file: {actual[:12]}...): changed or damaged after it was written")


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """torch.save through a temp file + rename, with its sidecar checksum (``load_torch_checked``)."""
    import torch

    return atomic_write_checked(path, lambda tmp: torch.save(obj, tmp))


def load_torch_checked(path: Path, **kwargs) -> Any:
    """torch.load after ``verify``: a flipped byte raises ``CorruptFile`` instead of loading numbers
    that are silently wrong (torch's zip container does not check its CRCs on read)."""
    import torch

    verify(path)
    return torch.load(path, **kwargs)


def copy_atomic(src: Path, dst: Path) -> Path:
    """Copy through a temp file + rename. A file with a sidecar checksum is verified first (a corrupt
    source raises ``CorruptFile``, nothing is copied) and travels with its sidecar."""
    if checksum_path(src).exists():
        verify(src)
        return atomic_write_checked(dst, lambda tmp: shutil.copyfile(src, tmp))
    checksum_path(dst).unlink(missing_ok=True)  # a sidecar of what dst held before would not match the copy
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def remove_stale_temps(folder: Path) -> None:
    """Delete the temp files (``.NAME.*.tmp``) that killed writers left under ``folder``."""
    for stale in Path(folder).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _json_default(o):
    if hasattr(o, "numel") and hasattr(o, "tolist"):  # a torch tensor (no torch import in a leaf)
        return o.item() if o.numel() == 1 else o.tolist()
    return str(o)


def _fcntl_for(path: Path):
    """The fcntl module (None where it is missing: locks are then no-ops), with ``path``'s folder made."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return fcntl


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX flock; a no-op where fcntl is missing), so that
    concurrent processes compute a cached artefact once and the others wait for it."""
    fcntl = _fcntl_for(path)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class LockBusy(Exception):
    """``exclusive_lock`` found the lock held by a live process; ``holder`` is what that process wrote
    into the lock file (its pid and command), or "" when it had not written it yet."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def exclusive_lock(path: Path, owner: str = "") -> Iterator[None]:
    """A non-blocking exclusive lock on ``path``: raises ``LockBusy`` at once when a live process holds
    it, else holds it (with ``owner``, e.g. pid and command, written into the file for the message
    others get) until the block ends.

    POSIX flock: the kernel releases it when its process dies (also by kill -9), so a lock file left
    by a dead process is never a stale lock; only a process alive *and* holding it is. A no-op where
    fcntl is missing."""
    fcntl = _fcntl_for(path)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise LockBusy(path, fh.read().strip()) from None
        try:
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(owner)
                fh.flush()
            except OSError:  # a full disk: the lock holds without the note
                pass
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_holder(path: Path) -> str | None:
    """Who holds ``exclusive_lock(path)`` now (what it wrote, or "" if nothing yet), or None when no
    live process holds it. Creates nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fh = open(path)
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip()
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def check_writable(folder: Path, what: str) -> str:
    """"" when files can be created in ``folder`` (or, where it does not exist yet, in the folder it
    would be made in), else one line saying why not: a file in the way, a read-only file system, no
    permission. Writes nothing."""
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        return f"{what} {folder}: {existing} is a file, not a folder"
    if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1):
        return f"{what} {folder}: {existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what} {folder}: no permission to write in {existing}"
    return ""


#: environment settings that name folders; a Ray worker inherits them but runs in another directory
PATH_SETTINGS = ("BENCH_DATA_ROOT", "BENCH_CACHE", "BENCH_TRAINED", "TORCH_HOME")
#: the driver's working directory, for paths a config gives relative (``data_root``): the field keeps
#: the text the user typed (it is part of a trial's identity), and is resolved against this where used
DRIVER_CWD = "BENCH_DRIVER_CWD"


def resolve_from_driver(path: str | Path) -> Path:
    """``path`` with ``~`` expanded and, when relative, taken from the driver's working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.environ.get(DRIVER_CWD) or os.getcwd()) / p


def absolute_path_settings(environ: dict | None = None) -> dict[str, str]:
    """Make every relative folder in ``PATH_SETTINGS`` absolute, against the driver's working
    directory, once, before any check or fan-out: what the dry run validated is then exactly what
    every worker uses (Ray starts its workers in a session directory of its own, where the README's
    ``BENCH_DATA_ROOT=../shared/data`` named nothing and every trial failed). Returns the changed
    settings {name: absolute path}; ``~`` is expanded too."""
    environ = os.environ if environ is None else environ
    environ[DRIVER_CWD] = os.getcwd()
    changed = {}
    for name in PATH_SETTINGS:
        value = environ.get(name, "")
        if value and not os.path.isabs(os.path.expanduser(value)):
            changed[name] = environ[name] = os.path.abspath(os.path.expanduser(value))
        elif value.startswith("~"):
            changed[name] = environ[name] = os.path.expanduser(value)
    return changed


def cache_dir(create: bool = True) -> Path:
    """Derived files (decompressed MNIST, reference statistics, the classifier): $BENCH_CACHE, else
    ~/.cache/bench (made unless ``create`` is False)."""
    path = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench").expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def save_npz_atomic(path: Path, arrays: dict) -> Path:
    """numpy arrays as one compressed .npz, atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would otherwise append ".npz" to the temp name
            np.savez_compressed(f, **arrays)

    return atomic_write(path, write)
