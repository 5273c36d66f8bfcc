"""Distances between feature sets: Fréchet distance (Heusel et al. 2017) and the unbiased kernel
distance of KID (Binkowski et al. 2018), in float64. (Leaf module: numpy and torch only.)"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.registry import InputError

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64, covariance normalised by n - 1 (as TTUR / torch-fidelity)."""
    f = features.double().cpu().numpy()
    if len(f) < 2:
        raise InputError(f"a Fréchet distance needs at least 2 images per side, got {len(f)}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))  # [D, D] also for D = 1


def psd_sqrt(sigma, features: torch.Tensor | None = None) -> np.ndarray:
    """The symmetric PSD square root of a covariance matrix (float64). From the features it was
    computed from when they are fewer than the dimensions (SVD of the centred n x d features, cost
    n^2 d), else from the eigendecomposition of sigma; round-off negative eigenvalues count as 0."""
    if features is not None and len(features) <= np.shape(sigma)[0]:
        x = features.double().cpu().numpy()
        _, sv, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)  # sigma = Vt^T diag(sv^2) Vt / (n-1)
        return (vt.T * (sv / math.sqrt(len(x) - 1))) @ vt
    s = np.asarray(sigma, np.float64)
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(root1: np.ndarray, sigma2: np.ndarray | None = None, centred2: np.ndarray | None = None) -> float:
    """Tr((S1 S2)^(1/2)) given R = S1^(1/2) and either S2 or the centred samples X2 of S2.

    S1 S2 is similar to the symmetric PSD matrix R S2 R, so the trace is the sum of the square roots
    of its eigenvalues; with samples, R S2 R = Z^T Z / (n-1) for Z = X2 R, whose nonzero eigenvalues
    are those of the n x n matrix Z Z^T / (n-1) (cheap when n < d). Round-off makes eigenvalues of
    singular products slightly negative; they count as 0, exactly as the reference implementations
    drop the imaginary parts of sqrtm(S1 S2) (pytorch-fid) or of the complex square roots of
    eigvals(S1 S2) (torch-fidelity, torchmetrics)."""
    if centred2 is not None:
        z, n = centred2 @ root1, len(centred2)
        g = (z @ z.T if n < z.shape[1] else z.T @ z) / (n - 1)
    else:
        g = root1 @ np.asarray(sigma2, np.float64) @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((g + g.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 (eigen-based, see _trace_sqrt_product)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(psd_sqrt(s1), sigma2=s2))


def frechet_distance_to_reference(features: torch.Tensor, ref: dict) -> float:
    """The Fréchet distance between features [n, d] and cached reference statistics, using the
    reference's cached square root: no d x d eigendecomposition per evaluation (for 2048-d features
    and a few hundred images: an n x n eigenproblem instead of two 2048 x 2048 ones)."""
    x = features.double().cpu().numpy()
    if len(x) < 2:
        raise InputError(f"a Fréchet distance needs at least 2 images per side, got {len(x)}")
    mu2 = x.mean(0)
    xc = x - mu2
    diff = ref["mu"].numpy() - mu2
    tr2 = float((xc * xc).sum()) / (len(x) - 1)
    return float(diff @ diff + np.trace(ref["sigma"].numpy()) + tr2 - 2 * _trace_sqrt_product(ref["sigma_sqrt"].numpy(), centred2=xc))


def kernel_distance(fake: torch.Tensor, real: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = KID_SEED) -> tuple[float, float, int]:
    """KID: (mean, std over subsets, subset size used) of the unbiased MMD^2 (torchmetrics'
    estimator) with the cubic polynomial kernel, subsets drawn without replacement from a seeded
    generator. Kernel products in float32, the MMD sums in float64."""
    from torchmetrics.image.kid import maximum_mean_discrepancy

    m = min(subset_size, len(fake), len(real))
    if m < 2:
        raise InputError(f"KID needs at least 2 images per side, got {len(fake)} generated and {len(real)} reference")
    fake, real = fake.float(), real.float()
    d = fake.shape[1]

    def kernel(a, b):
        return (a @ b.T / d + 1).double() ** 3

    g = torch.Generator().manual_seed(seed)
    k_ff = kernel(fake, fake) if m == len(fake) else None  # the whole set every time: compute once
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(len(real), generator=g)[:m]]
        f = fake[torch.randperm(len(fake), generator=g)[:m]]
        scores.append(maximum_mean_discrepancy(kernel(r, r), kernel(r, f), k_ff if k_ff is not None else kernel(f, f)))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False)), m
