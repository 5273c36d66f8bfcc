"""Report: tables (csv/md/tex), figures, REPORT.md, idempotence, plot_schedules, the denoising strip.

A fake but realistic run directory is built in tmp_path with known metric values, so the aggregated
numbers can be asserted exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from bench.experiment.config import RunConfig
from bench.experiment.grid import Grid, trial_id
from bench.experiment.rundir import write_rows
from bench.process.schedules import make_betas, terminal_report
from bench.run.trial import error_rows

ARMS = {  # label -> schedule (geometric and scaled_linear: x_T is not pure noise)
    "linear / gaussian": "linear",
    "cosine / gaussian": "cosine",
    "geometric / gaussian": "geometric",
    "scaled_linear / gaussian": "scaled_linear",
}
# fid per (dataset, arm, seed): [ddim:10, ddim:50]; None = the trial diverged, "error" = it raised
FID = {
    ("mnist", "linear / gaussian", 0): [10.0, 9.0], ("mnist", "linear / gaussian", 1): [12.0, 9.0],
    ("mnist", "cosine / gaussian", 0): [8.0, 10.0], ("mnist", "cosine / gaussian", 1): [9.0, 12.0],
    ("mnist", "geometric / gaussian", 0): [20.0, 15.0], ("mnist", "geometric / gaussian", 1): None,
    ("mnist", "scaled_linear / gaussian", 0): "error", ("mnist", "scaled_linear / gaussian", 1): [30.0, 7.0],
    ("craters", "linear / gaussian", 0): [50.0, 40.0], ("craters", "linear / gaussian", 1): [52.0, 44.0],
    ("craters", "cosine / gaussian", 0): [60.0, 30.0], ("craters", "cosine / gaussian", 1): [62.0, 34.0],
    ("craters", "geometric / gaussian", 0): [70.0, 50.0], ("craters", "geometric / gaussian", 1): [72.0, 52.0],
    ("craters", "scaled_linear / gaussian", 0): [80.0, 60.0], ("craters", "scaled_linear / gaussian", 1): [82.0, 62.0],
}
ERROR = "RuntimeError: CUDA out of memory (fake, for the test)"
FLOORS = {"mnist": 2.5, "craters": 30.5}
BASE = dict(timesteps=1000, model="tiny", train_steps=200, batch_size=16, evals="ddim:10,ddim:50",
            n_samples=256, metrics="fd_mnist_clf,fid,kid")
INCEPTION, CLF = "inception-v3-pool3-2048", "mnist-cnn-penultimate-128"  # bench.scoring.metrics' extractor labels


def _cfg(ds: str, arm: str, seed: int) -> RunConfig:
    return RunConfig(dataset=ds, schedule=ARMS[arm], seed=seed, **BASE)


def _write_grid(run: Path) -> None:
    """grid.toml of the fake run: its 16 trials are exactly the grid's."""
    grid = Grid("schedules", "Which beta schedule? A test grid.", "quick", dict(BASE),
                {"schedule": list(ARMS.values()), "dataset": ["mnist", "craters"], "seed": [0, 1]})
    assert len(grid.trials()) == len(FID)
    (run / "grid.toml").write_text(grid.to_toml())


def _rows(cfg: RunConfig, fid) -> list[dict]:
    if fid == "error":
        return error_rows(cfg, RuntimeError(ERROR.split(": ", 1)[1]))
    status = "ok" if fid else "diverged"
    base = {**cfg.to_dict(), "trial_id": trial_id(cfg), "arm": cfg.arm(), "status": status, "error": "",
            "params": 1036417, "train_steps_done": 200 if fid else 150, "final_loss": 0.05 if fid else float("nan"),
            "train_s": 100.0, "train_images_per_s": 32.0, "n_train_images": 1000, "device": "cpu (x86_64, 2 threads)",
            "alpha_bar_T": terminal_report(make_betas(cfg.schedule, cfg.timesteps, **cfg.schedule_kwargs())).alpha_bar_T}
    rows = []
    for (sampler, steps), f in zip(cfg.evaluations, fid or [None, None]):
        row = {**base, "sampler": sampler, "sample_steps": steps, "trial_s": 130.0}
        if fid:
            row.update(fid=f, fid_features=INCEPTION, fid_n_ref=1000, kid=f / 1000, kid_std=0.0005, kid_subset_size=256,
                       kid_features=INCEPTION, kid_n_ref=1000, n_generated=256, sample_s=10.0, score_s=5.0,
                       sample_images_per_s=25.6, fd_mnist_clf_features=CLF, **_clf(cfg.dataset, f / 2))
        rows.append(row)
    return rows


def _clf(dataset: str, value: float) -> dict:
    """fd_mnist_clf as bench.scoring.metrics reports it: skipped (NaN, n_ref 0, a reason) on RGB craters."""
    if dataset == "craters":
        return {"fd_mnist_clf": float("nan"), "fd_mnist_clf_n_ref": 0,
                "fd_mnist_clf_skipped": "craters: the MNIST classifier needs 1-channel digit-sized images"}
    return {"fd_mnist_clf": value, "fd_mnist_clf_n_ref": 1000}


def _png(path: Path, seed: int, size=(146, 146)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _logs(run: Path, tid: str, diverged: bool) -> None:
    """loss.csv and loss_by_t.csv as bench.training.train writes them (a diverged trial has no loss_by_t)."""
    (run / "logs").mkdir(parents=True, exist_ok=True)
    steps = np.arange(0, 151 if diverged else 201, 10)
    loss = 0.5 * np.exp(-steps / 60) + 0.05 + (np.where(steps > 120, 10.0, 0.0) if diverged else 0)
    pd.DataFrame({"step": steps, "loss": loss, "lr": 2e-4, "images_per_s": 30.0}).to_csv(
        run / "logs" / f"{tid}_loss.csv", index=False)
    if not diverged:
        lo = np.arange(0, 1000, 100)
        snr = np.linspace(9, -10, 11)
        by_t = [{"window": w, "bin": b, "t_lo": lo[b], "t_hi": lo[b] + 99, "log_snr_lo": snr[b], "log_snr_hi": snr[b + 1],
                 "n": 320, "loss": 0.3 * np.exp(-lo[b] / 300) + (0.02 if w == "all" else 0.01)}
                for w in ("all", "second_half") for b in range(10)]
        pd.DataFrame(by_t).to_csv(run / "logs" / f"{tid}_loss_by_t.csv", index=False)


def make_run(run: Path) -> Path:
    rows = []
    for i, ((ds, arm, seed), fid) in enumerate(FID.items()):
        cfg = _cfg(ds, arm, seed)
        rows += _rows(cfg, fid)
        tid = trial_id(cfg)
        if fid == "error":
            continue
        _logs(run, tid, diverged=fid is None)
        if fid:
            for ev in ("ddim-10", "ddim-50"):
                _png(run / "samples" / f"{tid}_{ev}.png", i)
            _png(run / "samples" / f"{tid}_denoise.png", i, size=(90, 330))
    run.mkdir(parents=True, exist_ok=True)
    write_rows(run, rows)
    floors = [{"dataset": ds, "image_size": 0, "n_samples": 256, "fid": v, "fid_features": INCEPTION, "fid_n_ref": 1000,
               "kid": v / 1000, "kid_std": 0.0001, "kid_features": INCEPTION, "kid_n_ref": 1000,
               "fd_mnist_clf_features": CLF, **_clf(ds, v / 2), "n_generated": 200} for ds, v in FLOORS.items()]
    pd.DataFrame(floors).to_csv(run / "floors.csv", index=False)
    _write_grid(run)
    env = {"git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True}, "python": "3.11.2",
           "platform": "Linux x86_64", "versions": {"bench": "0.1.0", "torch": "2.5.0"}, "cpu_count": 2,
           "cuda_devices": [], "command": "python -m bench run --grid schedules --preset quick",
           "started": "2026-11-21T12:00:00+0000", "finished": "2026-11-21T12:30:00+0000", "wall_s": 1800.0,
           "runner": "local", "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    (run / "env.json").write_text(json.dumps(env))
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from bench.report import build_report

    run = make_run(tmp_path_factory.mktemp("report") / "quick-20261121-120000")
    report = build_report(run)
    return run, report


def _frame(run: Path, metric: str) -> pd.DataFrame:
    return pd.read_csv(run / "tables" / f"{metric}.csv")


def _row(df: pd.DataFrame, ds: str, arm: str) -> pd.Series:
    sel = df[(df["dataset"] == ds) & (df["arm"] == arm)]
    assert len(sel) == 1, (ds, arm, df[["dataset", "arm"]])
    return sel.iloc[0]


# --- tables --------------------------------------------------------------------------------------
def test_csv_table_aggregates_over_seeds_exactly(built):
    run, _ = built
    fid = _frame(run, "fid")
    assert list(fid.columns[:8]) == ["metric", "features", "n_generated", "n_reference", "floor_n", "dataset", "arm", "row"]
    assert {f"ddim:{k}_{c}" for k in (10, 50) for c in ("mean", "std", "n", "best")} <= set(fid.columns)
    # mnist: 4 arms + floor, craters: 2 arms + floor
    assert list(fid["dataset"]) == ["mnist"] * 5 + ["craters"] * 5
    lin = _row(fid, "mnist", "linear / gaussian")
    assert lin["ddim:10_mean"] == 11.0 and lin["ddim:10_std"] == pytest.approx(np.sqrt(2)) and lin["ddim:10_n"] == 2
    assert lin["ddim:50_mean"] == 9.0 and lin["ddim:50_std"] == 0.0
    cos = _row(fid, "mnist", "cosine / gaussian")
    assert cos["ddim:10_mean"] == 8.5 and bool(cos["ddim:10_best"]) and not bool(lin["ddim:10_best"])
    geo = _row(fid, "mnist", "geometric / gaussian")  # one seed diverged: n = 1, no std
    assert geo["ddim:10_n"] == 1 and geo["ddim:10_mean"] == 20.0 and np.isnan(geo["ddim:10_std"])
    sig = _row(fid, "mnist", "scaled_linear / gaussian")  # one seed raised; the other is best at ddim:50
    assert sig["ddim:50_n"] == 1 and bool(sig["ddim:50_best"])
    assert fid.groupby(["dataset"])[["ddim:10_best", "ddim:50_best"]].sum().eq(1).all().all()
    floor = _row(fid, "mnist", "real vs real (floor)")
    assert floor["row"] == "floor" and floor["ddim:10_mean"] == 2.5 and floor["ddim:50_mean"] == 2.5
    assert _row(fid, "craters", "cosine / gaussian")["ddim:50_mean"] == 32.0
    assert set(fid["features"]) == {INCEPTION} and set(fid["n_reference"]) == {1000} and set(fid["floor_n"]) == {200}
    kid = _row(_frame(run, "kid"), "mnist", "linear / gaussian")
    assert kid["ddim:10_mean"] == pytest.approx(0.011) and kid["ddim:10_std"] == pytest.approx(np.sqrt(2) / 1000)


def test_markdown_table(built):
    run, _ = built
    md = (run / "tables" / "fid.md").read_text()
    assert md.startswith(f"*fid (lower is better). Feature extractor: {INCEPTION}. n_generated = 256")
    assert "n_reference = 1000" in md and "200 held-out images" in md
    assert "| linear / gaussian | 11.00 ± 1.41 (n=2) | 9.00 ± 0.00 (n=2) |" in md
    assert "| cosine / gaussian | **8.50 ± 0.71** (n=2) | 11.00 ± 1.41 (n=2) |" in md
    assert "| geometric / gaussian | 20.00 (n=1 of 2; 1 diverged) | 15.00 (n=1 of 2; 1 diverged) |" in md
    assert "| scaled_linear / gaussian | 30.00 (n=1 of 2; 1 error) | **7.00** (n=1 of 2; 1 error) |" in md
    assert "| real vs real (floor) | 2.50 | 2.50 |" in md and "| real vs real (floor) | 30.50 | 30.50 |" in md
    assert md.count("**Dataset: ") == 2 and md.count("|---|---:|---:|") == 2
    assert md.count("**") == 2 * (2 + 2) + 2 * 2  # 2 best cells per dataset, plus the dataset headings
    clf = (run / "tables" / "fd_mnist_clf.md").read_text().split("**Dataset: craters**")[1]
    assert "| linear / gaussian | — | — |" in clf  # skipped on RGB images: no value, no crash
    kid = (run / "tables" / "kid.md").read_text()
    assert "**0.0085 ± 0.0007** (n=2)" in kid  # small values get enough decimals


def test_latex_table_is_balanced_booktabs(built):
    run, _ = built
    for metric in ("fid", "kid"):
        tex = (run / "tables" / f"{metric}.tex").read_text()
        assert tex.count("{") == tex.count("}")
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
        assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
        assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1 and tex.count(r"\midrule") == 2
        assert r"\caption{" in tex and r"n\_generated = 256" in tex and r"n\_reference = 1000" in tex
        body = tex.split("\n", 1)[1]  # after the % comment line
        assert not re.search(r"(?<!\\)[_%#$]", body.replace("$\\pm$", "")), "unescaped LaTeX special character"
        rows = [ln for ln in body.splitlines() if ln.endswith(r"\\") and "multicolumn" not in ln]
        assert len(rows) == 1 + 5 + 5 and all(len(re.findall(r"(?<!\\)&", ln)) == 2 for ln in rows)
        assert "±" not in tex
    tex = (run / "tables" / "fid.tex").read_text()
    assert r"cosine / gaussian & \textbf{8.50 $\pm$ 0.71} (n=2) & 11.00 $\pm$ 1.41 (n=2) \\" in tex
    assert r"scaled\_linear / gaussian & 30.00 (n=1 of 2; 1 error) & \textbf{7.00} (n=1 of 2; 1 error) \\" in tex
    assert r"\multicolumn{2}{c}{ddim}" in tex and r"\begin{tabular}{lrr}" in tex
    assert tex.count(r"\textbf{") == 4


# --- plots ---------------------------------------------------------------------------------------
PLOTS = ["fd_mnist_clf_by_arm", "fd_mnist_clf_vs_steps", "fid_by_arm", "fid_vs_steps", "kid_by_arm", "kid_vs_steps",
         "forest_fd_mnist_clf_mnist", "forest_fid_mnist", "forest_fid_craters", "forest_kid_mnist", "forest_kid_craters",
         "schedules", "loss_curves", "loss_by_t",
         "samples_mnist", "samples_craters", "denoise_mnist", "denoise_craters"]


def test_every_plot_exists_as_png_and_pdf(built):
    run, _ = built
    for name in PLOTS:
        for ext in ("png", "pdf"):
            path = run / "plots" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 2000, path
        with Image.open(run / "plots" / f"{name}.png") as im:
            assert min(im.size) > 200
        assert (run / "plots" / f"{name}.pdf").read_bytes().startswith(b"%PDF")


# --- REPORT.md -----------------------------------------------------------------------------------
def test_report_lists_arms_result_and_budget(built):
    run, report = built
    text = report.read_text()
    assert report == run / "REPORT.md"
    for arm in ARMS:
        assert f"`{arm}`" in text
    assert "Which beta schedule? A test grid." in text
    result = text.split("## Result", 1)[1].split("## Tables", 1)[0]
    assert "Of 16 trials, 14 finished, 1 diverged and 1 failed with an error" in result
    mnist, craters = result.split("**Seed planner**")[0].split("**craters**")
    assert "**mnist**, by `fd_mnist_clf`" in mnist and "**craters**" not in mnist  # the first metric of the grid
    # paired by seed: linear - cosine = (5 - 4, 6 - 4.5); scipy's paired t gives p = 0.126, the only finite p of
    # the evaluation (the other arms share one seed with cosine), so Holm = p; t_{0.975, 1} = 12.71: [-1.93, 4.43]
    assert stats.ttest_rel([5, 6], [4, 4.5]).pvalue == pytest.approx(0.1257, abs=1e-4)
    assert ("`ddim:10`: **cosine / gaussian** scored best (lowest), 4.25 ± 0.35 (n=2).\n"
            "  - no evidence of a difference between linear / gaussian and cosine / gaussian with 2 seeds (paired, "
            "p = 0.13, Holm 0.13); linear / gaussian - cosine / gaussian lies in [-1.9, 4.4]: linear / gaussian is at "
            "most 1.9 lower (better) and at most 4.4 higher (worse).") in mnist
    assert "geometric / gaussian - cosine / gaussian = 6 with 1 seed: no interval" in mnist
    assert "**scaled_linear / gaussian** scored best (lowest), 3.50 (n=1)" in mnist and "single seed" in mnist
    assert "no finished seed in common" in mnist  # geometric (seed 0) vs scaled_linear (seed 1) at ddim:50
    assert "By `fid` (lower is better) the best arm is cosine / gaussian at `ddim:10` and scaled_linear / gaussian" in mnist
    # fd_mnist_clf is skipped on RGB craters: its paragraph ranks by fid instead
    assert craters.startswith(", by `fid`") and "fd_mnist_clf" not in craters
    assert ("**linear / gaussian** scored best (lowest), 51.00 ± 1.41 (n=2).\n  - linear / gaussian is lower (better) "
            "than cosine / gaussian by 10 [10, 10] (paired, 2 seeds, p < 0.001, Holm < 0.001).") in craters
    # ddim:50, cosine best: geometric - cosine = (20, 18): p = 0.033 (scipy), t-interval 19 ± 12.7; Holm over the
    # 6 pairs: p sorted 0, 0, 0.022, 0.0335, 0.0335, 0.070 -> the fourth 3 x 0.0335 = 0.10 >= 0.05
    assert stats.ttest_rel([50, 52], [30, 34]).pvalue == pytest.approx(0.0335, abs=1e-4)
    assert ("cosine / gaussian is lower (better) than geometric / gaussian by 19 [6, 32] (paired, 2 seeds, p = 0.033, "
            "Holm 0.1); not significant after Holm's correction over 6 comparisons.") in craters
    assert "  - Real-vs-real floor at n = 200 (arms at n = 256): 30.5." in craters
    for banned in ("overlap", "not separated", "at this sample size"):
        assert banned not in text  # floors at n = 200 beside arms at n = 256
    planner = result.split("**Seed planner**", 1)[1]
    assert ("| craters | `ddim:50` | `fid` | geometric / gaussian vs cosine / gaussian | 2 | 19 | 1.41 | 2 | 3.2 | 4 |"
            in planner)
    assert "200 training steps at batch size 16" in result and "1,036,417 parameters" in result
    assert "T = 1000" in result and "256 generated images" in result and "30.0 min" in result
    for section in ("## What was compared", "## Tables", "## Figures", "## Method", "## Warnings", "## Provenance",
                    "## How to cite"):
        assert section in text
    assert "| cosine / gaussian | **8.50 ± 0.71** (n=2)" in text  # the tables are embedded


def test_report_warnings(built):
    _, report = built
    warnings = report.read_text().split("## Warnings", 1)[1].split("## Provenance", 1)[0]
    assert "`geometric / gaussian`: x_T is **not pure noise** (alpha_bar_T = 0.0228" in warnings
    assert "`scaled_linear / gaussian`: x_T is **not pure noise** (alpha_bar_T = 0.00466 > 0.001" in warnings
    assert "`linear / gaussian`: x_T" not in warnings and "`cosine / gaussian`: x_T" not in warnings
    assert "**Diverged**: `geometric / gaussian` on `mnist`, seed 1" in warnings
    assert ERROR in warnings and "**Error**: `scaled_linear / gaussian` on `mnist`, seed 0" in warnings
    assert "`fid` on a small sample: 256 < 2048 images" in warnings
    assert "`fd_mnist_clf` on a small sample" not in warnings  # 256 images >= 128 classifier features
    assert "`fd_mnist_clf` was not computed on `craters` (the table shows —): the MNIST classifier needs" in warnings
    assert "`kid` on a small sample" not in warnings  # KID is unbiased: no rank-deficiency warning
    assert "Preset `quick`" in warnings and "dirty" in warnings
    assert "`quick` preset has changed since this run" in warnings  # the test grid is not experiments' quick preset
    assert "Incomplete run" not in warnings


def test_report_figures_provenance_and_citation(built):
    run, report = built
    text = report.read_text()
    links = re.findall(r"\]\(((?:plots|tables)/[^)]+)\)", text)
    assert {f"plots/{p}.png" for p in PLOTS} <= set(links)
    assert all((run / link).is_file() for link in links)
    prov = text.split("## Provenance", 1)[1]
    assert "0123456789abcdef0123456789abcdef01234567" in prov and "**dirty**" in prov
    assert prov.count("| ok |") == 14 and "| diverged |" in prov and "| error |" in prov
    assert "| 0.036 h |" in prov  # 100 s train + 2 x (10 s sample + 5 s score)
    assert "@misc{bench-schedules-quick-20261121-120000," in text and "commit 0123456789ab-dirty" in text
    assert "year         = {2026}" in text


@pytest.mark.slow(reason="builds a whole report a second time through the CLI and compares every file's bytes, ~25 s")
def test_build_report_is_idempotent_and_the_cli_rebuilds_it(built, capsys):
    from bench.__main__ import main

    run, _ = built

    def digest():
        files = sorted(p for d in ("tables", "plots") for p in (run / d).iterdir()) + [run / "REPORT.md"]
        return {p.relative_to(run).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}

    before = digest()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "REPORT.md")
    assert digest() == before
    assert not list(run.rglob(".*.tmp"))


# --- robustness ------------------------------------------------------------------------------------
def test_report_without_optional_files(tmp_path):
    """rows.csv alone (no floors, grid, env, samples, logs): the report says what is missing."""
    from bench.report import build_report

    run = make_run(tmp_path / "run")
    for name in ("floors.csv", "grid.toml", "env.json"):
        (run / name).unlink()
    for d in ("samples", "logs"):
        for f in (run / d).iterdir():
            f.unlink()
    text = build_report(run).read_text()
    md = (run / "tables" / "fid.md").read_text()
    assert "real vs real (floor)" not in md and "no real-vs-real floor was recorded" in md
    assert "samples/" in text and "missing" in text and "no denoising strips" in text
    assert "No git commit recorded" in text
    assert (run / "plots" / "fid_by_arm.png").is_file() and not (run / "plots" / "loss_curves.png").exists()


def test_report_when_every_trial_failed(tmp_path):
    from bench.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    write_rows(run, error_rows(_cfg("mnist", "linear / gaussian", 0), RuntimeError("boom")))
    _write_grid(run)
    text = build_report(run).read_text()
    assert "RuntimeError: boom" in text and "Of 1 trial, 0 finished" in text
    assert "**Incomplete run**: rows.csv holds 1 of the grid's 16 trials" in text


def test_feature_dimension_from_the_metric_contract():
    from bench.report.caveats import _feature_dim

    assert _feature_dim("fid") == 2048 and _feature_dim("fd_mnist_clf") == 128 and _feature_dim("fd_pixels") == 64
    assert _feature_dim("kid") is None and _feature_dim("not_a_metric") is None


def test_loss_by_t_frame_accepts_several_layouts():
    from bench.report.plots import loss_by_t_frame

    a = loss_by_t_frame(pd.DataFrame({"t_lo": [0, 50], "t_hi": [49, 99], "loss": [0.2, 0.1]}))
    assert list(a["x"]) == [24.5, 74.5] and list(a["loss"]) == [0.2, 0.1] and a["log_snr"].isna().all()
    b = loss_by_t_frame(pd.DataFrame({"bin": [0, 1, 2], "mean_loss": [0.3, 0.2, 0.1]}))
    assert list(b["x"]) == [0, 1, 2] and list(b["loss"]) == [0.3, 0.2, 0.1]
    c = loss_by_t_frame(pd.DataFrame({"window": ["all", "second_half"], "bin": [0, 0], "t_lo": [0, 0], "t_hi": [9, 9],
                                      "log_snr_lo": [5.0, 5.0], "log_snr_hi": [3.0, 3.0], "loss": [0.5, 0.25]}))
    assert list(c["loss"]) == [0.25] and list(c["log_snr"]) == [4.0]
    d = loss_by_t_frame(pd.DataFrame({"step": [10, 10, 20, 20], "t": [1, 2, 1, 2], "loss": [9, 9, 0.5, 0.4]}))
    assert list(d["loss"]) == [0.5, 0.4]


# --- schedules figure and CLI -------------------------------------------------------------------------
def test_plot_schedules_every_registered_schedule(tmp_path):
    from bench.__main__ import main
    from bench.process.schedules import SCHEDULES

    out = tmp_path / "s.png"
    assert main(["plot-schedules", "--out", str(out)]) == 0
    assert out.stat().st_size > 10000
    from bench.report import plot_schedules

    pdf = plot_schedules(["linear", "geometric"], 100, tmp_path / "sub" / "two.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    assert len(SCHEDULES.names()) >= 4


# --- denoising strip -------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_name, kw", [("gaussian", {}), ("gamma", {"theta_0": 0.1})])
def test_denoise_strip_with_an_exact_oracle(tmp_path, noise_name, kw):
    """With eps*(x_t, t) = (x_t - sqrt(ab_t) x*)/sqrt(1 - ab_t) for one known x*, pred x_0 is x*."""
    from bench.process.diffusion import Diffusion
    from bench.process.noise import make_noise
    from bench.sampling.snapshots import denoise_strip, strip_timesteps

    diffusion = Diffusion(make_betas("linear", 200))
    noise = make_noise(noise_name, diffusion.alpha_bar, **kw)
    x_star = torch.linspace(-0.9, 0.9, 3 * 8 * 8).reshape(1, 3, 8, 8)
    ab = diffusion.alpha_bar

    def oracle(x_t, t):
        a = ab[t.cpu()].view(-1, 1, 1, 1)
        return ((x_t.double() - a.sqrt() * x_star.double()) / (1 - a).sqrt()).float()

    ts = strip_timesteps(200)
    assert ts == [9, 49, 99, 149, 199]
    x0 = x_star.expand(2, -1, -1, -1).clone()
    cells = denoise_strip(oracle, diffusion, noise, x0, ts, torch.Generator().manual_seed(3), tmp_path / "strip.png")
    assert cells.shape == (2, 1 + 2 * len(ts), 3, 8, 8)
    assert torch.equal(cells[:, 0], x0)
    gen = torch.Generator().manual_seed(3)
    for j, t in enumerate(ts):
        tt = torch.full((2,), t, dtype=torch.long)
        assert torch.allclose(cells[:, 1 + 2 * j], diffusion.q_sample(x0, tt, noise.sample((2, 3, 8, 8), tt, gen)))
        err = (cells[:, 2 + 2 * j] - x_star).abs().max().item()
        assert err < 1e-4 * (ab[t] ** -0.5).item(), (t, err)  # float32 rounding, amplified by 1/sqrt(ab_t)
    with Image.open(tmp_path / "strip.png") as im:
        assert im.size[0] > im.size[1] > 50
    with pytest.raises(ValueError):
        denoise_strip(oracle, diffusion, noise, x0, [200], torch.Generator(), tmp_path / "bad.png")


def test_citation_cff():
    text = (Path(__file__).resolve().parent.parent / "CITATION.cff").read_text()
    fields = dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln and not ln.startswith(" "))
    assert fields["cff-version"] == "1.2.0" and fields["version"] == "0.1.0" and fields["license"] == "MIT"
    assert fields["title"] == '"bench: a benchmark suite for diffusion beta schedules and noise types"'
    assert fields["date-released"] == "2026-11-21" and '- name: "The bench developers"' in text


# --- a real run --------------------------------------------------------------------------------------------
@pytest.fixture
def real_run(tmp_path):
    """A run made by the real pipeline: a copy of $BENCH_REPORT_RUN_DIR, or, with BENCH_REPORT_SMOKE=1, a fresh
    `bench run --grid schedules --preset smoke --local` (slow on a 2-core CPU); otherwise a copy of the
    committed schedules run the README's main table comes from, without its tables and plots."""
    import shutil

    from bench.__main__ import main

    if os.environ.get("BENCH_REPORT_RUN_DIR"):
        src = Path(os.environ["BENCH_REPORT_RUN_DIR"])
        return Path(shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("_work", "tables", "plots")))
    if os.environ.get("BENCH_REPORT_SMOKE") == "1":
        out = tmp_path / "smoke"
        assert main(["run", "--grid", "schedules", "--preset", "smoke", "--local", "--out", str(out)]) in (0, 1)
        return out
    src = Path(__file__).resolve().parent.parent / "results" / "schedules" / "quick-20261129-082029"
    return Path(shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("_work", "tables", "plots")))


@pytest.mark.slow(reason="a whole report of a real committed run (per-image bootstraps, every figure) built twice: ~100 s")
def test_report_on_a_real_run(real_run):
    from bench.experiment.rundir import read_rows
    from bench.report import build_report

    rows = read_rows(real_run)
    text = build_report(real_run).read_text()
    for arm in rows["arm"].unique():
        assert f"`{arm}`" in text
    for metric in {m for ms in rows["metrics"] for m in ms.split(",")} & set(rows.columns):
        tex = (real_run / "tables" / f"{metric}.tex").read_text()
        assert tex.count("{") == tex.count("}") and (real_run / "tables" / f"{metric}.csv").is_file()
        assert f"plots/{metric}_by_arm.png" in text and (real_run / "plots" / f"{metric}_by_arm.pdf").is_file()
    assert (real_run / "plots" / "schedules.png").is_file() and "## How to cite" in text
    before = (real_run / "REPORT.md").read_bytes()
    build_report(real_run)
    assert (real_run / "REPORT.md").read_bytes() == before


# --- paired comparisons, direction, floors -------------------------------------------------------------------
def test_paired_csv_has_every_pair_and_matches_scipy(built):
    from bench.report.paired import CSV_COLUMNS
    from bench.scoring.stats import COLUMNS

    run, _ = built
    df = pd.read_csv(run / "tables" / "paired_fid.csv")
    assert list(df.columns) == CSV_COLUMNS and CSV_COLUMNS[4:4 + len(COLUMNS)] == COLUMNS
    assert set(df["metric"]) == {"fid"}
    # craters has 4 arms at 2 seeds at both evaluations: 6 pairs each; mnist at ddim:10 too (n = 0 or 1 for most)
    craters = df[(df["dataset"] == "craters") & (df["sampler"] == "ddim") & (df["sample_steps"] == 50)]
    assert len(craters) == 6 and craters["vs_best"].sum() == 3 and set(craters.loc[craters["vs_best"], "reference"]) == {
        "cosine / gaussian"}
    values = {arm: [FID[("craters", arm, s)][1] for s in (0, 1)] for arm in ARMS}
    for _, r in craters.iterrows():
        a, b = values[r["arm"]], values[r["reference"]]
        assert r["diff"] == pytest.approx(np.mean(a) - np.mean(b)) and r["n"] == 2
        if np.ptp(np.subtract(a, b)) > 0:  # scipy returns nan for identical differences (stats.paired: p = 0)
            assert r["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
            half = stats.t.ppf(0.975, 1) * np.std(np.subtract(a, b), ddof=1) / np.sqrt(2)
            assert (r["lo"], r["hi"]) == pytest.approx((r["diff"] - half, r["diff"] + half))
    geo = craters[craters["arm"] == "geometric / gaussian"].set_index("reference")
    assert geo.loc["cosine / gaussian", "p_holm"] == pytest.approx(3 * geo.loc["cosine / gaussian", "p"])  # Holm, 6 pairs
    # Holm over the 3 comparisons with the best only: p = 0 (linear), 0.022 (scaled_linear), 0.0335 (geometric):
    # geometric's adjusted p is max(2 x 0.022, 1 x 0.0335) (step-down, monotone)
    p_scaled = stats.ttest_rel(values["scaled_linear / gaussian"], values["cosine / gaussian"]).pvalue
    assert geo.loc["cosine / gaussian", "p_holm_vs_best"] == pytest.approx(2 * p_scaled)
    assert (craters["holm_m"] == 6).all() and craters.loc[~craters["vs_best"], "p_holm_vs_best"].isna().all()


def test_paired_tables_in_the_report(built):
    run, report = built
    text = report.read_text()
    md = (run / "tables" / "paired_fid.md").read_text()
    assert md.strip() in text and "#### fid: paired comparisons with the best arm" in text
    assert "Holm's correction across the comparisons of one table (one dataset x evaluation x metric)" in md
    block = md.split("**craters, `ddim:50`**", 1)[1]
    assert block.startswith(": best arm cosine / gaussian; Holm over the 6 pairs of its 4 arms with a p-value:")
    assert "| arm | vs best | n | diff [95% CI] | p | Holm p | seeds for 80% power |" in block
    assert "| geometric / gaussian | cosine / gaussian | 2 | 19 [6, 32] | 0.033 | 0.1 | 2 |" in block
    assert "| linear / gaussian | cosine / gaussian | 2 | 10 [10, 10] | < 0.001 | < 0.001 | 2 |" in block
    mnist = md.split("**mnist, `ddim:10`**", 1)[1].split("**mnist, `ddim:50`**")[0]
    assert mnist.startswith(": best arm cosine / gaussian; Holm over the 1 pair of its 4 arms with a p-value:")
    assert "| geometric / gaussian | cosine / gaussian | 1 | 12 (no interval: 1 seed) | — | — | — |" in mnist
    assert "| geometric / gaussian | scaled_linear / gaussian | 0 | — (no seed in common) |" in md  # mnist, ddim:50
    assert "[CSV](tables/paired_fid.csv)" in text and "forest_fid_craters.png" in text


def _hib_run(tmp_path, monkeypatch) -> tuple[Path, str]:
    """The fake run plus a throwaway higher-is-better metric with values on craters only (first in the grid)."""
    from bench.scoring.metrics import METRICS, Metric

    name = "zz_test_report_higher_is_better"
    monkeypatch.setitem(METRICS._items, name, Metric("inception", lambda f, r: {}, "a test metric", higher_is_better=True))
    run = make_run(tmp_path / "run")
    rows = pd.read_csv(run / "rows.csv")
    hib = {"linear / gaussian": [0.50, 0.60], "cosine / gaussian": [0.55, 0.58], "geometric / gaussian": [0.30, 0.32],
           "scaled_linear / gaussian": [0.10, 0.20]}  # cosine best (highest mean); linear within its interval
    rows[name] = [hib[r.arm][r.seed] if r.dataset == "craters" else np.nan for r in rows.itertuples()]
    rows["metrics"] = name + "," + rows["metrics"]
    rows.to_csv(run / "rows.csv", index=False)
    return run, name


def test_higher_is_better_metric_is_bolded_at_its_maximum_and_worded(tmp_path, monkeypatch):
    from bench.report import load_run, result
    from bench.report.paired import write_paired
    from bench.report.plots import forest_xlabel
    from bench.report.tables import aggregate, to_markdown

    path, name = _hib_run(tmp_path, monkeypatch)
    run = load_run(path)
    md = to_markdown(run, name)
    assert md.startswith(f"*{name} (higher is better).") and "best (highest mean) per column in bold" in md
    assert "| cosine / gaussian | **0.565 ± 0.021** (n=2) | **0.565 ± 0.021** (n=2) |" in md
    assert "| linear / gaussian | 0.550 ± 0.071 (n=2) |" in md and md.count("**") == 2 * 2 + 2 * 2  # + 2 headings
    assert aggregate(run, "fid").query("best and dataset == 'craters'")["label"].tolist() == [
        "linear / gaussian", "cosine / gaussian"]  # fid is still lowest-best
    text = result(run, write_paired(run, path / "tables"))
    craters = text.split("**craters**", 1)[1].split("**Seed planner**")[0]
    assert craters.startswith(f", by `{name}` (higher is better;")
    assert "**cosine / gaussian** scored best (highest), 0.565 ± 0.021 (n=2)." in craters
    assert "cosine / gaussian is higher (better) than geometric / gaussian by 0.255 [" in craters
    assert ("no evidence of a difference between linear / gaussian and cosine / gaussian with 2 seeds (paired, p = 0.7"
            in craters)  # linear - cosine = (-0.05, +0.02)
    assert re.search(r"linear / gaussian is at most [0-9.]+ lower \(worse\) and at most [0-9.]+ higher \(better\)", craters)
    assert "lower (better)" not in craters.split("By `fid`")[0]
    assert forest_xlabel(name) == f"{name} difference to best arm (higher is better)"
    assert forest_xlabel("fid") == "fid difference to best arm (lower is better)"


def test_floors_state_their_own_n(tmp_path):
    from bench.report import load_run
    from bench.report.caveats import floor_sample_size
    from bench.report.tables import caption, floor_phrase

    path = make_run(tmp_path / "run")
    run = load_run(path)  # floors from 200 held-out images, arms from 256 generated
    assert floor_phrase(run, "fid", "craters") == "floor at n = 200 (arms at n = 256)"
    assert "at this sample size" not in caption(run, "fid") and "craters: floor at n = 200 (arms at n = 256)" in caption(
        run, "fid")
    assert len(floor_sample_size(run)) == 1 and "`fid` on `craters`, floor at n = 200 (arms at n = 256)" in floor_sample_size(
        run)[0]
    floors = pd.read_csv(path / "floors.csv")
    floors.loc[floors["dataset"] == "mnist", "n_generated"] = 256  # mnist's floor now at the arms' n
    floors.to_csv(path / "floors.csv", index=False)
    run = load_run(path)
    assert floor_phrase(run, "fid", "mnist") == "floor at this sample size (n = 256)"
    assert floor_phrase(run, "fid", "craters") == "floor at n = 200 (arms at n = 256)"
    assert "`on `mnist`" not in floor_sample_size(run)[0] and "`fid` on `mnist`" not in floor_sample_size(run)[0]
    # the best arm against the floor: only at the same n, only for a lower-is-better metric with a positive floor
    from bench.report import _times_floor
    assert _times_floor(run, "fid", "mnist", 5.0, 2.5) == "; the best arm's mean is 2.0x the floor"
    assert _times_floor(run, "fid", "craters", 51.0, 30.5) == ""  # floor at n = 200, arms at 256
    assert _times_floor(run, "fid", "mnist", 5.0, -0.1) == ""
    # a floor of training images against a held-out reference (Metric.floor_split, sharpness_gap) says so, with its n
    assert "held-out vs training images, 256, 200 held-out images" in caption(run, "fid")
    floors["fid_floor_split"], floors["fid_n_real"] = "train", 256
    floors.loc[floors["dataset"] == "craters", "fid_n_real"] = 98
    floors.to_csv(path / "floors.csv", index=False)
    run = load_run(path)
    assert "training images scored as the samples are, against the held-out images, 256, 98 training images" in caption(
        run, "fid")
    assert floor_phrase(run, "fid", "craters") == "floor at n = 98 (arms at n = 256)"  # its own n, not n_generated's 200
    assert floor_phrase(run, "fid", "mnist") == "floor at this sample size (n = 256)"


def test_learning_curve_rows_change_no_table(built, tmp_path):
    """The same run plus learning-curve rows (train_step 100 of 200, other values): every table and
    paired comparison is byte-identical, because they read the final rows only."""
    from bench.report import load_run
    from bench.report.paired import write_paired
    from bench.report.tables import write_tables

    run_dir, _ = built
    path = make_run(tmp_path / "run")
    rows = pd.read_csv(path / "rows.csv")
    rows["train_step"] = np.where(rows["status"] == "error", np.nan, rows["train_steps_done"])
    ok = rows[rows["status"] == "ok"].drop_duplicates("trial_id")  # one curve row per finished trial, at ddim:10
    curve = ok.assign(train_step=100, fid=999.0, kid=0.999, fd_mnist_clf=ok["fd_mnist_clf"].where(ok["fd_mnist_clf"].isna(), 499.0))
    pd.concat([curve, rows]).to_csv(path / "rows.csv", index=False)
    run = load_run(path)
    assert len(run.curve) == 14 and len(run.rows) == len(rows) and set(run.curve["fid"]) == {999.0}
    write_tables(run, path / "tables")
    write_paired(run, path / "tables")
    for f in sorted((run_dir / "tables").iterdir()):
        assert (path / "tables" / f.name).read_bytes() == f.read_bytes(), f.name


def test_rows_from_before_a_field_existed_label_as_the_same_arm():
    """A run resumed across a release: early rows lack a new column (NaN), later rows hold its
    default. They are the same arm, not 'cosine [skip_start=nan]' beside 'cosine [skip_start=0]'."""
    import numpy as np
    import pandas as pd

    from bench.experiment.config import fill_defaults
    from bench.report.tables import arm_labels

    rows = pd.DataFrame({"arm": ["cosine / gaussian"] * 3 + ["linear / gaussian"], "dataset": "mnist",
                         "seed": [0, 1, 2, 0], "skip_start": [np.nan, 0.0, 0.0, np.nan],
                         "reuse_training": [np.nan, False, False, np.nan], "cosine_s": [np.nan] * 4})
    assert list(arm_labels(rows))[0] == "cosine / gaussian [skip_start=nan, reuse_training=nan]"  # what the report said
    filled = fill_defaults(rows)
    assert list(arm_labels(filled)) == ["cosine / gaussian"] * 3 + ["linear / gaussian"]
    assert filled["skip_start"].tolist() == [0.0] * 4 and filled["cosine_s"].isna().all()  # a parameter stays unset


def test_seed_correlation_of_a_pair_is_pearsons_r_over_the_seeds_both_have():
    """r_seeds (tables/paired_*.csv): how much of the seed-to-seed spread two arms share, which pairing removes;
    against numpy's corrcoef, with its edge cases (fewer than 3 common seeds, no spread) as NaN."""
    import math

    import numpy as np
    import pandas as pd

    from bench.report.paired import seed_correlation

    a, b, c = [10.0, 12.0, 11.0, 15.0], [20.0, 25.0, 21.0, 24.0], [5.0, 5.0, 5.0, 5.0]
    df = pd.DataFrame({"label": ["a"] * 4 + ["b"] * 4 + ["c"] * 4, "seed": [0, 1, 2, 3] * 3, "value": a + b + c})
    assert math.isclose(seed_correlation(df, "a", "b"), np.corrcoef(a, b)[0, 1], rel_tol=1e-12)
    assert math.isclose(seed_correlation(df, "b", "a"), 11 / math.sqrt(14 * 17), rel_tol=1e-12)  # by hand
    assert math.isnan(seed_correlation(df, "a", "c"))  # no spread in c
    two = df[~((df["label"] == "b") & df["seed"].isin([2, 3]))]  # b has 2 seeds left
    assert math.isnan(seed_correlation(two, "a", "b"))
    flip = pd.DataFrame({"label": ["x"] * 3 + ["y"] * 3, "seed": [0, 1, 2] * 2, "value": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0]})
    assert math.isclose(seed_correlation(flip, "x", "y"), -1.0, rel_tol=1e-12)
