"""Bad input: exit code 2, one clear line on stderr, no traceback, nothing started."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_line(err: str, *needles: str):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--grid", "schedule"], ["unknown grid 'schedule'", "did you mean schedules"]),
        (["--grid", "schedules", "--set", "schedule=cosin"], ["unknown schedule 'cosin'", "did you mean cosine"]),
        (["--grid", "noise", "--set", "noise=gama"], ["did you mean gamma"]),
        (["--grid", "schedules", "--set", "trian_steps=5"], ["unknown config key 'trian_steps'", "did you mean train_steps"]),
        (["--grid", "schedules", "--set", "train_steps=abc"], ["train_steps must be int", "'abc'"]),
        (["--grid", "schedules", "--set", "tau=fast"], ["tau must be float"]),
        (["--grid", "schedules", "--set", "train_steps=-5"], ["train_steps must be >= 1"]),
        (["--grid", "schedules", "--set", "n_samples=0"], ["n_samples must be >= 1"]),
        (["--grid", "schedules", "--set", "lr=-1"], ["lr must be > 0"]),
        (["--grid", "schedules", "--set", "evals=ddim"], ["SAMPLER:STEPS"]),
        (["--grid", "schedules", "--set", "evals=ddim:5000"], ["more steps than timesteps"]),
        (["--grid", "schedules", "--set", "noise=gamma", "--set", "theta_0=0"], ["theta_0 must be"]),
        (["--grid", "schedules", "--preset", "huge"], ["grid has no [presets.huge]; its presets: full, "]),
        (["--grid", "schedules", "--set", "schedule=sigmoid", "--set", "tau=-1"], ["tau must be > 0"]),
        (["--grid", "schedules", "--cpus-per-trial", "0"], ["--cpus-per-trial must be > 0"]),
        # issue 15: these hung (Ray waits for ever for resources it cannot have) or raised a traceback
        (["--grid", "schedules", "--cpus-per-trial", "nan"], ["--cpus-per-trial must be a finite number"]),
        (["--grid", "schedules", "--cpus-per-trial", "inf"], ["--cpus-per-trial must be a finite number"]),
        (["--grid", "schedules", "--cpus-per-trial", "64"], ["--cpus-per-trial 64", "no trial could ever start"]),
        (["--grid", "schedules", "--address", "127.0.0.1:1"], ["cannot reach a Ray cluster at 127.0.0.1:1", "ray start --head"]),
        (["--grid", "schedules", "--address", "nonsense"], ["is not HOST:PORT"]),
        (["--grid", "schedules", "--local", "--gpus-per-trial", "0.5"], ["--gpus-per-trial applies to Ray trials"]),
        (["--grid", "schedules", "--max-concurrent", "0"], ["--max-concurrent must be >= 1"]),
        # issue 15: these failed only after training (exit 1)
        (["--grid", "schedules", "--preset", "smoke", "--set", "n_samples=1"], ["n_samples=1", "at least 2 generated"]),
        (["--grid", "schedules", "--preset", "smoke", "--set", "n_reference=1"], ["n_reference=1", "at least 2 reference"]),
        (["--grid", "schedules", "--preset", "smoke", "--set", "image_size=3"], ["trial 0", "image_size must be >= 8, got 3"]),
        (["--grid", "schedules", "--preset", "smoke", "--set", "metrics="], ["metrics is empty"]),
        (["--grid", "schedules", "--preset", "smoke", "--set", "evals=ddim:2,ddim:2"], ["evals lists ddim:2 twice"]),
    ],
)
def test_bad_input_exit_2(capsys, argv, needles):
    code, out, err = run_cli(capsys, "run", *argv, "--dry-run")
    assert code == 2
    assert_one_clear_line(err, *needles)


def test_unknown_schedule_inside_a_grid_file(capsys, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[base]\ndataset = "synthetic"\n[axes]\nschedule = ["linear", "cosnie"]\n')
    code, _, err = run_cli(capsys, "run", "--grid", str(grid), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "trial 1", "unknown schedule 'cosnie'", "did you mean cosine")


def test_an_empty_grid_file_is_refused(capsys, tmp_path):
    grid = tmp_path / "empty.toml"
    grid.write_text('name = "empty"\n')
    code, _, err = run_cli(capsys, "run", "--grid", str(grid), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "neither [base] nor [axes]")


def test_malformed_toml_names_file_and_line(capsys, tmp_path):
    grid = tmp_path / "bad.toml"
    grid.write_text('name = "bad"\n[base]\ndataset = "synthetic"\ntrain_steps = = 3\n')
    code, _, err = run_cli(capsys, "run", "--grid", str(grid), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, str(grid), "malformed TOML", "line 4")


def test_wrong_type_in_grid_file(capsys, tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[base]\ntrain_steps = "many"\n')
    code, _, err = run_cli(capsys, "run", "--grid", str(grid), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "train_steps must be int")


def test_out_holding_another_grids_run_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "grid.toml").write_text('name = "noise"\npreset = "smoke"\n')
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--out", str(out), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "holds a run of grid 'noise'")


def test_out_that_is_not_a_run_dir_is_refused(capsys, tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--out", str(tmp_path), "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "not a bench run directory")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a GPU")
def test_gpus_per_trial_without_a_gpu_is_refused(capsys):
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--gpus-per-trial", "1", "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "--gpus-per-trial 1", "0 CUDA GPUs", "no trial could ever start")


def test_out_naming_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--out", str(tmp_path / "f" / "run"),
                           "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "is a file, not a folder")


def test_out_on_a_read_only_file_system_is_refused(capsys, tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))  # as on a read-only mount
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--out", str(tmp_path / "run"),
                           "--dry-run")
    assert code == 2
    assert_one_clear_line(err, "read-only file system")


def test_dry_run_prints_plan_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "run", "--grid", "noise", "--preset", "smoke", "--out", str(out), "--dry-run")
    assert code == 0, err
    assert "2 trials" in stdout and "axis noise" in stdout and "estimate" in stdout and "train_steps=20" in stdout
    assert not out.exists()


def test_full_grids_expand_as_specified(capsys):
    from bench.experiment.grid import load_grid

    sched = load_grid("schedules").trials()
    assert len(sched) == 4 * 2 * 3 and {c.schedule for c in sched} == {"linear", "cosine", "sigmoid", "exponential"}
    noise = load_grid("noise").trials()
    # gaussian once per (schedule, dataset, seed) + gamma x 3 theta_0
    assert len(noise) == (1 + 3) * 2 * 2 * 3
    assert {c.theta_0 for c in noise if c.noise == "gamma"} == {0.001, 0.01, 0.1}
    assert {c.theta_0 for c in noise if c.noise == "gaussian"} == {None}
    assert {c.dataset for c in load_grid("schedules", "quick").trials()} == {"mnist"}


def test_ls_models_describes_each_preset(capsys):
    code, out, _ = run_cli(capsys, "ls", "models")
    assert code == 0 and "dict()" not in out
    for name, params in (("tiny", "1.04M params"), ("small", "8.95M params"), ("base", "35.74M params")):
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert params in line and "channels" in line and "levels" in line, line


def test_ls_lists_every_registry(capsys):
    code, out, _ = run_cli(capsys, "ls")
    assert code == 0
    for word in ("schedules:", "cosine", "noises:", "gamma", "samplers:", "ddim", "datasets:", "craters",
                 "models:", "tiny", "metrics:", "fid", "grids:", "schedules", "config:", "theta_0"):
        assert word in out, word


def test_real_process_exit_code_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "nope", "--dry-run"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("bench: error: unknown grid 'nope'")
