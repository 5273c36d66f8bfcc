"""Every cached or resumed artifact is verified before use (issue 31): a byte flipped in the middle of
the file (not a truncation: torch's zip container loads that silently) is a rebuild or a restart with
one warning, never a result."""

import gzip
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.files import CorruptFile, checksum_path, copy_atomic, load_torch_checked, save_npz_atomic, save_torch_atomic, verify

SHARED = Path(os.environ["BENCH_DATA_ROOT"]) if os.environ.get("BENCH_DATA_ROOT") else None


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_loads_silently_without_the_check_and_fails_with_it(tmp_path):
    path = tmp_path / "w.pt"
    weights = {"w": torch.arange(4096, dtype=torch.float32)}
    save_torch_atomic(weights, path)
    assert checksum_path(path).read_text().split()[1] == "w.pt"
    assert torch.equal(load_torch_checked(path)["w"], weights["w"])
    flip_middle_byte(path)
    assert not torch.equal(torch.load(path)["w"], weights["w"])  # the failure mode: wrong numbers, no error
    with pytest.raises(CorruptFile, match="does not match its checksum"):
        load_torch_checked(path)


def test_a_file_without_a_checksum_passes_and_a_copy_carries_and_checks_it(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": 1}, legacy)
    verify(legacy)  # written before checksums: nothing to check against
    src, dst = tmp_path / "src.pt", tmp_path / "dst" / "dst.pt"
    save_torch_atomic({"a": torch.ones(1000)}, src)
    copy_atomic(src, dst)
    verify(dst)
    assert checksum_path(dst).read_text().split()[0] == checksum_path(src).read_text().split()[0]
    flip_middle_byte(src)
    with pytest.raises(CorruptFile):
        copy_atomic(src, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()


def test_a_flipped_classifier_is_retrained_not_used(tmp_path, monkeypatch):
    """Before: a bit-flipped cached classifier gave FD 2,284,048 instead of 4,740, rc 0."""
    from bench.scoring import classifier as C

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    path = C.classifier_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({"version": C.CLASSIFIER_VERSION, "state_dict": C.MnistCNN().state_dict(), "info": {}}, path)
    assert C._load(path) is not None
    flip_middle_byte(path)
    with pytest.warns(UserWarning, match="rebuilding the MNIST classifier.*checksum"):
        assert C._load(path) is None


def test_a_flipped_trained_model_is_not_adopted(tmp_path, monkeypatch):
    from bench.experiment.config import RunConfig
    from bench.training import trained

    monkeypatch.setenv("BENCH_TRAINED", str(tmp_path / "index"))
    cfg = RunConfig(dataset="synthetic", train_steps=3)
    wd = tmp_path / "wd"
    save_torch_atomic({"cfg": cfg.to_dict(), "step": 3, "status": "ok"}, wd / "checkpoint.pt")
    trained.register(cfg, wd, "t0")
    assert trained.find(cfg) == (wd / "checkpoint.pt").resolve()
    flip_middle_byte(wd / "checkpoint.pt")
    assert trained.find(cfg) is None  # the trial trains instead


def test_a_flipped_per_image_file_is_treated_as_missing(tmp_path):
    """The report's per-image features: numpy's zip reader checks each member's CRC-32."""
    from bench.report.perimage import per_image

    class Run:
        dir, cache = tmp_path, {}

    save_npz_atomic(tmp_path / "per_image" / "t0_ddim-5.npz", {"pixels": np.random.default_rng(0).random((200, 64))})
    assert per_image(Run, "t0", ("ddim", 5), "pixels").shape == (200, 64)
    flip_middle_byte(tmp_path / "per_image" / "t0_ddim-5.npz")
    Run.cache = {}
    assert per_image(Run, "t0", ("ddim", 5), "pixels") is None


@pytest.mark.skipif(SHARED is None or not (SHARED / "craters").is_dir(), reason="craters absent (set BENCH_DATA_ROOT)")
def test_a_flipped_craters_cache_is_rebuilt(tmp_path, monkeypatch):
    from bench.data.datasets import load_dataset

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    x = load_dataset("craters", "heldout", str(SHARED), 16)
    (cached,) = (tmp_path / "craters").glob("*.pt")
    flip_middle_byte(cached)
    with pytest.warns(UserWarning, match="rebuilding cached craters"):
        assert torch.equal(load_dataset("craters", "heldout", str(SHARED), 16), x)
    verify(cached)  # rewritten, with a fresh checksum


def test_a_truncated_mnist_gz_is_one_line_and_leaves_no_temp_file(tmp_path):
    from bench.data.datasets import MNIST_MD5, DataError, _decompress_mnist

    src = tmp_path / "raw"
    src.mkdir()
    for name in MNIST_MD5:
        with gzip.open(src / f"{name}.gz", "wb") as f:
            f.write(b"\0" * 100_000)
        data = (src / f"{name}.gz").read_bytes()
        (src / f"{name}.gz").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(), pytest.raises(DataError, match="cannot be decompressed.*truncated or damaged") as e:
        _decompress_mnist(src, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "out").iterdir()]  # no .tmp, no partial file
    shutil.rmtree(src)


def test_a_kill_between_the_checksum_and_the_rename_leaves_a_pair_that_verifies(tmp_path, monkeypatch):
    """The sidecar lists the new and the old digest while the file is renamed into place: a kill at that
    instant keeps the old checkpoint resumable instead of reading it as corrupt."""
    import bench.files as files

    path = tmp_path / "c.pt"
    save_torch_atomic({"step": 1}, path)
    real_replace = os.replace

    def killed(src, dst):
        if Path(dst) == path:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_torch_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert len(files.listed_checksums(path)) == 2 and load_torch_checked(path)["step"] == 1
    save_torch_atomic({"step": 3}, path)
    assert len(files.listed_checksums(path)) == 1 and load_torch_checked(path)["step"] == 3
