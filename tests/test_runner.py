"""The grid runner end to end on the smoke preset (synthetic data, CPU): --local vs Ray Tune,
driver kill + resume, worker death + retry from checkpoint, an external Ray cluster on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
pytestmark = [pytest.mark.slow(reason="whole grids in subprocesses (Ray Tune, --local, kills, an external cluster): "
                                      "the fan-out, resume and fault paths that unit tests stub out"),
              pytest.mark.xdist_group("ray")]  # one Ray cluster at a time under `-n 2 --dist loadgroup`
SHARED = os.environ.get("BENCH_DATA_ROOT", "")


def bench(*args, timeout=300, env_extra=None, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def trial_dirs(run: Path) -> list[Path]:
    return sorted((run / "_work" / "trials").iterdir())


def attempts(workdir: Path) -> list[dict]:
    return [json.loads(l) for l in (workdir / "attempts.jsonl").read_text().splitlines()]


def metric_cols(df):
    return [c for c in ("fd_pixels", "final_loss") if c in df.columns]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    proc = bench("run", "--grid", "noise", "--preset", "smoke", "--local", "--cpus-per-trial", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_local_smoke_writes_the_run_directory(local_run):
    df = pd.read_csv(local_run / "rows.csv")
    assert len(df) == 2 * 2  # 2 trials (gaussian, gamma) x 2 evaluations
    assert set(df["status"]) == {"ok"} and set(df["noise"]) == {"gaussian", "gamma"}
    assert set(zip(df["sampler"], df["sample_steps"])) == {("ddim", 5), ("ddpm", 10)}
    assert df["fd_pixels"].notna().all() and (df["fd_pixels"] > 0).all()
    assert (local_run / "grid.toml").exists() and (local_run / "floors.csv").exists()
    env = json.loads((local_run / "env.json").read_text())
    assert env["git"]["commit"] and "torch" in env["versions"] and "wall_s" in env
    assert len(list((local_run / "samples").glob("*.png"))) >= 4
    assert not list(local_run.glob(".*.tmp"))
    # the report was built by the run, lists both arms, and `bench report` rebuilds it identically
    text = (local_run / "REPORT.md").read_text()
    assert "`linear / gaussian`" in text and "`linear / gamma(theta_0=0.1)`" in text and "## How to cite" in text
    for f in ("tables/fd_pixels.csv", "tables/fd_pixels.md", "tables/fd_pixels.tex", "plots/fd_pixels_by_arm.png",
              "plots/schedules.pdf", "plots/samples_synthetic.png", "plots/denoise_synthetic.png"):
        assert (local_run / f).stat().st_size > 0, f
    again = bench("report", str(local_run))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (local_run / "REPORT.md").read_text() == text
    # held-out real images beside the samples: the first 64 of the held-out split (synthetic: 64 discs),
    # 8 x 8 tiles of 16 px with make_grid's 2-pixel padding
    from PIL import Image

    with Image.open(local_run / "samples" / "real_synthetic.png") as im:
        assert im.size == (8 * 18 + 2, 8 * 18 + 2)
    assert "after held-out real images for comparison by eye" in text


def test_env_records_the_fan_out_time_that_perf_compares(local_run):
    """env.json fanout_s spans the trials (so it is at least their summed wall time, run one after
    another) and lies inside the run's wall time; bench perf reads both back."""
    from bench.perf import fanout_times

    env = json.loads((local_run / "env.json").read_text())
    got = fanout_times(local_run, "local")
    trial_s = pd.read_csv(local_run / "rows.csv").groupby("trial_id")["trial_s"].max()
    assert got["local sum of trials"] == pytest.approx(trial_s.sum())
    assert trial_s.sum() <= got["local fan-out"] + 0.01 <= env["wall_s"] + 0.11  # fanout_s is rounded to 0.01 s
    assert got["local fan-out"] == env["fanout_s"]


def test_resume_from_committed_results_without_work_dir(local_run, tmp_path):
    """A fresh checkout has rows.csv but no _work: --resume keeps the finished trials, runs nothing."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(local_run, out, ignore=shutil.ignore_patterns("_work"))
    proc = bench("run", "--grid", "noise", "--preset", "smoke", "--local", "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 finished earlier" in proc.stderr and not (out / "_work" / "trials").exists()
    before = pd.read_csv(local_run / "rows.csv")
    after = pd.read_csv(out / "rows.csv")
    assert list(after["trial_id"]) == list(before["trial_id"])
    assert after["fd_pixels"].to_numpy() == pytest.approx(before["fd_pixels"].to_numpy())


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """The smoke grid under Ray Tune, with both experiment trackers on (offline, local files)."""
    out = tmp_path_factory.mktemp("ray") / "run"
    t0 = time.time()
    proc = bench("run", "--grid", "noise", "--preset", "smoke", "--out", str(out), "--cpus-per-trial", "1",
                 "--track", "mlflow,wandb", env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"ray smoke wall {time.time() - t0:.1f}s")
    return out


def test_ray_and_local_give_the_same_rows(local_run, ray_run):
    a = pd.read_csv(local_run / "rows.csv").sort_values(["trial_id", "sampler"]).reset_index(drop=True)
    b = pd.read_csv(ray_run / "rows.csv").sort_values(["trial_id", "sampler"]).reset_index(drop=True)
    assert list(a["trial_id"]) == list(b["trial_id"])
    for col in metric_cols(a):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-3, abs=1e-5), col


def test_trackers_record_every_trial_offline(ray_run, monkeypatch):
    """--track mlflow,wandb: one MLflow run per trial in the run directory's file store, holding the
    training curve and the final scores as rows.csv has them; one offline W&B run per trial; and the
    TensorBoard event files Ray Tune writes anyway (docs/cli.md, "Experiment tracking")."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    rows = pd.read_csv(ray_run / "rows.csv")
    client = MlflowClient(tracking_uri=(ray_run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("bench-noise")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_noise = {r.data.params["noise"]: r for r in runs}
    assert set(by_noise) == {"gaussian", "gamma"}
    for noise, run in by_noise.items():
        row = rows[(rows["noise"] == noise) & (rows["sampler"] == "ddim")].iloc[0]
        assert run.data.metrics["ddim:5/fd_pixels"] == pytest.approx(row["fd_pixels"], rel=1e-6)
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2  # the training curve, not one point
    assert len(list((ray_run / "wandb").glob("offline-run-*"))) == 2
    assert len(list((ray_run / "_work" / "ray" / "tune").rglob("events.out.tfevents.*"))) == 2


def test_killed_driver_resumes_without_retraining(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", "schedules", "--preset", "smoke",
                             "--local", "--cpus-per-trial", "1", "--out", str(out), "--set", "train_steps=60",
                             "--set", "eval_at=30"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # the driver has collected the first finished trial into rows.csv
            done = list((out / "_work" / "trials").glob("*/result.json")) if (out / "rows.csv").exists() else []
            if done:
                break
            assert proc.poll() is None, "driver ended before it could be killed"
            time.sleep(0.05)
        assert done, "no trial finished in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    first = done[0].parent
    first_result, first_curve = (first / "result.json").read_text(), (first / "curve.json").read_text()
    assert pd.read_csv(out / "rows.csv")["trial_id"].nunique() >= 1  # collected before the kill

    again = bench("run", "--grid", "schedules", "--preset", "smoke", "--local", "--cpus-per-trial", "1", "--out", str(out),
                  "--set", "train_steps=60", "--set", "eval_at=30", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(attempts(first)) == 1, "the finished trial was run again"
    assert (first / "result.json").read_text() == first_result
    assert (first / "curve.json").read_text() == first_curve  # its learning curve is kept, not re-evaluated
    df = pd.read_csv(out / "rows.csv")
    # per trial: the two final evaluations (ddim:5, ddpm:10) and one learning-curve point (step 30)
    assert df["trial_id"].nunique() == 2 and len(df) == 6 and set(df["status"]) == {"ok"}
    assert sorted(df["train_step"].dropna().astype(int)) == [30, 30, 60, 60, 60, 60]
    assert not [p for p in out.rglob("*.tmp")], "a half-written file was left behind"

    # resuming the same dir with another grid is refused (exit 2), not mixed
    other = bench("run", "--grid", "noise", "--preset", "smoke", "--local", "--out", str(out), "--resume")
    assert other.returncode == 2 and "holds a run of grid 'schedules'" in other.stderr


def test_worker_death_is_retried_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["--set", "noise=gaussian", "--set", "train_steps=400", "--set", "checkpoint_every=40"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", "noise", "--preset", "smoke",
                             "--out", str(out), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, killed = time.time() + 240, None
        while time.time() < deadline and killed is None:
            trials = list((out / "_work" / "trials").glob("*")) if (out / "_work" / "trials").exists() else []
            # wait until Ray itself holds checkpoints of the trial: two of them, since the newest one
            # is on disk a moment before Tune's controller has registered it
            ckpts = list((out / "_work" / "ray").rglob("checkpoint_*/checkpoint.pt")) if trials else []
            if len(ckpts) >= 2 and (trials[0] / "attempts.jsonl").exists():
                pid = attempts(trials[0])[0]["pid"]
                os.kill(pid, signal.SIGKILL)  # the Ray worker process running the trial
                killed = pid
                # as if the retry ran on another node: only Ray's persisted checkpoint can resume it
                (trials[0] / "checkpoint.pt").unlink()
            assert proc.poll() is None or killed, "run ended before the worker could be killed"
            time.sleep(0.05)
        assert killed, "no checkpoint appeared in time"
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    runs = attempts(trials[0])
    assert len(runs) == 2 and runs[1]["pid"] != killed
    assert runs[1]["resumed_from_step"] > 0, runs  # resumed from its checkpoint, not from step 0
    df = pd.read_csv(out / "rows.csv")
    assert set(df["status"]) == {"ok"} and (df["train_steps_done"] == 400).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(env, *args) -> subprocess.Popen:
    """A Ray node in the foreground (``--block``): terminating this process stops exactly this node,
    unlike ``ray stop``, which would stop every Ray cluster on the machine."""
    return subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_nodes(env, address: str, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True, text=True, env=env, timeout=60)
        if st.returncode == 0 and st.stdout.count(" node_") >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout} s")


def _stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)


def test_external_cluster_on_loopback(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # loopback only, no token: the nodes and the driver share this machine
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    nodes = [_ray_node(env, "--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats")]
    try:
        _wait_for_nodes(env, address, 1)
        nodes.append(_ray_node(env, f"--address={address}"))  # a second node on the same machine
        _wait_for_nodes(env, address, 2)
        out = tmp_path / "run"
        proc = bench("run", "--grid", "noise", "--preset", "smoke", "--out", str(out), "--address", address,
                     env_extra={"RAY_AUTH_MODE": "disabled"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        df = pd.read_csv(out / "rows.csv")
        assert df["trial_id"].nunique() == 2 and set(df["status"]) == {"ok"}
        assert json.loads((out / "env.json").read_text())["address"] == address
    finally:
        for node in reversed(nodes):
            _stop(node)


def test_max_concurrent_is_enforced_under_ray(tmp_path):
    """Issue 15: Tune ignored max_concurrent_trials beside a search algorithm (it logged so) and both
    trials overlapped on a machine with room for two."""
    out = tmp_path / "run"
    proc = bench("run", "--grid", "noise", "--preset", "smoke", "--out", str(out), "--cpus-per-trial", "1",
                 "--max-concurrent", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spans = sorted((attempts(wd)[0]["started"], (wd / "result.json").stat().st_mtime) for wd in trial_dirs(out))
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], f"trials overlapped: {spans}"


def test_sigterm_ends_a_ray_run_cleanly_and_resumably(tmp_path):
    """`kill` of the driver under Ray: ray.init had replaced bench's SIGTERM handler with its own,
    which aborted the driver (exit 134, a C++ stack, no --resume line). Now: exit 130, the --resume
    command, nothing recorded as failed, and no Ray process of this run left behind."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--grid", "noise", "--preset", "smoke", "--out", str(out),
                             "--cpus-per-trial", "1", "--set", "train_steps=3000", "--set", "checkpoint_every=5"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list(out.glob("_work/trials/*/checkpoint.pt")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint"
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err and "interrupted" in err and "SIGTERM received" not in err, err[-2000:]
    rows = pd.read_csv(out / "rows.csv") if (out / "rows.csv").exists() and (out / "rows.csv").stat().st_size else None
    assert rows is None or "error" not in set(rows["status"])


@pytest.mark.skipif(not SHARED or not (Path(SHARED) / "MNIST" / "raw").is_dir(), reason="MNIST raw files absent (set BENCH_DATA_ROOT)")
def test_a_relative_data_root_reaches_every_ray_worker(tmp_path):
    """Issue 31: the README's `export BENCH_DATA_ROOT=../shared/data`, followed literally, failed every
    Ray trial (workers run in Ray's own directory). From another working directory, with the data root
    and the cache given relative to it, a Ray smoke grid on MNIST trains, samples and scores."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "BENCH_DATA_ROOT": os.path.relpath(SHARED, cwd), "BENCH_CACHE": "cache", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", str(ROOT / "experiments" / "demo_mnist.toml"),
                           "--preset", "smoke", "--set", "dataset=mnist", "--cpus-per-trial", "1", "--out", "run"],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(cwd / "run" / "rows.csv")
    assert set(df["status"]) == {"ok"} and set(df["dataset"]) == {"mnist"} and (df["fd_pixels"] > 0).all()
    assert (cwd / "cache" / "data").is_dir()  # the relative cache, resolved in the driver too
    # bench's progress lines stand out: Ray Tune's status tables are off without --verbose
    assert "Trial status" not in proc.stdout + proc.stderr and "[1/1]" in proc.stderr
