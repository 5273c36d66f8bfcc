"""The one shared UNet ``model(x_t, t)`` predicting the diffusion's target (eps, x0 or v; registry ``MODELS``).

Architecture of DDPM (Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", appendix B;
PixelCNN++-style UNet) as cleaned up in improved-diffusion (Nichol & Dhariwal 2021, "Improved
Denoising Diffusion Probabilistic Models"):

- timestep t -> sinusoidal embedding (Vaswani et al. 2017) -> MLP (Linear, SiLU, Linear) of width
  4 * base_channels;
- per resolution level: ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, + projected
  timestep embedding, GroupNorm, SiLU, dropout, 3x3 conv; 1x1 conv on the skip path where the width
  changes), optional single-head self-attention after each block, then a stride-2 3x3 conv;
- middle: res block, self-attention, res block;
- decoder mirrors the encoder with ``num_res_blocks + 1`` blocks per level, each concatenating one
  encoder activation (the U skips), and nearest-neighbour upsampling + 3x3 conv between levels;
- output: GroupNorm, SiLU, 3x3 conv. The last conv of every res block, the attention output
  projection and the output conv start at zero, so every block starts as the identity and the
  untrained network predicts eps = 0 (DDPM's ``init_scale=0``; improved-diffusion's ``zero_module``).

Odd sizes (MNIST: 28 -> 14 -> 7 -> 4) work because downsampling is a stride-2 conv with padding 1
(ceil(H/2)) and upsampling interpolates to the *exact* size of the skip it is concatenated with.
Attention is placed by level index (``attn_levels``), not by pixel resolution, so a preset is the
same network (same parameter count) at every image size.

Speed notes: only standard ops (conv, GroupNorm, Linear, ``scaled_dot_product_attention``), so the
model runs unchanged under ``torch.autocast("cuda", torch.bfloat16)`` and in ``channels_last``.

Add a size preset: ``MODELS.register("name")(dict(base_channels=..., ...))`` (kwargs of ``UNet``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.registry import InputError, Registry

MODELS: Registry = Registry("model")

# --- size presets (UNet keyword arguments; in_channels and dropout come from build_model) -----------
# CPU: 1.04M params, ~0.4 s per training step at batch 64, 28x28 on one core; attention only in the middle
MODELS.register("tiny")(
    dict(base_channels=16, channel_mults=(1, 2, 4, 4), num_res_blocks=1, attn_levels=(), mid_attn=True, norm_groups=8)
)
# CPU, MNIST-shaped: three levels (28 -> 14 -> 7) instead of tiny's four, about tiny's parameters (1.06M
# vs 1.04M) spent at high resolution (2.6x tiny's FLOPs per image): does width at 28x28 learn faster per second?
MODELS.register("tiny_wide")(
    dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(), mid_attn=True, norm_groups=8)
)
MODELS.register("small")(  # DDPM's CIFAR-10 network at half width: 8.9M params
    dict(base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(1,), mid_attn=True, norm_groups=32)
)
MODELS.register("base")(  # GPU: DDPM's CIFAR-10 network (Ho et al. 2020): 35.7M params, attention at 16x16 for 32x32
    dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(1,), mid_attn=True, norm_groups=32)
)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``t`` [B] -> float32 [B, dim].

    The Transformer's positional encoding (Vaswani et al. 2017) with t as the position, laid out as
    all sines then all cosines (tensor2tensor / DDPM): with half = dim // 2 and i = 0..half-1,
    ``emb[:, i] = sin(t * max_period^(-i/half))`` and ``emb[:, half + i] = cos(t * max_period^(-i/half))``
    (DDPM divides by half - 1 instead of half; the difference is immaterial). Odd ``dim`` gets a zero
    last column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(ch: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= max_groups that divides ch (Wu & He 2018)."""
    groups = next(g for g in range(min(max_groups, ch), 0, -1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + f(x, emb), f = conv(drop(act(norm(conv(act(norm(x))) + proj(emb))))) (DDPM's ResnetBlock).

    ``emb`` is the already-activated timestep embedding (SiLU applied once in ``UNet.forward``)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm_groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, norm_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions (DDPM's AttnBlock; ``heads`` > 1
    splits the channels into heads as improved-diffusion does)."""

    def __init__(self, ch: int, norm_groups: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = _norm(ch, norm_groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each [B, heads, HW, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3x3 conv with stride 2 (output ceil(H/2): 7 -> 4)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to an exact size (that of the matching skip), then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class Level(nn.Module):
    """Res blocks (+ optional attention) of one resolution level, on one side of the U."""

    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class UNet(nn.Module):
    """DDPM / improved-diffusion UNet predicting eps: ``forward(x [B,C,H,W], t [B] long) -> [B,C,H,W]``.

    ``t`` are 0-based timestep indices (0..T-1), embedded as they are (no rescaling to 0..1000).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_mults: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (1,),
        mid_attn: bool = True,
        dropout: float = 0.1,
        norm_groups: int = 32,
        attn_heads: int = 1,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels, base_channels=base_channels, channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks, attn_levels=tuple(attn_levels), mid_attn=mid_attn, dropout=dropout,
            norm_groups=norm_groups, attn_heads=attn_heads,
        )
        bad = [lv for lv in attn_levels if not 0 <= lv < len(channel_mults)]
        if bad:
            raise ValueError(f"attn_levels {bad} outside 0..{len(channel_mults) - 1}")
        self.in_channels = in_channels
        self.base_channels = base_channels
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, dropout, norm_groups)

        def attn(ch: int, level: int) -> list[nn.Module]:
            return [Attention(ch, norm_groups, attn_heads)] if level in attn_levels else []

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_chs = [base_channels]  # widths of the activations the decoder concatenates, in push order
        ch = base_channels
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, base_channels * mult))
                ch = base_channels * mult
                attns += attn(ch, level)
                skip_chs.append(ch)
            self.down.append(Level(blocks, attns))
            if level < len(channel_mults) - 1:
                self.downsample.append(Downsample(ch))
                skip_chs.append(ch)

        self.mid1 = res(ch, ch)
        self.mid_attn = Attention(ch, norm_groups, attn_heads) if mid_attn else nn.Identity()
        self.mid2 = res(ch, ch)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(res(ch + skip_chs.pop(), base_channels * mult))
                ch = base_channels * mult
                attns += attn(ch, level)
            self.up.append(Level(blocks, attns))
            if level > 0:
                self.upsample.append(Upsample(ch))
        assert not skip_chs

        self.norm_out = _norm(ch, norm_groups)
        self.conv_out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.base_channels)))
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = block(h, emb)
                if level.attn:
                    h = level.attn[j](h)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for j, block in enumerate(level.blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if level.attn:
                    h = level.attn[j](h)
            if i < len(self.upsample):
                h = self.upsample[i](h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))


def build_model(preset: str, channels: int, image_size: int, dropout: float = 0.1) -> UNet:
    """The UNet of size preset ``preset`` (``bench ls models``) for ``channels`` x ``image_size``^2 images."""
    kwargs = dict(MODELS.get(preset))
    levels = len(kwargs["channel_mults"])
    if image_size < 2 ** (levels - 1):
        raise InputError(f"model {preset!r} has {levels} resolution levels: "
                         f"image_size must be >= {2 ** (levels - 1)}, got {image_size}")
    model = UNet(in_channels=channels, dropout=dropout, **kwargs)
    model.image_size = image_size
    return model


def describe_model(preset: str) -> str:
    """One line for ``bench ls models``: parameters (1- and 3-channel images), widths, levels, attention."""
    kw = MODELS.get(preset)
    with torch.device("meta"):  # shapes only: no memory, no time
        p1, p3 = (count_params(build_model(preset, channels=c, image_size=64)) for c in (1, 3))
    widths = "/".join(str(kw["base_channels"] * m) for m in kw["channel_mults"])
    levels = len(kw["channel_mults"])
    attn = [f"level {i} (1/{2 ** i} of the image size)" for i in kw["attn_levels"]] + (["middle"] if kw["mid_attn"] else [])
    return (f"{p1 / 1e6:.2f}M params ({p3 / 1e6:.2f}M for RGB); channels {widths} over {levels} levels "
            f"(images >= {2 ** (levels - 1)} px), {kw['num_res_blocks']} res block(s) a level, "
            f"attention at {', '.join(attn) or 'none'}")


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
