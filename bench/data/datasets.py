"""Datasets (registry ``DATASETS``): whole splits as in-memory tensors in [-1, 1], shape [N, C, H, W].

MNIST (60k x 28 x 28) and the craters set (98 images) fit in memory many times over, so training
indexes a tensor on the device instead of running a DataLoader per step.

Where data lives:
- the *data root* holds the raw data as users have it after their own download
  (``RunConfig.data_root``, else ``$BENCH_DATA_ROOT``, else ``~/.cache/bench/data``); it may be
  read-only (e.g. ``../shared/data``);
- the *cache* (``$BENCH_CACHE``, else ``~/.cache/bench``) is writable and holds what bench derives:
  decompressed MNIST, resized crater tensors, reference statistics, the MNIST classifier.

Add a dataset: a function ``(root: Path, split: str, image_size: int) -> Tensor`` decorated with
``@DATASETS.register("name", channels=C, size=S)``; splits are ``train`` and ``heldout``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench.files import cache_dir, file_lock, load_torch_checked, resolve_from_driver, save_torch_atomic
from bench.registry import InputError, Registry

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[Path, str, int], torch.Tensor]
    channels: int
    size: int  # native resolution
    description: str
    images: int = 0  # training images at most (the memory bound of bench.run.resources); 0 = unknown


class _DatasetRegistry(Registry):
    def register(self, name: str, channels: int = 1, size: int = 28, images: int = 0):  # type: ignore[override]
        def deco(fn):
            Registry.register(self, name)(DatasetSpec(fn, channels, size, (fn.__doc__ or "").strip().split("\n")[0], images))
            return fn

        return deco


DATASETS: _DatasetRegistry = _DatasetRegistry("dataset")


class DataError(InputError):
    """A dataset that is missing or unreadable: the message says where bench looked and what to do."""


def data_root(configured: str = "") -> Path:
    """``configured`` (a config's ``data_root``), else $BENCH_DATA_ROOT, else ~/.cache/bench/data; a
    relative path is taken from the driver's working directory (``bench.files.resolve_from_driver``:
    Ray's workers run elsewhere, and the field must keep its text, which is part of a trial's id)."""
    return resolve_from_driver(configured or os.environ.get("BENCH_DATA_ROOT") or Path.home() / ".cache" / "bench" / "data")


def load_dataset(name: str, split: str = "train", root: str = "", image_size: int = 0) -> torch.Tensor:
    """Split ``split`` of dataset ``name`` as float32 [N, C, S, S] in [-1, 1] (S = image_size or native)."""
    spec = DATASETS.get(name)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: known {', '.join(SPLITS)}")
    x = spec.load(data_root(root), split, image_size or spec.size)
    assert x.ndim == 4 and x.shape[1] == spec.channels, (name, x.shape)
    return x


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a [N, C, H, W] batch (no-op at the same size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


# --- MNIST -------------------------------------------------------------------------------------
MNIST_MD5 = {  # of the uncompressed IDX files (LeCun et al.; torchvision's list)
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def mnist_tv(root: Path, split: str):
    """The torchvision MNIST dataset for ``split``, reading raw files from ``root`` as they are found:
    uncompressed IDX files (torchvision's layout), gzipped ones (decompressed into the cache, since the
    root may be read-only), or nothing (torchvision downloads into ``root`` when there is internet)."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    train = split == "train"
    if all((raw / f).exists() for f in MNIST_MD5):
        return MNIST(str(root), train=train, download=False)
    if all((raw / f"{f}.gz").exists() for f in MNIST_MD5):
        prepared = cache_dir() / "data"
        _decompress_mnist(raw, prepared / "MNIST" / "raw")
        return MNIST(str(prepared), train=train, download=False)
    try:
        return MNIST(str(root), train=train, download=True)
    except Exception as e:  # offline, read-only root, ...
        raise DataError(
            f"MNIST not found: looked for {raw}/train-images-idx3-ubyte[.gz] (and the other three IDX files); "
            f"download failed ({type(e).__name__}: {e}). Set BENCH_DATA_ROOT (or data_root) to a folder holding "
            f"MNIST/raw/*.gz, or run once with internet."
        ) from None


def _decompress_mnist(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        out = dst / name
        if out.exists() and _md5(out) == md5:
            continue
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        try:
            with gzip.open(src / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            if _md5(tmp) != md5:
                raise DataError(f"{src / name}.gz does not decompress to the official MNIST file (MD5 mismatch)")
            os.replace(tmp, out)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated or damaged .gz (a full disk is not this)
            raise DataError(f"{src / name}.gz cannot be decompressed ({type(e).__name__}: {e}): the file is truncated "
                            f"or damaged; replace it with the official MNIST file") from None
        finally:
            tmp.unlink(missing_ok=True)  # no temporary file left in the cache, whatever happened


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@DATASETS.register("mnist", channels=1, size=28, images=60_000)
def mnist(root: Path, split: str, image_size: int) -> torch.Tensor:
    """MNIST digits (LeCun et al.), 60k train / 10k test (= heldout), 28x28 grey, via torchvision."""
    ds = mnist_tv(root, split)
    x = ds.data.unsqueeze(1).float() / 127.5 - 1.0
    return resize(x, image_size)


# --- craters -----------------------------------------------------------------------------------
CRATER_SPLITS = {"train": ("train",), "heldout": ("valid", "test")}


@DATASETS.register("craters", channels=3, size=64, images=98)
def craters(root: Path, split: str, image_size: int) -> torch.Tensor:
    """Martian/Lunar crater images (Kaggle "lincolnzh"): 98 train, 45 heldout (valid+test), RGB."""
    folders = [root / "craters" / s / "images" for s in CRATER_SPLITS[split]]
    files = sorted(f for d in folders if d.is_dir() for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DataError(
            f"craters not found: no images in {', '.join(map(str, folders))}. Download the Kaggle "
            f"'Martian/Lunar Crater Detection Dataset' and unpack it as <data root>/craters/{{train,valid,test}}/images, "
            f"or set BENCH_DATA_ROOT to a folder that has it."
        )
    key = hashlib.sha1("\n".join(f"{f}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:16]
    cached = cache_dir() / "craters" / f"{split}-{image_size}-{key}.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(cached.with_suffix(".lock")):  # Ray's workers fill it at once: one writer, file and checksum as a pair
        if cached.exists():
            try:
                return load_torch_checked(cached)
            except Exception as e:  # noqa: BLE001 - damaged or torn: rebuilt from the images, said once
                warnings.warn(f"rebuilding cached craters {cached.name}: {type(e).__name__}: {str(e)[:200]}", stacklevel=2)
        x = torch.stack([_read_image(f, image_size) for f in files])
        save_torch_atomic(x, cached)
        return x


def _read_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BICUBIC)
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    except Exception as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return x.permute(2, 0, 1).float() / 127.5 - 1.0


# --- synthetic ---------------------------------------------------------------------------------
@DATASETS.register("synthetic", channels=1, size=16, images=512)
def synthetic(root: Path, split: str, image_size: int) -> torch.Tensor:
    """Bright discs of random centre and radius on a dark background: 512 train / 256 heldout,
    generated from a fixed seed (no files), for fast end-to-end tests."""
    n, seed = (512, 0) if split == "train" else (256, 1)
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    r = torch.rand(n, generator=g) * 0.2 + 0.12
    u = (torch.arange(image_size) + 0.5) / image_size
    d2 = (u.view(1, -1, 1) - c[:, 1].view(-1, 1, 1)) ** 2 + (u.view(1, 1, -1) - c[:, 0].view(-1, 1, 1)) ** 2
    x = torch.sigmoid((r.view(-1, 1, 1) ** 2 - d2) * 4 * image_size)  # soft edge ~ 1 pixel
    return (x * 2 - 1).unsqueeze(1)
