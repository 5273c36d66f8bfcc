"""Issue 34: the sampling grids (``spacing``), heun, NFE, and the bad input of solvers, against
independent code (DESIGN.md section 6): diffusers' ``DDIMScheduler`` (timesteps and trajectories),
k-diffusion's ``get_sigmas_karras`` / ``get_sigmas_exponential`` / ``sample_heun`` (transcribed below:
the package pins numpy < 2 through dctorch, which this suite's pandas cannot take).

Tolerances: against the float64 k-diffusion transcriptions the solvers run with a float64 state
(``STATE_DTYPE``, the ``f64`` fixture) and agree to 1e-6 relative / 1e-9 absolute: what remains is the
order of float64 operations over up to 35 model calls on x~ up to sigma~_max (80 on edm, ~160 on vp
linear) and the network's float32 time input, the same on both sides. Against diffusers (whose DDIM
coefficients are float32 tables) the float32 state agrees to 1e-5 absolute, float32 rounding over the
steps on an O(1) state. Grids (float64 on both sides) agree to 1e-12.
"""

import math

import numpy as np
import pytest
import torch

from bench.experiment.config import RunConfig, build_process, validate
from bench.process.continuous import PathDiffusion
from bench.process.densities import make_density
from bench.process.diffusion import Diffusion
from bench.process.noise import make_noise
from bench.process.paths import PATHS
from bench.process.schedules import make_betas
from bench.process.spacings import SPACINGS, karras_sigmas
from bench.registry import InputError
from bench.report.tables import with_nfe
from bench.sampling import solvers as solvers_module
from bench.sampling.sample import SAMPLERS, image_generators

F64 = torch.float64
TOL = dict(rtol=1e-6, atol=1e-9)  # float64 state against float64 oracles


@pytest.fixture
def f64(monkeypatch):
    """The VE-view solvers' state in float64 (``STATE_DTYPE``), for the comparisons with float64 oracles."""
    monkeypatch.setattr(solvers_module, "STATE_DTYPE", F64)


def _path(path, prediction, weighting="none", density="uniform", **kw):
    return PathDiffusion(PATHS.get(path)(), prediction, weighting, {}, make_density(density, **kw), 1.0)


def _edm():
    return _path("edm", "x0", "edm", "lognormal")


def _vp(schedule="linear", prediction="v", **kw):
    return Diffusion(make_betas(schedule, 1000, **kw), prediction=prediction)


def _vp_model(x, t):
    return 0.3 * x + torch.cos(t.float().reshape(-1, 1, 1, 1) / 200.0)


def _net(x, c):
    return torch.tanh(0.5 * x) + 0.1 * c.reshape(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# k-diffusion 0.1.1 (crowsonkb/k-diffusion, k_diffusion/sampling.py), transcribed


def _kd_get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=F64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _kd_get_sigmas_exponential(n, sigma_min, sigma_max):
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _kd_sample_heun(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, randn=None):
    """``sample_heun`` with its ``torch.randn_like(x)`` replaced by ``randn(i)`` (the same draws as bench's)."""
    to_d = lambda x, sigma, denoised: (x - denoised) / sigma
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        eps = (randn(i) if randn else torch.zeros_like(x)) * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1])
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def _edm_denoiser(d, net):
    """D(x~; sigma~) of the edm path in float64 (c_skip x + c_out F(c_in x, ln(sigma)/4))."""
    def denoise(x, sigma):
        t = d.path.t_of_sigma(torch.as_tensor(sigma, dtype=F64)).expand(x.shape[0])
        x_in, c = d.model_input(x, t)
        return d.split(net(x_in, c).double(), x, t)[0]
    return denoise


def _vp_denoiser(d, model):
    """D(x~; sigma~) of a vp table at the index whose sigma~ it is (the grid's points are table entries)."""
    table = d.sigma_tilde()

    def denoise(x_ve, sigma):
        i = int(torch.argmin((table - float(sigma)).abs()))
        x = x_ve * float(d.sqrt_alpha_bar[i])
        tt = torch.full((x.shape[0],), i, dtype=torch.long)
        return d.split(model(x, tt).double(), x, tt)[0]
    return denoise


# ---------------------------------------------------------------------------------------------
# grids


@pytest.mark.parametrize("steps,rho", [(1, 7.0), (2, 7.0), (18, 7.0), (10, 3.0), (40, 1.0)])
def test_karras_sigmas_are_k_diffusions(steps, rho):
    ours = torch.cat([karras_sigmas(0.002, 80.0, steps, rho), torch.zeros(1, dtype=F64)])
    if steps > 1:  # k-diffusion's linspace(0, 1, 1) is [0]: sigma_max, as ours
        assert torch.allclose(ours, _kd_get_sigmas_karras(steps, 0.002, 80.0, rho), rtol=1e-12, atol=0)
    d = _edm()
    grid = d.solver_grid(steps, spacing="karras", rho=rho)
    sig = torch.tensor([s / a for _, a, s in grid], dtype=F64)
    assert torch.allclose(sig, ours, rtol=1e-9, atol=1e-12)


def test_uniform_lambda_is_k_diffusions_exponential_grid():
    d = _edm()
    sig = torch.tensor([s / a for _, a, s in d.solver_grid(12, spacing="uniform_lambda")], dtype=F64)
    assert torch.allclose(sig, _kd_get_sigmas_exponential(12, 0.002, 80.0), rtol=1e-9, atol=1e-12)
    lam = -2 * sig[:-1].log()
    assert torch.allclose(lam.diff(), lam.diff()[:1].expand(11), rtol=1e-9)  # evenly spaced log-SNR


@pytest.mark.parametrize("path", ["edm", "rf"])
def test_solver_sigma_max_caps_the_karras_grid_as_k_diffusions_sigma_max(path):
    """EDM's sampler takes sigma_max as a parameter: karras from the cap to the path's sigma~_min (0.002 on
    both); on rf the cap is what makes karras possible at all (its own sigma~_max is infinite)."""
    d = _edm() if path == "edm" else _path("rf", "flow")
    sig = torch.tensor([s / a for _, a, s in d.solver_grid(10, spacing="karras", sigma_cap=20.0)], dtype=F64)
    assert torch.allclose(sig, _kd_get_sigmas_karras(10, 0.002, 20.0), rtol=1e-9, atol=1e-12)
    assert d.solver_grid(10, spacing="karras", sigma_cap=1e9)[0][2] / d.solver_grid(10, spacing="karras", sigma_cap=1e9)[0][1] \
        == pytest.approx(80.0 if path == "edm" else 1e9)  # a cap above the path's own smax leaves it


@pytest.mark.parametrize("cap,steps", [(80.0, 35), (700.0, 5), (600.0, 3)])
def test_a_cap_on_vp_is_kept_to_a_tenth(cap, steps):
    """vp's grid points are table levels (nearest in log sigma~); the first may lie at most a tenth above the cap
    (cosine: 80 -> 80.2), and a cap whose nearest level is far above it (5000 -> 2.0e4) is refused, naming the
    levels around it."""
    d = _vp("cosine", "v")
    grid = d.solver_grid(steps, spacing="karras", sigma_cap=cap)
    assert grid[0][2] / grid[0][1] <= 1.1 * cap and len(grid) == steps + 1
    with pytest.raises(InputError, match="nearest solver_sigma_max = 5000 is sigma~ = 2.03e.04 .index 999.; the level "
                                         "below it is 642 .index 998."):
        d.solver_grid(3, spacing="karras", sigma_cap=5000.0)


def test_a_capped_karras_grid_keeps_heun_stable_on_the_cosine_table(f64):
    """The cosine table's last sigma~ is 2.0e4 (betas clipped at 0.999; results/probe_solvers): capped at 80 the
    karras grid starts where EDM starts, and heun there is k-diffusion's sample_heun on the snapped grid."""
    d = _vp("cosine", "v")
    assert float(d.sigma_tilde()[-1]) == pytest.approx(2.03e4, rel=1e-2) and float(d.sigma_tilde()[-2]) < 700
    noise = make_noise("gaussian", d.alpha_bar)
    opts = dict(spacing="karras", solver_sigma_max=80.0)
    ours = SAMPLERS.get("heun")(_vp_model, d, noise, (2, 1, 6, 6), 8, image_generators(2, 1), clip_x0=False, **opts)
    grid = d.solver_grid(8, spacing="karras", sigma_cap=80.0)
    sig = torch.tensor([s / a for _, a, s in grid], dtype=F64)
    assert 60 < sig[0] < 100
    x = noise.sample_per_item((2, 1, 6, 6), d.T - 1, image_generators(2, 1)).double() * grid[0][2] / grid[0][1]
    theirs = _kd_sample_heun(_vp_denoiser(d, _vp_model), x, sig)
    assert torch.allclose(ours, theirs, **TOL), (ours - theirs).abs().max()


def test_the_default_grid_of_each_path_is_its_named_spacing():
    """spacing '' keeps each path's grid of before the field existed: vp linspace, rf uniform_t, edm karras(7)."""
    for d, name in ((_vp(), "linspace"), (_path("rf", "flow"), "uniform_t"), (_edm(), "karras")):
        for steps in (1, 7, 50):
            assert d.solver_grid(steps) == d.solver_grid(steps, spacing=name)
    rf = _path("rf", "flow")
    assert [t for t, _, _ in rf.solver_grid(4)] == torch.linspace(1, 0, 5, dtype=F64).tolist()
    for steps in (1, 2, 18, 50):  # edm: the formula of before spacings existed (Path.default_grid), bit for bit
        i = torch.arange(steps, dtype=F64)
        lo, hi = 0.002 ** (1 / 7.0), 80.0 ** (1 / 7.0)
        sig = (hi + i / max(steps - 1, 1) * (lo - hi)) ** 7.0
        old = torch.cat([sig / (1.0 + sig), torch.zeros(1, dtype=F64)]).tolist()
        assert [t for t, _, _ in _edm().solver_grid(steps)] == old


@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("linspace", 50), ("leading", 10), ("leading", 50),
                                           ("leading", 7), ("trailing", 10), ("trailing", 50), ("trailing", 7),
                                           ("trailing", 3)])
def test_vp_spacings_are_diffusers_timesteps(spacing, steps):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    ours = [t for t, _, _ in _vp().solver_grid(steps, spacing=spacing)][:-1]
    assert ours == sched.timesteps.tolist()


def test_every_vp_grid_has_n_distinct_descending_indices_for_every_n():
    """diffusers' float arange gives N + 1 trailing points (the last index -1, the noisiest entry) for 62 N at
    T = 1000: bench computes the formula exactly; it equals diffusers' wherever diffusers' arange is exact."""
    d = _vp()
    for steps in range(1, 1001):
        for spacing in ("linspace", "leading", "trailing"):
            ts = [t for t, _, _ in d.solver_grid(steps, spacing=spacing)][:-1]
            assert len(set(ts)) == steps and ts == sorted(ts, reverse=True) and 0 <= ts[-1] and ts[0] <= 999
        diffusers = np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64) - 1
        if steps * (1000 // steps) == 1000:  # T/N an integer: no rounding anywhere, diffusers exact
            assert [t for t, _, _ in d.solver_grid(steps, spacing="trailing")][:-1] == diffusers.tolist()
    assert len(np.arange(1000, 0, -1000 / 61)) == 62  # the diffusers case this guards against


def test_uniform_t_on_vp_is_trailing_and_leading_starts_short():
    d = _vp()
    assert d.solver_grid(10, spacing="uniform_t") == d.solver_grid(10, spacing="trailing")
    lead, trail = d.solver_grid(10, spacing="leading"), d.solver_grid(10, spacing="trailing")
    assert (lead[0][0], lead[-2][0]) == (900, 0) and (trail[0][0], trail[-2][0]) == (999, 99)  # Lin et al. 2024, Table 2


def _kd_sigma_to_t_quantized(sigma, sigmas_table):
    """k-diffusion 0.1.1 ``DiscreteSchedule.sigma_to_t(sigma, quantize=True)``, transcribed."""
    log_sigma = sigma.log()
    dists = log_sigma - sigmas_table.log()[:, None]
    return dists.abs().argmin(dim=0).view(sigma.shape)


def test_karras_on_vp_takes_the_nearest_table_entries():
    d = _vp("linear")
    table = ((1 - d.alpha_bar.double()) / d.alpha_bar.double()) ** 0.5  # k-diffusion's DiscreteSchedule sigmas
    idx = [t for t, _, _ in d.solver_grid(10, spacing="karras")][:-1]
    kd = _kd_get_sigmas_karras(10, float(table[0]), float(table[-1]))[:-1]
    assert idx == _kd_sigma_to_t_quantized(kd, table).tolist()
    assert idx[0] == 999 and idx[-1] == 0 and len(set(idx)) == 10


@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 7), ("trailing", 10), ("trailing", 8), ("trailing", 1)])
def test_euler_on_vp_is_diffusers_ddim_under_designs_conditions(spacing, steps):
    """DESIGN.md section 6: DDIMScheduler(clip_sample=False, set_alpha_to_one=True) steps to t - T//N, which is
    the grid's next point for leading and for trailing when N divides T (and for one step)."""
    from diffusers import DDIMScheduler

    d = _vp("linear", "v")
    noise = make_noise("gaussian", d.alpha_bar)
    shape = (2, 1, 6, 6)
    ours = SAMPLERS.get("euler")(_vp_model, d, noise, shape, steps, image_generators(2, 4), clip_x0=False,
                                 spacing=spacing)
    sched = DDIMScheduler(num_train_timesteps=1000, trained_betas=d.betas.numpy(), clip_sample=False,
                          set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0, prediction_type="v_prediction")
    sched.set_timesteps(steps)
    x = noise.sample_per_item(shape, d.T - 1, image_generators(2, 4)).float() * d.solver_grid(steps, spacing=spacing)[0][2]
    for t in sched.timesteps:
        x = sched.step(_vp_model(x, t.expand(2)), t, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()


# ---------------------------------------------------------------------------------------------
# heun against k-diffusion's sample_heun


@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_heun_on_edm_is_k_diffusions(steps, f64):
    d = _edm()
    noise = make_noise("gaussian", d.alpha_bar)
    ours = SAMPLERS.get("heun")(_net, d, noise, (2, 1, 5, 5), steps, image_generators(2, 3), clip_x0=False)
    sig = torch.tensor([s / a for _, a, s in d.solver_grid(steps)], dtype=F64)
    x = noise.sample_per_item((2, 1, 5, 5), d.T - 1, image_generators(2, 3)).double() * sig[0]
    theirs = _kd_sample_heun(_edm_denoiser(d, _net), x, sig)
    assert ours.dtype == F64 and torch.allclose(ours, theirs, **TOL), (ours - theirs).abs().max()


def test_heun_with_churn_on_edm_is_k_diffusions_with_the_same_draws(f64):
    d = _edm()
    noise = make_noise("gaussian", d.alpha_bar)
    steps, opts = 8, dict(s_churn=10.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    draws = []
    real = noise.sample_per_item

    class Spy:  # records bench's draws after the start so the oracle uses the very same z
        alpha_bar = noise.alpha_bar

        def sample_per_item(self, shape, index, generators, device="cpu"):
            z = real(shape, index, generators, device)
            draws.append(z.double())
            return z

    ours = SAMPLERS.get("heun")(_net, d, Spy(), (2, 1, 5, 5), steps, image_generators(2, 3), clip_x0=False, **opts)
    sig = torch.tensor([s / a for _, a, s in d.solver_grid(steps)], dtype=F64)
    churned = [i for i in range(steps) if opts["s_tmin"] <= sig[i] <= opts["s_tmax"]]
    assert 0 < len(churned) < steps and len(draws) == 1 + len(churned)  # the start, then one z per churned step
    z_of = dict(zip(churned, draws[1:]))
    x = draws[0] * sig[0]
    theirs = _kd_sample_heun(_edm_denoiser(d, _net), x, sig, randn=lambda i: z_of.get(i, torch.zeros_like(x)), **opts)
    assert torch.allclose(ours, theirs, **TOL), (ours - theirs).abs().max()


@pytest.mark.parametrize("spacing", ["", "karras", "trailing"])
def test_heun_on_vp_is_k_diffusions_in_the_ve_view(spacing, f64):
    d = _vp("linear", "v")
    noise = make_noise("gaussian", d.alpha_bar)
    ours = SAMPLERS.get("heun")(_vp_model, d, noise, (2, 1, 6, 6), 6, image_generators(2, 1), clip_x0=False,
                                spacing=spacing)
    grid = d.solver_grid(6, spacing=spacing)
    sig = torch.tensor([s / a for _, a, s in grid], dtype=F64)
    x = noise.sample_per_item((2, 1, 6, 6), d.T - 1, image_generators(2, 1)).double() * grid[0][2] / grid[0][1]
    theirs = _kd_sample_heun(_vp_denoiser(d, _vp_model), x, sig)
    assert torch.allclose(ours, theirs, **TOL), (ours - theirs).abs().max()


def test_heun_from_sigma_inf_starts_with_euler_then_corrects(f64):
    """rf at t = 1: the first step is euler's (x~ is infinite there), the rest are Heun's on the VE view."""
    d = _path("rf", "flow")
    noise = make_noise("gaussian", d.alpha_bar)
    flow = lambda x, c: 0.4 * x + torch.sin(c.reshape(-1, 1, 1, 1) / 300.0)
    ours = SAMPLERS.get("heun")(flow, d, noise, (2, 1, 6, 6), 5, image_generators(2, 5), clip_x0=False)
    first = SAMPLERS.get("euler")(flow, d, noise, (2, 1, 6, 6), 5, image_generators(2, 5), clip_x0=False)
    grid = d.solver_grid(5)
    x1 = noise.sample_per_item((2, 1, 6, 6), d.T - 1, image_generators(2, 5)).double()
    t0 = torch.full((2,), 1.0, dtype=F64)
    u = flow(x1, d.model_input(x1, t0)[1])
    x1 = x1 + (grid[1][0] - 1.0) * u  # the flow Euler step from t = 1
    a, b = torch.tensor([g[1] for g in grid], dtype=F64), torch.tensor([g[2] for g in grid], dtype=F64)

    def denoise(x_ve, sigma):
        t = d.path.t_of_sigma(torch.as_tensor(sigma, dtype=F64)).expand(2)
        x = x_ve * d.path.alpha(t[0])
        return d.split(flow(*d.model_input(x, t)), x, t)[0]

    theirs = _kd_sample_heun(denoise, x1 / a[1], b[1:] / a[1:])
    assert torch.allclose(ours, theirs, **TOL), (ours - theirs).abs().max()
    assert not torch.allclose(ours, first, atol=1e-3)  # the correction acts


# ---------------------------------------------------------------------------------------------
# NFE


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("steps", [1, 2, 9, 18])
def test_nfe_counts_the_model_calls(steps):
    rf = _path("rf", "flow")
    for d, model in ((_vp(), _vp_model), (_edm(), _net), (rf, _net), (_vp(zero_terminal_snr=True), _vp_model)):
        noise = make_noise("gaussian", d.alpha_bar)
        for name in ("euler", "heun", "dpmpp_2m", "unipc"):
            m = _Counter(model)
            SAMPLERS.get(name)(m, d, noise, (1, 1, 4, 4), steps, image_generators(1, 0))
            assert m.calls == SAMPLERS.get(name).nfe(steps, d), (name, d.label(), steps)
    assert SAMPLERS.get("heun").nfe(18, _edm()) == 35 and SAMPLERS.get("heun").nfe(18, rf) == 34  # EDM: 18 steps, 35 NFE


@pytest.mark.parametrize("spacing,inf_start", [("", True), ("leading", False), ("trailing", True)])
def test_heuns_nfe_follows_where_its_grid_starts(spacing, inf_start):
    """At zero terminal SNR only a grid that starts at the last index starts at sigma~ = inf (leading does not)."""
    d = _vp("cosine", "v", zero_terminal_snr=True)
    m = _Counter(_vp_model)
    SAMPLERS.get("heun")(m, d, make_noise("gaussian", d.alpha_bar), (1, 1, 4, 4), 5, image_generators(1, 0), spacing=spacing)
    assert m.calls == SAMPLERS.get("heun").nfe(5, d, {"spacing": spacing}) == (8 if inf_start else 9)


def test_evals_named_by_nfe_resolve_to_steps_and_refuse_what_no_step_count_gives():
    vp = RunConfig(evals="heun@35,euler@10,dpmpp_2m:7")
    assert vp.evaluations == (("heun", 18), ("euler", 10), ("dpmpp_2m", 7))
    rf = RunConfig(path="rf", prediction="flow", evals="heun@34")
    assert rf.evaluations == (("heun", 18),)
    with pytest.raises(InputError, match="no step count of heun makes 34 model evaluations.*33 and 35"):
        RunConfig(evals="heun@34").evaluations  # noqa: B018
    with pytest.raises(InputError, match="SAMPLER@NFE"):
        RunConfig(evals="heun@x").evaluations  # noqa: B018


def test_rows_written_before_nfe_get_it_from_the_sampler():
    import pandas as pd

    rows = pd.DataFrame({"sampler": ["ddim", "euler", "heun", None], "sample_steps": [10, 50, 18, None],
                         "nfe": [None, None, 35, None]})
    assert with_nfe(rows)["nfe"].tolist()[:3] == [10, 50, 35] and pd.isna(with_nfe(rows)["nfe"].iloc[3])


# ---------------------------------------------------------------------------------------------
# bad input: one line, before any work


@pytest.mark.parametrize("changes,match", [
    (dict(evals="euler:10", spacing="leading", path="rf", prediction="flow"), "spaces the timesteps of a discrete vp"),
    (dict(evals="euler:10", spacing="karras", path="rf", prediction="flow"), "needs a finite largest .* set solver_sigma_max"),
    (dict(evals="heun:10", spacing="uniform_lambda", zero_terminal_snr=True, prediction="v"), "needs a finite largest noise level"),
    (dict(evals="euler:10", spacing="karras", rho=0.0), "rho .* must be a finite number > 0"),
    (dict(evals="euler:10", spacing="karras", rho=-7.0), "rho .* must be a finite number > 0"),
    (dict(evals="euler:10", spacing="cosine"), "unknown spacing"),
    (dict(evals="heun:10", s_churn=40.0), "s_churn > 0 .* discrete chain"),
    (dict(evals="heun:10", s_churn=-1.0), "s_churn must be a finite number >= 0"),
    (dict(evals="heun:10", path="edm", prediction="x0", weighting="edm", t_density="lognormal", s_tmin=5.0, s_tmax=1.0),
     "s_tmin = 5 > s_tmax = 1"),
    (dict(evals="euler:600", spacing="karras"), "two grid points on one of the T = 1000 timesteps"),
    (dict(evals="heun@34"), "no step count of heun makes 34"),
    (dict(evals="euler:10", solver_sigma_max=80.0), "caps the noise levels of the karras and uniform_lambda grids"),
    (dict(evals="euler:10", spacing="trailing", solver_sigma_max=80.0), "spacing trailing is set by times"),
    (dict(evals="euler:10", spacing="karras", solver_sigma_max=0.001), "not above the smallest noise level"),
    (dict(evals="euler:10", spacing="karras", solver_sigma_max=-1.0), "solver_sigma_max must be a number > 0"),
    (dict(evals="ddim:10", solver_sigma_max=-5.0), "solver_sigma_max must be a number > 0"),  # read by no eval: still bad
])
def test_bad_solver_input_is_refused_by_validate(changes, match):
    with pytest.raises(InputError, match=match):
        validate(RunConfig(**changes))


def test_bad_solver_input_exits_2_before_work(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "formulations", "--preset", "smoke",
                          "--set", "spacing=leading", "--out", str(tmp_path / "r"), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "spacing leading" in out.stderr
    assert not (tmp_path / "r").exists()


def test_every_registered_spacing_is_tested_here():
    assert SPACINGS.names() == ["karras", "leading", "linspace", "trailing", "uniform_lambda", "uniform_t"]
    assert {"euler", "heun", "dpmpp_2m"} <= set(SAMPLERS.names())
    assert np.isinf(RunConfig().s_tmax) and build_process(RunConfig(evals="heun:3")).diffusion.solver_grid(3)


# ---------------------------------------------------------------------------------------------
# SD3's ranking: non-dominated sorting (bench.report.ranking), against the recursive definition


def test_fronts_by_hand_and_against_the_longest_dominance_chain():
    from bench.report.ranking import fronts

    assert fronts({"a": (1, 1), "b": (2, 2), "c": (1, 3), "d": (3, 0), "e": (2, 2)}) == {"a": 1, "d": 1, "b": 2, "c": 2,
                                                                                         "e": 2}
    gen = np.random.default_rng(0)
    for _ in range(20):
        pts = {f"p{i}": tuple(gen.integers(0, 6, 2).tolist()) for i in range(9)}
        assert fronts(pts) == _longest_chains(pts)


def _longest_chains(pts):
    """Front index = 1 + the longest chain of points that dominate one another down to it (recursive definition)."""
    dom = lambda q, p: q[0] <= p[0] and q[1] <= p[1] and q != p
    memo = {}

    def chain(k):
        if k not in memo:
            memo[k] = 1 + max((chain(j) for j in pts if dom(pts[j], pts[k])), default=0)
        return memo[k]

    return {k: chain(k) for k in pts}


def test_an_arm_without_a_score_in_a_setting_comes_last_there():
    """A diverged arm must not rank first by being left out of the settings where it has no score."""
    import pandas as pd

    from bench.report import ranking

    class FakeRun:
        labels = ["a", "b", "c"]
        metrics = ["fd_mnist_clf", "coverage_clf"]
        rows = pd.DataFrame({"path": ["vp", "rf", "edm"], "t_density": ["uniform"] * 3})
        evals = [("euler", 5), ("euler", 10)]
        cache: dict = {}

    def agg(run, metric):
        vals = {"fd_mnist_clf": {("a", 5): 10.0, ("b", 5): 20.0, ("c", 5): 30.0, ("a", 10): 9.0, ("b", 10): 8.0},
                "coverage_clf": {("a", 5): 0.9, ("b", 5): 0.8, ("c", 5): 0.7, ("a", 10): 0.9, ("b", 10): 0.95}}[metric]
        return pd.DataFrame([{"dataset": "mnist", "label": lb, "sampler": "euler", "sample_steps": k, "mean": v}
                             for (lb, k), v in vals.items()])

    orig = ranking.aggregate
    ranking.aggregate = agg
    try:
        table = ranking.ranking(FakeRun()).set_index("label")
    finally:
        ranking.aggregate = orig
    # 5 steps: a > b > c (fronts 1, 2, 3); 10 steps: b dominates a (1, 2), c has no score: front 3
    assert table[["euler:5", "euler:10"]].to_dict("index") == {"a": {"euler:5": 1, "euler:10": 2},
                                                                 "b": {"euler:5": 2, "euler:10": 1},
                                                                 "c": {"euler:5": 3, "euler:10": 3}}
    assert table["average_rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0} and table.loc["c", "settings"] == 1


def test_the_ranking_columns_rise_in_steps_within_each_sampler_and_cover_every_dataset():
    """Rows that name euler:10 first (a grid's headline) still show euler:5, 10, 50, then dpmpp_2m (Run.evals' rule);
    a setting only a later dataset has comes with the others, not after the average rank."""
    import pandas as pd

    from bench.report import ranking
    from bench.report.tables import Run

    settings = {"mnist": [("euler", 10), ("euler", 5), ("dpmpp_2m", 10), ("euler", 50)], "craters": [("euler", 25)]}

    class FakeRun:
        labels = ["a", "b"]
        metrics = ["fd_mnist_clf", "coverage_clf"]
        rows = pd.DataFrame([{"path": p, "t_density": "uniform", "sampler": smp, "sample_steps": k}
                             for ds in settings for smp, k in settings[ds] for p in ("vp", "rf")])
        evals = Run.evals
        cache: dict = {}

    def agg(run, metric):
        return pd.DataFrame([{"dataset": ds, "label": lb, "sampler": smp, "sample_steps": k,
                              "mean": (1.0 if lb == "a" else 2.0) * (1 if metric == "fd_mnist_clf" else -1)}
                             for ds in settings for smp, k in settings[ds] for lb in "ab"])

    orig = ranking.aggregate
    ranking.aggregate = agg
    try:
        table = ranking.ranking(FakeRun())
    finally:
        ranking.aggregate = orig
    assert list(table.columns[:7]) == ["dataset", "label", "euler:5", "euler:10", "euler:25", "euler:50", "dpmpp_2m:10"]
    assert table.set_index(["dataset", "label"]).loc[("craters", "b"), "euler:25"] == 2
    assert table.set_index(["dataset", "label"])["euler:5"].isna().to_dict() == {("craters", "a"): True, ("craters", "b"): True,
                                                                            ("mnist", "a"): False, ("mnist", "b"): False}


def test_how_sure_an_average_rank_is_over_seeds_and_what_it_averages():
    """The average rank sorts means of a few seeds: its range over joint seed resamples, P(first), and each seed
    alone (a reviewer asked how sure the ranks are); SD3 averaged over one solver's step counts."""
    import numpy as np

    from bench.report.ranking import averaged, seed_ranges

    assert averaged(["euler:10", "euler:5", "dpmpp_2m:10", "euler:50"]) == ["euler:10", "euler:5", "euler:50"]
    assert averaged(["euler:5"]) == ["euler:5"]
    # no one sampler has the most (a solver probe: 2 settings each): every setting
    assert averaged(["euler:5", "heun:3", "euler:11", "heun:6"]) == ["euler:5", "heun:3", "euler:11", "heun:6"]
    # arm 0 is better than both others on both metrics at every seed; arms 1 and 2 swap: 1 ahead on seeds 0-1,
    # 2 ahead on seeds 2-3 (the distance lower, the coverage higher); one setting
    fd = np.array([[[1.0, 1.0, 1.0, 1.0]], [[2.0, 2.0, 3.0, 3.0]], [[3.0, 3.0, 2.0, 2.0]]])
    cov = 1.0 - fd / 10
    out = seed_ranges(fd, cov, boot=400)
    assert out["p_best"].tolist() == [1.0, 0.0, 0.0]
    assert out[["average_rank_lo", "average_rank_hi"]].values.tolist() == [[1.0, 1.0], [2.0, 3.0], [2.0, 3.0]]
    assert out[["seed_rank_min", "seed_rank_max"]].values.tolist() == [[1.0, 1.0], [2.0, 3.0], [2.0, 3.0]]
    # two arms tied on every seed share first place: P(first) = 1/2 each
    tied = seed_ranges(np.ones((2, 1, 3)), np.ones((2, 1, 3)), boot=50)
    assert tied["p_best"].tolist() == [0.5, 0.5]
    # a seed that one arm lacks is left out of "one seed alone"; the resamples still use it where the arm has it
    gap = fd.copy()
    gap[1, 0, 3] = np.nan
    assert seed_ranges(gap, 1.0 - gap / 10, boot=50)[["seed_rank_min", "seed_rank_max"]].values.tolist() == \
        [[1.0, 1.0], [2.0, 3.0], [2.0, 3.0]]


def test_formulation_runs_name_plain_vp_arms_as_sd3_does():
    """SD3 Table 1 names the vp arms eps/linear and v/cos; a formulation run (arms that differ in path) shows
    them so, a vp arm with anything else set keeps its full label, and a run of vp arms alone is unchanged.
    SD3's eps/linear is LDM-Linear (Stable Diffusion's scaled_linear betas, sec. 3.1), not DDPM's linear betas,
    which are named for what they are."""
    from bench.experiment.labels import sd3_names

    recs = [{**RunConfig(**kw).to_dict(), "arm": RunConfig(**kw).arm()} for kw in (
        dict(schedule="scaled_linear", prediction="eps"), dict(schedule="cosine", prediction="v"),
        dict(schedule="cosine", prediction="v", weighting="min_snr"), dict(schedule="sigmoid", prediction="v"),
        dict(path="rf", prediction="flow", t_density="logit_normal", t_mean=0.0, t_std=1.0),
        dict(schedule="linear", prediction="eps"))]
    assert [r["arm"] for r in sd3_names(recs)] == ["eps/linear", "v/cos", recs[2]["arm"], recs[3]["arm"],
                                                   "rf/lognorm(0.00,1.00)", "eps/ddpm-linear"]
    assert sd3_names(recs[:4]) == recs[:4]
    # LDM-Linear's betas, the schedule SD3's eps/linear names (Rombach et al. 2022; diffusers "scaled_linear")
    betas = make_betas("scaled_linear", 1000)
    assert math.isclose(betas[0].item(), 0.00085, rel_tol=1e-12) and math.isclose(betas[-1].item(), 0.012, rel_tol=1e-12)
    assert math.isclose(betas[500].item(), (0.00085**0.5 + 500 / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# unipc against diffusers' UniPCMultistepScheduler, and its order of convergence


def _diffusers_unipc(grid, x, denoise_input, steps, **config):
    """diffusers' ``UniPCMultistepScheduler`` (solver_order 2, bh2, lower_order_final: its defaults) on
    ``grid``: its timesteps and sigmas replaced by the grid's (vp: sigma~ of each index; flow: t)."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(num_train_timesteps=1000, **config)
    sched.set_timesteps(steps)
    flow = config.get("use_flow_sigmas", False)
    times = [float(t) for t, _, _ in grid[:-1]]
    sched.timesteps = torch.tensor([t * 1000 if flow else int(t) for t in times])
    sched.sigmas = torch.tensor([t if flow else s / a for t, a, s in grid[:-1]] + [0.0], dtype=torch.float32)
    sched._step_index = 0
    for t, step_t in zip(times, sched.timesteps):
        x = sched.step(denoise_input(x, t), step_t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25])
@pytest.mark.parametrize("spacing", ["", "trailing", "karras"])
def test_unipc_on_vp_is_diffusers(steps, spacing):
    """The same model, start and grid on both sides (float32 like diffusers' tables: 1e-5 absolute)."""
    d = _vp("linear", "v")
    noise = make_noise("gaussian", d.alpha_bar)
    shape = (2, 1, 6, 6)
    ours = SAMPLERS.get("unipc")(_vp_model, d, noise, shape, steps, image_generators(2, 4), clip_x0=False, spacing=spacing)
    grid = d.solver_grid(steps, spacing=spacing)
    x = noise.sample_per_item(shape, d.T - 1, image_generators(2, 4)).float() * grid[0][2]
    theirs = _diffusers_unipc(grid, x, lambda x, t: _vp_model(x, torch.full((2,), int(t))), steps,
                              trained_betas=d.betas.numpy(), prediction_type="v_prediction")
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("steps,opts", [(6, dict(spacing="karras", solver_sigma_max=80.0)), (6, {}),
                                        (10, dict(sample_shift=3.0))])
def test_unipc_on_rf_is_diffusers_with_flow_sigmas(steps, opts):
    """Rectified flow with the flow target, also from t = 1 (sigma~ = inf: the corrector's second-order
    term vanishes in the limit, as in diffusers' arithmetic)."""
    d = _path("rf", "flow")
    noise = make_noise("gaussian", d.alpha_bar)
    flow = lambda x, c: 0.4 * x + torch.sin(c.reshape(-1, 1, 1, 1) / 300.0)
    shape = (2, 1, 6, 6)
    ours = SAMPLERS.get("unipc")(flow, d, noise, shape, steps, image_generators(2, 5), clip_x0=False, **opts)
    grid = d.solver_grid(steps, opts.get("sample_shift", 1.0), opts.get("spacing", ""), 7.0,
                         opts.get("solver_sigma_max", math.inf))
    x = noise.sample_per_item(shape, d.T - 1, image_generators(2, 5)).float() * grid[0][2]

    def velocity(x, t):
        return flow(*d.model_input(x, torch.full((2,), t, dtype=F64))).float()

    theirs = _diffusers_unipc(grid, x, velocity, steps, use_flow_sigmas=True, prediction_type="flow_prediction")
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_the_solvers_converge_at_their_orders_on_edm(f64, monkeypatch):
    """Data x_0 ~ N(0, c^2): the exact denoiser is D = c^2 a x/(c^2 a^2 + s^2) and the probability-flow ODE's
    solution at sigma~ = 0 is x~_start c / sqrt(c^2 + sigma~_start^2). Doubling the steps on EDM's grid (32 to
    64) divides the error by ~2 (euler, order 1), ~4.5 (dpmpp_2m, order 2) and ~8.7 (unipc: UniPC-2 with its
    corrector, order 3, Zhao et al. 2023 Theorem 3.3)."""
    d, c2 = _edm(), 0.25
    noise = make_noise("gaussian", d.alpha_bar)
    shape = (2, 1, 4, 4)
    errors = {}
    for name in ("euler", "dpmpp_2m", "unipc"):
        for n in (32, 64):
            grid = d.solver_grid(n)
            coeff = {float(t): (a, s) for t, a, s in grid}

            def exact(model, diffusion, x, time, clip_x0, coeff=coeff):
                a, s = coeff[float(time)]
                x0 = (c2 * a / (c2 * a * a + s * s)) * x
                return x0, (x - a * x0) / s

            monkeypatch.setattr(solvers_module, "_denoise", exact)
            out = SAMPLERS.get(name)(None, d, noise, shape, n, image_generators(2, 0), clip_x0=False)
            z = noise.sample_per_item(shape, d.T - 1, image_generators(2, 0)).double()
            a0, s0 = grid[0][1], grid[0][2]
            errors[name, n] = float((out - z * s0 * math.sqrt(c2 / (c2 * a0 * a0 + s0 * s0))).abs().max())
    ratio = {name: errors[name, 32] / errors[name, 64] for name in ("euler", "dpmpp_2m", "unipc")}
    assert 1.8 < ratio["euler"] < 2.2 and 3.5 < ratio["dpmpp_2m"] < 5.5 and 7.0 < ratio["unipc"] < 11, ratio
    assert errors["unipc", 64] < errors["dpmpp_2m", 64] / 3 < errors["euler", 64] / 3
