"""Scoring: Fréchet distance and KID against closed forms and independent implementations, the
reference-statistics cache, the MNIST classifier, score()/floor() columns, and FID vs torch-fidelity.

Most tests use the fast ``pixels`` extractor or precomputed features; the few that run Inception use
a handful of images (or the cheap 64-d tap), so the file stays well under a minute and a half on a
2-core CPU. The MNIST classifier is trained once into the user's cache (~/.cache/bench or
$BENCH_CACHE) and reused; everything else is cached in a temporary folder.
"""

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.data.datasets import load_dataset
from bench.registry import UnknownNameError
from bench.scoring import metrics as M

SHARED = Path(os.environ["BENCH_DATA_ROOT"]) if os.environ.get("BENCH_DATA_ROOT") else None
HAS_MNIST = bool(SHARED and (SHARED / "MNIST" / "raw").is_dir())
HAS_CRATERS = bool(SHARED and (SHARED / "craters" / "train" / "images").is_dir())
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="MNIST raw files absent (set BENCH_DATA_ROOT)")
needs_craters = pytest.mark.skipif(not HAS_CRATERS, reason="craters absent (set BENCH_DATA_ROOT)")
USER_CACHE = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "bench").expanduser()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def mnist_classifier(monkeypatch, tmp_path_factory):
    """The MNIST classifier from the user's cache (trained there once if missing), visible in the
    temporary test cache too."""
    if not HAS_MNIST:
        pytest.skip("MNIST raw files absent (set BENCH_DATA_ROOT): the classifier cannot be trained")
    from bench.scoring.classifier import load_classifier

    monkeypatch.setenv("BENCH_CACHE", str(USER_CACHE))
    model = load_classifier(str(SHARED), progress=True)
    tmp_cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(tmp_cache))
    link = tmp_cache / "classifier"
    if not link.exists():
        tmp_cache.mkdir(parents=True, exist_ok=True)
        link.symlink_to(USER_CACHE / "classifier", target_is_directory=True)
    return model


def random_spd(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


# --- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    for n, d in [(500, 16), (10, 32)]:  # full-rank and singular covariance
        mu, sigma = M.gaussian_stats(torch.from_numpy(rng.gamma(2.0, size=(n, d))))
        assert M.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-6 * np.trace(sigma))


def test_frechet_distance_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(50), rng.standard_normal(50)
    s1, s2 = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)  # standard deviations
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert M.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_covariance_matches_independent_implementations():
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(2)
    d = 40
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), random_spd(d, rng), random_spd(d, rng)
    ours = M.frechet_distance(mu1, s1, mu2, s2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the pytorch-fid / TTUR formula
    by_sqrtm = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert ours == pytest.approx(by_sqrtm, rel=1e-9)
    by_tm = _compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))).item()
    assert ours == pytest.approx(by_tm, rel=1e-9)
    # Rank-deficient covariances (fewer samples than dimensions), as with 2048-d features of a few
    # hundred images: torch-fidelity drops the imaginary parts of the complex square roots.
    s1, s2 = random_spd(d, rng, rank=15), random_spd(d, rng, rank=25)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)["frechet_inception_distance"]
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(tf, rel=1e-6)


def test_frechet_distance_to_cached_reference_equals_the_direct_formula():
    """The metrics' fast path (reference square root cached, generated side from its samples) is
    the same number, whether either side has more or fewer images than dimensions."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = torch.Generator().manual_seed(3)
    d = 48
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    for n_ref, n in [(300, 30), (40, 200), (30, 20), (200, 300)]:
        ref_f = torch.randn(n_ref, d, generator=g, dtype=torch.float64) @ mix
        fake_f = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix * 1.3 + 0.2
        mu, sigma = M.gaussian_stats(ref_f)
        ref = {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma), "sigma_sqrt": torch.from_numpy(M.psd_sqrt(sigma, ref_f))}
        mu2, sigma2 = M.gaussian_stats(fake_f)
        expected = fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": mu2, "sigma": sigma2}, False)["frechet_inception_distance"]
        # rank-deficient products (n < d): every zero eigenvalue of S1 S2 adds ~sqrt(eps |S1 S2|) to the trace
        # in scipy's sqrtm, a kernel-dependent ~1e-7 relative (issue 29); full rank agrees to 1e-7
        rel = 1e-7 if min(n_ref, n) > d else 1e-5
        assert M.frechet_distance_to_reference(fake_f, ref) == pytest.approx(expected, rel=rel)
        assert M.frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(expected, rel=rel)
        root = ref["sigma_sqrt"].numpy()
        np.testing.assert_allclose(root @ root, sigma, atol=1e-10)


# --- KID -----------------------------------------------------------------------------------------
def test_kid_of_identical_sets_is_zero_within_its_std_and_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(0)
    f = torch.rand(400, 64, generator=g) * 3
    mean, std, m = M.kernel_distance(f, f.clone(), subsets=50, subset_size=100)
    assert m == 100 and std > 0 and abs(mean) < 3 * std
    shifted = f + 0.5
    assert M.kernel_distance(shifted, f, subsets=20, subset_size=100)[0] > 20 * std
    # One subset holding every image: exactly torchmetrics' estimator (order does not matter).
    a, b = f[:150].double(), (f[150:300] * 1.1).double()
    ours = M.kernel_distance(b, a, subsets=1, subset_size=150)
    assert ours[0] == pytest.approx(poly_mmd(a, b).item(), rel=1e-5) and ours[1] == 0


# --- reference-statistics cache ---------------------------------------------------------------------
def test_reference_stats_cache_hits_recomputes_on_key_change_and_rebuilds_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    M.compute_count.clear()
    a = M.reference_stats("synthetic", "train", "pixels", n_images=300)
    (path,) = (tmp_path / "refstats").glob("*.pt")
    assert path.name == f"synthetic-train-16px-pixels-n300-of512-s0-v{M.REFSTATS_VERSION}.1.pt"
    assert a["keys"]["n_images"] == 300 and a["features"].shape == (300, 64) and a["sigma"].dtype == torch.float64
    assert torch.allclose(a["sigma_sqrt"] @ a["sigma_sqrt"], a["sigma"], atol=1e-10)
    mtime = path.stat().st_mtime_ns

    b = M.reference_stats("synthetic", "train", "pixels", n_images=300)  # a hit: same numbers, no work
    assert torch.equal(a["mu"], b["mu"]) and torch.equal(a["sigma"], b["sigma"]) and torch.equal(a["features"], b["features"])
    assert M.compute_count == {path.name: 1} and path.stat().st_mtime_ns == mtime

    M.reference_stats("synthetic", "train", "pixels", n_images=200)  # each key change: a new file
    M.reference_stats("synthetic", "train", "pixels", n_images=300, image_size=24)
    M.reference_stats("synthetic", "heldout", "pixels", n_images=300)  # held-out has 256: all of them
    c = M.reference_stats("synthetic", "train", "inception-64", n_images=4)
    assert c["features"].shape == (4, 64) and c["keys"]["feature_label"] == "inception-v3-64"
    names = sorted(p.name for p in (tmp_path / "refstats").glob("*.pt"))
    assert len(names) == 5 and all(M.compute_count[n] == 1 for n in names)
    assert any("-n256-of256-" in n for n in names) and any("-24px-" in n for n in names)
    assert torch.load(path, weights_only=True)["keys"] == a["keys"]  # keys inside the file too

    for corrupt in (lambda p: p.write_bytes(p.read_bytes()[:1000]),  # truncated
                    lambda p: torch.save({**a, "keys": {**a["keys"], "n_images": 7}}, p),  # keys mismatch
                    lambda p: torch.save({**a, "mu": a["mu"] * math.nan}, p)):  # NaN
        corrupt(path)
        with pytest.warns(UserWarning, match="rebuilding reference statistics"):
            d = M.reference_stats("synthetic", "train", "pixels", n_images=300)
        assert torch.equal(d["sigma"], a["sigma"]) and torch.equal(d["features"], a["features"])
    assert M.compute_count[path.name] == 4
    assert not list((tmp_path / "refstats").glob("*.tmp"))


# --- the MNIST classifier -----------------------------------------------------------------------------
@pytest.mark.slow(reason="the classifier's accuracy on all 10k held-out digits, trained in the user's cache if missing")
def test_mnist_classifier_reaches_99_percent(mnist_classifier):
    from bench.scoring.classifier import accuracy, classifier_info, classifier_path, mnist_tensors

    x, y = mnist_tensors(str(SHARED), "heldout")
    acc = accuracy(mnist_classifier, x, y)
    info = classifier_info()
    assert acc >= 0.99 and info["test_accuracy"] == pytest.approx(acc, abs=2e-3) and info["seed"] == 0
    assert mnist_classifier.features(x[:5]).shape == (5, 128)
    torch.load(classifier_path(), weights_only=True)  # loadable safely: never retrained by accident


@pytest.mark.slow(reason="needs the trained MNIST classifier (trained on a fresh cache: ~85 s on one thread) and scores real digits")
def test_fd_mnist_clf_score_and_floor(mnist_classifier):
    test = load_dataset("mnist", "heldout", str(SHARED))
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(M.ORDER_SEED))
    real = M.to_uint8(test[order[:500]])
    r = M.score(["fd_mnist_clf"], real, "mnist", str(SHARED), n_reference=2000)
    assert r["fd_mnist_clf_features"] == "mnist-cnn-penultimate-128" and r["fd_mnist_clf_n_ref"] == 2000
    # real vs real: ~1% of the features' total variance (trace ~1100), and shrinking with n (FD's bias)
    assert r["n_generated"] == 500 and 0 < r["fd_mnist_clf"] < 30
    # the floor is the same computation on the same (seeded-order) held-out images
    fl = M.floor(["fd_mnist_clf"], "mnist", 500, str(SHARED), n_reference=2000)
    assert fl["fd_mnist_clf"] == pytest.approx(r["fd_mnist_clf"], rel=1e-6) and fl["n_generated"] == 500
    assert M.floor(["fd_mnist_clf"], "mnist", 2000, str(SHARED), n_reference=2000)["fd_mnist_clf"] < 0.7 * r["fd_mnist_clf"]
    noise = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert M.score(["fd_mnist_clf"], noise, "mnist", str(SHARED), n_reference=2000)["fd_mnist_clf"] > 50 * r["fd_mnist_clf"]
    # held-out sets smaller than asked for: all of them, and the actual number is recorded
    assert M.floor(["fd_mnist_clf"], "synthetic", 1000)["n_generated"] == 256


@needs_craters
def test_fd_mnist_clf_is_skipped_with_a_reason_on_rgb_data():
    fake = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    r = M.score(["fd_mnist_clf"], fake, "craters", str(SHARED))
    assert math.isnan(r["fd_mnist_clf"]) and "1-channel" in r["fd_mnist_clf_skipped"] and r["n_generated"] == 4


# --- score() ----------------------------------------------------------------------------------------
def test_score_fid_kid_columns_with_inception():
    fake = M.to_uint8(load_dataset("synthetic", "heldout")[:6])
    r = M.score(["fid", "kid"], fake, "synthetic", n_reference=6)
    assert r["fid_features"] == r["kid_features"] == "inception-v3-pool3-2048"
    assert r["fid_n_ref"] == r["kid_n_ref"] == 6 and r["n_generated"] == 6 and r["kid_subset_size"] == 6
    assert math.isfinite(r["fid"]) and r["fid"] > 0 and math.isfinite(r["kid"]) and r["kid_std"] >= 0
    with pytest.raises(M.InputError, match="uint8"):
        M.score(["fid"], fake.float(), "synthetic")


def test_unknown_names_say_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean fid"):
        M.score(["fdi"], torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "synthetic")
    with pytest.raises(UnknownNameError, match="did you mean inception"):
        M.FEATURES.get("inceptoin")
    assert {"fid", "kid", "fd_mnist_clf"} <= set(M.METRICS.names())


# --- cross-check with torch-fidelity ---------------------------------------------------------------------
@pytest.mark.slow(reason="Inception through two implementations (ours and torch-fidelity) on PNG folders")
def test_fid_matches_torch_fidelity_on_image_folders(tmp_path):
    """Same PNGs, two implementations: ours (torchmetrics' Inception, our statistics and Fréchet
    distance) vs torch_fidelity.calculate_metrics, on the 64-d tap (full-rank covariances with 100
    images a side; the 2048-d features would need > 2048)."""
    import torch_fidelity
    from PIL import Image

    n = 100
    sets = {"a": M.to_uint8(load_dataset("synthetic", "train", image_size=32)[:n]),
            "b": 255 - M.to_uint8(load_dataset("synthetic", "heldout", image_size=32)[:n])}
    for name, images in sets.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im[0].numpy(), mode="L").save(tmp_path / name / f"{i:04d}.png")
    ours = M.frechet_distance(*M.gaussian_stats(M.extract_features("inception-64", sets["a"])),
                              *M.gaussian_stats(M.extract_features("inception-64", sets["b"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch_fidelity.calculate_metrics(
            input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, feature_extractor="inception-v3-compat",
            feature_layer_fid="64", cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=8,
        )["frechet_inception_distance"]
    assert ours > 1 and ours == pytest.approx(theirs, rel=1e-3)


def test_floors_first_leave_nothing_for_the_trials_to_compute(tmp_path, monkeypatch):
    """bench run writes the floors before the fan-out: that computes every reference statistic
    (train and held-out, once each) in the driver, so the trials' scoring loads them (compute count
    unchanged)."""
    from bench.experiment.grid import load_grid
    from bench.run.floors import write_floors

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    M.compute_count.clear()
    trials = load_grid("schedules", "smoke").trials()  # synthetic 16 px, fd_pixels, 16 samples
    write_floors(tmp_path, trials)
    computed = dict(M.compute_count)
    assert len(computed) == 2 and all(v == 1 for v in computed.values())  # train + held-out, once each
    assert any("-train-" in n for n in computed) and any("-heldout-" in n for n in computed)
    assert (tmp_path / "floors.csv").exists()
    cfg = trials[0]
    fake = torch.randint(0, 256, (cfg.n_samples, 1, 16, 16), dtype=torch.uint8)
    M.score(cfg.metric_names, fake, cfg.dataset, image_size=16, n_reference=cfg.n_reference or None)
    assert M.compute_count == computed
