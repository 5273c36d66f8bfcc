"""Fidelity, diversity, small-sample and diagnostic metrics as pure functions of feature arrays.

Every function takes numpy arrays or torch tensors ([N, ...], flattened to [N, D]; torch tensors
stay on their device) and computes in float64. Each states its direction, which the metric
contract must carry (DESIGN.md section 5: tables, plots and words read it, never assume it):

============================  =================================  =====================================
function                      what                               better
============================  =================================  =====================================
``precision_recall``          k-NN precision / recall, k = 3     higher (both in [0, 1])
``density_coverage``          density / coverage, k = 5          higher (coverage in [0, 1]; density
                                                                 ~1 for matching distributions, can
                                                                 exceed 1)
``fd_infinity``               Fréchet distance extrapolated      lower (an extrapolation: can be
                              to n = infinity                    slightly negative)
``nearest_neighbour_ratio``   memorization: NN distance to the   ~1 or above; < 1 is a warning
                              training set, generated / held-out (samples closer to training images
                                                                 than unseen real images are)
``brightness_gap``            W1 between per-image mean          lower (0 = same distribution)
                              intensities, fake vs real
============================  =================================  =====================================

Pairwise distances are computed in row blocks of at most ``CHUNK_ELEMENTS`` float64 entries
(64 MiB), so 10k x 10k sets need a few hundred MB whatever the feature dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from bench.registry import InputError
from bench.scoring.distances import frechet_distance_to_reference, psd_sqrt

CHUNK_ELEMENTS = 2**23  # float64 entries per distance block: 64 MiB

PRECISION_RECALL_K = 3  # Kynkäänniemi et al. 2019
DENSITY_COVERAGE_K = 5  # Naeem et al. 2020
FD_INFINITY_POINTS = 15  # Chong & Forsyth 2020


# --- helpers -----------------------------------------------------------------------------------
def _as_matrix(x, name: str) -> torch.Tensor:
    """[N, ...] numpy / torch -> float64 torch [N, D] (same device for tensors)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim < 2 or len(t) == 0:
        raise InputError(f"{name}: expected a non-empty [N, D] (or [N, ...]) array, got shape {tuple(t.shape)}")
    return t.to(torch.float64).reshape(len(t), -1)


def _pair(a, b, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_matrix(a, names[0]), _as_matrix(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise InputError(f"{names[0]} and {names[1]} have different dimensions: {a.shape[1]} vs {b.shape[1]}")
    return a, b.to(a.device)


def _distance_blocks(a: torch.Tensor, b: torch.Tensor, chunk_elements: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, D) with D[i, j] = ||a[start + i] - b[j]||_2 for row blocks of ``a``, at most
    ``chunk_elements`` entries each. Uses ||x||^2 + ||y||^2 - 2 x.y (one matmul, as sklearn's
    euclidean_distances), clamped at 0 before the square root."""
    b_sq = (b * b).sum(1)
    rows = max(1, chunk_elements // max(1, len(b)))
    for start in range(0, len(a), rows):
        ac = a[start:start + rows]
        d = ac @ b.T
        d.mul_(-2).add_((ac * ac).sum(1)[:, None]).add_(b_sq[None, :])
        yield start, d.clamp_(min=0).sqrt_()


def knn_radii(x, k: int, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (float64 [N]). As ``prdc``: the
    (k+1)-th smallest entry of the row of the self-distance matrix, whose diagonal is exactly 0
    (duplicates of a point count as neighbours at distance 0)."""
    x = _as_matrix(x, "x")
    if not 1 <= k < len(x):
        raise InputError(f"k-NN radii need 1 <= k < number of points, got k = {k} with {len(x)} points")
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for start, d in _distance_blocks(x, x, chunk_elements):
        i = torch.arange(len(d), device=x.device)
        d[i, start + i] = 0.0
        out[start:start + len(d)] = d.topk(k + 1, dim=1, largest=False).values.amax(1)
    return out


# --- precision, recall, density, coverage ------------------------------------------------------
def prdc(real, fake, k: int = DENSITY_COVERAGE_K, chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` [M, D] against ``real`` [N, D], computed
    exactly as the reference package ``prdc`` (clovaai/generative-evaluation-prdc, ``compute_prdc``;
    tests/test_fidelity.py checks equality) but in float64 row blocks instead of full matrices.

    With r_k(x) the distance from x to its k-th nearest neighbour within its own set, B(x, r) the
    open ball, and 1[.] the indicator (strict ``<`` as in ``prdc``; Kynkäänniemi's code uses ``<=``,
    which differs only for ties):

    - precision = 1/M sum_j 1[exists i: ||Y_j - X_i|| < r_k(X_i)]   (fake inside the real manifold)
    - recall    = 1/N sum_i 1[exists j: ||X_i - Y_j|| < r_k(Y_j)]   (real inside the fake manifold)
    - density   = 1/(k M) sum_j sum_i 1[||Y_j - X_i|| < r_k(X_i)]   (Naeem et al. 2020, eq. 3)
    - coverage  = 1/N sum_i 1[min_j ||X_i - Y_j|| < r_k(X_i)]       (Naeem et al. 2020, eq. 4)

    Precision/recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
    Generative Models" (NeurIPS). Density/coverage: Naeem et al. 2020, "Reliable Fidelity and
    Diversity Metrics for Generative Models" (ICML).

    Direction: higher is better for all four. Precision, recall and coverage lie in [0, 1]; density
    is ~1 when fake and real come from the same distribution (exactly 1 on identical sets without
    ties) and exceeds 1 when fakes crowd into dense real regions, so values above 1 are not "better
    than real". Returns {"precision", "recall", "density", "coverage"} as floats.
    """
    real, fake = _pair(real, fake, ("real", "fake"))
    r_real = knn_radii(real, k, chunk_elements)
    r_fake = knn_radii(fake, k, chunk_elements)
    balls_per_fake = torch.zeros(len(fake), dtype=torch.int64, device=real.device)  # real balls holding each fake
    recalled = covered = 0
    for start, d in _distance_blocks(real, fake, chunk_elements):  # d: [real block, M]
        r = r_real[start:start + len(d)]
        balls_per_fake += (d < r[:, None]).sum(0)
        recalled += int((d < r_fake[None, :]).any(1).sum())
        covered += int((d.amin(1) < r).sum())
    return {"precision": float((balls_per_fake > 0).double().mean()),
            "recall": recalled / len(real),
            "density": float(balls_per_fake.sum()) / (k * len(fake)),
            "coverage": covered / len(real)}


def precision_recall(real, fake, k: int = PRECISION_RECALL_K, chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), k = 3 as in the paper:
    precision = fraction of fake samples inside the union of the real samples' k-NN balls (fidelity),
    recall = fraction of real samples inside the union of the fake samples' k-NN balls (diversity).
    Both in [0, 1], higher is better. See :func:`prdc` for the formulas. Returns {"precision", "recall"}."""
    r = prdc(real, fake, k, chunk_elements)
    return {"precision": r["precision"], "recall": r["recall"]}


def density_coverage(real, fake, k: int = DENSITY_COVERAGE_K, chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020), k = 5 as in the paper: density = mean number of real
    k-NN balls holding a fake sample, divided by k (fidelity; ~1 for matching distributions, may
    exceed 1); coverage = fraction of real samples whose k-NN ball holds at least one fake sample
    (diversity, in [0, 1]). Higher is better for both. See :func:`prdc`. Returns {"density", "coverage"}."""
    r = prdc(real, fake, k, chunk_elements)
    return {"density": r["density"], "coverage": r["coverage"]}


# --- FD-infinity -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FDInfinityFit:
    """Least-squares fit FD(n) = fd_infinity + slope / n over the subset sizes ``ns`` (FD at each in ``fds``)."""

    fd_infinity: float
    slope: float
    ns: tuple[int, ...]
    fds: tuple[float, ...]

    @property
    def fd_full(self) -> float:
        """FD of all N generated features (the largest n, which is N with the default sizes)."""
        return self.fds[int(np.argmax(self.ns))]


def fd_infinity_sizes(n: int, points: int = FD_INFINITY_POINTS) -> list[int]:
    """Default subset sizes for :func:`fd_infinity` with N = ``n`` features: ``points`` values with
    1/n evenly spaced from 1/ceil(2N/3) to 1/N, rounded, duplicates dropped (N = 200: 134 ... 200).

    Why 2N/3 and not Chong & Forsyth's 5000..50000 (N/10): the 1/n expansion of the bias holds when
    n is large against the feature dimension d; at the n this suite uses (hundreds; d = 128 or 2048)
    FD is not linear in 1/n over a wide range of n and a fit reaching down to small subsets
    extrapolates the curvature. Simulated on Gaussians (mean error of FD_inf, 4-48 seeds; true FD
    12-67): d = 64, N = 200: n_min = N/5 -4.8, N/2 -1.0, 2N/3 -0.9 (sd 1.0), 4N/5 -0.7 (FD_N +8.5);
    d = 128, N = 300: N/5 -4.3, N/2 -1.4, 2N/3 -0.4 (FD_N +10.4, power-law spectrum);
    d = 256, N = 200: N/5 +155, N/2 +27, 2N/3 -9, 4N/5 -28 (FD_N +169)."""
    if n < 4:
        raise InputError(f"FD-infinity needs at least 4 generated images (subsets of 2 or more at 2+ sizes), got {n}")
    n_min = max(2, math.ceil(2 * n / 3))
    inv = np.linspace(1.0 / n_min, 1.0 / n, points)
    return sorted({int(round(1.0 / v)) for v in inv})


def fd_infinity_fit(fake_features, mu_ref, sigma_ref, ns=None, seed: int = 0, sigma_ref_sqrt=None) -> FDInfinityFit:
    """FD-infinity (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to
    find them", CVPR): the Fréchet distance FD_n of a random subset of n of the generated features
    (without replacement, one subset per n from a generator seeded with ``seed``) against fixed
    reference statistics (mu_ref, sigma_ref), at each n in ``ns`` (default :func:`fd_infinity_sizes`),
    fit by least squares as FD_n = FD_inf + slope / n; FD_inf is the intercept at 1/n = 0.

    FD_n = ||mu_n - mu_ref||^2 + Tr(S_n + S_ref - 2 (S_n S_ref)^(1/2)) via
    ``bench.scoring.metrics.frechet_distance_to_reference`` (the reference's square root ``sigma_ref_sqrt``
    is computed once when not given; the cached reference statistics carry it as "sigma_sqrt").

    What it removes: the O(1/n) bias of the generated side (the sample mean's Tr(S)/n and the first
    term of the square-root trace's bias). Not removed: any bias of the reference statistics (fixed),
    and the higher-order terms, which dominate when n is well below the feature dimension: in
    simulation with d = 2048 and N = 300 (Inception-sized features, a few hundred images) FD_N
    overestimates a true 189 by 1326 and FD_inf still by ~820; with d = 128, N = 300 the bias drops
    from +10.4 to -0.4. Report it beside FD and KID, not instead. Lower is better."""
    x = _as_matrix(fake_features, "fake_features").cpu()
    mu = torch.as_tensor(np.asarray(torch.as_tensor(mu_ref).cpu(), dtype=np.float64))
    sigma = torch.as_tensor(np.asarray(torch.as_tensor(sigma_ref).cpu(), dtype=np.float64))
    if mu.shape != (x.shape[1],) or sigma.shape != (x.shape[1],) * 2:
        raise InputError(f"reference statistics {tuple(mu.shape)}, {tuple(sigma.shape)} do not match "
                         f"{x.shape[1]}-d features")
    root = psd_sqrt(sigma.numpy()) if sigma_ref_sqrt is None else np.asarray(torch.as_tensor(sigma_ref_sqrt).cpu(), np.float64)
    ref = {"mu": mu, "sigma": sigma, "sigma_sqrt": torch.as_tensor(root)}
    ns = fd_infinity_sizes(len(x)) if ns is None else sorted({int(n) for n in ns})
    if len(ns) < 2 or ns[0] < 2 or ns[-1] > len(x):
        raise InputError(f"FD-infinity needs at least 2 distinct subset sizes in [2, {len(x)}], got {ns}")
    g = torch.Generator().manual_seed(seed)
    fds = [frechet_distance_to_reference(x[torch.randperm(len(x), generator=g)[:n]], ref) for n in ns]
    slope, intercept = np.polyfit(1.0 / np.asarray(ns, np.float64), np.asarray(fds), 1)
    return FDInfinityFit(float(intercept), float(slope), tuple(ns), tuple(fds))


def fd_infinity(fake_features, mu_ref, sigma_ref, ns=None, seed: int = 0, sigma_ref_sqrt=None) -> float:
    """FD-infinity (Chong & Forsyth 2020): the intercept of the fit of :func:`fd_infinity_fit`, the
    Fréchet distance extrapolated to infinitely many generated images. Lower is better."""
    return fd_infinity_fit(fake_features, mu_ref, sigma_ref, ns, seed, sigma_ref_sqrt).fd_infinity


# --- memorization ------------------------------------------------------------------------------
def nearest_neighbour_distances(queries, points, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """For each row of ``queries``, the L2 distance to its nearest row of ``points`` (float64 [Q])."""
    return nearest_neighbours(queries, points, chunk_elements)[0]


def nearest_neighbours(queries, points, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``queries``: the L2 distance to its nearest row of ``points`` (float64 [Q]) and
    that row's index (long [Q]). The neighbour is found with the matmul form; its distance is then
    recomputed as ||q - p|| so that exact copies give exactly 0."""
    q, p = _pair(queries, points, ("queries", "points"))
    dist = torch.empty(len(q), dtype=torch.float64, device=q.device)
    index = torch.empty(len(q), dtype=torch.long, device=q.device)
    for start, d in _distance_blocks(q, p, chunk_elements):
        j = d.argmin(1)
        index[start:start + len(d)] = j
        dist[start:start + len(d)] = (q[start:start + len(d)] - p[j]).norm(dim=1)
    return dist, index


@dataclass(frozen=True)
class Memorization:
    """median NN distance of generated images to the training set / the same for held-out images."""

    ratio: float  # median_generated / median_heldout (inf if only the denominator is 0, nan if both are)
    median_generated: float
    median_heldout: float
    n_generated: int
    n_train: int
    n_heldout: int
    lo: float = math.nan  # 95% percentile bootstrap interval of ratio (ratio_interval)
    hi: float = math.nan


RATIO_BOOT = 2000  # bootstrap replicates of the memorization ratio's interval


def ratio_interval(d_gen: np.ndarray, d_held: np.ndarray, n_boot: int = RATIO_BOOT, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(d_gen) / median(d_held): both samples resampled
    independently with replacement (``n_boot`` replicates, a fixed seed: the same distances give the
    same interval). On the craters set the held-out median rests on 45 images: alone, its 95%
    bootstrap interval spans 0.87-1.14x it in 8x8-pooled pixels and 0.94-1.04x in Inception
    features, so a ratio of 0.96 can be noise; the interval says how far from 1 a trial's ratio is. Replicates whose
    held-out median is 0 are left out; (nan, nan) when none remain."""
    rng = np.random.default_rng(seed)
    g = np.median(d_gen[rng.integers(0, len(d_gen), (n_boot, len(d_gen)))], axis=1)
    h = np.median(d_held[rng.integers(0, len(d_held), (n_boot, len(d_held)))], axis=1)
    r = g[h > 0] / h[h > 0]
    if not len(r):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))


def nearest_neighbour_ratio(generated, train, heldout, chunk_elements: int = CHUNK_ELEMENTS) -> Memorization:
    """Memorization check for small training sets (the 98-image craters set): for each generated
    image its L2 distance to the nearest training image, and the same for each held-out real image
    (which the model never saw); ratio = median(generated NN distances) / median(held-out NN distances).

    Works on whatever is passed (pixels [N, C, H, W] or features [N, D]); all three must be in the
    same space and scale. A model that generalizes puts samples about as far from the training set
    as unseen real images are: ratio ~1 (or above, for samples further away). Ratio < 1 is the
    warning sign: samples sit closer to the training images than real unseen images do (0: copies).
    Direction: closer to 1 is better; >= 1 is fine (it says nothing about quality), < 1 warns.
    ``lo``/``hi``: the ratio's 95% bootstrap interval over both sets of distances (``ratio_interval``).
    Related: the training-set nearest-neighbour checks of e.g. Carlini et al. 2023, "Extracting
    Training Data from Diffusion Models", and Somepalli et al. 2023."""
    gen, tr = _pair(generated, train, ("generated", "train"))
    held, _ = _pair(heldout, tr, ("heldout", "train"))
    d_gen = nearest_neighbour_distances(gen, tr, chunk_elements).cpu().numpy()
    d_held = nearest_neighbour_distances(held, tr, chunk_elements).cpu().numpy()
    m_gen, m_held = float(np.median(d_gen)), float(np.median(d_held))
    ratio = m_gen / m_held if m_held > 0 else (math.nan if m_gen == 0 else math.inf)
    return Memorization(ratio, m_gen, m_held, len(gen), len(tr), len(held), *ratio_interval(d_gen, d_held))


# --- brightness --------------------------------------------------------------------------------
def brightness(images) -> np.ndarray:
    """Per-image mean intensity in [0, 1] (0 black, 1 white), float64 [N], over all channels and pixels.

    Input: uint8 images in [0, 255] (divided by 255), or float images in [-1, 1] (the suite's
    convention: mapped by (x + 1) / 2 after clamping to [-1, 1], as ``to_uint8`` clamps), any shape
    [N, ...]. Float values beyond [-2, 2] are rejected as not [-1, 1] images (floats in [0, 255]);
    float images in [0, 1] cannot be told apart and would read wrong: convert them first."""
    t = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if t.ndim < 1 or len(t) == 0:
        raise InputError(f"brightness: expected a non-empty [N, ...] batch of images, got shape {tuple(t.shape)}")
    t = t.reshape(len(t), -1)
    if t.dtype == torch.uint8:
        return (t.to(torch.float64).mean(1) / 255.0).numpy()
    if not t.is_floating_point():
        raise InputError(f"brightness: images must be uint8 [0, 255] or float [-1, 1], got {t.dtype}")
    t = t.to(torch.float64)
    lo, hi = float(t.min()), float(t.max())
    if lo < -2 or hi > 2:
        raise InputError(f"brightness: float images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return ((t.clamp(-1.0, 1.0).mean(1) + 1.0) / 2.0).numpy()


@dataclass(frozen=True)
class BrightnessGap:
    """1-D Wasserstein-1 distance between per-image mean intensities (in [0, 1] units), and their means."""

    w1: float
    mean_fake: float
    mean_real: float
    n_fake: int
    n_real: int


def brightness_gap(fake_images, real_images) -> BrightnessGap:
    """W1(P_fake, P_real) between the empirical distributions of per-image mean intensity
    (:func:`brightness`, [0, 1] units; the two sets may mix uint8 and float [-1, 1]):
    W1 = integral |F_fake(t) - F_real(t)| dt (``scipy.stats.wasserstein_distance``); equals |a| when
    one distribution is the other shifted by a. Lower is better (0 = same distribution of brightness).

    The symptom of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
    (arXiv 2305.08891, WACV 2024): with non-zero terminal SNR the model never sees pure noise in training, so
    the mean of the image leaks through x_T and samples cannot be very dark or very bright: the fake
    brightness distribution is narrower than the data's. ``mean_fake`` / ``mean_real`` say the
    direction of a shift; W1 also sees a narrowed spread with equal means."""
    from scipy.stats import wasserstein_distance

    bf, br = brightness(fake_images), brightness(real_images)
    return BrightnessGap(float(wasserstein_distance(bf, br)), float(bf.mean()), float(br.mean()), len(bf), len(br))
