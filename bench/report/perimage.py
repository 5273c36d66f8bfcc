"""Per-image data of a run: the two-level bootstrap of DESIGN.md section 5 and the brightness offsets.

A trial writes the per-image features of each evaluation (``per_image/<trial_id>_<sampler>-<steps>.npz``:
float16, one array [n_images, dim] per feature extractor of at most ``PER_IMAGE_MAX_DIM`` dimensions;
row i is image i, generated from the same image seed in every arm of a training seed) and the run
keeps the reference statistics of those extractors (``references/<dataset>-<size>px-<feature>-n<n>.npz``:
``mu``, ``sigma``, float64). From these the report recomputes, without the data or the models:

- ``bootstrap_vs_best``: for a plain Fréchet distance (fd_mnist_clf, fd_pixels), a second interval for
  each comparison with the best arm, ``bench.scoring.stats.bootstrap_two_level`` (seeds, then images with the
  same indices in every arm) of mean_s FD(arm_s) - FD(best_s), each FD recomputed from the resampled
  per-image features against the reference mu / sigma with ``bench.scoring.distances.frechet_distance_to_reference``
  (the function the metric itself uses). ``N_BOOT`` replicates, percentile interval.
- ``brightness``: per arm, the offset of the samples' mean intensity from the data's (Lin et al. 2023's
  symptom), with a t-interval over seeds and a two-level bootstrap interval.

Where an input is missing (runs made before per-image features were kept), the intervals are NaN and
``boot_reason`` / the notes say why.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from bench.report import kept
from bench.report.tables import Run, is_fd_infinity, metric_obj
from bench.scoring import stats

#: bootstrap replicates (a modest number: each costs 2 x n_seeds Fréchet distances per comparison)
N_BOOT = 500
BOOT_LEVEL = 0.95
BOOT_SEED = 0
#: extractors kept per image by the trials (bench.run.trial.PER_IMAGE_MAX_DIM)
PER_IMAGE_MAX_DIM = 256
BRIGHTNESS_FEATURE = "mean-intensity"


def boot_reason(metric: str) -> str | None:
    """None where the bootstrap of ``metric`` can be recomputed from per-image data, else why not."""
    m = metric_obj(metric)
    if m is None:
        return "it is not a registered metric"
    try:
        dim = m.dim
    except Exception:  # noqa: BLE001 - an extractor retired since the run
        return f"its feature extractor `{m.feature}` is not registered"
    if dim > PER_IMAGE_MAX_DIM:
        return f"its {dim}-d features are not kept per image (only extractors of at most {PER_IMAGE_MAX_DIM} dimensions are)"
    if is_fd_infinity(metric):
        return ("FD-infinity fits a line through Fréchet distances of ~15 subsets of each image set, so a bootstrap "
                "would cost ~15 times that of its Fréchet distance; read the Fréchet distance's interval")
    if m.feature == BRIGHTNESS_FEATURE:
        return ("it is a W1 distance to the training images' per-image intensities, of which the run keeps only the "
                "mean and variance (references/); the brightness offsets in the Result carry a bootstrap interval")
    if not m.frechet:
        return "it needs the reference images' own features (nearest-neighbour balls), which the run does not keep"
    return None


def bootstrappable(metric: str) -> bool:
    return boot_reason(metric) is None


#: why a run has no bootstrap intervals at all
NO_PER_IMAGE = "this run has no per_image/ folder (it was made before the trials kept per-image features)"


def has_per_image(run: Run) -> bool:
    """Whether the run kept per-image features (per_image/) at all: here, or when derived.json was
    written (a committed run leaves them out; ``bench.report.kept``)."""
    return kept.had(run, "per_image")


@contextlib.contextmanager
def one_blas_thread():
    """Many small eigenproblems run fastest on one BLAS thread (threadpoolctl where installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(1):
        yield


# --- loading -------------------------------------------------------------------------------------------
def per_image(run: Run, trial_id: str, ev: tuple[str, int], feature: str) -> np.ndarray | None:
    """The per-image features [n, dim] (float64) of one trial's evaluation, or None if not kept."""
    path = run.dir / "per_image" / f"{trial_id}_{ev[0]}-{int(ev[1])}.npz"
    key = ("per_image", path.name, feature)
    if key not in run.cache:
        arr = None
        if path.exists():
            try:
                with np.load(path) as z:
                    arr = np.asarray(z[feature], dtype=np.float64) if feature in z.files else None
            except Exception:  # noqa: BLE001 - unreadable or failing its zip CRC (BadZipFile): treated as missing
                arr = None
        run.cache[key] = None if arr is None else arr.reshape(len(arr), -1)
    return run.cache[key]


def image_size(run: Run, dataset: str) -> int:
    rows = run.rows[run.rows["dataset"] == dataset]
    size = pd.to_numeric(rows["image_size"], errors="coerce").dropna() if "image_size" in rows.columns else pd.Series()
    if len(size) and int(size.iloc[0]) > 0:
        return int(size.iloc[0])
    from bench.data.datasets import DATASETS

    return DATASETS.get(dataset).size


def n_reference(run: Run, metric: str, dataset: str) -> int | None:
    col = f"{metric}_n_ref"
    rows = run.rows[run.rows["dataset"] == dataset]
    vals = pd.to_numeric(rows[col], errors="coerce").dropna() if col in rows.columns else pd.Series(dtype=float)
    vals = vals[vals > 0]
    return int(vals.mode().iloc[0]) if len(vals) else None


def reference_path(run: Run, dataset: str, feature: str, n_ref: int | None):
    """references/<dataset>-<size>px-<feature>-n<n>.npz (the one file of that dataset and feature when
    n_ref is unknown)."""
    if n_ref is not None:
        return run.dir / "references" / f"{dataset}-{image_size(run, dataset)}px-{feature}-n{n_ref}.npz"
    found = sorted((run.dir / "references").glob(f"{dataset}-*px-{feature}-n*.npz"))
    return found[0] if len(found) == 1 else None


def reference(run: Run, dataset: str, feature: str, n_ref: int | None) -> dict | None:
    """{"mu", "sigma", "sigma_sqrt"} (float64 torch tensors, as ``frechet_distance_to_reference`` takes
    them) of the reference features, or None when the run has no such file."""
    path = reference_path(run, dataset, feature, n_ref)
    if path is None or not path.exists():
        return None
    key = ("reference", path.name)
    if key not in run.cache:
        import torch

        from bench.scoring.distances import psd_sqrt

        try:
            with np.load(path) as z:
                mu, sigma = np.asarray(z["mu"], np.float64), np.atleast_2d(np.asarray(z["sigma"], np.float64))
        except Exception:  # noqa: BLE001 - unreadable or failing its zip CRC: treated as missing (the notes say so)
            run.cache[key] = None
            return None
        ok = mu.ndim == 1 and sigma.shape == (len(mu), len(mu)) and np.isfinite(mu).all() and np.isfinite(sigma).all()
        run.cache[key] = {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                          "sigma_sqrt": torch.from_numpy(psd_sqrt(sigma))} if ok else None
    return run.cache[key]


def _ok_trials(run: Run, dataset: str, label: str, ev: tuple[str, int], metric: str | None = None) -> dict[int, str]:
    """seed -> trial_id of the finished trials of ``label`` on ``dataset`` with a row at ``ev`` (and a
    finite ``metric`` there, when given)."""
    r = run.rows
    sel = (r["dataset"] == dataset) & (r["label"] == label) & (r["sampler"] == ev[0]) & (r["sample_steps"] == ev[1])
    sel &= r["status"] == "ok"
    if metric is not None and metric in r.columns:
        sel &= np.isfinite(pd.to_numeric(r[metric], errors="coerce"))
    return {int(s): str(t) for s, t in zip(r.loc[sel, "seed"], r.loc[sel, "trial_id"])}


# --- the Fréchet statistic -----------------------------------------------------------------------------
class FrechetOnIds:
    """A batched statistic for ``stats.bootstrap_two_level`` on image ids: row j of ``ids`` [k, n] names
    n rows of ``features`` (a resampled image set) and maps to their Fréchet distance against ``ref``
    (``bench.scoring.distances.frechet_distance_to_reference``). Resampling ids instead of features lets the
    best arm's image sets, drawn identically in each of its comparisons (same bootstrap seed), be
    computed once (``memo``)."""

    def __init__(self, features: np.ndarray, ref: dict):
        import torch

        self.features, self.ref, self.memo = torch.from_numpy(np.ascontiguousarray(features, np.float64)), ref, {}

    def one(self, ids: np.ndarray) -> float:
        from bench.scoring.distances import frechet_distance_to_reference

        key = ids.tobytes()
        if key not in self.memo:
            self.memo[key] = frechet_distance_to_reference(self.features[ids], self.ref)
        return self.memo[key]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids).astype(np.int64).reshape(len(ids), -1)
        return np.array([self.one(row) for row in ids])


def bootstrap_vs_best(run: Run, metric: str, dataset: str, ev: tuple[str, int], best: str,
                      arms: list[str]) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """The two-level bootstrap interval of arm - best for each of ``arms`` ({arm: (lo, hi)}, NaN where
    it cannot be computed), and notes saying why where it cannot. Seeds: those both arms finished with
    per-image features; images: the first n of each set, n the smallest set size of the table (image i
    has the same seed in every arm, so truncating keeps the pairing)."""
    key = ("boot", metric, dataset, ev, best, tuple(arms))
    if key not in run.cache:
        out, notes = kept.number(run, "per_image", list(key), lambda: _json(_bootstrap_vs_best(run, metric, dataset, ev, best, arms)))
        run.cache[key] = ({a: tuple(v) for a, v in out.items()}, list(notes))
    return run.cache[key]


def _json(result: tuple[dict, list]) -> list:
    out, notes = result
    return [{a: [float(v[0]), float(v[1])] for a, v in out.items()}, list(notes)]


def _bootstrap_vs_best(run: Run, metric: str, dataset: str, ev: tuple[str, int], best: str,
                       arms: list[str]) -> tuple[dict[str, tuple[float, float]], list[str]]:
    key = ("boot-computed", metric, dataset, ev, best, tuple(arms))
    nan = (float("nan"), float("nan"))
    out, notes = {a: nan for a in arms}, []
    why = boot_reason(metric)
    if why is not None:
        run.cache[key] = (out, [])
        return run.cache[key]
    feature = metric_obj(metric).feature
    if not has_per_image(run):
        run.cache[key] = (out, [NO_PER_IMAGE])
        return run.cache[key]
    ref = reference(run, dataset, feature, n_reference(run, metric, dataset))
    if ref is None:
        path = reference_path(run, dataset, feature, n_reference(run, metric, dataset))
        name = path.name if path is not None else f"{dataset}-*px-{feature}-n*.npz"
        run.cache[key] = (out, [f"references/{name} is missing or unreadable"])
        return run.cache[key]
    sets: dict[str, dict[int, np.ndarray]] = {}
    for label in [best, *arms]:
        sets[label] = {}
        for seed, tid in sorted(_ok_trials(run, dataset, label, ev, metric).items()):
            x = per_image(run, tid, ev, feature)
            if x is None:
                notes.append(f"per_image/{tid}_{ev[0]}-{ev[1]}.npz has no `{feature}` features ({label}, seed {seed})")
            elif x.shape[1] != len(ref["mu"]) or not np.isfinite(x).all():
                notes.append(f"per_image/{tid}_{ev[0]}-{ev[1]}.npz: `{feature}` features that are not finite or do not "
                             f"match the reference's dimension ({label}, seed {seed})")
            else:
                sets[label][seed] = x
    sizes = [len(x) for s in sets.values() for x in s.values()]
    if not sizes:
        run.cache[key] = (out, notes or ["no per-image features for these trials"])
        return run.cache[key]
    n = min(sizes)
    table, offsets = [], {}
    for label, by_seed in sets.items():
        for seed, x in by_seed.items():
            offsets[(label, seed)] = sum(len(t) for t in table)
            table.append(x[:n])
    stat = FrechetOnIds(np.concatenate(table), ref)
    with one_blas_thread():
        for arm in arms:
            seeds = sorted(set(sets[arm]) & set(sets[best]))
            if len(seeds) < 2:
                notes.append(f"{arm} vs {best}: {len(seeds)} seed(s) with per-image features in both (a two-level "
                             f"bootstrap needs 2)")
                continue
            ids_a = np.array([offsets[(arm, s)] + np.arange(n) for s in seeds], dtype=np.float64)
            ids_b = np.array([offsets[(best, s)] + np.arange(n) for s in seeds], dtype=np.float64)
            b = stats.bootstrap_two_level(ids_a, ids_b, stat, n_boot=N_BOOT, level=BOOT_LEVEL, seed=BOOT_SEED)
            out[arm] = (b.lo, b.hi)
    run.cache[key] = (out, notes)
    return run.cache[key]


# --- brightness ------------------------------------------------------------------------------------------
def brightness(run: Run, metric: str, dataset: str, ev: tuple[str, int]) -> pd.DataFrame:
    """Per arm at ``ev``: the samples' mean intensity minus the data's (``offset``, mean over seeds of
    ``<metric>_mean_fake - <metric>_mean_ref``), with its t-interval over seeds (``lo``, ``hi``; df = n - 1)
    and a two-level bootstrap interval (``boot_lo``, ``boot_hi``: seeds, then images, of the per-image
    mean intensities against the data's mean; NaN without per-image data or with one seed)."""
    cols = ["label", "n", "mean_fake", "mean_ref", "offset", "lo", "hi", "boot_lo", "boot_hi"]
    fake_col, ref_col = f"{metric}_mean_fake", f"{metric}_mean_ref"
    r = run.rows
    if fake_col not in r.columns or ref_col not in r.columns:
        return pd.DataFrame(columns=cols)
    out = []
    for label in dict.fromkeys(r.loc[r["dataset"] == dataset, "label"]):
        sel = ((r["dataset"] == dataset) & (r["label"] == label) & (r["sampler"] == ev[0]) & (r["sample_steps"] == ev[1])
               & (r["status"] == "ok"))
        d = pd.DataFrame({"seed": r.loc[sel, "seed"], "fake": pd.to_numeric(r.loc[sel, fake_col], errors="coerce"),
                          "ref": pd.to_numeric(r.loc[sel, ref_col], errors="coerce")}).dropna().sort_values("seed")
        if not len(d):
            continue
        p = stats.paired(d["fake"].to_numpy(), d["ref"].to_numpy())
        trials = _ok_trials(run, dataset, label, ev)
        tids = [trials[int(s)] for s in d["seed"] if int(s) in trials]
        blo, bhi = kept.number(run, "per_image", ["brightness", metric, dataset, ev, label],
                               lambda tids=tids, m=float(d["ref"].mean()): _brightness_boot(run, ev, tids, m))
        out.append({"label": label, "n": p.n, "mean_fake": float(d["fake"].mean()), "mean_ref": float(d["ref"].mean()),
                    "offset": p.mean, "lo": p.lo, "hi": p.hi, "boot_lo": blo, "boot_hi": bhi})
    return pd.DataFrame(out, columns=cols)


def _brightness_boot(run: Run, ev: tuple[str, int], tids: list[str], ref_mean: float) -> list[float]:
    """The two-level bootstrap interval of the per-image mean intensities against the data's mean
    (NaN without per-image data for every seed, or with one seed)."""
    xs = [per_image(run, tid, ev, BRIGHTNESS_FEATURE) for tid in tids]
    if len(xs) < 2 or any(x is None for x in xs):
        return [float("nan"), float("nan")]
    n = min(len(x) for x in xs)
    a = np.stack([x[:n, 0] for x in xs])
    b = np.full_like(a, ref_mean)  # stat(b) is the data's mean in every replicate
    boot = stats.bootstrap_two_level(a, b, n_boot=N_BOOT, level=BOOT_LEVEL, seed=BOOT_SEED)
    return [float(boot.lo), float(boot.hi)]


def brightness_samples(run: Run, dataset: str, label: str, ev: tuple[str, int]) -> np.ndarray | None:
    """The per-image mean intensities of ``label``'s samples at ``ev``, pooled over its finished seeds."""
    xs = [per_image(run, tid, ev, BRIGHTNESS_FEATURE) for _, tid in sorted(_ok_trials(run, dataset, label, ev).items())]
    xs = [x[:, 0] for x in xs if x is not None]
    return np.concatenate(xs) if xs else None


def reference_sd(run: Run, metric: str, dataset: str) -> float | None:
    """The sd of the data's per-image mean intensity (references/), if kept."""
    ref = reference(run, dataset, BRIGHTNESS_FEATURE, n_reference(run, metric, dataset))
    return None if ref is None else float(np.sqrt(ref["sigma"].numpy().ravel()[0]))

