import pytest
import torch

from bench.process.diffusion import Diffusion
from bench.process.noise import make_noise
from bench.process.schedules import make_betas
from bench.registry import InputError


@pytest.fixture(scope="module")
def diff():
    return Diffusion(make_betas("cosine", 1000))


@pytest.mark.parametrize("noise_name", ["gaussian", "gamma"])
def test_q_sample_moments(diff, noise_name):
    noise = make_noise(noise_name, diff.alpha_bar, theta_0=0.01)
    x0 = torch.full((200_000,), 0.7)
    for t in (0, 300, 999):
        tt = torch.full((len(x0),), t)
        x = diff.q_sample(x0, tt, noise.sample(x0.shape, tt, torch.Generator().manual_seed(t))).double()
        ab = diff.alpha_bar[t].item()
        assert x.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=5 * ((1 - ab) / len(x0)) ** 0.5 + 1e-6)
        assert x.var().item() == pytest.approx(1 - ab, rel=0.02, abs=1e-7)


def test_x0_recovered_exactly_from_true_eps(diff):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 5, 5, generator=g) * 2 - 1
    eps = torch.randn(8, 1, 5, 5, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 800, 900, 950])
    rec = diff.predict_x0(diff.q_sample(x0, t, eps), t, eps)
    assert torch.allclose(rec, x0, atol=2e-4)


def test_posterior_closed_form(diff):
    b, ab = diff.betas, diff.alpha_bar
    t = 400
    ab_prev = ab[t - 1]
    x0, xt = torch.tensor([[0.3]]), torch.tensor([[-1.2]])
    mean, var, logvar = diff.q_posterior(x0, xt, torch.tensor([t]))
    # Ho et al. eq. 7
    want_mean = ab_prev.sqrt() * b[t] / (1 - ab[t]) * 0.3 + (1 - b[t]).sqrt() * (1 - ab_prev) / (1 - ab[t]) * -1.2
    want_var = (1 - ab_prev) / (1 - ab[t]) * b[t]
    assert mean.item() == pytest.approx(want_mean.item(), rel=1e-6)
    assert var.item() == pytest.approx(want_var.item(), rel=1e-6)
    assert logvar.item() == pytest.approx(torch.log(want_var).item(), rel=1e-6)


def test_posterior_is_the_gaussian_conditional():
    """Independent check: sample (x0 fixed, x_{t-1}, x_t) jointly and regress x_{t-1} on x_t."""
    d = Diffusion(make_betas("linear", 100))
    g = torch.Generator().manual_seed(1)
    t, n, x0 = 30, 400_000, 0.5
    ab_prev = d.alpha_bar[t - 1].item()
    x_prev = ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = (1 - d.betas[t].item()) ** 0.5 * x_prev + d.betas[t].item() ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    cov = torch.cov(torch.stack([x_prev, x_t]))
    slope = cov[0, 1] / cov[1, 1]
    resid_var = cov[0, 0] - slope * cov[0, 1]
    assert slope.item() == pytest.approx(d.posterior_mean_coef2[t].item(), rel=0.01)
    assert resid_var.item() == pytest.approx(d.posterior_variance[t].item(), rel=0.01)


def test_variance_types_and_loss(diff):
    x = torch.zeros(2, 1, 3, 3)
    t = torch.tensor([5, 600])
    _, small, _ = diff.p_mean_variance(torch.zeros_like(x), x, t, "small")
    _, large, _ = diff.p_mean_variance(torch.zeros_like(x), x, t, "large")
    assert torch.allclose(small.flatten(), diff.posterior_variance[t].float())
    assert torch.allclose(large.flatten(), diff.betas[t].float())

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    eps = torch.ones(2, 1, 3, 3) * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    assert torch.allclose(diff.loss(Zero(), x, t, eps, "mse"), torch.tensor([1.0, 4.0]))
    assert torch.allclose(diff.loss(Zero(), x, t, eps, "l1"), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# zero terminal SNR: every table finite at t = T for the targets that recover x_0 from pure noise


ZT_SCHEDULES = ["linear", "cosine", "sigmoid", "exponential", "simple_linear"]


@pytest.mark.parametrize("schedule", ZT_SCHEDULES)
@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("weighting", ["none", "min_snr", "p2"])
def test_zero_terminal_snr_tables_are_finite(schedule, prediction, weighting):
    d = Diffusion(make_betas(schedule, 1000, zero_terminal_snr=True), prediction=prediction, weighting=weighting)
    assert d.zero_terminal_snr and d.alpha_bar[-1].item() == 0.0 and d.betas[-1].item() == 1.0
    assert d.sqrt_alpha_bar[-1].item() == 0.0 and d.sqrt_one_minus_alpha_bar[-1].item() == 1.0  # x_T is pure noise
    assert d.snr[-1].item() == 0.0
    assert d.log_snr[-1].item() == float("-inf") and torch.isfinite(d.log_snr[:-1]).all()
    for name in ("alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "snr",
                 "posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "loss_weight"):
        assert torch.isfinite(getattr(d, name)).all(), name
    assert torch.isfinite(d.posterior_log_variance_clipped).all()
    # the posterior at t = T: alpha_T = 0, so x_{T-1} depends on x_0 only, with variance 1 - alpha_bar_{T-1}
    assert d.posterior_mean_coef2[-1].item() == 0.0
    assert d.posterior_mean_coef1[-1].item() == pytest.approx(d.alpha_bar[-2].sqrt().item(), rel=1e-12)
    assert d.posterior_variance[-1].item() == pytest.approx(1 - d.alpha_bar[-2].item(), rel=1e-12)
    # reverse step at t = T from any finite output: finite mean and x_0
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    tt = torch.full((3,), 999)
    for clip in (False, True):
        mean, var, x0 = d.p_mean_variance(torch.randn_like(x), x, tt, "small", clip)
        assert torch.isfinite(mean).all() and torch.isfinite(var).all() and torch.isfinite(x0).all()
        x0s, eps = d.split(torch.randn_like(x), x, tt, clip)
        assert torch.isfinite(x0s).all() and torch.equal(eps, x)  # at alpha_bar = 0, eps_hat = x_T exactly


def test_zero_terminal_snr_with_eps_is_bad_input():
    betas = make_betas("linear", 1000, zero_terminal_snr=True)
    with pytest.raises(InputError) as err:
        Diffusion(betas)
    msg = str(err.value)
    assert "\n" not in msg and "zero terminal SNR" in msg and "`v`" in msg and "`x0`" in msg and "eps" in msg
    with pytest.raises(InputError, match="zero terminal SNR"):
        Diffusion(betas, prediction="eps", weighting="min_snr", min_snr_gamma=5.0)
    # the same schedule without the option is fine with eps
    Diffusion(make_betas("linear", 1000))


def test_bad_var_type_and_loss_kind(diff):
    x = torch.zeros(2, 1, 3, 3)
    with pytest.raises(InputError, match="var_type"):
        diff.p_mean_variance(x, x, torch.tensor([1, 2]), "learned")
    with pytest.raises(InputError, match="loss must be one of mse, l1"):
        diff.loss(lambda x, t: x, x, torch.tensor([1, 2]), x, "huber")
