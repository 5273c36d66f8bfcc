"""Scoring: FID, KID and a Fréchet distance in MNIST-classifier features (registry ``METRICS``;
the feature extractors are in ``bench.scoring.features``), with on-disk reference statistics.

What the numbers are
- ``fid``: Fréchet Inception Distance (Heusel et al. 2017), Inception-v3 pool3 features (2048-d,
  the TF 2015-12-05 weights via torchmetrics / torch-fidelity), generated images vs the dataset's
  training images.
- ``kid``: Kernel Inception Distance (Binkowski et al. 2018), same features, unbiased MMD^2 with the
  cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, mean and std over ``KID_SUBSETS`` random subsets
  of size min(``KID_SUBSET_SIZE``, n_generated, n_reference) (torch-fidelity's / torchmetrics' estimator).
- ``fd_mnist_clf``: Fréchet distance in the penultimate layer (128-d) of the project's own MNIST CNN
  (``bench.scoring.classifier``); valid only for 1-channel digit-sized images, skipped (with the reason in
  ``fd_mnist_clf_skipped``) elsewhere. Reported beside FID, never instead of it.

Preprocessing (identical for generated and real images; see ``bench.scoring.features``): uint8 [0, 255]
images, grey repeated to 3 channels, resized to 299x299 with TF1-compatible bilinear interpolation
(the resize of the original TF FID code, bit-compatible with torch-fidelity).

API: ``score(metric_names, fake_uint8, dataset, ...)`` and ``floor(metric_names, dataset, n_generated,
...)`` return flat results-table columns (see ``score``); ``reference_stats`` is the cache.

Reference statistics: the first ``n_reference`` training images in a fixed seeded random order
(default min(len(train), ``DEFAULT_N_REFERENCE`` = 10000): all 98 for craters), features' mean and
covariance (float64) and the covariance's square root (so that an evaluation needs no 2048 x 2048
eigendecomposition) plus the features themselves (float32, for KID), cached on disk as
``cache_dir()/refstats/<dataset>-<split>-<size>px-<extractor>-n<n>-of<available>-s<seed>-v<version>.pt``
with the same keys inside the file and a SHA-256 of the keys and of every tensor's bytes
(``STATS_TENSORS``), verified on every load; a file whose keys or checksum do not match (one flipped
bit is enough), that has no checksum, cannot be loaded, or holds NaNs is rebuilt with a warning,
never used; files are written atomically and computed under a file lock (one process of a grid
computes, the others wait and load).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.files import cache_dir, file_lock, save_torch_atomic
from bench.registry import InputError, Registry
from bench.scoring import fidelity
from bench.scoring.distances import (  # noqa: F401 (re-exported)
    KID_SEED,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    frechet_distance,
    frechet_distance_to_reference,
    gaussian_stats,
    kernel_distance,
    psd_sqrt,
)
from bench.scoring.features import FEATURES, FeatureExtractor, extract_features, to_uint8  # noqa: F401 (re-exported)

REFSTATS_VERSION = "1"  # bump when feature extraction or the statistics change: old caches are ignored
DEFAULT_N_REFERENCE = 10_000
ORDER_SEED = 0  # the fixed random order from which the first n images of a split are taken


# --- metrics -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A registered score: what it computes from which features, and how to read it."""

    feature: str  # a FEATURES name
    compute: Callable[[torch.Tensor, dict], dict]  # (generated features, reference stats) -> {"": value, "std": ...}
    description: str
    higher_is_better: bool = False  # tables, bold, plots, floors and words read this, never assume
    frechet: bool = False  # a Fréchet distance: biased at n < feature dimension (the report warns)
    needs_heldout: bool = False  # compute also gets ref["heldout_features"] (the held-out split's, e.g. memorization)
    # The real split that stands in for generated images in the floor (``floor``): "heldout", or "train"
    # where the metric's reference is the held-out split itself (a small held-out split would be scored
    # against itself: sharpness_gap = 0 by construction)
    floor_split: str = "heldout"
    warns_below: float | None = None  # the report warns when a trial scores below this (memorization: 1)
    # a Fréchet distance extrapolated to n = infinity (FD-infinity): its small-n bias is removed, so the
    # report's n < dimension warning does not apply; per-image bootstraps cannot recompute it
    extrapolated: bool = False

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def dim(self) -> int:
        """Dimension of the features it is computed in."""
        return FEATURES.get(self.feature).dim

    def best(self, values):
        """The best of ``values`` (a pandas Series or array) by this metric's direction."""
        return values.max() if self.higher_is_better else values.min()


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, feature: str, description: str, higher_is_better: bool = False, frechet: bool = False,
                    needs_heldout: bool = False, floor_split: str = "heldout", warns_below: float | None = None,
                    extrapolated: bool = False):
    if floor_split not in ("heldout", "train"):
        raise ValueError(f"metric {name}: floor_split must be 'heldout' or 'train', got {floor_split!r}")

    def deco(fn):
        METRICS.register(name)(Metric(feature, fn, description, higher_is_better, frechet, needs_heldout, floor_split,
                                      warns_below, extrapolated))
        return fn

    return deco


def _frechet(fake: torch.Tensor, ref: dict) -> dict:
    return {"": frechet_distance_to_reference(fake, ref)}


register_metric("fid", "inception", "Fréchet Inception Distance (Inception-v3 pool3, 2048-d)", frechet=True)(_frechet)
register_metric("fd_mnist_clf", "mnist-classifier", "Fréchet distance in MNIST-classifier features (128-d penultimate layer)",
                frechet=True)(_frechet)
register_metric("fd_pixels", "pixels", "Fréchet distance of 8x8 average-pooled pixels (fast: smoke tests, not a quality metric)",
                frechet=True)(_frechet)


@register_metric("kid", "inception", "Kernel Inception Distance (Inception-v3 pool3, cubic kernel, mean ± std over subsets)")
def _kid(fake: torch.Tensor, ref: dict) -> dict:
    mean, std, m = kernel_distance(fake, ref["features"])
    return {"": mean, "std": std, "subset_size": m}


# Fidelity and diversity (Kynkäänniemi et al. 2019, k = 3; Naeem et al. 2020, k = 5), higher is better,
# and FD-infinity (Chong & Forsyth 2020), the Fréchet distance extrapolated to n = infinity.
def _prdc_metric(key: str, k: int):
    def compute(fake: torch.Tensor, ref: dict) -> dict:
        return {"": fidelity.prdc(ref["features"], fake, k=k)[key]}

    return compute


def _fd_infinity(fake: torch.Tensor, ref: dict) -> dict:
    return {"": fidelity.fd_infinity(fake, ref["mu"], ref["sigma"], sigma_ref_sqrt=ref["sigma_sqrt"])}


for _feature, _suffix, _dim in (("mnist-classifier", "clf", "128-d MNIST-classifier"), ("inception", "inception", "Inception pool3")):
    for _key, _k in (("precision", 3), ("recall", 3), ("density", 5), ("coverage", 5)):
        register_metric(f"{_key}_{_suffix}", _feature, f"{_key} (k = {_k}) in {_dim} features (higher is better)",
                        higher_is_better=True)(_prdc_metric(_key, _k))
register_metric("fid_inf", "inception", "FD-infinity of Inception pool3 features (Chong & Forsyth 2020)",
                frechet=True, extrapolated=True)(_fd_infinity)
register_metric("fd_mnist_clf_inf", "mnist-classifier", "FD-infinity in MNIST-classifier features", frechet=True,
                extrapolated=True)(_fd_infinity)


def _memorization(fake: torch.Tensor, ref: dict) -> dict:
    m = fidelity.nearest_neighbour_ratio(fake, ref["features"], ref["heldout_features"])
    return {"": m.ratio, "median_generated": m.median_generated, "median_heldout": m.median_heldout,
            "n_heldout": m.n_heldout, "lo": m.lo, "hi": m.hi}


# Memorization (issue 12, for the 98-image craters set): median nearest-training-image distance of the
# samples / the same for held-out real images (bench.scoring.fidelity.nearest_neighbour_ratio). Below 1 the
# samples sit closer to the training images than unseen real ones do (the report warns); "higher is
# better" ranks less memorization first, not better images.
for _feature, _suffix, _what in (("inception", "inception", "Inception pool3"), ("mnist-classifier", "clf", "MNIST-classifier"),
                                 ("pixels", "pixels", "8x8-pooled pixel")):
    register_metric(f"memorization_{_suffix}", _feature,
                    f"memorization ratio in {_what} features: median NN distance to the training set, samples / "
                    f"held-out real images (< 1 warns)", higher_is_better=True, needs_heldout=True,
                    warns_below=1.0)(_memorization)


@register_metric("sharpness_gap", "laplacian", "|log| of the samples' median Laplacian variance over held-out real "
                 "images' (0 = as sharp as real images; the _ratio column says which way)", needs_heldout=True,
                 floor_split="train")
def _sharpness_gap(fake: torch.Tensor, ref: dict) -> dict:
    """Sharpness against real images (issue 17: "rough structures, no sharp contours"): ratio =
    median Laplacian variance of the samples / that of the held-out real images (features.laplacian_variance);
    below 1 the samples are blurrier, above 1 sharper or noisier. The score is |log ratio| (lower is
    better, 0 = real images' sharpness); the ratio and both medians are extra columns."""
    f, h = float(fake[:, 0].median()), float(ref["heldout_features"][:, 0].median())
    ratio = f / h if h > 0 else math.nan
    gap = abs(math.log(ratio)) if ratio > 0 else math.inf
    return {"": gap, "ratio": ratio, "median_fake": f, "median_heldout": h}


@register_metric("brightness_gap", "mean-intensity",
                 "W1 distance of per-image mean intensity, samples vs data (Lin et al. 2023's symptom; in [0, 1])")
def _brightness_gap(fake: torch.Tensor, ref: dict) -> dict:
    from scipy.stats import wasserstein_distance

    f, r = fake[:, 0].double().numpy(), ref["features"][:, 0].double().numpy()
    return {"": float(wasserstein_distance(f, r)), "mean_fake": float(f.mean()), "mean_ref": float(r.mean())}


# --- reference statistics ----------------------------------------------------------------------
compute_count: dict[str, int] = {}  # cache file name -> times computed in this process (tests read it)


def reference_stats(dataset: str, split: str = "train", feature: str = "inception", n_images: int | None = None,
                    data_root: str = "", image_size: int = 0, progress: bool = False, device="cpu") -> dict:
    """Statistics of the first ``n_images`` (default min(len, DEFAULT_N_REFERENCE)) images of ``split``
    in the fixed seeded order: {"keys", "mu" (float64 [D]), "sigma" (float64 [D, D]), "sigma_sqrt"
    (its PSD square root, float64 [D, D]), "features" (float32 [n, D]), "seconds"}. Cached on disk (see the module docstring)."""
    from bench.data.datasets import DATASETS, load_dataset

    spec = DATASETS.get(dataset)
    FEATURES.get(feature)  # an unknown name fails before any work
    size = image_size or spec.size
    images = load_dataset(dataset, split, data_root, size)
    n = min(DEFAULT_N_REFERENCE if n_images is None else n_images, len(images))
    if n < 2:
        raise InputError(f"reference statistics need at least 2 images, asked for {n_images} of {dataset}/{split}")
    path, keys = _stats_path(dataset, split, feature, n_images, size, len(images))
    stats = _load_stats(path, keys)
    if stats is None:
        with file_lock(path.with_name(f".{path.name}.lock")):
            stats = _load_stats(path, keys, warn=False)  # another process may have written it while we waited
            if stats is None:
                t0 = time.time()
                idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(ORDER_SEED))[:n]
                feats = extract_features(feature, to_uint8(images[idx]), device, progress)
                mu, sigma = gaussian_stats(feats)
                stats = {"keys": keys, "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                         "sigma_sqrt": torch.from_numpy(psd_sqrt(sigma, feats)), "features": feats, "seconds": time.time() - t0}
                stats["sha256"] = stats_checksum(stats)
                save_torch_atomic(stats, path)
                compute_count[path.name] = compute_count.get(path.name, 0) + 1
    return stats


def _stats_path(dataset: str, split: str, feature: str, n_images: int | None, size: int, available: int) -> tuple[Path, dict]:
    """The cache file of these reference statistics and the keys it must hold."""
    n = min(DEFAULT_N_REFERENCE if n_images is None else n_images, available)
    keys = {"dataset": dataset, "split": split, "image_size": size, "feature": feature,
            "feature_label": FEATURES.get(feature).label, "n_images": n, "n_available": available,
            "order_seed": ORDER_SEED, "version": f"{REFSTATS_VERSION}.{FEATURES.get(feature).version()}"}
    path = cache_dir() / "refstats" / (
        f"{dataset}-{split}-{size}px-{feature}-n{n}-of{available}-s{ORDER_SEED}-v{keys['version']}.pt")
    return path, keys


def reference_cached(dataset: str, split: str, feature: str, n_images: int | None, size: int, available: int) -> bool:
    """Whether these reference statistics have a cache file (not verified: the dry run's estimate).
    An extractor that is not ready (the MNIST classifier before its first training) has none, and is
    not prepared here: the dry run never trains or computes anything."""
    if not FEATURES.get(feature).ready():
        return False
    return _stats_path(dataset, split, feature, n_images, size, available)[0].exists()


STATS_TENSORS = ("mu", "sigma", "sigma_sqrt", "features")


def stats_checksum(stats: dict) -> str:
    """SHA-256 of the keys (as sorted JSON) and of each tensor's dtype, shape and bytes, in
    ``STATS_TENSORS`` order."""
    h = hashlib.sha256(json.dumps(stats["keys"], sort_keys=True).encode())
    for k in STATS_TENSORS:
        t = stats[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def _load_stats(path: Path, keys: dict, warn: bool = True) -> dict | None:
    if not path.exists():
        return None
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
        n, d = s["features"].shape
        if "sha256" not in s:
            reason = "it has no checksum (written by an older bench)"
        elif s["sha256"] != stats_checksum(s):
            reason = "its checksum does not match its contents (the file changed after it was written)"
        elif not (s["keys"] == keys and n == keys["n_images"] and s["mu"].shape == (d,)
                  and s["sigma"].shape == s["sigma_sqrt"].shape == (d, d)
                  and all(bool(torch.isfinite(s[k]).all()) for k in STATS_TENSORS)):
            reason = "keys, shapes or values do not match"
        else:
            return s
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
    if warn:
        warnings.warn(f"rebuilding reference statistics {path.name}: {reason}", stacklevel=2)
    return None


# --- the entry points --------------------------------------------------------------------------
def score(metric_names: list[str], fake_uint8: torch.Tensor, dataset: str, data_root: str = "", image_size: int = 0,
          n_reference: int | None = None, progress: bool = False, device="cpu",
          features_out: dict[str, torch.Tensor] | None = None) -> dict[str, float | int | str]:
    """Score generated images (uint8 [N, C, S, S]) against the dataset's training split.

    Returns flat results-table columns; per metric M: ``M`` (value; NaN when skipped), ``M_features``
    (extractor label), ``M_n_ref`` (reference images), ``M_skipped`` (only when skipped: why), and
    for kid also ``kid_std`` and ``kid_subset_size``; plus ``n_generated`` and ``score_seconds``.
    ``features_out`` (a dict) receives the generated images' features per extractor name."""
    from bench.data.datasets import DATASETS

    metrics = {name: METRICS.get(name) for name in metric_names}  # unknown names fail before any work
    spec = DATASETS.get(dataset)
    size = image_size or spec.size
    if fake_uint8.dtype != torch.uint8 or tuple(fake_uint8.shape[1:]) != (spec.channels, size, size):
        raise InputError(f"generated images must be uint8 [N, {spec.channels}, {size}, {size}] for {dataset} at "
                         f"{size} px, got {fake_uint8.dtype} {tuple(fake_uint8.shape)}")
    cache: dict[str, torch.Tensor] = {} if features_out is None else features_out

    def fake_features(feature: str) -> torch.Tensor:
        if feature not in cache:
            cache[feature] = extract_features(feature, fake_uint8, device, progress)
        return cache[feature]

    return _evaluate(metrics, fake_features, len(fake_uint8), dataset, data_root, size, n_reference, progress, device)


def floor(metric_names: list[str], dataset: str, n_generated: int, data_root: str = "", image_size: int = 0,
          n_reference: int | None = None, progress: bool = False, device="cpu") -> dict[str, float | int | str]:
    """The real-vs-real floor: the same metrics and reference as :func:`score`, with ``n_generated``
    real images of each metric's ``floor_split`` in place of generated ones: held-out images (MNIST
    test; craters valid+test) against the training reference, or, for a metric whose reference is the
    held-out split (sharpness_gap), the first training images against it; all of a split's images
    when fewer exist. Same columns as score, plus ``<metric>_floor_split`` and ``<metric>_n_real``
    (the images used); ``n_generated`` is the held-out count (as before floor_split existed)."""
    from bench.data.datasets import DATASETS, load_dataset

    size = image_size or DATASETS.get(dataset).size
    out: dict[str, float | int | str] = {}
    for split in ("train", "heldout"):  # heldout last: its n_generated is the row's
        metrics = {name: METRICS.get(name) for name in metric_names if METRICS.get(name).floor_split == split}
        n_used = min(n_generated, len(load_dataset(dataset, split, data_root, size)))
        if not metrics and split == "train":
            continue

        def real_features(feature: str, split=split, n_used=n_used) -> torch.Tensor:
            return reference_stats(dataset, split, feature, n_used, data_root, size, progress, device)["features"]

        seconds = out.get("score_seconds", 0.0)
        out.update(_evaluate(metrics, real_features, n_used, dataset, data_root, size, n_reference, progress, device))
        out["score_seconds"] = round(out["score_seconds"] + seconds, 2)  # both splits' scoring time
        out.update({k: v for name in metrics for k, v in ((f"{name}_floor_split", split), (f"{name}_n_real", n_used))})
    return out


def _evaluate(metrics: dict[str, Metric], fake_features, n_generated: int, dataset: str, data_root: str, size: int,
              n_reference: int | None, progress: bool, device) -> dict:
    from bench.data.datasets import DATASETS

    t0 = time.time()
    channels = DATASETS.get(dataset).channels
    out: dict[str, float | int | str] = {}
    for name, metric in metrics.items():
        fspec = FEATURES.get(metric.feature)
        out[f"{name}_features"] = fspec.label
        reason = fspec.supports(channels, size)
        if reason:
            out.update({name: math.nan, f"{name}_n_ref": 0, f"{name}_skipped": f"{dataset}: {reason}"})
            continue
        ref = reference_stats(dataset, "train", metric.feature, n_reference, data_root, size, progress, device)
        if metric.needs_heldout:  # every held-out image (up to DEFAULT_N_REFERENCE), cached like the training side
            held = reference_stats(dataset, "heldout", metric.feature, None, data_root, size, progress, device)
            ref = {**ref, "heldout_features": held["features"]}
        result = metric.compute(fake_features(metric.feature), ref)
        out.update({(f"{name}_{k}" if k else name): v for k, v in result.items()})
        out[f"{name}_n_ref"] = ref["keys"]["n_images"]
    out["n_generated"] = n_generated
    out["score_seconds"] = round(time.time() - t0, 2)
    return out


def release_extractors() -> None:
    """Drop the process's feature networks (Inception: ~100 MB of weights), e.g. so that a GPU's memory
    goes to the trials after the driver computed the floors."""
    from bench.scoring import features

    features._extractor.cache_clear()
    features._inception_net.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
