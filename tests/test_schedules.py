"""Schedule tests, generated from the registry: a schedule is tested the moment it is registered."""

import math

import pytest
import torch

from bench.process.schedules import (
    MAX_BETA,
    SCHEDULES,
    check_betas,
    make_betas,
    rescale_zero_terminal_snr,
    schedule_params,
    terminal_report,
)
from bench.registry import InputError

ANCHORS = {  # DESIGN.md section 3: alpha_bar_T at T=1000
    "linear": 4.036e-5,
    "cosine": 2.43e-9,
    "sigmoid": 3.0e-7,
    "exponential": 1.56e-4,
    "simple_linear": 1.0e-6,  # 1e-3/T: alpha_bar_{T-1} = 1/T times (1 - 0.999), the capped beta_T
}


@pytest.mark.parametrize("T", [10, 100, 1000, 4000])
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_is_a_valid_forward_process(name, T):
    betas = make_betas(name, T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert ((betas > 0) & (betas < 1)).all()
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert (alpha_bar[1:] < alpha_bar[:-1]).all(), "alpha_bar must be strictly decreasing"
    log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
    assert torch.isfinite(log_snr).all()


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_documents_formula_and_reference(name):
    doc = SCHEDULES.get(name).__doc__ or ""
    assert "=" in doc and len(doc) > 80, f"{name}: docstring must state the formula and reference"


@pytest.mark.parametrize("name,anchor", ANCHORS.items())
def test_core_schedule_anchor_alpha_bar_T(name, anchor):
    ab_T = float(torch.prod(1 - make_betas(name, 1000)))
    assert f"{ab_T:.3g}" == f"{anchor:.3g}"


def test_linear_is_exactly_torch_linspace():
    assert torch.equal(make_betas("linear", 1000), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_cosine_matches_closed_form_alpha_bar_before_capping():
    # alpha_bar_t = f(t/T)/f(0) wherever no beta was capped (all but the last few steps)
    T, s = 1000, 0.008
    ab = torch.cumprod(1 - make_betas("cosine", T), 0)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 250, 500, 900):
        assert ab[t - 1].item() == pytest.approx(f(t / T) / f(0), rel=1e-10)


def test_exponential_log_snr_is_linear_in_t():
    ab = torch.cumprod(1 - make_betas("exponential", 200), 0)
    log_snr = torch.log(ab / (1 - ab))
    d = log_snr[1:] - log_snr[:-1]
    assert torch.allclose(d, torch.full_like(d, -2 * math.log(80 / 0.002) / 199), rtol=1e-6)


def test_geometric_is_the_naive_exponential_and_is_flagged():
    betas = make_betas("geometric", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    rep = terminal_report(betas)
    assert rep.alpha_bar_T == pytest.approx(0.023, abs=5e-4) and not rep.pure_noise
    assert "NOT pure noise" in rep.describe()


def test_terminal_report_values():
    rep = terminal_report(make_betas("linear", 1000))
    assert rep.pure_noise and rep.snr_T == pytest.approx(4.036e-5 / (1 - 4.036e-5), rel=1e-3)
    assert rep.log_snr_T == pytest.approx(math.log(rep.snr_T))


def test_sigmoid_tau_changes_schedule_and_is_overridable():
    a = make_betas("sigmoid", 1000, tau=1.0)
    b = make_betas("sigmoid", 1000, tau=0.5)
    assert not torch.allclose(a, b)
    assert schedule_params("sigmoid") == {"sigmoid_start": -3.0, "sigmoid_end": 3.0, "tau": 1.0}


def test_params_of_other_schedules_and_none_are_ignored():
    assert torch.equal(make_betas("linear", 100, tau=0.5, beta_end=None), make_betas("linear", 100))


def test_zero_terminal_snr_rescale():
    betas = make_betas("linear", 1000)
    z = rescale_zero_terminal_snr(betas)
    s, sz = torch.cumprod(1 - betas, 0).sqrt(), torch.cumprod(1 - z, 0).sqrt()
    assert sz[0].item() == pytest.approx(s[0].item(), rel=1e-12)  # first step kept
    # Lin et al. Algorithm 1: sqrt(alpha_bar) is the affine map of the original, last step included
    lin = (s - s[-1]) * s[0] / (s[0] - s[-1])
    assert torch.allclose(sz[:-1], lin[:-1], rtol=1e-9)
    assert z[-1].item() == 1.0 and sz[-1].item() == 0.0  # exactly: no 0.999 cap
    assert ((z[:-1] > 0) & (z[:-1] < 1)).all()
    # the cap would have left alpha_bar_T = 1e-3 alpha_bar_{T-1} = 4.2e-12 (the number)
    capped_ab_T = (1 - MAX_BETA) * torch.prod(1 - z[:-1]).item()
    assert f"{capped_ab_T:.2g}" == "4.2e-12"
    assert torch.equal(make_betas("linear", 1000, zero_terminal_snr=True), z)
    rep = terminal_report(z)
    assert rep.alpha_bar_T == 0.0 and rep.snr_T == 0.0 and rep.log_snr_T == -math.inf and rep.pure_noise


@pytest.mark.parametrize("T", [10, 100, 1000, 4000])
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_with_zero_terminal_snr(name, T):
    """alpha_bar_T = 0 and beta_T = 1 exactly; every earlier beta in (0, 1), alpha_bar strictly
    decreasing, log-SNR finite before T; sqrt(alpha_bar) the affine map of the original's."""
    betas = make_betas(name, T)
    z = make_betas(name, T, zero_terminal_snr=True)
    assert z.dtype == torch.float64 and z.shape == (T,)
    assert z[-1].item() == 1.0 and ((z[:-1] > 0) & (z[:-1] < 1)).all()
    ab = torch.cumprod(1 - z, 0)
    assert ab[-1].item() == 0.0 and (ab[1:] < ab[:-1]).all()
    assert torch.isfinite(torch.log(ab[:-1]) - torch.log1p(-ab[:-1])).all()
    s = torch.cumprod(1 - betas, 0).sqrt()
    assert torch.allclose(ab.sqrt(), (s - s[-1]) * s[0] / (s[0] - s[-1]), rtol=1e-8, atol=1e-15)


def test_check_betas_accepts_beta_T_one_only_with_zero_terminal_snr():
    good = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    check_betas(good, zero_terminal_snr=True)
    with pytest.raises(InputError, match=r"every beta must lie in \(0, 1\)"):
        check_betas(good)  # beta = 1 without the option
    with pytest.raises(InputError, match="beta_T = 1 exactly"):
        check_betas(torch.tensor([0.1, 0.5, 0.999999], dtype=torch.float64), zero_terminal_snr=True)
    with pytest.raises(InputError, match=r"before t = T must lie in \(0, 1\)"):
        check_betas(torch.tensor([0.1, 1.0, 1.0], dtype=torch.float64), zero_terminal_snr=True)
    with pytest.raises(InputError, match=r"before t = T must lie in \(0, 1\)"):
        check_betas(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), zero_terminal_snr=True)
    # no registered schedule reaches beta = 1 without the option (every formula that would is capped)
    for name in SCHEDULES.names():
        assert make_betas(name, 1000).max().item() <= MAX_BETA


def test_simple_linear_closed_form_T1000():
    """Chen 2023 Algorithm 1: alpha_bar(u) = clip(1 - u, 1e-9, 1), discretised at u = i/T."""
    T = 1000
    betas = make_betas("simple_linear", T)
    ab = torch.cumprod(1 - betas, 0)
    for t, want in ((1, 0.999), (250, 0.75), (500, 0.5), (900, 0.1), (999, 0.001)):
        assert ab[t - 1].item() == pytest.approx(want, rel=1e-12)  # alpha_bar_t = 1 - t/T
    for i in (1, 2, 500, 999):
        assert betas[i - 1].item() == pytest.approx(1 / (T - i + 1), rel=1e-9)  # telescoping product
    # t = T: alpha_bar(1) = clip(0, 1e-9) = 1e-9, so beta_T = 1 - 1e-9/(1/T) = 1 - 1e-6 > 0.999: capped
    assert 1 - 1e-9 / (1 / T) > MAX_BETA and betas[-1].item() == MAX_BETA
    assert ab[-1].item() == pytest.approx(1e-3 / T, rel=1e-9)  # = 1e-6, not the clip value 1e-9
    # zero terminal SNR: sqrt(alpha_bar) = sqrt(1 - t/T) for t < T, sqrt(1e-6) at T, rescaled affinely
    z = torch.cumprod(1 - make_betas("simple_linear", T, zero_terminal_snr=True), 0)
    s1, sT = math.sqrt(0.999), math.sqrt(1e-6)
    for t in (1, 500, 999):
        assert z[t - 1].item() == pytest.approx(((math.sqrt(1 - t / T) - sT) * s1 / (s1 - sT)) ** 2, rel=1e-9)
    assert z[-1].item() == 0.0


@pytest.mark.parametrize("T", [2, 10, 37])
def test_simple_linear_small_T(T):
    ab = torch.cumprod(1 - make_betas("simple_linear", T), 0)
    t = torch.arange(1, T, dtype=torch.float64)
    assert torch.allclose(ab[:-1], 1 - t / T, rtol=1e-12, atol=0)
    assert ab[-1].item() == pytest.approx(1e-3 / T, rel=1e-9)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_betas("linear", 1), "T must be an integer >= 2"),
        (lambda: make_betas("sigmoid", 100, tau=0.0), "tau must be > 0"),
        (lambda: make_betas("sigmoid", 100, tau=-1.0), "tau must be > 0"),
        (lambda: make_betas("linear", 100, beta_end=2.0), r"every beta must lie in \(0, 1\)"),
        (lambda: make_betas("linear", 100, beta_start=-0.1), r"every beta must lie in \(0, 1\)"),
        (lambda: make_betas("linear", 100, beta_end=float("nan")), "must be finite"),
        (lambda: make_betas("cosinus", 100), "did you mean cosine"),
    ],
)
def test_bad_parameters_raise_clear_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()
