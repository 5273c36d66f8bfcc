import os
from pathlib import Path

import pytest
import torch

from bench.data.datasets import DATASETS, DataError, load_dataset

SHARED = Path(os.environ.get("BENCH_DATA_ROOT", "")) if os.environ.get("BENCH_DATA_ROOT") else None
needs_mnist = pytest.mark.skipif(
    not (SHARED and (SHARED / "MNIST" / "raw").is_dir()), reason="MNIST raw files absent (set BENCH_DATA_ROOT)"
)
needs_craters = pytest.mark.skipif(
    not (SHARED and (SHARED / "craters" / "train" / "images").is_dir()), reason="craters absent (set BENCH_DATA_ROOT)"
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_synthetic_is_deterministic_and_in_range():
    a, b = load_dataset("synthetic", "train"), load_dataset("synthetic", "train")
    assert torch.equal(a, b) and a.shape == (512, 1, 16, 16)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.3
    assert not torch.equal(a[:256], load_dataset("synthetic", "heldout"))
    assert load_dataset("synthetic", "train", image_size=32).shape == (512, 1, 32, 32)


@needs_mnist
def test_mnist_from_read_only_gz_root():
    x = load_dataset("mnist", "train", str(SHARED))
    assert x.shape == (60000, 1, 28, 28) and x.min() == -1 and x.max() == 1
    # mean pixel intensity of MNIST train is 0.1307 (the usual normalisation constant)
    assert ((x + 1) / 2).mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert load_dataset("mnist", "heldout", str(SHARED)).shape == (10000, 1, 28, 28)
    assert load_dataset("mnist", "heldout", str(SHARED), image_size=32).shape == (10000, 1, 32, 32)


@needs_craters
def test_craters_train_and_heldout():
    x = load_dataset("craters", "train", str(SHARED))
    assert x.shape == (98, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert load_dataset("craters", "heldout", str(SHARED)).shape == (45, 3, 64, 64)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "craters")):
        load_dataset("craters", "train", str(tmp_path))


def test_missing_mnist_offline_says_where_it_looked(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError("no internet")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="BENCH_DATA_ROOT"):
        load_dataset("mnist", "train", str(tmp_path))


def test_unreadable_image_is_named(tmp_path):
    d = tmp_path / "craters" / "train" / "images"
    d.mkdir(parents=True)
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset("craters", "train", str(tmp_path))


def test_registry_declares_channels():
    assert DATASETS.get("mnist").channels == 1 and DATASETS.get("craters").channels == 3
