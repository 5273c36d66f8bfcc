"""Faults a run directory must survive (issue 15): a second run into it, a flipped bit in the
reference-statistics cache, a garbled / empty / truncated rows.csv on --resume, a full disk, a
corrupt checkpoint, Ctrl-C; and the first command a newcomer types on a machine without a GPU.

Each test reproduces the fault first. The runs are the smoke grid at a few steps, one thread."""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.__main__ import main
from bench.run import dryrun, runner

ROOT = Path(__file__).resolve().parent.parent
SETS = ["--set", "train_steps=6", "--set", "checkpoint_every=3", "--set", "evals=ddim:2"]
SMOKE = ["--grid", "schedules", "--preset", "smoke", "--local", "--cpus-per-trial", "1", *SETS]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("bench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, threads):
    """One finished smoke run (2 trials); tests work on copies."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *SMOKE, "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(finished, tmp_path, monkeypatch):
    """A copy of the finished run; the report step is skipped (not what these tests are about)."""
    monkeypatch.setattr(runner, "build_report", lambda run_dir: None)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def attempts(workdir: Path) -> list[dict]:
    path = workdir / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trial_dirs(run: Path) -> list[Path]:
    return sorted((run / "_work" / "trials").iterdir())


def no_temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def bench_proc(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kw)


def _default_sigint() -> None:
    """A shell that starts the tests in the background (``cmd &``) ignores SIGINT in its children,
    and Python then never raises KeyboardInterrupt: give the child Ctrl-C back, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(cond, proc, timeout=120.0, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        assert proc.poll() is None, f"process ended before {what}: {proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- 1. one run per run directory ------------------------------------------------------------------
@pytest.mark.slow(reason="real subprocess grids: a second run into a busy directory, Ctrl-C, and --resume, ~15 s")
def test_second_run_is_refused_naming_the_first_and_ctrl_c_leaves_a_resumable_run(tmp_path, capsys, threads):
    """Before: both runs proceeded (rows of one, grid.toml of the other; trials trained twice), and
    Ctrl-C printed a 43-line traceback. Now the second exits 2 before any work, naming the first;
    Ctrl-C exits 130 with the --resume command, records nothing as failed; --resume then works."""
    from bench.files import lock_holder

    out = tmp_path / "run"
    args = ["--grid", "schedules", "--preset", "smoke", "--local", "--cpus-per-trial", "1",
            "--set", "train_steps=3000", "--set", "checkpoint_every=5", "--set", "evals=ddim:2"]
    first = bench_proc("run", *args, "--out", out)
    try:
        wait_for(lambda: list(out.glob("_work/trials/*/checkpoint.pt")), first, what="a first checkpoint")
        assert f"pid {first.pid}" in (lock_holder(out / "_work" / "run.lock") or "")
        grid_before = (out / "grid.toml").read_text()
        for extra in ([], ["--resume"]):
            code, _, err = run_cli(capsys, "run", *args, "--out", out, *extra)
            assert code == 2
            line = one_line(err)
            assert "in use by another bench run" in line and f"pid {first.pid}" in line, line
        other = ["--grid", "noise", "--preset", "smoke", "--local", "--out", out, "--resume"]  # another grid: same
        code, _, err = run_cli(capsys, "run", *other)
        assert code == 2 and f"pid {first.pid}" in one_line(err)
        assert (out / "grid.toml").read_text() == grid_before
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "--resume" in err and "interrupted" in err, err[-2000:]
    rows = pd.read_csv(out / "rows.csv") if (out / "rows.csv").exists() else pd.DataFrame({"status": []})
    assert "error" not in set(rows["status"])  # the interrupted trial is not a failure
    assert lock_holder(out / "_work" / "run.lock") is None

    # the lock went with the process: --resume continues the interrupted trial from its checkpoint
    again = bench_proc("run", *args, "--out", out, "--resume")
    try:
        wd = trial_dirs(out)[0]
        wait_for(lambda: len(attempts(wd)) >= 2, again, what="the resumed attempt")
        assert attempts(wd)[-1]["resumed_from_step"] > 0
        again.send_signal(signal.SIGTERM)  # `kill` ends a run as cleanly as Ctrl-C
        _, err = again.communicate(timeout=60)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 130 and "Traceback" not in err and "--resume" in err, err[-2000:]


def test_a_lock_left_by_a_killed_run_is_not_stale(tmp_path):
    """kill -9 of the holder frees the lock (flock dies with its process): a rerun is not refused."""
    from bench.experiment.rundir import LOCK
    from bench.files import lock_holder

    code = ("import sys, time; from pathlib import Path; from bench.experiment.rundir import locked\n"
            "with locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in lock_holder(tmp_path / LOCK)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / LOCK).exists() and lock_holder(tmp_path / LOCK) is None


def test_a_resume_may_add_trials_and_keeps_every_earlier_one(tmp_path, capsys, monkeypatch, threads):
    """A grid grew an arm mid-run (issue 35: SD3's eps/linear is LDM-Linear, added after 24 of 50 trials had
    finished): --resume keeps every finished trial, runs only the added ones, and records the extension in
    env.json's sessions and the report's Provenance. A grid that drops or changes a trial is still refused."""
    monkeypatch.setattr(runner, "build_report", lambda run_dir: None)
    out = tmp_path / "run"
    assert main(["run", *SMOKE, "--set", "schedule=linear", "--out", str(out)]) == 0  # one trial: linear
    first = pd.read_csv(out / "rows.csv")
    linear = first["trial_id"].iloc[0]
    mtime = (out / "_work" / "trials" / linear / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--resume")  # the preset's two schedules
    assert code == 0, err[-3000:]
    assert "this --resume adds 1 trial of 1 new arm (cosine" in err and "every earlier trial is kept" in err, err
    rows = pd.read_csv(out / "rows.csv")
    assert set(rows["schedule"]) == {"linear", "cosine"} and rows["trial_id"].nunique() == 2
    assert (out / "_work" / "trials" / linear / "result.json").stat().st_mtime_ns == mtime  # not trained again
    kept = rows[rows["trial_id"] == linear].drop(columns=["trial_s"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first.drop(columns=["trial_s"])[kept.columns], check_dtype=False)
    sessions = json.loads((out / "env.json").read_text())["sessions"]
    assert [s.get("grid_extended", "") for s in sessions] == ["", "1 trial of 1 new arm (cosine / gaussian)"]
    from bench.report import session_lines
    assert "the grid was extended by 1 trial of 1 new arm (cosine / gaussian)" in session_lines({"sessions": sessions})[-1]
    code, _, err = run_cli(capsys, "run", *SMOKE, "--set", "schedule=linear", "--out", out, "--resume")  # drops cosine
    assert code == 2 and "a --resume may only add trials" in one_line(err)


# --- 2. reference statistics with a checksum --------------------------------------------------------
def test_a_flipped_bit_in_cached_reference_statistics_is_rebuilt(tmp_path, monkeypatch):
    """Before: one flipped bit inside a cached tensor shifted every metric without a word."""
    from bench.scoring import metrics as M

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    M.compute_count.clear()
    a = M.reference_stats("synthetic", "train", "pixels", n_images=300)
    (path,) = (tmp_path / "refstats").glob("*.pt")
    with zipfile.ZipFile(path) as z:  # torch stores tensors uncompressed: find the features' bytes
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10  # one bit, in the middle of the largest tensor
    path.write_bytes(bytes(raw))
    tampered = torch.load(path, weights_only=True)  # torch itself does not notice
    assert not all(torch.equal(tampered[k], a[k]) for k in M.STATS_TENSORS)

    with pytest.warns(UserWarning, match="rebuilding reference statistics .*checksum does not match"):
        b = M.reference_stats("synthetic", "train", "pixels", n_images=300)
    assert all(torch.equal(b[k], a[k]) for k in M.STATS_TENSORS)
    assert M.compute_count[path.name] == 2
    assert M._load_stats(path, a["keys"]) is not None  # the rebuilt file verifies


# --- 3. rows.csv is derived: --resume rebuilds it ------------------------------------------------------
def test_garbled_rows_csv_is_rebuilt_from_work_and_env_history_kept(copy, capsys):
    """Before: a pandas traceback, after env.json had already been rewritten (start time lost)."""
    before = pd.read_csv(copy / "rows.csv")
    env_before = json.loads((copy / "env.json").read_text())
    (copy / "rows.csv").write_bytes(b"\x00\x07\xff garbage \x00\n\x01")
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 0, err[-2000:]
    assert "Traceback" not in err and "rebuilt from the 2 finished trials" in err
    after = pd.read_csv(copy / "rows.csv")
    assert list(after["trial_id"]) == list(before["trial_id"])
    assert after["fd_pixels"].to_numpy() == pytest.approx(before["fd_pixels"].to_numpy())
    assert all(len(attempts(wd)) == 1 for wd in trial_dirs(copy))  # nothing trained again
    env = json.loads((copy / "env.json").read_text())
    assert env["started"] == env_before["started"]
    assert [s["started"] for s in env["sessions"]][:1] == [env_before["started"]]
    assert env["sessions"][0]["finished"] == env_before["finished"] and len(env["sessions"]) == 2
    assert [s["git"]["commit"] for s in env["sessions"]] == [env_before["git"]["commit"], env["git"]["commit"]]
    from bench.report import build_report

    text = build_report(copy).read_text()
    assert "- Sessions (2; the commit above is the last one's):" in text
    assert f"  1. {env_before['started']} to {env_before['finished']}" in text


def test_empty_rows_csv_is_rebuilt(copy, capsys):
    before = pd.read_csv(copy / "rows.csv")
    (copy / "rows.csv").write_text("")
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert pd.read_csv(copy / "rows.csv")["fd_pixels"].to_numpy() == pytest.approx(before["fd_pixels"].to_numpy())


def test_a_row_cut_short_is_not_counted_as_finished(copy, capsys):
    """Before: with _work gone, a last row cut after ``,ok,`` was taken as finished and its metrics
    became silently empty. Now that trial runs again (and only that one)."""
    shutil.rmtree(copy / "_work")
    text = (copy / "rows.csv").read_text()
    lines = text.splitlines()
    cut = lines[-1][: lines[-1].index(",ok,") + 4]
    (copy / "rows.csv").write_text("\n".join(lines[:-1] + [cut]) + "\n")
    cut_tid = pd.read_csv(copy / "rows.csv", dtype={"trial_id": str})["trial_id"].iloc[-1]
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 0, err[-2000:]
    assert "cut short" in err and "runs again" in err and "1 finished earlier" in err
    ran = [p.name for p in (copy / "_work" / "trials").iterdir()]
    assert ran == [cut_tid]  # the complete trial was not run again
    df = pd.read_csv(copy / "rows.csv")
    assert len(df) == 2 and df["fd_pixels"].notna().all() and set(df["status"]) == {"ok"}


def test_unrecoverable_rows_csv_is_bad_input_before_anything_is_written(copy, capsys):
    shutil.rmtree(copy / "_work")
    (copy / "rows.csv").write_bytes(b"\x00\x00 not a table")
    env = (copy / "env.json").read_bytes()
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 2
    line = one_line(err)
    assert "rows.csv" in line and "cannot be recovered" in line and "git checkout" in line
    assert (copy / "env.json").read_bytes() == env and not (copy / "_work").exists()


@pytest.mark.parametrize("name,garble", [
    ("grid.toml", "name = = 1\n"), ("env.json", "{not json"), ("floors.csv", 'a,b\n"1,2\n3'),
    ("rows.csv", "trial_id,status,x\nabc,ok\n"),
])
def test_report_on_a_garbled_file_is_one_line(copy, capsys, name, garble):
    (copy / name).write_text(garble)
    code, _, err = run_cli(capsys, "report", copy)
    assert code == 2 and name in one_line(err)


# --- 4. a full disk ---------------------------------------------------------------------------------
def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_in_a_trial_is_isolated_and_leaves_no_temp_files(tmp_path, monkeypatch, capsys, threads):
    """Before: the failure-isolation handler itself failed writing error.txt (a 62-line chained
    traceback, no rows.csv, no report), and a partial checkpoint temp file was left filling the disk.
    Here every checkpoint write and error.txt / result.json in the trials' work dirs fail."""
    monkeypatch.setattr(runner, "build_report", lambda run_dir: None)
    real_save, real_write_text = torch.save, pathlib.Path.write_text

    def save(obj, f, *a, **kw):
        if "_work" in str(f):
            Path(f).write_bytes(b"partial checkpoint")  # some bytes made it before the disk filled
            raise _enospc(f)
        return real_save(obj, f, *a, **kw)

    def write_text(self, *a, **kw):
        if "_work" in str(self) and (self.name == "error.txt" or "result.json" in self.name):
            raise _enospc(self)
        return real_write_text(self, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    df = pd.read_csv(out / "rows.csv")
    assert set(df["status"]) == {"error"} and df["error"].str.contains("No space left on device").all()
    assert no_temp_files(out) == []
    assert "2 error" in err


def test_disk_full_for_rows_csv_keeps_running_and_says_where_results_are(tmp_path, monkeypatch, capsys, threads):
    monkeypatch.setattr(runner, "build_report", lambda run_dir: None)
    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path=None, *a, **kw):
        if path is not None and ".rows.csv." in str(path):
            Path(path).write_text("trial_id,sta")  # a partial temp file
            raise _enospc(path)
        return real_to_csv(self, path, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert err.count("cannot write") == 1  # said once, not per trial
    assert "could not be written" in err and "result.json" in err and "--resume" in err
    assert "[2/2]" in err and "all finished" in err  # progress lines, also without a terminal
    assert len(list(out.glob("_work/trials/*/result.json"))) == 2  # both trials ran
    assert no_temp_files(out) == [] and not (out / "rows.csv").exists()
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)  # space again: --resume writes rows.csv
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out, "--resume")
    assert code == 0 and len(pd.read_csv(out / "rows.csv")) == 2


def test_too_little_free_space_is_found_before_work(tmp_path, monkeypatch, capsys):
    from bench.experiment import rundir

    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**30, 2**30 - 2**21, 2**21))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert code == 2 and "MB free" in one_line(err)
    assert not out.exists()


# --- 5. a corrupt checkpoint ----------------------------------------------------------------------
def test_corrupt_checkpoint_of_an_unfinished_trial_is_moved_aside_and_the_trial_restarts(copy, capsys):
    """Before: every --resume failed on it, for ever, advising weights_only=False."""
    wd = trial_dirs(copy)[0]
    (wd / "result.json").unlink()  # unfinished
    ckpt = wd / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 0, err[-3000:]
    assert "cannot be read" in err and "moved aside" in err and "Traceback" not in err
    assert len([p for p in wd.glob("checkpoint.pt.corrupt-*") if p.suffix != ".sha256"]) == 1  # (its checksum moved with it)
    assert attempts(wd)[-1]["resumed_from_step"] == 0
    df = pd.read_csv(copy / "rows.csv")
    assert set(df["status"]) == {"ok"} and df["fd_pixels"].notna().all()


def test_a_flipped_byte_in_a_checkpoint_is_never_a_result(copy, capsys):
    """Issue 31: a checkpoint with one byte flipped in its middle (not truncated) loaded, went NaN two
    steps later and was reported as a *diverged* trial (rc 0). Its sidecar checksum now fails: the
    file is moved aside and the trial trains again from step 0, with the same scores as before."""
    wd = trial_dirs(copy)[0]
    before = pd.read_csv(copy / "rows.csv")
    (wd / "result.json").unlink()  # unfinished
    ckpt = wd / "checkpoint.pt"
    assert (wd / "checkpoint.pt.sha256").exists()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", copy, "--resume")
    assert code == 0, err[-3000:]
    assert "does not match its checksum" in err and "moved aside" in err and "Traceback" not in err
    assert attempts(wd)[-1]["resumed_from_step"] == 0
    after = pd.read_csv(copy / "rows.csv")
    assert set(after["status"]) == {"ok"}
    key = ["trial_id", "sampler", "sample_steps"]
    merged = before.merge(after, on=key, suffixes=("_a", "_b"))
    assert len(merged) == len(before) and (merged["fd_pixels_a"] == merged["fd_pixels_b"]).all()  # same machine, same seeds


def test_bench_sample_without_or_with_a_corrupt_checkpoint_is_one_line(copy, capsys, tmp_path):
    wd = trial_dirs(copy)[0]
    ckpt = wd / "checkpoint.pt"
    ckpt.write_bytes(b"\x80\x02garbage")
    code, _, err = run_cli(capsys, "sample", wd, "--out", tmp_path / "s.png")
    assert code == 2 and "cannot be read" in one_line(err)
    ckpt.unlink()
    code, _, err = run_cli(capsys, "sample", wd, "--out", tmp_path / "s.png")
    assert code == 2 and "no checkpoint" in one_line(err)


# --- 6. the first command ---------------------------------------------------------------------------
def _fake_estimate(seconds_per_trial):
    def estimate(trials, threads=None, concurrent=1, ray=False, sizes=None):
        return dryrun.Estimate([seconds_per_trial] * len(trials), 0.0, threads or 1, concurrent, ray, "cpu (test)")

    return estimate


def test_without_preset_a_cpu_runs_quick_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dryrun, "estimate", _fake_estimate(100.0))
    code, out, err = run_cli(capsys, "run", "--grid", "schedules", "--dry-run")
    assert code == 0
    assert "no --preset given: using quick" in err and "--preset full|quick|standard|gpu|long|smoke" in err
    assert "preset quick" in out and "estimate on this machine" in out


def test_without_preset_a_grid_without_quick_runs_as_written_and_says_so(monkeypatch, capsys, tmp_path):
    """The budget grid is a CPU study as written: no "GPU scale" and no advice to run a quick preset it lacks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dryrun, "estimate", _fake_estimate(100.0))
    code, out, err = run_cli(capsys, "run", "--grid", "budget", "--dry-run")
    assert code == 0
    assert "using full (no CUDA GPU here, and the grid has no quick preset: it runs as written)" in err
    assert "GPU scale" not in err and "preset full" in out
    # past the dry run: an estimate over the confirmation threshold is refused without the quick advice
    monkeypatch.setattr(dryrun, "estimate", _fake_estimate(3 * 86400.0))
    code, _, err = run_cli(capsys, "run", "--grid", "budget", "--out", tmp_path / "run")
    assert code == 2 and "the grid has no smaller preset but smoke" in one_line(err)
    assert "--preset quick" not in err and "GPU scale" not in err and not (tmp_path / "run").exists()


def test_without_preset_a_gpu_runs_the_gpu_preset_with_its_estimate(monkeypatch, capsys):
    """Issue 32: on CUDA the main command ran full (25-50 GPU hours) with no estimate; now the preset sized
    for one GPU, and the dry run's estimate counts packed trials as sharing that GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("bench.run.resources.check_memory", lambda trials, **kw: None)  # no device to ask
    monkeypatch.setattr("bench.run.checks.check_memory", lambda trials, **kw: None)
    seen = {}

    def fake(trials, threads=None, concurrent=1, ray=False, sizes=None):
        seen.update(trials=trials, concurrent=concurrent)
        return _fake_estimate(5400.0)(trials, threads, concurrent, ray, sizes)

    monkeypatch.setattr(dryrun, "estimate", fake)
    code, out, err = run_cli(capsys, "run", "--grid", "schedules", "--dry-run", "--gpus-per-trial", "0.25")
    assert code == 0, err
    assert "no --preset given: using gpu (CUDA is available" in err
    assert "preset gpu" in out and "estimate on this machine" in out
    assert {c.model for c in seen["trials"]} == {"small"} and len(seen["trials"]) == 20
    # CPU-only trials on a GPU host (--gpus-per-trial 0) are not a GPU run: quick, not gpu or full
    code, out, err = run_cli(capsys, "run", "--grid", "schedules", "--dry-run", "--gpus-per-trial", "0")
    assert code == 0 and "using quick" in err


def test_full_on_a_cpu_is_refused_with_its_estimate_unless_yes(monkeypatch, capsys, tmp_path):
    """Before: one line, then minutes of silence (Inception statistics, then days of training)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dryrun, "estimate", _fake_estimate(3 * 86400.0))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "full", "--out", out)
    assert code == 2
    line = one_line(err)
    assert "estimated" in line and "days" in line and "--preset quick" in line and "--yes" in line
    assert "paper scale" in err and not out.exists()

    ran = []
    monkeypatch.setattr(runner, "run_grid", lambda plan: ran.append(plan) or [])
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "full", "--out", out, "--yes")
    assert code == 0 and ran and "warning: preset full on a CPU" in err and "--preset quick" in err


def test_sampling_ticks_report_about_a_hundred_times_and_always_the_last_step(monkeypatch):
    from bench.run import trial

    seen = []
    tick = trial.sampling_ticks(seen.append, "ddpm:1000")
    for k in range(1, 1001):
        tick(k, 1000)
    assert [r["eval_step"] for r in seen] == list(range(10, 1001, 10))
    assert {(r["eval"], r["eval_steps"]) for r in seen} == {("ddpm:1000", 1000)} and seen[-1]["eval_s"] >= 0
    seen.clear()
    tick = trial.sampling_ticks(seen.append, "ddim:7")
    for k in range(1, 15):  # two batches of 7 steps: total 14 < 100, every step
        tick(k, 14)
    assert [r["eval_step"] for r in seen] == list(range(1, 15))


# --- 7. the dry run is bounded ------------------------------------------------------------------------
@pytest.mark.slow(reason="times the dry run of every full (GPU-scale) grid on this CPU, ~75 s: the estimate's own bounds")
def test_dry_run_of_the_full_grid_on_a_cpu_is_bounded_in_memory_and_time():
    """Before: killed by the kernel at ~22 GB after ~9 minutes (base UNet, 64x64, batch 128)."""
    code = ("import resource, sys, time\nfrom bench.__main__ import main\nt = time.time()\n"
            "rc = main(['run', '--grid', 'schedules', '--preset', 'full', '--dry-run'])\n"
            "print('RESULT', rc, time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and result, proc.stderr[-3000:]
    _, rc, wall, rss_kb = result[0].split()
    print(f"full schedules dry run: {float(wall):.1f} s, peak RSS {int(rss_kb) / 2**20:.2f} GB")
    assert rc == "0" and int(rss_kb) < 4 * 2**20  # < 4 GB (it was ~22)
    assert float(wall) < 600  # ~75 s here; the bound is against the old ~9 minutes, on any machine
    assert "days" in proc.stdout or " h in all" in proc.stdout  # the full grid on a CPU: hours to days


# --- 9. validation that used to come late -------------------------------------------------------------
def test_corrupt_held_out_image_is_found_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    src = Path(os.environ.get("BENCH_DATA_ROOT", "")) / "craters"
    if not (src / "train" / "images").is_dir():
        pytest.skip("craters absent (set BENCH_DATA_ROOT)")
    for split in ("train", "valid", "test"):
        (tmp_path / "data" / "craters" / split / "images").mkdir(parents=True)
        for f in sorted((src / split / "images").iterdir())[:2]:
            shutil.copyfile(f, tmp_path / "data" / "craters" / split / "images" / f.name)
    bad = sorted((tmp_path / "data" / "craters" / "valid" / "images").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--set", "dataset=craters",
                           "--set", f"data_root={tmp_path / 'data'}", "--dry-run")
    assert code == 2 and bad.name in one_line(err)


def test_unwritable_cache_is_found_before_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "a-file" / "cache"))
    code, _, err = run_cli(capsys, "run", *SMOKE, "--dry-run")
    assert code == 2 and "BENCH_CACHE" in one_line(err)


def test_a_parameter_that_applies_to_no_trial_is_bad_input(tmp_path, capsys):
    """--set tau=0.5 where every trial is linear used to run the defaults without a word."""
    code, _, err = run_cli(capsys, "run", "--grid", "schedules", "--preset", "smoke", "--set", "schedule=linear",
                           "--set", "tau=0.5", "--dry-run", "--out", tmp_path / "run")
    assert code == 2
    line = one_line(err)
    assert "tau is set but applies to no trial" in line and "schedule sigmoid" in line and "linear/gaussian" in line
    assert not (tmp_path / "run").exists()


def test_a_parameter_that_applies_to_some_trials_is_accepted():
    """The schedules grid has sigmoid among its schedules: tau applies there and is dropped elsewhere."""
    from bench.experiment.grid import check_params_apply, load_grid

    grid = load_grid("schedules", "quick", {"tau": 0.5})
    trials = grid.trials()
    check_params_apply(grid, trials, {"tau": 0.5})
    assert {c.schedule for c in trials if c.tau == 0.5} == {"sigmoid"}
    assert all(c.tau is None for c in trials if c.schedule != "sigmoid")


def test_every_interrupted_resume_stays_in_the_sessions(tmp_path):
    """Before: a --resume killed before it finished left only ``session_started`` in env.json, and the
    next --resume dropped it (the crater run's 3-hour middle session vanished from its provenance)."""
    from bench.experiment import rundir

    rundir.write_env(tmp_path, {"command": "first"})  # killed
    rundir.write_env(tmp_path, {"command": "second"}, resume=True)  # killed too
    env = rundir.write_env(tmp_path, {"command": "third"}, resume=True)
    out = rundir.finish(tmp_path, env, wall_s=10.0, fanout_s=9.0)
    assert [s["command"] for s in out["sessions"]] == ["first", "second", "third"]
    assert [s["finished"] for s in out["sessions"]][:2] == [None, None] and out["sessions"][2]["finished"]
    assert out["wall_s"] == 10.0 and "session_started" not in out
    assert json.loads((tmp_path / "env.json").read_text()) == out


# --- 7. a cause every trial shares (issue 31) --------------------------------------------------------
def test_trials_failing_alike_on_data_stop_the_grid_with_one_whole_message(tmp_path, monkeypatch, capsys, threads):
    """Before: 20 trials failed one by one (546 s), each line cut mid-word, then a report 'scored with
    none' and rc 1. Now the grid stops after two, says the whole message once, and writes no report."""
    from bench.data.datasets import DataError
    from bench.run import trial

    message = "MNIST not found: looked for ../shared/data/MNIST/raw/train-images-idx3-ubyte[.gz] " + "x" * 300 + " END"

    def fail(cfg, workdir, **kw):
        raise DataError(message)

    monkeypatch.setattr(trial, "run_trial", fail)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", *SMOKE, "--out", out)
    assert code == 1 and "Traceback" not in err
    stop = [line for line in err.splitlines() if "stopped after the first 2 trials failed with the same error" in line]
    assert len(stop) == 1 and stop[0].count(message) == 1 and "--resume" in stop[0]
    assert not (out / "REPORT.md").exists()
    df = pd.read_csv(out / "rows.csv")
    assert df["trial_id"].nunique() == 2 and set(df["status"]) == {"error"} and (df["error"] == f"DataError: {message}").all()


