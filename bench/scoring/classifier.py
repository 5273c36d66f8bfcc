"""The project's own small MNIST classifier, whose penultimate layer is the feature space of the
``fd_mnist_clf`` metric (a Fréchet distance that is fast on CPU; the FID authors suggest a
dataset-specific classifier for MNIST, Heusel et al. 2017).

It is trained once per machine from a fixed seed (a few minutes at most on a 2-core CPU), then
cached as ``cache_dir()/classifier/<CLASSIFIER_VERSION>.pt`` with ``<CLASSIFIER_VERSION>.json``
beside it (test accuracy, seed, epochs, training time). Concurrent processes (a Ray grid) wait on a
file lock instead of training it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.files import CorruptFile, cache_dir, file_lock, load_torch_checked, save_torch_atomic, verify, write_text_atomic
from bench.progress import bar as progress_bar

CLASSIFIER_VERSION = "mnist-cnn-v1"  # bump when the architecture or the recipe changes
FEATURE_DIM = 128
RECIPE = {"seed": 0, "epochs": 3, "batch_size": 128, "lr": 2e-3}  # Adam, cosine decay to 0


class MnistCNN(nn.Module):
    """conv3x3(16)-BN-ReLU-pool, conv3x3(32)-BN-ReLU-pool, fc(128)-ReLU [features], fc(10).

    Input: uint8 [N, 1, H, W] (any H, W: resized to 28x28), or float already normalised."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(32 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 1, H, W] -> normalised float [N, 1, 28, 28] (MNIST mean/std)."""
        x = x.float() / 255.0
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.1307) / 0.3081

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations [N, 128] (after the ReLU)."""
        if x.dtype == torch.uint8:
            x = self.prepare(x)
        return F.relu(self.fc1(self.conv2(self.conv1(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def classifier_path() -> Path:
    return cache_dir() / "classifier" / f"{CLASSIFIER_VERSION}.pt"


def mnist_tensors(data_root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, 1, 28, 28], int64 labels [N]) of MNIST ``split`` (train | heldout = test)."""
    from bench.data.datasets import data_root as resolve_root
    from bench.data.datasets import mnist_tv

    ds = mnist_tv(resolve_root(data_root), split)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


@torch.inference_mode()
def accuracy(model: MnistCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum()) for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(data_root: str = "", progress: bool = False, seed: int = RECIPE["seed"],
                     epochs: int = RECIPE["epochs"]) -> tuple[MnistCNN, dict]:
    """Train MnistCNN on the MNIST training set (deterministic given the seed); returns (model, info)."""
    x, y = mnist_tensors(data_root, "train")
    x_test, y_test = mnist_tensors(data_root, "heldout")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = MnistCNN()
    bs = RECIPE["batch_size"]
    steps = epochs * (len(x) // bs)
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xf = MnistCNN.prepare(x)
    t0 = time.time()
    model.train()
    # a bar on a terminal, a line with rate and ETA every 30 s in a log (a first run trains it for minutes)
    with progress_bar(steps, "training the MNIST classifier (first run only; cached)", "step", enabled=progress) as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(len(x) // bs):  # drop the last partial batch: fixed step count
                idx = perm[i * bs : (i + 1) * bs]
                loss = F.cross_entropy(model(xf[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
    info = {
        "version": CLASSIFIER_VERSION,
        "test_accuracy": accuracy(model, x_test, y_test),
        "train_seconds": round(time.time() - t0, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
        "feature_dim": FEATURE_DIM,
        **RECIPE,
        "seed": seed,
        "epochs": epochs,
        "optimizer": "Adam, cosine lr decay to 0",
        "torch": str(torch.__version__),
        "train_images": len(x),
        "test_images": len(x_test),
    }
    return model, info


def classifier_ready() -> bool:
    """Whether the cache holds a classifier file that matches its checksum: the dry run's question,
    which must not train it (a damaged file is not ready: the run will retrain it)."""
    try:
        verify(classifier_path())
        return classifier_path().exists()
    except (OSError, CorruptFile):
        return False


def load_classifier(data_root: str = "", progress: bool = False, device="cpu") -> MnistCNN:
    """The cached classifier in eval mode (trained first, once, when the cache has none or a broken one)."""
    path = classifier_path()
    model = _load(path)
    if model is None:
        with file_lock(path.with_suffix(".lock")):
            model = _load(path)  # another process may have trained it while we waited
            if model is None:
                model, info = train_classifier(data_root, progress)
                save_torch_atomic({"version": CLASSIFIER_VERSION, "state_dict": model.state_dict(), "info": info}, path)
                write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return model.to(device).eval()


def classifier_info() -> dict:
    """The JSON record beside the cached classifier (test accuracy etc.); {} when not trained yet."""
    try:
        return json.loads(classifier_path().with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def classifier_fingerprint() -> str:
    """Short hash of the cached weights: reference statistics in its feature space depend on them."""
    return hashlib.sha1(classifier_path().read_bytes()).hexdigest()[:10]


def _load(path: Path) -> MnistCNN | None:
    try:
        obj = load_torch_checked(path, map_location="cpu", weights_only=True)
        assert obj["version"] == CLASSIFIER_VERSION
        model = MnistCNN()
        model.load_state_dict(obj["state_dict"])
        return model.eval()
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated / corrupt / older version: retrain
        import warnings

        warnings.warn(f"rebuilding the MNIST classifier: cached {path} is unusable ({type(e).__name__}: {e})", stacklevel=2)
        return None
