"""Feature extractors (registry ``FEATURES``): what the metrics in ``bench.scoring.metrics`` measure in.

- ``inception`` (2048-d pool3) and the ``inception-64`` / ``-192`` / ``-768`` taps: Inception-v3 with
  the standard FID weights (TF 2015-12-05), through torchmetrics' wrapper of torch-fidelity's
  FeatureExtractorInceptionV3. Images enter as uint8 [0, 255]; grey is repeated to 3 channels; the
  resize to 299x299 is TF1-compatible bilinear (``antialias=False``: the resize of the original TF
  FID code, bit-compatible with torch-fidelity; torchmetrics' own default differs).
- ``mnist-classifier``: the 128-d penultimate layer of the project's MNIST CNN (``bench.scoring.classifier``),
  for 1-channel digit-sized images only.
- ``pixels``: 8x8 average-pooled pixels, fast, for tests and debugging (not a quality metric).

Add one: ``FEATURES.register("name")(FeatureExtractor(...))``; its ``version()`` is part of the
reference-statistics cache key, so bump it whenever its outputs change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

from bench.images import to_uint8  # noqa: F401 (re-exported: the form every metric takes)
from bench.progress import bar as progress_bar
from bench.registry import InputError, Registry


@dataclass(frozen=True)
class FeatureExtractor:
    label: str  # what the results table says (e.g. "inception-v3-pool3-2048")
    build: Callable[[str], Callable[[torch.Tensor], torch.Tensor]]  # device -> (uint8 [N,C,H,W] -> [N, D])
    supports: Callable[[int, int], str]  # (channels, size) -> "" when usable, else why not
    cpu_batch: int  # batch size on CPU (small batches run fastest on a 2-core CPU); 64 on GPUs
    dim: int  # feature dimension (per channel where it depends on the channels)
    cpu_images_per_s: float  # rough rate on one CPU thread, for the dry run's estimate
    version: Callable[[], str]  # part of the reference-statistics cache key
    description: str
    ready: Callable[[], bool] = lambda: True  # False while a first use must prepare it (train, download)
    prepare_cpu_s: float = 0.0  # that first use's single-thread CPU seconds, for the dry run's estimate


FEATURES: Registry[FeatureExtractor] = Registry("feature extractor")


def _any_image(channels: int, size: int) -> str:
    return "" if channels in (1, 3) else f"needs 1- or 3-channel images, got {channels}"


@lru_cache(maxsize=4)
def _inception_net(device: str):
    """One Inception-v3 per device, shared by every tap (the weights load once)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], antialias=False)
        # channels_last: oneDNN's NHWC convolutions run Inception 1.4x faster on CPU (9.4 -> 13.0 img/s
        # on 2 cores: `bench perf --only features`); features agree with NCHW to ~1e-6 relative
        return net.to(device, memory_format=torch.channels_last)
    except Exception as e:
        raise RuntimeError(
            f"cannot load the FID Inception weights ({type(e).__name__}: {e}). Offline, install them once "
            f"with `python ../shared/tools/install-fid-weights` (writes to $TORCH_HOME/hub/checkpoints)."
        ) from e


def inception_runner(net, tap: str = "2048") -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 [N, 1|3, H, W] -> features at ``tap`` of an Inception net (grey repeated to RGB)."""
    net = copy.copy(net)  # shares the modules; stops the forward at this tap
    net.features_list = [tap]

    def run(x: torch.Tensor) -> torch.Tensor:
        return net(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)

    return run


def _inception_builder(tap: str):
    return lambda device: inception_runner(_inception_net(device), tap)


for _tap in ("64", "192", "768", "2048"):
    FEATURES.register("inception" if _tap == "2048" else f"inception-{_tap}")(
        FeatureExtractor(
            label="inception-v3-pool3-2048" if _tap == "2048" else f"inception-v3-{_tap}",
            build=_inception_builder(_tap),
            supports=_any_image,
            cpu_batch=8,
            dim=int(_tap),
            # 400 images in 76 s per trial of the quick schedules grid on the 2-core CPU
            cpu_images_per_s=5.0,
            version=lambda: "tf1resize",
            description=f"Inception-v3 (FID weights) {'pool3 ' if _tap == '2048' else ''}features, {_tap}-d",
        )
    )


def _classifier_supports(channels: int, size: int) -> str:
    if channels == 1 and 16 <= size <= 64:
        return ""
    return f"the MNIST classifier needs 1-channel digit-sized images (16..64 px), got {channels}x{size}x{size}"


def _classifier_builder(device: str):
    from bench.scoring.classifier import load_classifier

    model = load_classifier(device=device, progress=True)
    return model.features


def _classifier_ready() -> bool:
    from bench.scoring.classifier import classifier_ready

    return classifier_ready()


def _classifier_version() -> str:
    from bench.scoring.classifier import CLASSIFIER_VERSION, classifier_fingerprint, load_classifier

    load_classifier(progress=True)  # trains it first if this machine has none
    return f"{CLASSIFIER_VERSION}-{classifier_fingerprint()}"


FEATURES.register("mnist-classifier")(
    FeatureExtractor(
        label="mnist-cnn-penultimate-128",
        build=_classifier_builder,
        supports=_classifier_supports,
        cpu_batch=1000,
        dim=128,
        cpu_images_per_s=2000.0,
        version=_classifier_version,
        description="penultimate layer (128-d) of the project's MNIST CNN (bench.scoring.classifier)",
        ready=_classifier_ready,
        # its training on a first run, single-thread CPU seconds: 84 s on one thread of the 2-core CPU
        # (the test suite on a fresh cache, 2026-12-07), plus loading MNIST
        prepare_cpu_s=100.0,
    )
)


FEATURES.register("pixels")(
    FeatureExtractor(
        label="pixels-8x8",
        build=lambda device: (lambda x: F.adaptive_avg_pool2d(x.float() / 255.0, 8).flatten(1)),
        supports=_any_image,
        cpu_batch=4096,
        dim=64,
        cpu_images_per_s=50000.0,
        version=lambda: "1",
        description="8x8 average-pooled pixels (fast; for tests and debugging, not a quality metric)",
    )
)


FEATURES.register("mean-intensity")(
    FeatureExtractor(
        label="mean-intensity-1",
        build=lambda device: (lambda x: x.float().mean(dim=(1, 2, 3), keepdim=False)[:, None] / 255.0),
        supports=_any_image,
        cpu_batch=4096,
        dim=1,
        cpu_images_per_s=100000.0,
        version=lambda: "1",
        description="per-image mean intensity in [0, 1] (the brightness diagnostic of Lin et al. 2023)",
    )
)


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """Sharpness of each image, float32 [N, 1]: the variance over pixels of the 3x3 Laplacian
    (0 1 0 / 1 -4 1 / 0 1 0, 'valid': no padding) of the grey image (the mean of the channels) in
    [0, 1] units (uint8 / 255). 0 for a constant image; 16 for a 0/255 checkerboard (every response
    is +-4); blurring lowers it, noise raises it (Pech-Pacheco et al. 2000's focus measure)."""
    grey = x.float().mean(dim=1, keepdim=True) / 255.0
    lap = F.conv2d(grey, LAPLACIAN.to(grey.device)[None, None])
    return lap.flatten(1).var(dim=1, unbiased=False)[:, None]


FEATURES.register("laplacian")(
    FeatureExtractor(
        label="laplacian-variance-1",
        build=lambda device: laplacian_variance,
        supports=lambda channels, size: "" if size >= 3 else "needs images of at least 3 x 3 pixels",
        cpu_batch=1024,
        dim=1,
        cpu_images_per_s=20000.0,
        version=lambda: "1",
        description="per-image variance of the 3x3 Laplacian of the grey image (sharpness; bench.scoring.features.laplacian_variance)",
    )
)


@lru_cache(maxsize=8)
def _extractor(name: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return FEATURES.get(name).build(device)


def extract_features(name: str, images: torch.Tensor, device="cpu", progress: bool = False, batch_size: int = 0) -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of uint8 images [N, C, H, W] under extractor ``name``."""
    spec = FEATURES.get(name)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise InputError(f"images must be uint8 [N, C, H, W] in [0, 255], got {images.dtype} {tuple(images.shape)}")
    device = str(device)
    fn = _extractor(name, device)
    bs = batch_size or (spec.cpu_batch if device == "cpu" else max(64, spec.cpu_batch))
    out = []
    with torch.inference_mode(), progress_bar(len(images), f"{name} features", "img", enabled=progress) as bar:
        for i in range(0, len(images), bs):
            out.append(fn(images[i : i + bs].to(device)).float().cpu())
            bar.update(len(out[-1]))
    return torch.cat(out) if out else torch.empty(0, 0)


