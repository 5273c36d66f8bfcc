"""Memory a trial's config implies, bounded before any work (issue 31: ``--set image_size=100000``
ended in an allocator traceback; a huge ``timesteps`` grew a dry run to 22 GB until the kernel killed
it, taking a shared machine's other work with it).

The bound is an order-of-magnitude estimate of the largest allocations, from the config alone (no
tensor is made): the training split as float32 at the trial's image size (twice: loading and
resizing), the schedule's float64 arrays (a dozen of length ``timesteps``), and the UNet's
activations for one training or sampling batch, ``ACTIVATIONS_PER_PIXEL`` float32 numbers per input
pixel (the tiny and small presets keep ~32-128 channels at full resolution over ~20 saved tensors
for the backward pass). A config is refused only when the estimate exceeds the machine's physical
memory: a refusal means "cannot run here", never "might be slow". ``--yes`` does not override it.
"""

from __future__ import annotations

import os

from bench.data.datasets import DATASETS
from bench.registry import InputError

ACTIVATIONS_PER_PIXEL = 1000  # float32 values kept per input pixel in one forward + backward (order of magnitude)
INFERENCE_PER_PIXEL = 100  # the same for a sampling forward pass (no gradients: only the live tensors)
SCHEDULE_ARRAYS = 12  # float64 arrays of length timesteps (betas, alpha_bar, their roots, posterior terms)
SAMPLE_BATCH = 256  # the samplers' batch (bench.run.trial)


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def trial_bytes(cfg) -> dict[str, int]:
    """The estimated peak allocations of one trial, by part (module docstring)."""
    spec = DATASETS.get(cfg.dataset)
    size = cfg.image_size or spec.size
    pixels = spec.channels * size * size
    images = min(cfg.max_train_images or spec.images, spec.images) if spec.images else cfg.max_train_images
    activations = max(cfg.batch_size * ACTIVATIONS_PER_PIXEL, min(cfg.n_samples, SAMPLE_BATCH) * INFERENCE_PER_PIXEL)
    return {"training images": 2 * images * pixels * 4,
            "schedule": SCHEDULE_ARRAYS * cfg.timesteps * 8,
            "activations": activations * pixels * 4}


def check_memory(trials, available: int | None = None, on_gpu: bool | None = None) -> None:
    """InputError (one line) naming the first trial whose estimate exceeds ``available`` bytes
    (default: physical memory). With a CUDA GPU (``on_gpu``, default: one is visible) the activations
    live in its memory, not the host's, and are left out."""
    available = physical_memory() if available is None else available
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if not available:
        return
    for i, cfg in enumerate(trials):
        parts = trial_bytes(cfg)
        if on_gpu:
            parts.pop("activations")
        total = sum(parts.values())
        if total > available:
            biggest = max(parts, key=parts.get)
            raise InputError(f"trial {i} (dataset={cfg.dataset}, image_size={cfg.image_size or DATASETS.get(cfg.dataset).size}, "
                             f"timesteps={cfg.timesteps}, batch_size={cfg.batch_size}) needs about {gib(total)} of memory, "
                             f"mostly {biggest} ({gib(parts[biggest])}); this machine has {gib(available)}")


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"
