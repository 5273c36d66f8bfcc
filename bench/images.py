"""Image tensors to bytes: [-1, 1] floats to uint8, and PNG grids written atomically. (Leaf module.)"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.files import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255]: round((clamp(x, -1, 1) + 1) * 127.5)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> Path:
    """Write images [N, C, H, W] (float in [-1, 1], or uint8) as one PNG grid, atomically.

    ``nrow`` images per row (default ceil(sqrt(N))), 2-pixel black padding (torchvision's make_grid).
    One-channel images are written as a greyscale PNG (the same pixels at a third of the bytes of RGB).
    """
    from PIL import Image
    from torchvision.utils import make_grid

    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"save_grid needs a non-empty [N, C, H, W] tensor, got shape {tuple(images.shape)}")
    imgs = images.detach().cpu()
    imgs = imgs if imgs.dtype == torch.uint8 else to_uint8(imgs)
    nrow = nrow or math.ceil(math.sqrt(len(imgs)))
    grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=0)  # [3, H', W'] uint8 (a grey image repeated)
    pixels = grid[0].numpy() if imgs.shape[1] == 1 else grid.permute(1, 2, 0).numpy()
    return atomic_write(Path(path), lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", optimize=True))
