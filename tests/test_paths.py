"""Folders named by the environment are resolved once, in the driver (issue 31): Ray workers run in a
directory of their own, where a relative data root or cache names nothing."""

import os
from pathlib import Path

from bench.files import PATH_SETTINGS, absolute_path_settings


def test_relative_settings_become_absolute_against_the_driver_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"BENCH_DATA_ROOT": "../shared/data", "BENCH_CACHE": "cache", "BENCH_TRAINED": "/abs/trained",
           "TORCH_HOME": "~/torch", "OTHER": "rel"}
    changed = absolute_path_settings(env)
    assert env["BENCH_DATA_ROOT"] == str(tmp_path.parent / "shared" / "data")
    assert env["BENCH_CACHE"] == str(tmp_path / "cache")
    assert env["BENCH_TRAINED"] == "/abs/trained" and env["OTHER"] == "rel"  # absolute and unrelated: untouched
    assert env["TORCH_HOME"] == os.path.expanduser("~/torch")
    assert set(changed) == {"BENCH_DATA_ROOT", "BENCH_CACHE", "TORCH_HOME"}
    assert absolute_path_settings(env) == {}  # once resolved, nothing left to change
    assert set(PATH_SETTINGS) >= {"BENCH_DATA_ROOT", "BENCH_CACHE", "BENCH_TRAINED"}


def test_the_cli_resolves_before_planning(tmp_path, monkeypatch):
    """`bench run --dry-run` from another directory: the environment the dry run checked is absolute."""
    from bench.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_CACHE", "rel-cache")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert main(["run", "--grid", os.path.join(root, "experiments", "noise.toml"), "--preset", "smoke", "--dry-run",
                 "--local", "--out", str(tmp_path / "run")]) == 0
    assert os.environ["BENCH_CACHE"] == str(tmp_path / "rel-cache")


def test_a_dry_run_on_a_fresh_cache_trains_nothing_and_estimates_the_first_run(tmp_path, monkeypatch, capsys):
    """Issue 31: a first `--dry-run` took 6 minutes, silently training the MNIST classifier. It now
    estimates that training (and the reference statistics) and says so."""
    import pytest

    from bench.__main__ import main
    from bench.scoring import classifier

    data = os.environ.get("BENCH_DATA_ROOT", "")
    if not data or not os.path.isdir(os.path.join(data, "MNIST", "raw")):
        pytest.skip("MNIST raw files absent (set BENCH_DATA_ROOT)")

    def refuse(*a, **k):
        raise AssertionError("the dry run trained the classifier")

    monkeypatch.setattr(classifier, "train_classifier", refuse)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "fresh-cache"))
    assert main(["run", "--grid", "schedules", "--preset", "quick", "--dry-run", "--local", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "first-run work not cached yet" in out and "estimated, not run" in out, out
    assert not classifier.classifier_path().exists() and not (tmp_path / "fresh-cache" / "refstats").exists()


def test_a_relative_data_root_field_keeps_its_text_and_resolves_from_the_driver(tmp_path, monkeypatch):
    """`--set data_root=../x` is part of the trial id as typed; workers resolve it against the driver's directory."""
    from bench.data.datasets import data_root
    from bench.files import DRIVER_CWD

    monkeypatch.setenv(DRIVER_CWD, str(tmp_path / "driver"))
    monkeypatch.chdir(tmp_path)  # a worker's own directory
    assert data_root("../data") == tmp_path / "driver" / "../data"
    assert data_root("/abs") == Path("/abs")
