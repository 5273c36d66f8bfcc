"""Noise tests, generated from the registry."""

import numpy as np
import pytest
import torch

from bench.process.noise import NOISES, make_noise
from bench.process.schedules import make_betas
from bench.registry import InputError

T = 1000


def alpha_bar(schedule, zero_terminal_snr=False):
    return torch.cumprod(1 - make_betas(schedule, T, zero_terminal_snr), 0)


@pytest.mark.parametrize("schedule,zt", [("linear", False), ("cosine", False), ("cosine", True)])
@pytest.mark.parametrize("name", NOISES.names())
def test_every_noise_is_standardised(name, schedule, zt):
    noise = make_noise(name, alpha_bar(schedule, zt))
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


def test_gamma_at_zero_terminal_snr_is_the_gaussian_limit():
    """alpha_bar_T = 0 gives k_bar_T = inf: eps there is N(0, 1) (skewness 2/sqrt(k) -> 0, kurtosis 3),
    finite, drawn from the item's own generator; the other indices are untouched."""
    ab = alpha_bar("cosine", True)
    assert ab[-1].item() == 0.0
    noise = make_noise("gamma", ab, theta_0=0.1)
    assert noise.k_bar[-1].item() == float("inf") and torch.isfinite(noise.k_bar[:-1]).all()
    eps = noise.sample((400_000,), T - 1, torch.Generator().manual_seed(3)).double()
    assert torch.isfinite(eps).all()
    z = (eps - eps.mean()) / eps.std()
    assert abs(eps.mean().item()) < 5 / 400_000**0.5 and abs(eps.var().item() - 1) < 5 * (2 / 400_000) ** 0.5
    assert abs((z**3).mean().item()) < 5 * (6 / 400_000) ** 0.5  # Gaussian: skewness 0 (sd sqrt(6/n))
    assert (z**4).mean().item() == pytest.approx(3.0, abs=5 * (24 / 400_000) ** 0.5)
    # the Gaussian limit is exactly a standard normal draw from the generator's numpy stream
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    rng = np.random.default_rng(seed)
    rng.standard_gamma(np.ones(400_000))  # placeholder gamma draws come first
    assert np.array_equal(eps.float().numpy(), rng.standard_normal(400_000).astype(np.float32))
    # a batch mixing t = T with a finite-k index: the finite rows are skewed gamma, the t = T rows normal
    mixed = noise.sample((2, 50_000), torch.tensor([0, T - 1]), torch.Generator().manual_seed(4)).double()
    assert torch.isfinite(mixed).all()
    skew0 = (((mixed[0] - mixed[0].mean()) / mixed[0].std()) ** 3).mean().item()
    assert skew0 == pytest.approx(2 / noise.k_bar[0].sqrt().item(), rel=0.15)
    # per-item draws do not depend on the batch
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = noise.sample_per_item((2, 8), torch.tensor([T - 1, 3]), gens())
    alone = noise.sample_per_item((1, 8), torch.tensor([T - 1]), gens()[:1])
    assert torch.equal(both[:1], alone)


def test_gamma_draws_unchanged_below_the_gaussian_limit():
    """Finite k_bar below GAUSSIAN_LIMIT_K: exactly the paper's formula on numpy's gamma stream."""
    ab = alpha_bar("cosine")
    noise = make_noise("gamma", ab, theta_0=0.001)
    assert noise.k_bar.max().item() < noise.GAUSSIAN_LIMIT_K
    t = torch.tensor([0, 500, 999])
    eps = noise.sample((3, 4), t, torch.Generator().manual_seed(9))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(9)))
    k = noise.k_bar[t].numpy().reshape(3, 1)
    g = np.random.default_rng(seed).standard_gamma(np.broadcast_to(k, (3, 4)))
    assert torch.equal(eps, torch.from_numpy((g - k) / np.sqrt(k)).float())


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


@pytest.mark.parametrize("schedule,zt", [("linear", False), ("cosine", True)])
@pytest.mark.parametrize("name", NOISES.names())
def test_the_device_draw_is_the_same_distribution(name, schedule, zt):
    """Issue 32: on CUDA the samplers draw a batch at once on the device (``draw_on``); run here on the
    CPU's generator, it must be the same standardised distribution as ``draw``, also at zero terminal
    SNR (gamma's Gaussian limit), and for gamma with the skewness 2 / sqrt(k_bar_t) of the paper."""
    noise = make_noise(name, alpha_bar(schedule, zt), **({"theta_0": 0.01} if name == "gamma" else {}))
    n = 200_000
    for t in (0, T // 2 - 1, T - 1):
        eps = noise.draw_on((n,), torch.full((n,), t), torch.Generator().manual_seed(t)).double()
        assert eps.dtype == torch.float64 and torch.isfinite(eps).all()
        kurt = ((eps - eps.mean()) ** 4).mean() / eps.var() ** 2
        assert abs(eps.mean().item()) < 5 / n**0.5
        assert abs(eps.var().item() - 1) < 5 * ((kurt.item() - 1) / n) ** 0.5
        if name == "gamma" and torch.isfinite(noise.k_bar[t]) and noise.k_bar[t] < 1e6:
            skew = (((eps - eps.mean()) / eps.std()) ** 3).mean().item()
            want = 2 / noise.k_bar[t].sqrt().item()
            assert abs(skew - want) < 0.15 * want + 0.02, (t, skew, want)


def test_a_batch_seed_tells_batches_and_steps_apart_and_repeats_for_the_same_batch():
    from bench.process.noise import batch_seed

    gens = lambda start: [torch.Generator().manual_seed(start + i) for i in range(4)]  # noqa: E731
    t = lambda k: torch.full((4,), k)  # noqa: E731
    seeds = {batch_seed(gens(s), t(k)) for s in (0, 4, 8) for k in (0, 1, 999)}
    assert len(seeds) == 9 and all(0 <= s < 2**62 for s in seeds)
    assert batch_seed(gens(4), t(7)) == batch_seed(gens(4), t(7))
    assert batch_seed(gens(4), t(7)) != batch_seed(gens(4)[:3], t(7)[:3])  # another batch size
