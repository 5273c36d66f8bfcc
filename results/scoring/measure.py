"""Scoring numbers for the issue note: real-vs-real floors and MNIST vs noise, with wall times."""
import json, os, sys, time, platform
import torch
from bench.scoring import metrics as M
from bench.scoring.classifier import classifier_info
from bench.data.datasets import load_dataset

OUT = sys.argv[1]
SIZES = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1000, 2000]
R = {"machine": f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}, threads {torch.get_num_threads()}",
     "refstats_version": M.REFSTATS_VERSION, "order_seed": M.ORDER_SEED, "kid_subsets": M.KID_SUBSETS, "rows": []}

def save():
    with open(OUT + ".tmp", "w") as f: json.dump(R, f, indent=2)
    os.replace(OUT + ".tmp", OUT)

def log(**row):
    print(json.dumps(row), flush=True); R["rows"].append(row); save()

def feats(dataset, split, feature, n, size=0):
    t = time.time(); s = M.reference_stats(dataset, split, feature, n, image_size=size, progress=True)
    dt = time.time() - t
    log(what=f"features {dataset}/{split} {feature}", n=len(s["features"]), wall_s=round(dt, 1),
        extraction_s=round(s["seconds"], 1), images_per_s=round(len(s["features"]) / s["seconds"], 2))
    return s["features"]

def metrics(name, fake, ref, feature, **extra):
    t = time.time(); mu, sg = M.gaussian_stats(fake); mu2, sg2 = M.gaussian_stats(ref)
    fd = M.frechet_distance(mu, sg, mu2, sg2); t_fd = time.time() - t
    row = dict(what=name, features=M.FEATURES.get(feature).label, n_generated=len(fake), n_ref=len(ref), fd=fd, fd_s=round(t_fd, 2), **extra)
    if feature == "inception":
        t = time.time(); k, ks, m = M.kernel_distance(fake, ref); row.update(kid=k, kid_std=ks, kid_subset_size=m, kid_s=round(time.time() - t, 1))
    log(**row)

t0 = time.time()
# 1. the MNIST classifier (cached) and its FD floors: through the public API
log(what="mnist classifier", **classifier_info())
for n in (1000, 10000):
    t = time.time(); r = M.floor(["fd_mnist_clf"], "mnist", n, n_reference=n, progress=True)
    log(what=f"floor fd_mnist_clf mnist test-vs-train", wall_s=round(time.time() - t, 1), **r)
# 2. craters train (98) vs heldout (45): through the public API
t = time.time(); r = M.floor(["fid", "kid"], "craters", 45, progress=True)
log(what="floor craters heldout-vs-train", wall_s=round(time.time() - t, 1), **r)
# 3. MNIST train vs test with Inception: largest size first, smaller sizes are the first n of the same seeded order
N = max(SIZES)
train, test = feats("mnist", "train", "inception", N), feats("mnist", "heldout", "inception", N)
for n in SIZES:
    metrics(f"floor mnist test-vs-train (first {n} of the seeded orders)", test[:n], train[:n], "inception")
# 4. MNIST vs uniform noise, 1k
noise = torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
t = time.time(); fn = M.extract_features("inception", noise, progress=True); dt = time.time() - t
log(what="features uniform noise inception", n=1000, wall_s=round(dt, 1), images_per_s=round(1000 / dt, 2))
metrics("uniform noise vs mnist train", fn, train[:1000], "inception")
fc = M.extract_features("mnist-classifier", noise)
metrics("uniform noise vs mnist train", fc, M.reference_stats("mnist", "train", "mnist-classifier", 1000)["features"], "mnist-classifier")
# API consistency: score() on the same noise gives the same numbers
t = time.time(); r = M.score(["fd_mnist_clf"], noise, "mnist", n_reference=1000)
log(what="score() uniform noise vs mnist train (API)", wall_s=round(time.time() - t, 1), **r)
R["total_s"] = round(time.time() - t0); save()
print("done", R["total_s"])
