"""Issue 33: paths (vp, rf, edm), training time densities, shifts, weightings edm / sigmoid, the euler
solver on the VE view and the noise-side knobs, each against independent code or a closed form
(DESIGN.md section 6): diffusers' density sampler and flow-matching scheduler, NVlabs/edm's
preconditioning and loss (transcribed below), scipy's linear assignment and a brute force, KS tests
against the CDFs that have no sampler to compare with."""

import itertools
import math

import pytest
import torch
from scipy import stats

from bench.experiment.config import RunConfig, build_process, trial_id, validate
from bench.process.continuous import PathDiffusion
from bench.process.densities import DENSITIES, make_density
from bench.process.diffusion import Diffusion
from bench.process.noise import make_noise
from bench.process.paths import PATHS, SIGMA_DATA, shift_log_snr
from bench.process.schedules import make_betas, shift_schedule
from bench.registry import InputError
from bench.sampling.sample import SAMPLERS, image_generators
from bench.training.knobs import apply_knobs, immiscible_assignment

F64 = torch.float64
N_KS = 20000


def _path_diffusion(path, prediction, weighting="none", density="uniform", shift=1.0, **dkw):
    return PathDiffusion(PATHS.get(path)(), prediction, weighting, {}, make_density(density, **dkw), shift)


def test_registries_name_what_design_md_names():
    assert PATHS.names() == ["edm", "rf", "vp"]
    assert DENSITIES.names() == ["cosmap", "logit_normal", "lognormal", "mode", "uniform"]
    assert {n: PATHS.get(n).predictions for n in PATHS.names()} == {"vp": ("eps", "x0", "v"), "rf": ("flow",), "edm": ("x0",)}


# ---------------------------------------------------------------------------------------------
# densities against diffusers (same generator, same u) and against their CDFs


@pytest.mark.parametrize("m,s", [(0.0, 1.0), (0.5, 0.6), (1.0, 0.6), (-0.5, 2.0)])
def test_logit_normal_is_diffusers_u(m, s):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    ours = make_density("logit_normal", t_mean=m, t_std=s).draw(4096, torch.Generator().manual_seed(3), None)
    theirs = compute_density_for_timestep_sampling("logit_normal", 4096, logit_mean=m, logit_std=s,
                                                   generator=torch.Generator().manual_seed(3))
    assert ours.dtype == F64 and torch.allclose(ours, theirs.double(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("scale", [1.29, 0.0, -1.0, 1.75])
def test_mode_is_diffusers_u(scale):
    """diffusers computes the transform in float32, bench in float64 from the same float32 v: 1e-6."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    ours = make_density("mode", t_mode_scale=scale).draw(4096, torch.Generator().manual_seed(5), None)
    theirs = compute_density_for_timestep_sampling("mode", 4096, mode_scale=scale, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ours, theirs.double(), rtol=0, atol=1e-6)


def test_cosmap_matches_its_cdf_and_the_ks_test_has_power():
    t = make_density("cosmap").draw(N_KS, torch.Generator().manual_seed(0), None).numpy()
    cdf = lambda x: (2 / math.pi) * torch.atan(torch.as_tensor(x / (1 - x))).numpy()  # DESIGN.md: F(t) = (2/pi) arctan(t/(1-t))
    assert stats.kstest(t, cdf).pvalue > 1e-3
    assert stats.kstest(t, "uniform").pvalue < 1e-6  # the same test rejects the wrong CDF


@pytest.mark.parametrize("path", ["rf", "edm"])
def test_lognormal_is_logit_normal_on_rf_and_edm(path):
    """EDM's ln sigma~ ~ N(P_mean, P_std^2) and SD3's logit_normal(m, s) are one density on rf and edm
    (sigma~ = t/(1 - t)): lambda ~ N(-2m, (2s)^2); EDM's defaults are lambda ~ N(2.4, 2.4^2)."""
    p = PATHS.get(path)()
    for dens in (make_density("lognormal"), make_density("logit_normal", t_mean=-1.2, t_std=1.2)):
        lam = p.log_snr(dens.draw(N_KS, torch.Generator().manual_seed(1), p)).numpy()
        assert stats.kstest(lam, stats.norm(loc=2.4, scale=2.4).cdf).pvalue > 1e-3
    t = make_density("lognormal", P_mean=0.5, P_std=0.6).draw(N_KS, torch.Generator().manual_seed(2), p).numpy()
    assert stats.kstest(t, lambda x: stats.norm.cdf((torch.logit(torch.as_tensor(x)).numpy() - 0.5) / 0.6)).pvalue > 1e-3


def test_densities_on_vp_are_indices_in_range_and_uniform_is_the_first_release_draw():
    d = Diffusion(make_betas("cosine", 1000))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(d.draw_t(64, g1), torch.randint(1000, (64,), generator=g2))  # bit-identical existing trials
    d.density = make_density("logit_normal", t_mean=0.0, t_std=1.0)
    t = d.draw_t(N_KS, torch.Generator().manual_seed(4))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    u = torch.sigmoid(torch.normal(0.0, 1.0, (N_KS,), generator=torch.Generator().manual_seed(4))).double()
    assert torch.equal(t, (torch.ceil(u * 1000).long() - 1).clamp(0, 999))  # index ceil(u T), 0-based


# ---------------------------------------------------------------------------------------------
# shifts


@pytest.mark.parametrize("a", [1.0, 1.5, 3.0, 6.0])
def test_rf_shift_in_lambda_is_sd3_eq_23(a):
    rf = PATHS.get("rf")()
    t = torch.linspace(0.001, 0.999, 999, dtype=F64)
    shifted = rf.t_of_log_snr(shift_log_snr(rf.log_snr(t), a))
    assert torch.allclose(shifted, a * t / (1 + (a - 1) * t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vp_shift_is_defined_in_lambda(schedule):
    betas = make_betas(schedule, 1000)
    ab, ab2 = torch.cumprod(1 - betas, 0), torch.cumprod(1 - shift_schedule(betas, 2.0), 0)
    lam, lam2 = torch.log(ab / (1 - ab)), torch.log(ab2 / (1 - ab2))
    assert torch.allclose(lam2, lam - 2 * math.log(2.0), rtol=0, atol=1e-8)
    assert shift_schedule(betas, 1.0) is betas
    # and it is not SD3's t-formula applied to vp's t = i/T (DESIGN.md: define the shift in lambda)
    t = torch.arange(1, 1001, dtype=F64) / 1000
    assert not torch.allclose(ab2, torch.cumprod(1 - betas, 0)[((2 * t / (1 + t)) * 1000).long().clamp(max=999)], atol=1e-3)


def test_rf_training_shift_moves_the_drawn_times():
    d = _path_diffusion("rf", "flow", shift=3.0)
    t = d.draw_t(N_KS, torch.Generator().manual_seed(0))
    u = torch.rand(N_KS, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(t, (3 * u / (1 + 2 * u)).clamp(1e-5, 1 - 1e-5), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# EDM against NVlabs/edm (EDMPrecond, EDMLoss, transcribed)


def _edm_precond(net, x, sigma, sd=0.5):
    """NVlabs/edm training/networks.py EDMPrecond.forward, transcribed."""
    sigma = sigma.reshape(-1, 1, 1, 1)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip * x + c_out * net(c_in * x, c_noise.flatten())


def test_edm_preconditioning_and_loss_are_nvlabs():
    edm = PATHS.get("edm")()
    sigma = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 80.0], dtype=F64)
    t = sigma / (1 + sigma)
    assert torch.allclose(edm.sigma(t), sigma, rtol=1e-12)
    assert torch.allclose(edm.c_skip(t), SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2), rtol=1e-12)
    assert torch.allclose(edm.c_noise(t), sigma.log() / 4, rtol=1e-12)
    net = lambda x, c: torch.tanh(x * 0.7 + c.reshape(-1, 1, 1, 1))  # any deterministic F
    y = torch.rand(6, 1, 5, 5, dtype=F64) * 2 - 1
    n = torch.randn(6, 1, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    d = _path_diffusion("edm", "x0", "edm", "lognormal")
    ours = d.loss(net, y, t, n)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2  # EDMLoss
    theirs = (weight.reshape(-1, 1, 1, 1) * (_edm_precond(net, y + n * sigma.reshape(-1, 1, 1, 1), sigma) - y) ** 2).flatten(1).mean(1)
    assert torch.allclose(ours.double(), theirs, rtol=1e-5)  # the loss path runs the model in float32
    x0_hat, _ = d.split(net(*d.model_input(y + n * sigma.reshape(-1, 1, 1, 1), t)), y + n * sigma.reshape(-1, 1, 1, 1), t)
    assert torch.allclose(x0_hat.double(), _edm_precond(net, y + n * sigma.reshape(-1, 1, 1, 1), sigma), rtol=1e-5, atol=1e-6)


def test_edm_weighting_is_the_eps_equivalent_of_edms_weight():
    """w_eps = 1 + e^(-lambda)/sd^2 (DESIGN.md section 6); on the x0 target it is (sigma^2 + sd^2)/(sigma sd)^2."""
    from bench.process.diffusion import PREDICTIONS, make_weighting

    sigma = torch.logspace(-3, 2, 50, dtype=F64)
    snr = 1 / sigma**2
    w = make_weighting("edm")
    assert torch.allclose(w.eps_weight(snr), 1 + torch.exp(-torch.log(snr)) / 0.25, rtol=1e-12)
    assert torch.allclose(w.weight(snr, PREDICTIONS.get("x0")), (sigma**2 + 0.25) / (sigma * 0.5) ** 2, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# rf against diffusers' flow-matching conventions


def test_rf_forward_target_and_conversion_are_diffusers_flow_matching():
    from diffusers import FlowMatchEulerDiscreteScheduler

    d = _path_diffusion("rf", "flow")
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    eps = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 1.0 - 1e-5], dtype=F64)
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=[0.1, 0.4, 0.7, 1.0 - 1e-5])
    x_t = d.q_sample(x0, t, eps)
    for i in range(4):  # diffusers: x = sigma noise + (1 - sigma) sample at timestep = 1000 sigma
        want = sched.scale_noise(x0[i:i + 1], sched.timesteps[i:i + 1], eps[i:i + 1])
        assert torch.allclose(x_t[i:i + 1], want, atol=1e-6)
    assert torch.equal(d.target(x0, t, eps), eps - x0)  # diffusers' SD3 scripts: target = noise - model_input
    x0_hat, eps_hat = d.split(eps - x0, x_t, t)  # the exact flow recovers both
    assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(eps_hat, eps, atol=1e-5)
    assert torch.allclose(d.model_input(x_t, t)[1], (1000 * t).float())  # time input = diffusers' timestep


def _flow_model(x, c):
    """A deterministic 'velocity' field of (x, time input)."""
    return 0.4 * x + torch.sin(c.reshape(-1, 1, 1, 1) / 300.0) + 0.1 * x**2


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_on_rf_is_diffusers_flow_match_euler(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    d = _path_diffusion("rf", "flow")
    noise = make_noise("gaussian", d.alpha_bar)
    out = SAMPLERS.get("euler")(_flow_model, d, noise, (3, 1, 6, 6), steps, image_generators(3, 7), clip_x0=False)
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    x = noise.sample_per_item((3, 1, 6, 6), d.T - 1, image_generators(3, 7)).float()
    for ts in sched.timesteps:
        x = sched.step(_flow_model(x, ts.expand(3)), ts, x).prev_sample
    assert torch.allclose(out, x, atol=1e-5), (out - x).abs().max()


def test_euler_on_vp_is_ddim_at_eta_0():
    betas = make_betas("cosine", 1000)
    d = Diffusion(betas, prediction="v")
    noise = make_noise("gaussian", d.alpha_bar)
    model = lambda x, t: 0.3 * x + torch.cos(t.float().reshape(-1, 1, 1, 1) / 200.0)
    for steps in (1, 5, 20):
        a = SAMPLERS.get("euler")(model, d, noise, (2, 1, 6, 6), steps, image_generators(2, 1))
        b = SAMPLERS.get("ddim")(model, d, noise, (2, 1, 6, 6), steps, image_generators(2, 1), ddim_eta=0.0)
        assert torch.allclose(a, b, atol=1e-5), (steps, (a - b).abs().max())


def test_euler_on_edm_is_karras_euler_on_the_karras_grid():
    d = _path_diffusion("edm", "x0", "edm", "lognormal")
    noise = make_noise("gaussian", d.alpha_bar)
    net = lambda x, c: torch.tanh(0.5 * x) + 0.1 * c.reshape(-1, 1, 1, 1)
    out = SAMPLERS.get("euler")(net, d, noise, (2, 1, 5, 5), 6, image_generators(2, 3), clip_x0=False)
    i = torch.arange(6, dtype=F64)
    sig = (80 ** (1 / 7) + i / 5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # EDM eq. 5
    sig = torch.cat([sig, torch.zeros(1, dtype=F64)])
    x = noise.sample_per_item((2, 1, 5, 5), d.T - 1, image_generators(2, 3)).double() * sig[0]
    for k in range(6):
        D = _edm_precond(lambda a, c: net(a.float(), c.float()).double(), x, sig[k].expand(2))
        x = D + (sig[k + 1] / sig[k]) * (x - D)  # Karras et al. 2022, Algorithm 1 (Euler)
    assert torch.allclose(out.double(), x, atol=1e-4, rtol=1e-4), (out.double() - x).abs().max()


def test_euler_sample_shift_on_rf_shifts_the_grid():
    d = _path_diffusion("rf", "flow")
    grid = [t for t, _, _ in d.solver_grid(4, 3.0)]
    t = torch.linspace(1, 0, 5, dtype=F64)
    assert torch.allclose(torch.tensor(grid, dtype=F64), 3 * t / (1 + 2 * t), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# noise-side knobs


def test_immiscible_is_the_optimal_unsquared_assignment():
    """Against scipy on torch.cdist, and against a brute force over all 6! permutations."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    perm = immiscible_assignment(x0, eps)
    dist = torch.cdist(x0.flatten(1).double(), eps.flatten(1).double())
    cost = lambda p: float(sum(dist[i, p[i]] for i in range(6)))
    best = min(itertools.permutations(range(6)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), abs=1e-12)
    assert sorted(perm.tolist()) == list(range(6))


def test_knobs_off_draw_nothing_and_on_do_what_the_papers_say():
    cfg = RunConfig()
    x0, eps = torch.rand(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    e, e_in = apply_knobs(cfg, x0, eps, g)
    assert e is eps and e_in is None and torch.equal(g.get_state(), state)
    e, e_in = apply_knobs(cfg.replace(offset_noise=0.1), x0, eps, torch.Generator().manual_seed(0))
    n = torch.randn((4, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(e, eps + 0.1 * n) and e_in is None  # the offset is part of the target
    e, e_in = apply_knobs(cfg.replace(input_perturbation=0.1), x0, eps, torch.Generator().manual_seed(0))
    xi = torch.randn((4, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(e, eps) and torch.allclose(e_in, eps + 0.1 * xi)  # target eps, x_t from eps + gamma xi
    d = Diffusion(make_betas("linear", 100))
    seen = {}
    model = lambda x, t: seen.setdefault("x", x) * 0
    d.loss(model, x0, torch.tensor([10, 20, 30, 40]), e, eps_in=e_in)
    assert torch.allclose(seen["x"], d.q_sample(x0, torch.tensor([10, 20, 30, 40]), e_in))


# ---------------------------------------------------------------------------------------------
# configs: bad input, labels, ids


@pytest.mark.parametrize("kw,match", [
    (dict(prediction="flow"), "prediction flow on path vp"),
    (dict(path="rf", prediction="flow", schedule="cosine", evals="euler:5"), "schedule set on path rf"),
    (dict(path="edm", prediction="x0", timesteps=500, evals="euler:5"), "timesteps set on path edm"),
    (dict(path="rf", prediction="flow", train_shift=0.5, evals="euler:5"), "train_shift must be a finite number >= 1"),
    (dict(evals="euler:5", sample_shift=0.9), "sample_shift must be a finite number >= 1"),
    (dict(t_density="logit_normal", t_std=0.0), "t_std must be a finite number > 0"),
    (dict(t_density="lognormal", P_std=-1.0), "P_std must be a finite number > 0"),
    (dict(t_mean=0.5), "t_mean set without logit_normal"),
    (dict(t_density="mode", P_mean=0.5), "P_mean set without lognormal"),
    (dict(t_density="mode", t_mode_scale=3.0), "t_mode_scale must lie in"),
    (dict(path="rf", prediction="flow"), "sampler ddim needs .* sample it with dpmpp_2m, euler"),
    (dict(path="rf", prediction="flow", noise="gamma", evals="euler:5"), "noise gamma depends on the vp timestep"),
    (dict(path="rf", prediction="flow", corruption="blur", evals="euler:5"), "corruption blur on path rf"),
    (dict(path="edm", prediction="eps", evals="euler:5"), "path edm takes x0"),
    (dict(train_shift=2.0), "sample_shift=1 != train_shift=2 on path vp"),
    (dict(corruption="blur", evals="euler:5"), "sampler euler needs the VE view"),
    (dict(input_perturbation=-0.1), "input_perturbation must be a finite number >= 0"),
    (dict(path="flowmatch"), "unknown path 'flowmatch'"),
])
def test_bad_formulations_are_one_line_input_errors(kw, match):
    with pytest.raises(InputError, match=match) as err:
        validate(RunConfig(**kw))
    assert "\n" not in str(err.value)


def test_defaults_keep_trial_ids_and_labels():
    """The first release's trial (all defaults) keeps its id and label; a new field enters only when set."""
    assert trial_id(RunConfig()) == "881530035c" and RunConfig().arm() == "linear / gaussian"
    assert trial_id(RunConfig(train_shift=1.0, t_density="uniform", path="vp")) == "881530035c"


@pytest.mark.parametrize("kw,label", [
    (dict(path="rf", prediction="flow"), "rf"),
    (dict(path="rf", prediction="flow", t_density="logit_normal"), "rf/lognorm(0.00,1.00)"),
    (dict(path="rf", prediction="flow", t_density="logit_normal", t_mean=0.5, t_std=0.6), "rf/lognorm(0.50,0.60)"),
    (dict(path="rf", prediction="flow", t_density="mode"), "rf/mode(1.29)"),
    (dict(path="rf", prediction="flow", t_density="cosmap"), "rf/cosmap"),
    (dict(path="edm", prediction="x0", weighting="edm", t_density="lognormal"), "edm(-1.20,1.20)"),
    (dict(path="edm", prediction="x0", weighting="edm", t_density="lognormal", P_mean=0.0, P_std=0.6), "edm(0.00,0.60)"),
    (dict(schedule="cosine", prediction="v", immiscible=True), "cosine / gaussian / v, none / immiscible"),
    (dict(input_perturbation=0.1, offset_noise=0.1), "linear / gaussian / ip 0.1 / offset 0.1"),
])
def test_arms_are_named_as_sd3_table_1(kw, label):
    assert RunConfig(evals="euler:5", **kw).arm() == label


@pytest.mark.parametrize("kw", [
    dict(path="rf", prediction="flow", t_density="logit_normal"),
    dict(path="edm", prediction="x0", weighting="edm", t_density="lognormal"),
    dict(schedule="cosine", prediction="v", t_density="mode", train_shift=2.0, sample_shift=2.0),
    dict(input_perturbation=0.1, immiscible=True, offset_noise=0.1, weighting="sigmoid", weight_bias=-1.0),
])
def test_every_path_trains_and_samples_end_to_end(kw, tmp_path):
    """A few optimizer steps of the shared trainer on 8x8 images, then euler: finite losses and images."""
    from bench.sampling.sample import sample_images
    from bench.training.train import train

    cfg = RunConfig(evals="euler:4", model="tiny", train_steps=3, batch_size=4, warmup_steps=1, checkpoint_every=3,
                    dropout=0.0, **kw)
    validate(cfg)
    fp = build_process(cfg)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    res, ema = train(cfg, data, fp.diffusion, fp.noise, tmp_path, progress=False)
    assert res.status == "ok" and math.isfinite(res.final_loss)
    x = sample_images(ema, fp.diffusion, fp.noise, "euler", 4, 3, (1, 8, 8), 0, 3, "cpu",
                      options={"sample_shift": cfg.sample_shift})
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    rows = (tmp_path / "loss_by_t.csv").read_text().splitlines()
    assert len(rows) == 21 and all("nan" not in r.split(",")[-1] or ",0," in r for r in rows[1:])


# ---------------------------------------------------------------------------------------------
# the effective weighting over lambda (Kingma & Gao 2023) against closed forms


def _l1(cfg, analytic):
    """L1 distance between the estimated normalised effective weighting and ``analytic(lambda)`` normalised
    on the same bins (0 = identical curves, 2 = disjoint)."""
    import numpy as np

    from bench.report.formulation import EDGES, effective_weighting

    x, _, eff = effective_weighting(cfg)
    ref = analytic(x)
    ref = ref / (ref * np.diff(EDGES)).sum()
    return float((abs(eff - ref) * np.diff(EDGES)).sum())


def test_rf_uniform_is_the_eps_loss_weighted_by_sigma_tilde():
    """Uniform t on rf with the plain flow loss: p(lambda) = t(1 - t)/2 and w_eps = (1 + sigma~)^2 multiply to
    e^(-lambda/2) = sigma~ (SD3 sec. 3: w_t = t/(1 - t) for rectified flow); truncated to EDGES as the estimate is."""
    import numpy as np

    assert _l1(RunConfig(path="rf", prediction="flow", evals="euler:5"), lambda lam: np.exp(-lam / 2)) < 0.02
    # and the same test tells it from a different weighting
    assert _l1(RunConfig(path="rf", prediction="flow", evals="euler:5"), lambda lam: np.exp(-lam / 4)) > 0.2


def test_edm_effective_weighting_is_its_normal_density_times_its_weight():
    import numpy as np

    analytic = lambda lam: stats.norm.pdf(lam, loc=2.4, scale=2.4) * (1 + np.exp(-lam) / 0.25)
    cfg = RunConfig(path="edm", prediction="x0", weighting="edm", t_density="lognormal", evals="euler:5")
    assert _l1(cfg, analytic) < 0.03


def _jittered(lam_table, idx, seed=0):
    """Each drawn index i placed uniformly in its log-SNR gap (lambda_i, lambda_{i-1}] (index 0: a gap as
    wide as the next), numpy, independent of bench's overlap arithmetic."""
    import numpy as np

    lam = np.asarray(lam_table, dtype=float)
    hi = np.concatenate([[lam[0] + (lam[0] - lam[1])], lam[:-1]])
    u = np.random.default_rng(seed).random(len(idx))
    return lam[idx] + u * (hi[idx] - lam[idx])


def test_vp_eps_uniform_effective_weighting_is_its_lambda_table_spread_over_its_steps():
    import numpy as np

    from bench.report.formulation import EDGES, effective_weighting

    ab = torch.cumprod(1 - make_betas("cosine", 1000), 0)
    lam = torch.log(ab / (1 - ab)).numpy()
    idx = np.random.default_rng(1).integers(0, 1000, 1_000_000)
    hist, _ = np.histogram(_jittered(lam, idx), bins=EDGES)
    ref = hist / (hist * np.diff(EDGES)).sum()
    _, _, eff = effective_weighting(RunConfig(schedule="cosine"))
    assert float((abs(eff - ref) * np.diff(EDGES)).sum()) < 0.01


@pytest.mark.parametrize("density", ["uniform", "logit_normal", "mode", "cosmap", "lognormal"])
@pytest.mark.parametrize("path", ["rf", "edm"])
def test_every_density_cdf_is_the_law_of_its_draws(density, path):
    """The CDFs the effective-weighting figure uses (``Density.cdf``) are the law of the trainer's draws
    (KS, 20000 draws), on every continuous path."""
    p = PATHS.get(path)()
    dens = make_density(density)
    t = dens.draw(N_KS, torch.Generator().manual_seed(11), p)
    assert stats.kstest(t.numpy(), lambda x: dens.cdf(torch.as_tensor(x, dtype=F64), p).numpy()).pvalue > 1e-3


def test_vp_density_masses_are_the_index_draws():
    """On vp, the per-bin masses equal the trainer's drawn indices, each spread over its log-SNR step
    (200k draws, L1 < 0.02)."""
    import numpy as np

    from bench.report.formulation import EDGES

    d = Diffusion(make_betas("linear", 1000))
    d.density = make_density("cosmap")
    mass = d.log_snr_mass(torch.as_tensor(EDGES)).numpy()
    idx = d.draw_t(200_000, torch.Generator().manual_seed(0)).numpy()
    hist, _ = np.histogram(_jittered(d.log_snr.numpy(), idx), bins=EDGES)
    assert abs(mass.sum() - 1) < 1e-9 and float(abs(hist / 200_000 - mass).sum()) < 0.02


# ---------------------------------------------------------------------------------------------
# the CLI: bench ls, bench plot-schedules, exit 2 before work


def test_bench_ls_lists_paths_densities_and_the_new_fields(capsys):
    from bench.__main__ import main

    assert main(["ls", "paths"]) == 0 and main(["ls", "densities"]) == 0 and main(["ls", "config"]) == 0
    out = capsys.readouterr().out
    for name in ("vp ", "rf ", "edm ", "uniform ", "logit_normal ", "mode ", "cosmap ", "lognormal "):
        assert f"  {name}" in out, name
    for field, role in (("path", "trains"), ("t_density", "trains"), ("train_shift", "trains"), ("sample_shift", "sampler option"),
                        ("immiscible", "trains"), ("t_mode_scale", "trains"), ("weight_bias", "trains")):
        assert any(line.split()[:1] == [field] and role in line for line in out.splitlines()), field


def test_plot_schedules_also_draws_every_path(tmp_path):
    from bench.__main__ import main

    assert main(["plot-schedules", "--out", str(tmp_path / "s.png"), "--schedules", "linear", "--shifts", "1,3"]) == 0
    assert (tmp_path / "s_paths.png").stat().st_size > 10_000


@pytest.mark.parametrize("sets, message", [
    (["t_mean=0.5"], "t_mean set without logit_normal"),
    (["path=rf"], "prediction eps on path rf"),
    (["train_shift=0.5"], "train_shift must be a finite number >= 1"),
])
def test_bad_formulations_exit_2_before_work(tmp_path, capsys, sets, message):
    from bench.__main__ import main

    args = ["run", "--grid", "schedules", "--preset", "smoke", "--local", "--dry-run", "--out", str(tmp_path / "r")]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench: error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# review fixes: keys of adopted models, vp + lognormal, strips and figures on continuous paths


def test_adoption_keys_of_existing_trials_are_unchanged():
    """bench.training.trained keys hash new fields only when set (as trial_id): the default trial's keys are
    the ones of the release before issue 33, so finished models are still adopted."""
    from bench.training.trained import curve_key, train_key

    assert train_key(RunConfig()) == "68cc0eb9b0bb6179" and curve_key(RunConfig()) == "180e9ff192d5d59a"
    assert train_key(RunConfig(path="rf", prediction="flow", evals="euler:5")) != train_key(RunConfig())


@pytest.mark.parametrize("T", [10, 50, 100, 333, 1000, 1999])
def test_vp_lognormal_reaches_the_index_it_names(T):
    """t_of_log_snr on vp gives the middle of index i's interval, so ceil(u T) - 1 = i for every i and T."""
    d = Diffusion(make_betas("cosine", T))
    i = torch.arange(T)
    t = d.t_of_log_snr(d.log_snr[i])
    assert torch.equal((torch.ceil(t * T).long() - 1), i)
    assert torch.equal(d.log_snr_of_t(t), d.log_snr[i])


def test_vp_lognormal_effective_weighting_is_drawn():
    import numpy as np

    from bench.report.formulation import effective_weighting

    x, p, eff = effective_weighting(RunConfig(schedule="cosine", t_density="lognormal"))
    assert np.isfinite(eff).all() and abs((p * np.diff(x).mean()).sum() - 1) < 1e-6


def test_denoising_strip_and_forward_figure_on_continuous_paths(tmp_path):
    from bench.report.forward import forward_cells
    from bench.sampling.snapshots import denoise_strip

    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    for kw in (dict(path="edm", prediction="x0", weighting="edm", t_density="lognormal"), dict(path="rf", prediction="flow")):
        cfg = RunConfig(evals="euler:5", **kw)
        _, d, noise = build_process(cfg)
        cells = denoise_strip(lambda x, c: x * 0.1, d, noise, x0, [0, 499, 999], torch.Generator().manual_seed(0),
                              tmp_path / "strip.png")
        assert torch.isfinite(cells).all()
        fwd = forward_cells({"arm": cfg}, x0[0], fractions=(0.0, 0.5, 1.0))
        assert all(torch.isfinite(x).all() for _, x in fwd["arm"])  # edm's x_t is VE: sigma up to 1e5 at t/T = 1
        assert float(fwd["arm"][1][1].std()) < 3  # the middle column: t = 1/2 is sigma~ = 1, not an index 499


@pytest.mark.parametrize("kw,match", [
    (dict(immiscible=True, noise="gamma"), "immiscible with noise gamma"),
    (dict(corruption="cold_blur", prediction="x0", timesteps=20, loss="l1", evals="cold:20", input_perturbation=0.1),
     "input_perturbation set with corruption cold_blur"),
    (dict(corruption="cold_blur", prediction="x0", timesteps=20, loss="l1", evals="cold:20", t_density="cosmap"),
     "t_density set with corruption cold_blur"),
    (dict(offset_noise=float("inf")), "offset_noise must be a finite number >= 0"),
])
def test_knobs_that_would_do_nothing_or_be_wrong_are_refused(kw, match):
    with pytest.raises(InputError, match=match):
        validate(RunConfig(**kw))


# ---------------------------------------------------------------------------------------------
# dpmpp_2m (issue 34's first solver) against k-diffusion's sample_dpmpp_2m, transcribed


def _kdiff_dpmpp_2m(denoise, x, sigmas):
    """k-diffusion 0.1.1 ``sample_dpmpp_2m`` (crowsonkb/k-diffusion, k_diffusion/sampling.py), transcribed:
    the package itself pins numpy < 2 through dctorch, which this suite's pandas cannot take."""
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@pytest.mark.parametrize("steps", [1, 2, 6, 12])
def test_dpmpp_2m_on_edm_is_k_diffusions(steps):
    d = _path_diffusion("edm", "x0", "edm", "lognormal")
    noise = make_noise("gaussian", d.alpha_bar)
    net = lambda x, c: torch.tanh(0.5 * x) + 0.1 * c.reshape(-1, 1, 1, 1)
    ours = SAMPLERS.get("dpmpp_2m")(net, d, noise, (2, 1, 5, 5), steps, image_generators(2, 3), clip_x0=False)
    grid = d.solver_grid(steps)
    sig = torch.tensor([s for _, _, s in grid], dtype=F64)
    x = noise.sample_per_item((2, 1, 5, 5), d.T - 1, image_generators(2, 3)).double() * sig[0]
    denoise = lambda x, i: _edm_precond(lambda a, c: net(a.float(), c.float()).double(), x, sig[i].expand(2))
    theirs = _kdiff_dpmpp_2m(denoise, x, sig)
    assert torch.allclose(ours.double(), theirs, atol=1e-4, rtol=1e-4), (ours.double() - theirs).abs().max()


def test_dpmpp_2m_on_vp_is_k_diffusions_in_the_ve_view():
    """vp in the VE view: x~ = x/alpha, sigma~ = sigma/alpha on DDIM's timesteps, D from the one conversion."""
    d = Diffusion(make_betas("cosine", 1000), prediction="v")
    noise = make_noise("gaussian", d.alpha_bar)
    model = lambda x, t: 0.3 * x + torch.cos(t.float().reshape(-1, 1, 1, 1) / 200.0)
    ours = SAMPLERS.get("dpmpp_2m")(model, d, noise, (2, 1, 6, 6), 8, image_generators(2, 1), clip_x0=False)
    grid = d.solver_grid(8)
    a = torch.tensor([g[1] for g in grid], dtype=F64)
    sig = torch.tensor([g[2] / g[1] for g in grid], dtype=F64)

    def denoise(x_ve, i):
        x = (x_ve * a[i]).float()
        tt = torch.full((2,), grid[i][0], dtype=torch.long)
        return d.split(model(x, tt).float(), x, tt)[0].double()

    x = noise.sample_per_item((2, 1, 6, 6), d.T - 1, image_generators(2, 1)).double() * grid[0][2] / a[0]
    theirs = _kdiff_dpmpp_2m(denoise, x, sig)
    assert torch.allclose(ours.double(), theirs, atol=1e-4), (ours.double() - theirs).abs().max()


def test_dpmpp_2m_one_step_is_euler_and_it_starts_rf_at_t_1():
    d = _path_diffusion("rf", "flow")
    noise = make_noise("gaussian", d.alpha_bar)
    one = [SAMPLERS.get(n)(_flow_model, d, noise, (2, 1, 6, 6), 1, image_generators(2, 5)) for n in ("dpmpp_2m", "euler")]
    assert torch.allclose(*one, atol=1e-6)
    many = SAMPLERS.get("dpmpp_2m")(_flow_model, d, noise, (2, 1, 6, 6), 10, image_generators(2, 5))
    assert torch.isfinite(many).all()


def test_every_prediction_says_what_the_loss_is_on_and_a_formulation_run_says_where_its_parts_are():
    """Prediction.words reaches the report's Method; the paths, densities and weightings sentence is there only
    where the arms differ in path or time density."""
    from pathlib import Path

    from bench.process.diffusion import PREDICTIONS
    from bench.report import formulation_text
    from bench.report.plots import loss_what
    from bench.report.tables import load_run

    assert all(PREDICTIONS.get(n).words for n in PREDICTIONS.names())
    results = Path(__file__).resolve().parents[1] / "results"
    quick = load_run(results / "formulations" / "quick-20261207-113002")
    assert "the predicted flow u = eps - x_0" in loss_what(quick)
    assert "`bench/process/paths.py`, `bench/process/densities.py`" in formulation_text(quick)
    assert formulation_text(load_run(results / "schedules" / "quick-20261129-082029")) == ""
