"""bench.scoring.fidelity: equality with the reference ``prdc`` package, closed forms and simulations with
stated tolerances."""

import math

import numpy as np
import pytest
import torch

from bench.registry import InputError
from bench.scoring import fidelity as F
from bench.scoring.metrics import frechet_distance, gaussian_stats

prdc_pkg = pytest.importorskip("prdc")  # in the dev extra; the reference implementation


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread(one_thread):
    """One torch thread (conftest) and one BLAS thread: the many small matrix products here stall
    with two threads on a busy two-core machine (50x slower measured)."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn, which prdc requires

    with threadpool_limits(1):
        yield


def _features(seed, n_real=300, n_fake=250, d=32, shift=0.3, scale=1.1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_real, d)), shift + scale * rng.standard_normal((n_fake, d))


# --- precision / recall / density / coverage -----------------------------------------------------
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_prdc_equals_reference_package(k, seed, capsys):
    real, fake = _features(seed)
    ref = prdc_pkg.compute_prdc(real, fake, nearest_k=k)
    ours = F.prdc(real, fake, k)
    tiny_chunks = F.prdc(torch.from_numpy(real).float().double(), fake, k, chunk_elements=1000)  # many blocks, torch input
    assert set(ours) == set(ref)
    for name in ref:
        assert abs(ours[name] - float(ref[name])) <= 1e-12, (name, ours[name], ref[name])
        assert tiny_chunks[name] == ours[name], name
    # the comparison means something: values strictly inside their ranges, not all 0 or 1
    assert 0.05 < ours["precision"] < 0.99 and 0.05 < ours["recall"] < 0.99 and 0.05 < ours["coverage"] < 0.99
    assert 0.05 < ours["density"] < 2


def test_wrappers_pick_the_paper_k():
    real, fake = _features(3)
    assert F.precision_recall(real, fake) == {k: v for k, v in F.prdc(real, fake, 3).items() if k in ("precision", "recall")}
    assert F.density_coverage(real, fake) == {k: v for k, v in F.prdc(real, fake, 5).items() if k in ("density", "coverage")}
    ref3 = prdc_pkg.compute_prdc(real, fake, nearest_k=3)
    assert F.precision_recall(real, fake)["recall"] == pytest.approx(float(ref3["recall"]), abs=1e-12)


def test_knn_radii_against_brute_force():
    x = np.random.default_rng(4).standard_normal((60, 5))
    x[7] = x[3]  # a duplicate counts as a neighbour at distance 0
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    for k in (1, 3):
        expected = np.sort(d, axis=1)[:, k]  # column 0 is the point itself
        # atol: the matmul form |a|^2 + |b|^2 - 2ab leaves ~eps |x|^2 for a duplicate pair, with a sign that
        # depends on the CPU's BLAS kernel; its square root is ~5e-8 (issue 29: machine-independent bound)
        np.testing.assert_allclose(F.knn_radii(x, k, chunk_elements=37).numpy(), expected, rtol=0, atol=1e-6)
    assert F.knn_radii(x, 1)[3] < 1e-6


@pytest.mark.parametrize("k", [3, 5])
def test_identical_sets(k):
    x = np.random.default_rng(5).standard_normal((400, 16))
    r = F.prdc(x, x, k)  # the same buffer: a copy may be multiplied by another BLAS path (boundary ties)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0
    # each real ball holds its centre and its k-1 nearest neighbours (the k-th sits on the boundary,
    # and the ball is open): density = k N / (k N) = 1 up to round-off ties at the boundary
    assert abs(r["density"] - 1.0) <= 0.01


def test_far_apart_clusters_score_zero():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((200, 8))
    fake = rng.standard_normal((150, 8)) + 100.0
    assert F.prdc(real, fake, 3) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapse_keeps_precision_loses_recall():
    """Real = two far clusters (half each); fake = fresh draws from one: fidelity stays, diversity
    halves. Checks that precision and recall (density and coverage) are not swapped."""
    rng = np.random.default_rng(7)
    real = np.concatenate([rng.standard_normal((300, 2)), rng.standard_normal((300, 2)) + 50.0])
    fake = rng.standard_normal((300, 2))
    r = F.prdc(real, fake, 5)
    assert r["precision"] > 0.9 and r["density"] > 0.8
    assert 0.4 < r["recall"] <= 0.5 and 0.4 < r["coverage"] <= 0.5  # the far cluster can never be reached


def test_prdc_rejects_bad_input():
    x = np.zeros((5, 3))
    with pytest.raises(InputError):
        F.prdc(x, np.zeros((5, 4)), 3)
    with pytest.raises(InputError):
        F.prdc(x, np.random.default_rng(0).standard_normal((5, 3)), 5)  # k must be < number of points


# --- FD-infinity -------------------------------------------------------------------------------
def test_fd_infinity_sizes():
    ns = F.fd_infinity_sizes(200)
    assert ns[0] == 134 and ns[-1] == 200 and len(ns) == 15
    # evenly spaced in 1/n up to the rounding of n (|1/n - 1/(n + 0.5)| < 0.5 / n^2)
    np.testing.assert_allclose(1 / np.array(ns, float), np.linspace(1 / 134, 1 / 200, 15), rtol=0, atol=0.5 / 134**2)
    assert F.fd_infinity_sizes(5) == [4, 5]
    with pytest.raises(InputError):
        F.fd_infinity_sizes(3)


def test_fd_infinity_fit_is_exact_on_its_own_points():
    """At n = N the subset is the whole set: its FD equals bench.scoring.metrics' FD of the full stats; the
    intercept and slope reproduce the FDs (least squares on a line through the points)."""
    rng = np.random.default_rng(8)
    d = 8
    x = rng.standard_normal((60, d)) * 1.3 + 0.2
    a = rng.standard_normal((d, d))
    mu_ref, sigma_ref = rng.standard_normal(d) * 0.1, a @ a.T / d + np.eye(d)
    fit = F.fd_infinity_fit(x, mu_ref, sigma_ref, seed=3)
    mu, sigma = gaussian_stats(torch.from_numpy(x))
    assert fit.ns[-1] == 60 and fit.fd_full == pytest.approx(frechet_distance(mu, sigma, mu_ref, sigma_ref), rel=1e-9)
    resid = np.array(fit.fds) - (fit.fd_infinity + fit.slope / np.array(fit.ns))
    assert abs(resid @ (1 / np.array(fit.ns))) < 1e-8 and abs(resid.sum()) < 1e-8  # normal equations
    assert F.fd_infinity(torch.from_numpy(x), torch.from_numpy(mu_ref), sigma_ref, seed=3) == fit.fd_infinity
    assert F.fd_infinity(x, mu_ref, sigma_ref, seed=4) != fit.fd_infinity  # the seed picks the subsets


def test_fd_infinity_closer_to_the_true_distance_than_fd_at_n():
    """N(m, s^2 I_d) samples against the exact stats of N(0, I_d): FD = ||m||^2 + d (1 - s)^2 in closed
    form (16.64 here). FD of n = 200 samples overestimates it by ~8.5 (the O(d/n) bias); FD_inf
    removes most of it. Simulated over 48 seeds: FD_inf error -0.9 (sd 1.0), FD_N error +8.5 (sd 0.66,
    min 6.9); the mean |FD_inf error| over blocks of 8 seeds ranged 0.8-1.5. Asserted over 8 seeds:
    mean |FD_inf - true| < 2.5 and < mean (FD_N - true) / 3; every seed's FD_N error > 5."""
    d, n, s = 64, 200, 1.5
    m = np.full(d, 0.1)
    true = m @ m + d * (1 - s) ** 2
    assert true == pytest.approx(16.64)
    err_inf, err_n = [], []
    root = np.eye(d)
    for seed in range(8):
        x = m + s * np.random.default_rng(100 + seed).standard_normal((n, d))
        fit = F.fd_infinity_fit(x, np.zeros(d), np.eye(d), seed=seed, sigma_ref_sqrt=root)
        err_inf.append(fit.fd_infinity - true)
        err_n.append(fit.fd_full - true)
        assert fit.slope > 0  # FD decreases with n
    err_inf, err_n = np.abs(err_inf), np.array(err_n)
    assert err_n.min() > 5
    assert err_inf.mean() < 2.5
    assert err_inf.mean() < err_n.mean() / 3


def test_fd_infinity_rejects_bad_input():
    x = np.random.default_rng(0).standard_normal((20, 4))
    with pytest.raises(InputError):
        F.fd_infinity(x, np.zeros(3), np.eye(3))
    with pytest.raises(InputError):
        F.fd_infinity(x, np.zeros(4), np.eye(4), ns=[10])
    with pytest.raises(InputError):
        F.fd_infinity(x, np.zeros(4), np.eye(4), ns=[10, 21])


# --- memorization ------------------------------------------------------------------------------
def _images(rng, n):
    return rng.standard_normal((n, 3, 16, 16))


def test_nearest_neighbour_distances_against_brute_force():
    rng = np.random.default_rng(9)
    q, p = rng.standard_normal((40, 12)), rng.standard_normal((70, 12))
    expected = np.sqrt(((q[:, None] - p[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(F.nearest_neighbour_distances(q, p, chunk_elements=100).numpy(), expected, rtol=1e-12)


def test_copies_of_training_images_give_ratio_zero():
    rng = np.random.default_rng(10)
    train, heldout = _images(rng, 98), _images(rng, 45)
    generated = train[rng.permutation(98)[:64]]
    r = F.nearest_neighbour_ratio(generated, train, heldout)
    assert r.ratio == 0.0 and r.median_generated == 0.0 and r.median_heldout > 0
    assert (r.n_generated, r.n_train, r.n_heldout) == (64, 98, 45)


def test_fresh_draws_give_ratio_one_and_near_copies_below():
    """Fresh draws from the data distribution sit as far from the training set as held-out images:
    ratio 1 within 0.03 (768-d Gaussians, 98 train / 45 held-out / 64 generated; over 20 seeds the
    ratio had sd 0.004). Training images plus small noise: ratio far below 1."""
    for seed in range(3):
        rng = np.random.default_rng(20 + seed)
        train, heldout, generated = _images(rng, 98), _images(rng, 45), _images(rng, 64)
        assert F.nearest_neighbour_ratio(torch.from_numpy(generated), train, heldout).ratio == pytest.approx(1.0, abs=0.03)
    near_copies = train[:64] + 0.1 * rng.standard_normal(train[:64].shape)
    r = F.nearest_neighbour_ratio(near_copies, train, heldout)
    assert r.median_generated == pytest.approx(0.1 * math.sqrt(768), rel=0.05)  # ||noise|| = 0.1 sqrt(d)
    assert r.ratio < 0.1


def test_ratio_interval_closed_forms_and_coverage():
    """Constant distances: every replicate is the ratio itself. Fresh draws (ratio ~1): the interval
    holds 1 and is as wide as 45 held-out images make it; near copies: it lies far below 1. The same
    distances give the same interval (a fixed seed)."""
    assert F.ratio_interval(np.full(98, 2.0), np.full(45, 4.0)) == (0.5, 0.5)
    assert all(math.isnan(v) for v in F.ratio_interval(np.ones(5), np.zeros(5)))  # no replicate has a held-out median
    rng = np.random.default_rng(30)
    train, heldout, generated = _images(rng, 98), _images(rng, 45), _images(rng, 64)
    r = F.nearest_neighbour_ratio(torch.from_numpy(generated), train, heldout)
    assert r.lo < 1 < r.hi and r.lo < r.ratio < r.hi and r.hi - r.lo > 0.005
    again = F.nearest_neighbour_ratio(torch.from_numpy(generated), train, heldout)
    assert (again.lo, again.hi) == (r.lo, r.hi)
    near = F.nearest_neighbour_ratio(train[:64] + 0.1 * rng.standard_normal(train[:64].shape), train, heldout)
    assert near.hi < 0.1


def test_ratio_when_heldout_is_in_train():
    x = np.random.default_rng(11).standard_normal((10, 4))
    assert math.isnan(F.nearest_neighbour_ratio(x[:3], x, x[3:6]).ratio)
    assert F.nearest_neighbour_ratio(x[:3] + 1, x, x[3:6]).ratio == math.inf


# --- brightness --------------------------------------------------------------------------------
def test_brightness_units():
    u8 = torch.tensor([0, 255, 51], dtype=torch.uint8)[:, None, None, None].expand(3, 1, 4, 4)
    np.testing.assert_allclose(F.brightness(u8), [0.0, 1.0, 0.2], rtol=0, atol=1e-15)
    as_float = u8.double() / 127.5 - 1  # the same images in [-1, 1]
    np.testing.assert_allclose(F.brightness(as_float), [0.0, 1.0, 0.2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(F.brightness(np.full((2, 3, 2, 2), 1.01, np.float32)), [1.0, 1.0])  # clamped as to_uint8
    with pytest.raises(InputError):
        F.brightness(np.full((2, 8), 200.0))  # floats in [0, 255] are not [-1, 1] images
    with pytest.raises(InputError):
        F.brightness(np.zeros((2, 8), np.int32))


def test_brightness_gap_closed_forms():
    rng = np.random.default_rng(12)
    levels = rng.integers(0, 200, size=300)
    real = np.broadcast_to(levels[:, None, None, None], (300, 1, 8, 8)).astype(np.uint8)
    fake = (real + 40).astype(np.uint8)  # every image 40 levels brighter: W1 = the shift
    g = F.brightness_gap(fake, real)
    assert g.w1 == pytest.approx(40 / 255, abs=1e-12)
    assert g.mean_fake - g.mean_real == pytest.approx(40 / 255, abs=1e-12)
    assert (g.n_fake, g.n_real) == (300, 300)
    # half black, half white against all mid-grey (float [-1, 1] fakes): W1 = 0.5 with equal means,
    # the narrowed spread of Lin et al.; mixing uint8 and float inputs
    bw = np.repeat(np.array([0, 255], np.uint8), 50)[:, None].repeat(16, 1)
    grey = np.zeros((30, 16))
    g = F.brightness_gap(grey, bw)
    assert g.w1 == pytest.approx(0.5, abs=1e-12) and g.mean_fake == g.mean_real == 0.5
    assert F.brightness_gap(real, real).w1 == 0.0
