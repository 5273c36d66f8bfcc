"""Noise tests, generated from the registry."""

import numpy as np
import pytest
import torch

from bench.noise import NOISES, make_noise
from bench.registry import InputError
from bench.schedules import make_betas

T = 1000


def alpha_bar(schedule):
    return torch.cumprod(1 - make_betas(schedule, T), 0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("name", NOISES.names())
def test_every_noise_is_standardised(name, schedule):
    noise = make_noise(name, alpha_bar(schedule))
    n = 200_000
    for t in (0, T // 2 - 1, T - 1):  # paper t = 1, T/2, T
        eps = noise.sample((n,), t, torch.Generator().manual_seed(t)).double()
        assert eps.dtype == torch.float64 and torch.isfinite(eps).all()
        # 5-sigma bounds of the sample mean / variance (variance of s^2 ~ (kurtosis - 1)/n)
        assert abs(eps.mean().item()) < 5 / n**0.5
        kurt = ((eps - eps.mean()) ** 4).mean() / eps.var() ** 2
        assert abs(eps.var().item() - 1) < 5 * ((kurt.item() - 1) / n) ** 0.5


@pytest.mark.parametrize("name", NOISES.names())
def test_same_seed_same_tensor_and_per_item_generators(name):
    noise = make_noise(name, alpha_bar("linear"))
    t = torch.tensor([0, 10, 999])
    a = noise.sample((3, 1, 4, 4), t, torch.Generator().manual_seed(7))
    b = noise.sample((3, 1, 4, 4), t, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, noise.sample((3, 1, 4, 4), t, torch.Generator().manual_seed(8)))
    # per-item: item i depends only on generator i, not on the batch it is in
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    full = noise.sample_per_item((3, 1, 4, 4), t, gens([1, 2, 3]))
    alone = noise.sample_per_item((1, 1, 4, 4), t[1:2], gens([2]))
    assert torch.equal(full[1:2], alone)


def test_gamma_skewness_matches_theory():
    """Skewness 2/sqrt(k_bar_t) wherever it lies in [0.5, 3] (theta_0 = 0.1, small t)."""
    ab = alpha_bar("linear")
    noise = make_noise("gamma", ab, theta_0=0.1)
    theory = 2 / noise.k_bar.sqrt()
    ts = [int(i) for i in torch.nonzero((theory >= 0.5) & (theory <= 3)).flatten()]
    assert len(ts) >= 3
    for t in (ts[0], ts[len(ts) // 2], ts[-1]):
        eps = noise.sample((1_000_000,), t, torch.Generator().manual_seed(t)).double()
        skew = (((eps - eps.mean()) / eps.std()) ** 3).mean().item()
        assert skew == pytest.approx(theory[t].item(), rel=0.10), t


def test_gamma_skewness_closed_form_in_snr():
    ab = alpha_bar("cosine")
    noise = make_noise("gamma", ab, theta_0=0.01)
    snr = ab / (1 - ab)
    assert torch.allclose(2 / noise.k_bar.sqrt(), 2 * 0.01 * snr.sqrt(), rtol=1e-10)


def test_gamma_float64_numerics_at_cosine_T():
    noise = make_noise("gamma", alpha_bar("cosine"), theta_0=0.001)
    assert noise.k_bar[-1].item() > 1e14
    eps = noise.sample((10_000,), T - 1, torch.Generator().manual_seed(0))
    assert torch.unique(eps).numel() >= 1000
    assert abs(eps.double().std().item() - 1) < 0.05


def test_gamma_bad_theta():
    with pytest.raises(InputError, match="theta_0"):
        make_noise("gamma", alpha_bar("linear"), theta_0=0.0)


def test_laplace_noise_is_heavy_tailed():
    eps = make_noise("laplace", alpha_bar("linear")).sample((400_000,), 0, torch.Generator().manual_seed(0)).double()
    kurt = (((eps - eps.mean()) / eps.std()) ** 4).mean().item()
    assert kurt == pytest.approx(6.0, rel=0.05)  # Laplace: kurtosis 6 (excess 3)


def test_unknown_noise_name():
    with pytest.raises(InputError, match="did you mean gamma"):
        make_noise("gama", alpha_bar("linear"))
