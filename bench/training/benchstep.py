"""The real training step on random data, as a unit to time: what ``bench perf`` measures and the dry
run's estimate rests on (one ``Trainer.train_step`` of ``bench.training.train``, nothing stubbed)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.experiment.config import RunConfig, build_process
from bench.models.unet import count_params
from bench.training.train import Trainer

# Dropout of benchmarked training steps: what the grids train with on that device (the quick
# presets, the CPU's grids, use 0.0; the full grids 0.1, DDPM's CIFAR-10 value).
TRAIN_DROPOUT = {"cpu": 0.0, "cuda": 0.1}


class BenchStep:
    """The real ``bench.training.train`` step (``Trainer.train_step``) on random data of shape [B, C, S, S]:
    linear schedule, T = 1000, Gaussian noise, AdamW at lr 2e-4, EMA, the device's grid dropout."""

    def __init__(self, preset: str, channels: int, size: int, batch: int, device: torch.device, seed: int = 0,
                 dropout: float | None = None):
        dropout = TRAIN_DROPOUT.get(torch.device(device).type, 0.1) if dropout is None else dropout
        cfg = RunConfig(model=preset, batch_size=batch, train_steps=10**9, dropout=dropout, seed=seed, warmup_steps=0)
        _, diffusion, noise = build_process(cfg)
        data = torch.randn(1024, channels, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
        self.trainer = Trainer(cfg, data, diffusion, noise, Path(tempfile.gettempdir()), torch.device(device))
        self.trainer.model.train()
        self.params, self.dropout = count_params(self.trainer.model), dropout

    def __call__(self) -> torch.Tensor:
        losses, _ = self.trainer.train_step()
        if self.trainer.device.type == "cpu":
            losses.sum().item()  # the trainer's per-step readback (batched every 10 steps on CUDA)
        return losses

    def flops(self) -> float:
        """Model FLOPs of one step (forward + backward), counted once by torch's FlopCounterMode.

        Counted with SDPA's math backend: the counter has no formula for the fused CPU attention
        kernel (it would count attention as 0), but counts the bmm's the math backend runs."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        state = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            self.trainer.train_step()
        self.trainer.model.load_state_dict(state)
        return float(counter.get_total_flops())
