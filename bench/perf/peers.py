"""Peer implementations of the training step, for ``bench perf``: what a user would otherwise run.

``diffusers`` (optional: ``pip install -e ".[peers]"``): a ``UNet2DModel`` configured to the very
architecture of a ``bench.models.unet`` preset (same widths, blocks, attention placement, norm groups: the
parameter count is checked to be identical), trained with the step of diffusers' own example
``examples/unconditional_image_generation/train_unconditional.py``::

    noise = randn; t = randint(0, 1000); noisy = DDPMScheduler.add_noise(x0, noise, t)
    loss = mse(model(noisy, t).sample, noise); backward; clip_grad_norm_(1.0)
    AdamW.step; lr_scheduler.step; zero_grad; EMAModel.step(model.parameters())

with the optimizer, learning rate, dropout, batch and dtype of the bench step it is compared with
(bf16 autocast on CUDA for both, float32 on CPU). The model is used as shipped (default memory
format, default attention processor): that is what a diffusers user gets.

Limitation found while building this: ``UNet2DModel`` upsamples by a fixed factor 2, so with four
resolution levels it cannot run at 28x28 (7 -> 4 -> 8 does not meet the 7x7 skip); a diffusers user
pads MNIST to 32x32. ``supports`` says so, and ``bench perf`` compares at 32x32 and 64x64.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.unet import MODELS, build_model, count_params
from bench.registry import Registry

PEERS: Registry = Registry("peer")


def diffusers_missing() -> str:
    """'' when diffusers can be imported, else why not (and how to get it)."""
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        return f"diffusers is not installed ({e}); pip install -e \".[peers]\""
    return ""


def diffusers_supports(preset: str, size: int) -> str:
    """'' when diffusers' UNet2DModel runs the preset at ``size`` px, else why not."""
    levels = len(MODELS.get(preset)["channel_mults"])
    if size % 2 ** (levels - 1):
        return f"diffusers UNet2DModel needs a size divisible by {2 ** (levels - 1)} for {levels} levels, got {size}"
    return ""


def diffusers_unet(preset: str, channels: int, size: int, dropout: float = 0.1) -> nn.Module:
    """diffusers' UNet2DModel with the architecture of ``bench.models.unet`` preset ``preset``.

    The correspondence: block_out_channels = base_channels * channel_mults; layers_per_block =
    num_res_blocks (both decoders use one more); Attn*Block2D at the levels in ``attn_levels``;
    one attention head of full width (``attention_head_dim`` = the block width); mid-block attention
    iff ``mid_attn``; the same GroupNorm group count.
    """
    from diffusers import UNet2DModel

    kw = MODELS.get(preset)
    levels = range(len(kw["channel_mults"]))
    widths = tuple(kw["base_channels"] * m for m in kw["channel_mults"])
    if kw.get("attn_heads", 1) != 1 or any(w % kw["norm_groups"] for w in widths):
        raise ValueError(f"preset {preset!r} has no exact diffusers counterpart (multi-head attention or uneven groups)")
    down = tuple("AttnDownBlock2D" if i in kw["attn_levels"] else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in kw["attn_levels"] else "UpBlock2D" for i in reversed(levels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter about attention_head_dim
        model = UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=kw["num_res_blocks"],
            block_out_channels=widths, down_block_types=down, up_block_types=up, norm_num_groups=kw["norm_groups"],
            attention_head_dim=max(widths), dropout=dropout, add_attention=kw["mid_attn"],
        )
    ours = count_params(build_model(preset, channels, size, dropout))
    if count_params(model) != ours:
        raise AssertionError(f"diffusers {preset}: {count_params(model)} parameters, bench {ours}")
    return model


@PEERS.register("diffusers")
class DiffusersStep:
    """One diffusers training step (see the module docstring) on random data of shape [B, C, S, S]."""

    def __init__(self, preset: str, channels: int, size: int, batch: int, device: torch.device,
                 lr: float = 2e-4, dropout: float = 0.1, ema_decay: float = 0.9999, seed: int = 0):
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        self.device, self.batch = torch.device(device), batch
        self.model = diffusers_unet(preset, channels, size, dropout).to(self.device).train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.ema = EMAModel(self.model.parameters(), decay=ema_decay, use_ema_warmup=True)
        self.ema.to(self.device)
        self.data = torch.randn(1024, channels, size, size, device=self.device)
        self.amp = self.device.type == "cuda"

    def __call__(self) -> torch.Tensor:
        x0 = self.data[torch.randint(len(self.data), (self.batch,), device=self.device)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (self.batch,), device=self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pred = self.model(noisy, t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return loss.detach()


def peer_step(name: str, preset: str, channels: int, size: int, batch: int, device, dropout: float) -> Callable[[], torch.Tensor]:
    return PEERS.get(name)(preset, channels, size, batch, device, dropout=dropout)
