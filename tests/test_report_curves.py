"""Report on runs with learning curves and per-image data: final rows only, learning curves (Kendall's
tau, flips), the two-level bootstrap interval of each comparison with the best arm, the brightness
offsets, zero-terminal-SNR plots and the loss label of each prediction target.

A fake run directory with hand-chosen values: 3 arms x 3 seeds on mnist, one evaluation (ddim:10),
a learning-curve point at step 50 of 100 (batch size 8), per-image features and reference statistics.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

from bench.experiment.config import RunConfig
from bench.experiment.grid import trial_id
from bench.experiment.rundir import write_rows
from bench.scoring.distances import frechet_distance, gaussian_stats
from bench.scoring.stats import bootstrap_two_level

ARMS = {"linear / gaussian": "linear", "cosine / gaussian": "cosine", "sigmoid / gaussian": "sigmoid"}
SEEDS = (0, 1, 2)
SEED_SHIFT = {0: -1.0, 1: 0.0, 2: 1.0}
#: fd_mnist_clf means over seeds (each seed: mean + SEED_SHIFT): at step 50 linear leads cosine, at the end
#: cosine leads linear (one flip); sigmoid is last at both
CURVE_MEAN = {"linear / gaussian": 10.0, "cosine / gaussian": 12.0, "sigmoid / gaussian": 20.0}
FINAL_MEAN = {"linear / gaussian": 6.0, "cosine / gaussian": 5.0, "sigmoid / gaussian": 9.0}
#: precision_clf (higher is better) at the end: sigmoid highest
PRECISION = {"linear / gaussian": 0.5, "cosine / gaussian": 0.6, "sigmoid / gaussian": 0.7}
#: brightness: each seed's mean intensity of its samples; the data's is 0.13
MEAN_REF = 0.13
BRIGHT = {"linear / gaussian": [0.10, 0.11, 0.105], "cosine / gaussian": [0.15, 0.16, 0.155],
          "sigmoid / gaussian": [0.10, 0.16, 0.13]}
N_IMAGES, DIM = 40, 6  # small per-image features keep the bootstrap fast in a test
FEATURE_SHIFT = {"linear / gaussian": 0.3, "cosine / gaussian": 0.0, "sigmoid / gaussian": 0.8}
BASE = dict(timesteps=100, model="tiny", train_steps=100, batch_size=8, evals="ddim:10", n_samples=N_IMAGES,
            metrics="fd_mnist_clf,fd_mnist_clf_inf,precision_clf,brightness_gap", eval_at="0.5",
            curve_metrics="fd_mnist_clf", image_seeds="per_seed", n_reference=500)


def _cfg(arm: str, seed: int) -> RunConfig:
    return RunConfig(dataset="mnist", schedule=ARMS[arm], seed=seed, **BASE)


def features(arm: str, seed: int) -> np.ndarray:
    """Per-image features of (arm, seed): a seed x image effect shared by every arm (image i has the same
    seed in every arm), plus the arm's shift and a small arm-specific noise; float16 as the trials keep them."""
    shared = np.random.default_rng(100 + seed).normal(size=(N_IMAGES, DIM))
    own = np.random.default_rng([seed, list(ARMS).index(arm)]).normal(scale=0.3, size=(N_IMAGES, DIM))
    return (shared + own + FEATURE_SHIFT[arm]).astype(np.float16)


def brightness_images(arm: str, seed: int) -> np.ndarray:
    m = BRIGHT[arm][seed]
    return (m + np.linspace(-0.05, 0.05, N_IMAGES)).astype(np.float16)[:, None]


REF_MU, REF_SIGMA = np.zeros(DIM), np.eye(DIM) * 1.2


def make_curve_run(run: Path, per_image: bool = True) -> Path:
    rows = []
    for arm in ARMS:
        for seed in SEEDS:
            cfg = _cfg(arm, seed)
            tid = trial_id(cfg)
            base = {**cfg.to_dict(), "trial_id": tid, "arm": cfg.arm(), "status": "ok", "error": "", "params": 1000,
                    "train_steps_done": 100, "final_loss": 0.05, "train_s": 60.0, "n_train_images": 1000,
                    "alpha_bar_T": 4e-5, "device": "cpu", "sampler": "ddim", "sample_steps": 10}
            rows.append({**base, "train_step": 50, "fd_mnist_clf": CURVE_MEAN[arm] + SEED_SHIFT[seed],
                         "fd_mnist_clf_features": "clf", "fd_mnist_clf_n_ref": 500, "n_generated": N_IMAGES,
                         "sample_s": 7.0, "score_s": 1.0})
            rows.append({**base, "train_step": 100, "fd_mnist_clf": FINAL_MEAN[arm] + SEED_SHIFT[seed],
                         "fd_mnist_clf_features": "clf", "fd_mnist_clf_n_ref": 500,
                         "fd_mnist_clf_inf": FINAL_MEAN[arm] - 1 + SEED_SHIFT[seed], "fd_mnist_clf_inf_n_ref": 500,
                         "fd_mnist_clf_inf_features": "clf", "precision_clf": PRECISION[arm] + 0.01 * SEED_SHIFT[seed],
                         "precision_clf_features": "clf", "precision_clf_n_ref": 500,
                         "brightness_gap": abs(BRIGHT[arm][seed] - MEAN_REF), "brightness_gap_mean_fake": BRIGHT[arm][seed],
                         "brightness_gap_mean_ref": MEAN_REF, "brightness_gap_n_ref": 500, "brightness_gap_features": "mi",
                         "n_generated": N_IMAGES, "sample_s": 10.0, "score_s": 2.0, "trial_s": 80.0})
            if per_image:
                (run / "per_image").mkdir(parents=True, exist_ok=True)
                np.savez_compressed(run / "per_image" / f"{tid}_ddim-10.npz", **{
                    "mnist-classifier": features(arm, seed), "mean-intensity": brightness_images(arm, seed)})
    run.mkdir(parents=True, exist_ok=True)
    write_rows(run, rows)
    if per_image:
        (run / "references").mkdir(exist_ok=True)
        np.savez_compressed(run / "references" / "mnist-28px-mnist-classifier-n500.npz", mu=REF_MU, sigma=REF_SIGMA)
        np.savez_compressed(run / "references" / "mnist-28px-mean-intensity-n500.npz", mu=np.array([MEAN_REF]),
                            sigma=np.array([[0.04 ** 2]]))
    (run / "env.json").write_text(json.dumps({"git": {"commit": "abc", "dirty": False}, "wall_s": 100.0}))
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from bench.report import build_report

    run = make_curve_run(tmp_path_factory.mktemp("curves") / "quick-20261129-000000")
    return run, build_report(run).read_text()


# --- final rows only ------------------------------------------------------------------------------------
def test_final_mask_separates_curve_rows_from_final_rows():
    from bench.report.tables import curve_rows, final_mask, final_rows

    rows = pd.DataFrame([
        {"trial_id": "a", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 100, "train_step": 50},
        {"trial_id": "a", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 100, "train_step": 100},
        {"trial_id": "a", "sampler": "ddpm", "sample_steps": 50, "train_steps": 100, "train_steps_done": 100, "train_step": 100},
        # diverged at step 70: evaluated there (train_step 70 < train_steps 100 is still its final row)
        {"trial_id": "b", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 70, "train_step": 50},
        {"trial_id": "b", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 70, "train_step": 70},
        # a curve point at the very step training stopped: the later row is the final one
        {"trial_id": "c", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 60, "train_step": 60},
        {"trial_id": "c", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_steps_done": 60, "train_step": 60},
        # an error row (no train_step) and a row of an older run (no train_steps_done either)
        {"trial_id": "d", "sampler": "ddim", "sample_steps": 10, "train_steps": 100},
        {"trial_id": "e", "sampler": "ddim", "sample_steps": 10, "train_steps": 100, "train_step": np.nan},
    ])
    assert final_mask(rows).tolist() == [False, True, True, False, True, False, True, True, True]
    assert len(final_rows(rows)) == 6 and curve_rows(rows).index.tolist() == [0, 3, 5]
    old = rows.drop(columns="train_step")  # a run without learning curves: every row is final
    assert final_mask(old).all()


def test_tables_and_comparisons_use_final_rows_only(built):
    from bench.report import load_run
    from bench.report.tables import aggregate

    run_dir, text = built
    run = load_run(run_dir)
    assert len(run.rows) == 9 and len(run.curve) == 9 and len(run.all_rows) == 18
    assert set(run.rows["train_step"]) == {100} and set(run.curve["train_step"]) == {50}
    agg = aggregate(run, "fd_mnist_clf").set_index("label")
    assert agg.loc["linear / gaussian", "mean"] == 6.0 and agg.loc["linear / gaussian", "n"] == 3  # not (6 + 10) / 2
    assert agg.loc["linear / gaussian", "std"] == pytest.approx(1.0) and bool(agg.loc["cosine / gaussian", "best"])
    table = pd.read_csv(run_dir / "tables" / "fd_mnist_clf.csv")
    assert table.loc[table["arm"] == "sigmoid / gaussian", "ddim:10_mean"].item() == 9.0
    paired = pd.read_csv(run_dir / "tables" / "paired_fd_mnist_clf.csv")
    lin = paired[(paired["arm"] == "linear / gaussian") & (paired["reference"] == "cosine / gaussian")].iloc[0]
    assert lin["n"] == 3 and lin["diff"] == pytest.approx(1.0) and lin["lo"] == lin["hi"] == pytest.approx(1.0)
    assert "**cosine / gaussian** scored best (lowest), 5.00 ± 1.00 (n=3)." in text
    # device time counts the learning-curve evaluation too: 60 s train + (10 + 2) final + (7 + 1) curve = 80 s
    from bench.report import trial_seconds

    assert set(trial_seconds(run).values()) == {80.0}
    assert "at step 50 of 100" in text and "every table and comparison uses the final evaluation" in text


# --- learning curves ---------------------------------------------------------------------------------------
def test_curve_frame_means_bands_and_final_point(built):
    from bench.report import load_run
    from bench.report.curves import curve_frame, curve_metrics

    run = load_run(built[0])
    assert curve_metrics(run) == ["fd_mnist_clf"]
    f = curve_frame(run, "mnist", "fd_mnist_clf")
    lin = f[f["label"] == "linear / gaussian"]
    assert lin["train_step"].tolist() == [50, 100] and lin["images"].tolist() == [400.0, 800.0]  # step x batch 8
    assert lin["final"].tolist() == [False, True] and lin["n"].tolist() == [3, 3]
    assert lin["mean"].tolist() == [10.0, 6.0] and lin["min"].tolist() == [9.0, 5.0] and lin["max"].tolist() == [11.0, 7.0]
    assert lin["sd"].tolist() == pytest.approx([1.0, 1.0])
    assert f["label"].tolist()[::2] == list(ARMS)  # run order


def test_kendall_tau_and_the_flip(built):
    from bench.report import load_run
    from bench.report.curves import agreement, curve_frame

    run = load_run(built[0])
    (row,) = agreement(curve_frame(run, "mnist", "fd_mnist_clf"), "fd_mnist_clf")
    # means at step 50: 10, 12, 20; at the end: 6, 5, 9: linear-cosine discordant, the other two pairs
    # concordant, so tau = (2 - 1) / 3
    assert row["tau"] == pytest.approx(1 / 3) and row["tau"] == pytest.approx(st.kendalltau([10, 12, 20], [6, 5, 9])[0])
    assert row["train_step"] == 50 and row["end_step"] == 100 and row["images"] == 400
    assert row["flips"] == [("linear / gaussian", "cosine / gaussian")]  # linear better then, cosine at the end
    # higher-is-better reading of the same numbers: cosine was better then (12 > 10), linear at the end (6 > 5)
    hib = agreement(curve_frame(run, "mnist", "fd_mnist_clf"), "precision_clf")[0]
    assert hib["flips"] == [("cosine / gaussian", "linear / gaussian")] and hib["tau"] == pytest.approx(1 / 3)


def test_learning_curve_words_and_plot(built):
    run_dir, text = built
    assert ("Learning curve of `fd_mnist_clf` (`ddim:10`; means over the seeds that finished): at 400 training images "
            "(step 50 of 100) Kendall's tau between the arms' order then and at the end is 0.33 (3 arms); 1 pair flip: "
            "linear / gaussian was better than cosine / gaussian then, cosine / gaussian is better at the end.") in text
    assert (run_dir / "plots" / "curve_fd_mnist_clf_mnist.png").stat().st_size > 5000
    assert "](plots/curve_fd_mnist_clf_mnist.png)" in text and "min-max range over seeds (band; n = 3 seeds" in text


def test_paired_gaps_along_the_curve(built):
    """Issue 36: the final best arm (cosine, mean 5) against each other arm at every point, paired by
    seed. SEED_SHIFT moves every arm alike, so each gap is exact (sd 0, the interval one point): at step
    50 cosine is 2 behind linear (12 vs 10) and 8 ahead of sigmoid; at the end 1 and 4 ahead."""
    from bench.report import load_run
    from bench.report.curves import paired_along

    run_dir, text = built
    t = paired_along(load_run(run_dir), "mnist", "fd_mnist_clf")
    assert set(t["best"]) == {"cosine / gaussian"} and set(t["n"]) == {3}
    got = {(r.other, r.train_step): (r.gap, r.lo, r.hi) for r in t.itertuples()}
    assert got == {("linear / gaussian", 50): (-2.0, -2.0, -2.0), ("linear / gaussian", 100): (1.0, 1.0, 1.0),
                   ("sigmoid / gaussian", 50): (8.0, 8.0, 8.0), ("sigmoid / gaussian", 100): (4.0, 4.0, 4.0)}
    assert (run_dir / "tables" / "curve_pairs.csv").exists()
    assert ("is ahead of each other arm at each of 2 points (training images; the last is the end of training; "
            "positive = ahead, paired by seed, 95% t-interval): linear / gaussian -2 [-2, -2] at 400, 1 [1, 1] at 800 "
            "(interval above 0 at 1 of 2); sigmoid / gaussian 8 [8, 8] at 400, 4 [4, 4] at 800 (interval above 0 at 2 "
            "of 2).") in text


def test_paired_gaps_match_scipy_with_spread(built):
    """With seed-to-seed spread the gap's interval and p are scipy's paired t-test on the same values."""
    from bench.report import load_run
    from bench.report.curves import paired_along

    run = load_run(built[0])
    noise = {0: 0.3, 1: -0.5, 2: 0.1}
    for frame in (run.rows, run.curve):
        bump = frame["label"].eq("linear / gaussian") * frame["seed"].map(noise)
        frame.loc[:, "fd_mnist_clf"] = frame["fd_mnist_clf"] + bump
    t = paired_along(run, "mnist", "fd_mnist_clf")
    r = t[(t.other == "linear / gaussian") & (t.train_step == 50)].iloc[0]
    lin = np.array([10.0 + SEED_SHIFT[s] + noise[s] for s in SEEDS])
    cos = np.array([12.0 + SEED_SHIFT[s] for s in SEEDS])
    ref = st.ttest_rel(-cos, -lin)
    lo, hi = ref.confidence_interval(0.95)
    assert (r.gap, r.lo, r.hi, r.p) == pytest.approx((np.mean(lin - cos), lo, hi, ref.pvalue), rel=1e-9)


def test_learning_curve_without_a_final_value_says_so(tmp_path):
    from bench.report import load_run
    from bench.report.curves import words

    path = make_curve_run(tmp_path / "run", per_image=False)
    rows = pd.read_csv(path / "rows.csv")
    rows.loc[rows["train_step"] == 100, "fd_mnist_clf"] = np.nan
    rows.to_csv(path / "rows.csv", index=False)
    assert "there is no end point to compare the ranking with" in words(load_run(path), "mnist", "fd_mnist_clf")


# --- two-level bootstrap ---------------------------------------------------------------------------------
def test_frechet_statistic_on_ids_matches_the_closed_form_in_one_dimension():
    from bench.report.perimage import FrechetOnIds

    x = np.array([[0.0], [1.0], [2.0], [5.0]])
    ref = {"mu": torch.tensor([1.0], dtype=torch.float64), "sigma": torch.tensor([[4.0]], dtype=torch.float64),
           "sigma_sqrt": torch.tensor([[2.0]], dtype=torch.float64)}
    stat = FrechetOnIds(x, ref)
    ids = np.array([[0, 1, 2, 3], [0, 0, 3, 3]], dtype=float)
    # 1-d: FD = (m - mu)^2 + (s - sigma)^2, s the sd with ddof 1
    expect = [(2.0 - 1) ** 2 + (np.std([0, 1, 2, 5], ddof=1) - 2) ** 2, (2.5 - 1) ** 2 + (np.std([0, 0, 5, 5], ddof=1) - 2) ** 2]
    assert stat(ids) == pytest.approx(expect, rel=1e-12)
    assert len(stat.memo) == 2 and stat(ids[:1]) == pytest.approx(expect[:1])  # memoised


def _fd_batched(x: np.ndarray) -> np.ndarray:
    """An independent Fréchet statistic: gaussian_stats + frechet_distance of each set against REF."""
    return np.array([frechet_distance(*gaussian_stats(torch.from_numpy(xi)), REF_MU, REF_SIGMA) for xi in x])


def test_bootstrap_columns_equal_an_independent_computation(built):
    from bench.report.perimage import N_BOOT

    run_dir, _ = built
    df = pd.read_csv(run_dir / "tables" / "paired_fd_mnist_clf.csv")
    assert list(df.columns[-3:]) == ["boot_lo", "boot_hi", "r_seeds"]
    rows = pd.read_csv(run_dir / "rows.csv")
    rows = rows[(rows["sampler"] == df["sampler"].iloc[0]) & (rows["sample_steps"] == df["sample_steps"].iloc[0])
                & (rows["train_step"] == rows["train_steps"])]
    for _, r in df.iterrows():  # r_seeds: Pearson's r of the pair's per-seed scores, against numpy
        a, b = (rows[rows["arm"] == x].set_index("seed")["fd_mnist_clf"].sort_index() for x in (r["arm"], r["reference"]))
        assert r["r_seeds"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-9)
    best = df[df["vs_best"]]
    assert set(best["reference"]) == {"cosine / gaussian"} and len(best) == 2
    assert df.loc[~df["vs_best"], ["boot_lo", "boot_hi"]].isna().all().all()  # only the comparisons with the best
    ref = np.stack([features("cosine / gaussian", s) for s in SEEDS]).astype(np.float64)
    for _, r in best.iterrows():
        arm = np.stack([features(r["arm"], s) for s in SEEDS]).astype(np.float64)
        b = bootstrap_two_level(arm, ref, _fd_batched, n_boot=N_BOOT, seed=0)
        assert (r["boot_lo"], r["boot_hi"]) == pytest.approx((b.lo, b.hi), rel=1e-7)
        assert r["boot_lo"] < b.estimate < r["boot_hi"]
    # sigmoid is shifted by 0.8 in every dimension against cosine's 0: its FD is larger by ~6 x 0.64 in each seed
    sig = best[best["arm"] == "sigmoid / gaussian"].iloc[0]
    assert sig["boot_lo"] > 1.5


def test_bootstrap_in_the_markdown_and_the_words(built):
    from bench.report.perimage import N_BOOT

    run_dir, text = built
    md = (run_dir / "tables" / "paired_fd_mnist_clf.md").read_text()
    assert "| arm | vs best | n | diff [95% CI] | p | Holm p | seeds for 80% power | bootstrap 95% |" in md
    df = pd.read_csv(run_dir / "tables" / "paired_fd_mnist_clf.csv")
    from bench.scoring.stats import fmt_interval

    r = df[(df["arm"] == "sigmoid / gaussian") & df["vs_best"]].iloc[0]
    _, lo, hi = fmt_interval(r["diff"], r["boot_lo"], r["boot_hi"])
    assert f"| [{lo}, {hi}] |" in md and f"n_boot = {N_BOOT}" in md and "indicative" in md
    assert f"the two-level bootstrap over seeds and images puts sigmoid / gaussian - cosine / gaussian in [{lo}, {hi}]" in text
    assert "85% with 5" in text  # the coverage caveat of bench/scoring/stats.py
    # metrics the per-image data cannot rebuild: no column, and why
    prec = (run_dir / "tables" / "paired_precision_clf.md").read_text()
    assert "bootstrap 95%" not in prec and "No bootstrap interval for precision_clf: it needs the reference images'" in prec
    assert "No bootstrap interval for fd_mnist_clf_inf: FD-infinity fits a line" in (
        run_dir / "tables" / "paired_fd_mnist_clf_inf.md").read_text()
    assert pd.read_csv(run_dir / "tables" / "paired_precision_clf.csv")[["boot_lo", "boot_hi"]].isna().all().all()


def test_bootstrap_without_per_image_data_is_empty_and_says_why(tmp_path):
    from bench.report import load_run
    from bench.report.paired import markdown, paired_table

    run = load_run(make_curve_run(tmp_path / "run", per_image=False))
    table = paired_table(run, "fd_mnist_clf")
    assert table[["boot_lo", "boot_hi"]].isna().all().all() and table["vs_best"].sum() == 2
    md = markdown(run, "fd_mnist_clf", table)
    # linear - cosine = 1 in every seed: sd 0, p = 0
    assert "| linear / gaussian | cosine / gaussian | 3 | 1 [1, 1] | < 0.001 | < 0.001 | 2 | — |" in md
    assert "Bootstrap 95%: empty (—) throughout: this run has no per_image/ folder (it was made before" in md
    assert "No bootstrap interval where the column shows" not in md  # said once, in the caption


# --- brightness, direction, FD-infinity ----------------------------------------------------------------------
def test_brightness_offsets_with_t_and_bootstrap_intervals(built):
    from bench.report import load_run
    from bench.report.perimage import N_BOOT, brightness

    run = load_run(built[0])
    b = brightness(run, "brightness_gap", "mnist", ("ddim", 10)).set_index("label")
    # linear: offsets -0.03, -0.02, -0.025: mean -0.025, sd 0.005, t_{0.975, 2} = 4.303
    half = st.t.ppf(0.975, 2) * 0.005 / math.sqrt(3)
    lin = b.loc["linear / gaussian"]
    assert lin["offset"] == pytest.approx(-0.025) and (lin["lo"], lin["hi"]) == pytest.approx((-0.025 - half, -0.025 + half))
    x = np.stack([brightness_images("linear / gaussian", s)[:, 0] for s in SEEDS]).astype(np.float64)
    boot = bootstrap_two_level(x, np.full_like(x, MEAN_REF), n_boot=N_BOOT, seed=0)
    assert (lin["boot_lo"], lin["boot_hi"]) == pytest.approx((boot.lo, boot.hi))
    assert b.loc["cosine / gaussian", "offset"] == pytest.approx(0.025) and b.loc["sigmoid / gaussian", "lo"] < 0


def test_brightness_words_and_plot(built):
    run_dir, text = built
    line = next(ln for ln in text.splitlines() if ln.startswith("- Brightness (`brightness_gap`"))
    assert line.startswith("- Brightness (`brightness_gap`'s mean intensities at `ddim:10`; data 0.13): Mean intensity")
    assert "linear / gaussian -0.025 [-0.037, -0.013] (bootstrap [" in line and "darker than the data;" in line
    assert "cosine / gaussian 0.025 [0.013, 0.037]" in line and "brighter than the data;" in line
    # sigmoid: offsets -0.03, 0.03, 0: sd 0.03, half-width 4.303 x 0.03 / sqrt(3) = 0.0745
    assert "sigmoid / gaussian 0.000 [-0.075, 0.075]" in line and line.endswith("no evidence of an offset.")
    assert (run_dir / "plots" / "brightness_brightness_gap.png").stat().st_size > 5000


def test_fidelity_metrics_read_in_their_direction(built):
    run_dir, text = built
    md = (run_dir / "tables" / "precision_clf.md").read_text()
    assert md.startswith("*precision_clf (higher is better).") and "| sigmoid / gaussian | **0.700 ± 0.010** (n=3) |" in md
    assert "By `precision_clf` (higher is better) the best arm is sigmoid / gaussian at `ddim:10` (disagrees" in text
    assert "By `fd_mnist_clf_inf` (lower is better) the best arm is cosine / gaussian" in text


def test_fd_infinity_gets_a_note_not_the_bias_warning(built):
    from bench.report import load_run
    from bench.report.caveats import small_reference

    out = small_reference(load_run(built[0]))  # 40 images < 128 classifier features
    fd = [w for w in out if w.startswith("`fd_mnist_clf` on a small sample: 40 < 128 images")]
    inf = [w for w in out if w.startswith("Note on `fd_mnist_clf_inf` (FD-infinity")]
    assert len(fd) == 1 and "strongly biased upwards" in fd[0] and len(inf) == 1 and len(out) == 2
    assert "reduces the bias, it does not remove it" in inf[0] and "strongly biased" not in inf[0]


# --- zero terminal SNR, loss labels ---------------------------------------------------------------------------
def _zero_snr_log() -> pd.DataFrame:
    lo = np.arange(0, 100, 25)
    snr = [5.0, 1.0, -2.0, -6.0, -np.inf]  # log-SNR at t = 0, 25, 50, 75 and -inf at t = T - 1 = 99
    return pd.DataFrame({"window": "second_half", "bin": range(4), "t_lo": lo, "t_hi": lo + 24, "log_snr_lo": snr[:4],
                         "log_snr_hi": [1.0, -2.0, -6.0, -np.inf], "n": 10, "loss": [0.1, 0.2, 0.3, 0.9]})


def test_zero_terminal_snr_bin_is_kept_at_a_finite_centre():
    from bench.report.plots import bin_log_snr, loss_by_t_frame

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = loss_by_t_frame(_zero_snr_log())
        assert bin_log_snr(pd.Series([2.0, -np.inf]), pd.Series([-np.inf, -np.inf])).iloc[0] == 2.0
    assert f["log_snr"].tolist() == [3.0, -0.5, -4.0, -6.0] and f["loss"].tolist() == [0.1, 0.2, 0.3, 0.9]
    assert f["zero_snr"].tolist() == [False, False, False, True]
    assert np.isnan(bin_log_snr(pd.Series([-np.inf]), pd.Series([-np.inf])).iloc[0])


def test_loss_by_t_plot_draws_the_zero_snr_bin(tmp_path, monkeypatch):
    import bench.report.plots as plots
    from bench.report import load_run

    path = make_curve_run(tmp_path / "run", per_image=False)
    rows = pd.read_csv(path / "rows.csv")
    rows["prediction"], rows["zero_terminal_snr"] = "v", True
    rows.to_csv(path / "rows.csv", index=False)
    (path / "logs").mkdir()
    for tid in rows["trial_id"].unique():
        _zero_snr_log().to_csv(path / "logs" / f"{tid}_loss_by_t.csv", index=False)
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, png: figs.append(fig) or png)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "divide by zero" from the -inf bin
        p = plots.plot_loss_by_t(load_run(path), tmp_path, [])
    ax_t, ax_snr = figs[0].axes[:2]
    xs = sorted({round(float(x), 6) for line in ax_snr.get_lines() for x in line.get_xdata()})
    assert xs == [-6.0, -4.0, -0.5, 3.0]  # all four bins, the zero-SNR one at the log-SNR of its lowest t
    assert ax_snr.get_ylabel() == "MSE loss on v" and "log-SNR = -∞: it is placed at the log-SNR of its lowest t" in p.caption


def test_schedule_figure_marks_zero_terminal_snr_at_the_axis_edge():
    from bench.process.schedules import make_betas
    from bench.report.plots import _schedule_figure
    from bench.style import theme

    with warnings.catch_warnings(), theme():
        warnings.simplefilter("error")
        fig = _schedule_figure({"linear": make_betas("linear", 100, True), "cosine": make_betas("cosine", 100)})
    ax_snr = fig.axes[1]
    assert any(t.get_text().startswith("SNR = 0") for t in ax_snr.texts)
    edge = [ln for ln in ax_snr.get_lines() if ln.get_marker() == "v"]
    assert len(edge) == 1 and list(edge[0].get_xdata()) == [1.0] and list(edge[0].get_ydata()) == [0.0]
    assert edge[0].get_transform() == ax_snr.get_xaxis_transform()  # y = 0 in axes coordinates: the bottom edge
    lin = [ln for ln in ax_snr.get_lines() if len(ln.get_xdata()) == 99]  # the finite part: t = 1 .. T - 1
    assert len(lin) == 1 and np.isfinite(lin[0].get_ydata()).all()
    assert "linear (zero terminal SNR: ᾱ_T = 0)" in [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.parametrize("prediction, weighting, label", [
    (["eps"], ["none"], "MSE loss on eps"), (["v"], ["none"], "MSE loss on v"), (["x0"], ["none"], "MSE loss on x_0"),
    (["eps", "v"], ["none", "none"], "MSE loss on eps/v (per arm)"), (["v"], ["min_snr"], "weighted MSE loss on v")])
def test_loss_label_reads_the_prediction_target(tmp_path, prediction, weighting, label):
    from bench.report.plots import loss_label, loss_scale_note, loss_what
    from bench.report.tables import Run

    rows = pd.DataFrame({"loss": "mse", "prediction": prediction, "weighting": weighting})
    run = Run(tmp_path, rows, None, {}, {})
    assert loss_label(run) == label
    assert ("different scales" in loss_scale_note(run)) == (len(prediction) > 1)
    assert loss_what(run).startswith("the per-element MSE loss on the predicted ")
    old = Run(tmp_path, pd.DataFrame({"loss": ["mse"]}), None, {}, {})  # before `prediction` was a field: eps
    assert loss_label(old) == "MSE loss on eps"


def test_bootstrap_reads_the_extractors_the_trials_keep():
    from bench.report.perimage import PER_IMAGE_MAX_DIM, boot_reason
    from bench.run.trial import PER_IMAGE_MAX_DIM as TRIAL_MAX_DIM

    assert PER_IMAGE_MAX_DIM == TRIAL_MAX_DIM == 256
    assert boot_reason("fd_mnist_clf") is None and boot_reason("fd_pixels") is None
    assert boot_reason("fid").startswith("its 2048-d features are not kept per image")
    assert "FD-infinity" in boot_reason("fd_mnist_clf_inf") and "W1" in boot_reason("brightness_gap")


def test_paired_gaps_sentence_shortens_long_curves_and_needs_two_seeds(built, monkeypatch):
    from bench.report import curves, load_run

    run = load_run(built[0])
    monkeypatch.setattr(curves, "SHOWN_POINTS", 1)
    text = curves.pairs_words(run, "mnist", "fd_mnist_clf")
    assert "at the first and the last of 2 points" in text and "-2 [-2, -2] at 400 ... 1 [1, 1] at 800" in text
    one = load_run(built[0])
    one.rows, one.curve = one.rows[one.rows["seed"] == 0], one.curve[one.curve["seed"] == 0]
    assert curves.pairs_words(one, "mnist", "fd_mnist_clf") is None
