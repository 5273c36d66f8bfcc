"""Prediction targets and loss weightings against closed forms (DESIGN.md section 3), generated from
the registries, and the objectives grids.

The conversion oracle: at fixed x_t a prediction error in x_0-space d0 = x0_hat - x0 forces
eps_hat - eps = -(a/s) d0 and v_hat - v = -d0/s (a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)), so
eps-MSE = SNR x0-MSE and v-MSE = (SNR + 1) x0-MSE, i.e. x0-MSE = eps-MSE/SNR and
v-MSE = eps-MSE (SNR + 1)/SNR. A model that is perfect up to a known d0 therefore has a known loss
for every target, at every t -- also at alpha_bar = 0, where eps-space errors cannot exist.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.process.diffusion import PREDICTIONS, WEIGHTINGS, Diffusion, make_weighting, weighting_params
from bench.process.noise import make_noise
from bench.process.paths import PATHS
from bench.process.schedules import make_betas
from bench.registry import InputError, UnknownNameError
from bench.sampling.sample import respace, timestep_subsequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

F64 = torch.float64
T = 1000
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# every timestep class: the smallest, mid-range, the last capped / rescaled ones
TS = torch.tensor([0, 1, 10, 100, 300, 500, 700, 900, 990, 998, 999])
# literal formulas of DESIGN.md, written independently of the implementation: (eps, x0, v) forms
LITERAL = {
    "none": lambda snr, p: (torch.ones_like(snr),) * 3,
    "min_snr": lambda snr, p: (torch.minimum(snr, torch.tensor(p["min_snr_gamma"], dtype=F64)) / snr,
                               torch.minimum(snr, torch.tensor(p["min_snr_gamma"], dtype=F64)),
                               torch.minimum(snr, torch.tensor(p["min_snr_gamma"], dtype=F64)) / (snr + 1)),
    "p2": lambda snr, p: ((p["p2_k"] + snr) ** -p["p2_gamma"],
                          snr * (p["p2_k"] + snr) ** -p["p2_gamma"],
                          snr / (snr + 1) * (p["p2_k"] + snr) ** -p["p2_gamma"]),
    # EDM's (sigma^2 + sd^2)/(sigma sd)^2 on ||D - x0||^2 is the x0 form, with sigma^2 = 1/SNR, sd = 0.5
    "edm": lambda snr, p: ((1 / snr + 0.25) / (0.25 / snr) / snr, (1 / snr + 0.25) / (0.25 / snr),
                           (1 / snr + 0.25) / (0.25 / snr) / (snr + 1)),
    # Kingma & Gao: sigmoid(b - lambda) on the eps loss
    "sigmoid": lambda snr, p: (torch.sigmoid(p["weight_bias"] - torch.log(snr)),
                               snr * torch.sigmoid(p["weight_bias"] - torch.log(snr)),
                               snr / (snr + 1) * torch.sigmoid(p["weight_bias"] - torch.log(snr))),
}
PARAMS = {  # per weighting: the defaults of DESIGN.md, and other values
    "none": [{}],
    "min_snr": [{"min_snr_gamma": 5.0}, {"min_snr_gamma": 1.0}, {"min_snr_gamma": 0.05}],
    "p2": [{"p2_k": 1.0, "p2_gamma": 1.0}, {"p2_k": 0.5, "p2_gamma": 0.5}, {"p2_k": 2.0, "p2_gamma": 0.0}],
    "edm": [{}],
    "sigmoid": [{"weight_bias": 0.0}, {"weight_bias": -2.0}, {"weight_bias": 3.0}],
}
VP_PREDICTIONS = PATHS.get("vp").predictions  # flow is rf's (tests/test_formulations.py)
FORM = {"eps": 0, "x0": 1, "v": 2}


def test_registries_are_what_design_md_names():
    assert PREDICTIONS.names() == ["eps", "flow", "v", "x0"] and sorted(VP_PREDICTIONS) == ["eps", "v", "x0"]
    assert WEIGHTINGS.names() == ["edm", "min_snr", "none", "p2", "sigmoid"]
    assert set(LITERAL) == set(WEIGHTINGS.names()) == set(PARAMS)


@pytest.mark.parametrize("name,obj", PREDICTIONS.items() + WEIGHTINGS.items())
def test_every_prediction_and_weighting_documents_formula_and_reference(name, obj):
    doc = obj.__doc__ or ""
    assert "=" in doc and len(doc) > 120 and any(c.isdigit() for c in doc), f"{name}: formula and reference"
    assert doc.strip().startswith(name + ":")


def test_weighting_params_are_config_field_names_with_defaults():
    assert weighting_params("none") == ()
    assert weighting_params("min_snr") == ("min_snr_gamma",)
    assert weighting_params("p2") == ("p2_k", "p2_gamma")
    w = make_weighting("min_snr")
    assert w.gamma == 5.0
    w = make_weighting("p2", p2_k=None, p2_gamma=None)  # None = the default (RunConfig's unset fields)
    assert (w.k, w.gamma) == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# predictions: the three targets are the same model when converted


def _draw(shape=(len(TS), 3, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=F64) * 2 - 1, torch.randn(shape, generator=g, dtype=F64)


@pytest.mark.parametrize("zt", [False, True])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid", "exponential", "simple_linear"])
def test_targets_round_trip_and_agree(schedule, zt):
    """target -> split gives (x_0, eps) back to 1e-6 in float64 (1e-9 in fact), for every target; and
    an eps-model's output converted to any target and split again is the same (x0_hat, eps_hat)."""
    betas = make_betas(schedule, T, zero_terminal_snr=zt)
    preds = [n for n, p in PREDICTIONS.items() if (p.recovers_x0_at_zero_snr or not zt) and n in VP_PREDICTIONS]
    diffs = {n: Diffusion(betas, prediction=n) for n in preds}
    x0, eps = _draw()
    d0 = diffs[preds[0]]
    x_t = d0.q_sample(x0, TS, eps)
    assert x_t.dtype == F64
    for n, d in diffs.items():
        x0_back, eps_back = d.split(d.target(x0, TS, eps), x_t, TS)
        assert (x0_back - x0).abs().max().item() < 1e-9, n
        assert (eps_back - eps).abs().max().item() < 1e-9, n
    # a model's (x0_hat, eps_hat) consistent with x_t, carried through every target
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    a, s = d0._a_s(TS, x_t)
    eps_hat = (x_t - a * x0_hat) / s
    for n, d in diffs.items():
        out = d.prediction.target(x0_hat, eps_hat, a, s)
        xa, ea = d.split(out, x_t, TS)
        assert torch.allclose(xa, x0_hat, rtol=0, atol=1e-9) and torch.allclose(ea, eps_hat, rtol=0, atol=1e-9), n


def test_v_closed_form():
    """Salimans & Ho 2022: v = a eps - s x0, x0 = a x_t - s v, eps = s x_t + a v, written out."""
    d = Diffusion(make_betas("cosine", T), prediction="v")
    x0, eps = _draw()
    a = d.alpha_bar[TS].sqrt().view(-1, 1, 1, 1)
    s = (1 - d.alpha_bar[TS]).sqrt().view(-1, 1, 1, 1)
    v = a * eps - s * x0
    assert torch.allclose(d.target(x0, TS, eps), v, rtol=0, atol=1e-15)
    x_t = a * x0 + s * eps
    x0_v, eps_v = d.split(v, x_t, TS)
    assert torch.allclose(x0_v, a * x_t - s * v, rtol=0, atol=1e-15)
    assert torch.allclose(eps_v, s * x_t + a * v, rtol=0, atol=1e-15)


def test_clipping_recomputes_eps_from_the_clipped_x0():
    for n in VP_PREDICTIONS:
        d = Diffusion(make_betas("linear", T), prediction=n)
        x0, eps = _draw()
        x0 = x0 * 3  # outside [-1, 1]
        x_t = d.q_sample(x0, TS, eps)
        xc, ec = d.split(d.target(x0, TS, eps), x_t, TS, clip_x0=True)
        assert torch.allclose(xc, x0.clamp(-1, 1), rtol=0, atol=1e-9) and xc.abs().max().item() <= 1.0
        a, s = d._a_s(TS, x_t)
        assert torch.allclose(ec, (x_t - a * xc) / s, rtol=1e-12, atol=1e-12)


def test_float32_tables_by_default():
    d = Diffusion(make_betas("cosine", T), prediction="v")
    x = torch.zeros(2, 1, 2, 2)
    x0, eps = d.split(x, x, torch.tensor([0, 999]))
    assert x0.dtype == eps.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# weightings: DESIGN.md's formulas, and the conversion identity with a known-error model


class KnownErrorModel:
    """Perfect up to a known x_0-space error d0: outputs the target of (x0 + d0, eps_hat) where
    eps_hat = (x_t - a (x0 + d0))/s is the eps consistent with x_t (the only errors a model can make)."""

    def __init__(self, d: Diffusion, x0, d0):
        self.d, self.x0, self.d0 = d, x0, d0

    def __call__(self, x_t, t):
        a, s = self.d._a_s(t, x_t)
        x0_hat = self.x0 + self.d0
        return self.d.prediction.target(x0_hat, (x_t - a * x0_hat) / s, a, s)


def _losses(betas, weighting, params, kind="mse", seed=0):
    """Per-example losses {prediction: [len(TS)]} for one known error, and the per-example x0-MSE."""
    x0, eps = _draw(seed=seed)
    d0 = 0.05 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=F64)
    out = {}
    for n, p in PREDICTIONS.items():
        if (betas[-1].item() == 1.0 and not p.recovers_x0_at_zero_snr) or n not in VP_PREDICTIONS:
            continue
        d = Diffusion(betas, prediction=n, weighting=weighting, **params)
        out[n] = d.loss(KnownErrorModel(d, x0, d0), x0, TS, eps, kind)
        assert out[n].dtype == F64 and out[n].shape == (len(TS),)
    return out, (d0**2).flatten(1).mean(1)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid", "exponential", "simple_linear"])
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_every_weighting_obeys_the_conversion_identity(schedule, weighting):
    """Plain losses: x0-MSE = eps-MSE/SNR, v-MSE = eps-MSE (SNR + 1)/SNR (weighting none shows them
    directly). A weighting defined by an eps-equivalent weight gives the same per-example loss for
    every target (w_x0 = w_eps SNR, w_v = w_eps SNR/(SNR + 1)); and each loss is the literal formula's
    weight times the known error's MSE in that target's space."""
    betas = make_betas(schedule, T)
    snr = (lambda ab: ab / (1 - ab))(torch.cumprod(1 - betas, 0))[TS]
    for params in PARAMS[weighting]:
        losses, mse_x0 = _losses(betas, weighting, params)
        mse = {"x0": mse_x0, "eps": snr * mse_x0, "v": (snr + 1) * mse_x0}
        lit = LITERAL[weighting](snr, params)
        for n, loss in losses.items():
            want = lit[FORM[n]] * mse[n]
            assert torch.allclose(loss, want, rtol=1e-9, atol=0), (n, params)
        if weighting == "none":  # the plain losses convert by DESIGN.md's factors
            assert torch.allclose(losses["x0"], losses["eps"] / snr, rtol=1e-9, atol=0)
            assert torch.allclose(losses["v"], losses["eps"] * (snr + 1) / snr, rtol=1e-9, atol=0)
        else:  # same objective whatever the target
            assert torch.allclose(losses["x0"], losses["eps"], rtol=1e-9, atol=0), params
            assert torch.allclose(losses["v"], losses["eps"], rtol=1e-9, atol=0), params


def test_edm_weighting_is_refused_at_zero_terminal_snr():
    """EDM's weight 1 + 1/(SNR sd^2) is infinite at SNR = 0: one line, not an infinite loss."""
    with pytest.raises(InputError, match="not a finite number"):
        Diffusion(make_betas("cosine", T, zero_terminal_snr=True), prediction="v", weighting="edm")


@pytest.mark.parametrize("weighting", [w for w in WEIGHTINGS.names() if w != "edm"])
def test_weightings_at_zero_terminal_snr(weighting):
    """alpha_bar_T = 0 (SNR 0): x0 and v losses finite, equal where the weighting is eps-equivalent,
    and the literal formulas' values at SNR = 0 (min_snr: min(0, gamma) = 0; p2: 0 * k^-gamma = 0)."""
    betas = make_betas("cosine", T, zero_terminal_snr=True)
    ab = torch.cumprod(1 - betas, 0)
    snr = (ab / (1 - ab))[TS]
    assert snr[-1].item() == 0.0
    for params in PARAMS[weighting]:
        losses, mse_x0 = _losses(betas, weighting, params)
        assert set(losses) == {"x0", "v"}
        assert all(torch.isfinite(v).all() for v in losses.values())
        lit = LITERAL[weighting](snr, params)
        assert torch.allclose(losses["x0"], lit[1] * mse_x0, rtol=1e-9, atol=0)
        assert torch.allclose(losses["v"], lit[2] * (snr + 1) * mse_x0, rtol=1e-9, atol=0)
        if weighting != "none":
            assert losses["v"][-1].item() == 0.0 == losses["x0"][-1].item()
            assert torch.allclose(losses["x0"], losses["v"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("zt", [False, True])
def test_min_snr_v_form_is_the_literal_formula(zt):
    """The form diffusers first got wrong (#5654): the v-target weight is min(SNR, gamma)/(SNR + 1),
    not min(SNR, gamma)/SNR; checked on the whole table, SNR = 0 included with zero terminal SNR."""
    betas = make_betas("sigmoid", T, zero_terminal_snr=zt)
    for gamma in (5.0, 1.0, 20.0):
        d = Diffusion(betas, prediction="v", weighting="min_snr", min_snr_gamma=gamma)
        snr = d.alpha_bar / (1 - d.alpha_bar)
        want = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)
        assert torch.allclose(d.loss_weight, want, rtol=1e-12, atol=0)
        wrong = torch.minimum(snr, torch.full_like(snr, gamma)) / snr
        assert not torch.allclose(d.loss_weight, wrong, rtol=1e-3)
        d = Diffusion(betas, prediction="x0", weighting="min_snr", min_snr_gamma=gamma)
        assert torch.allclose(d.loss_weight, torch.minimum(snr, torch.full_like(snr, gamma)), rtol=1e-12, atol=0)
        if not zt:
            d = Diffusion(betas, prediction="eps", weighting="min_snr", min_snr_gamma=gamma)
            assert torch.allclose(d.loss_weight, torch.minimum(snr, torch.full_like(snr, gamma)) / snr, rtol=1e-12, atol=0)


def test_weighting_anchor_values():
    """Hand-computed: SNR = 1 (alpha_bar = 1/2) and SNR = 9 (alpha_bar = 0.9)."""
    betas = torch.tensor([0.1, 1 - 0.5 / 0.9], dtype=F64)  # alpha_bar = 0.9, 0.5
    d = lambda p, w, **kw: Diffusion(betas, prediction=p, weighting=w, **kw).loss_weight.tolist()
    assert d("eps", "min_snr") == pytest.approx([5 / 9, 1.0], rel=1e-12)
    assert d("x0", "min_snr") == pytest.approx([5.0, 1.0], rel=1e-12)
    assert d("v", "min_snr") == pytest.approx([0.5, 0.5], rel=1e-12)
    assert d("eps", "p2") == pytest.approx([0.1, 0.5], rel=1e-12)
    assert d("x0", "p2") == pytest.approx([0.9, 0.5], rel=1e-12)
    assert d("v", "p2") == pytest.approx([0.09, 0.25], rel=1e-12)
    assert d("v", "p2", p2_k=3.0, p2_gamma=0.5) == pytest.approx([0.9 / 12**0.5, 0.5 / 2], rel=1e-12)
    for p in VP_PREDICTIONS:
        assert d(p, "none") == [1.0, 1.0]


def test_loss_is_weighted_per_example_and_l1():
    """The weight multiplies each example's mean-over-pixels loss (mse or l1) at its own t."""
    betas = make_betas("cosine", T)
    x0, eps = _draw()
    zero = lambda x, t: torch.zeros_like(x)
    for p in VP_PREDICTIONS:
        d = Diffusion(betas, prediction=p, weighting="p2")
        tgt = d.target(x0, TS, eps)
        w = d.loss_weight[TS]
        assert torch.allclose(d.loss(zero, x0, TS, eps, "mse"), w * (tgt**2).flatten(1).mean(1), rtol=1e-12)
        assert torch.allclose(d.loss(zero, x0, TS, eps, "l1"), w * tgt.abs().flatten(1).mean(1), rtol=1e-12)


def test_loss_gradients_flow_for_every_target():
    """float32 training path: a one-layer model, every target and weighting, finite loss and gradients."""
    torch.manual_seed(0)
    x0 = torch.rand(8, 1, 6, 6) * 2 - 1
    eps = torch.randn(8, 1, 6, 6)
    t = torch.randint(0, T, (8,))
    t[0] = T - 1
    for zt in (False, True):
        for p, w in itertools.product(VP_PREDICTIONS, WEIGHTINGS.names()):
            if zt and (not PREDICTIONS.get(p).recovers_x0_at_zero_snr or w == "edm"):
                continue
            d = Diffusion(make_betas("linear", T, zero_terminal_snr=zt), prediction=p, weighting=w)
            conv = torch.nn.Conv2d(1, 1, 3, padding=1)
            loss = d.loss(lambda x, tt, conv=conv: conv(x), x0, t, eps)
            assert loss.dtype == torch.float32 and loss.shape == (8,) and torch.isfinite(loss).all()
            loss.mean().backward()
            assert all(torch.isfinite(q.grad).all() for q in conv.parameters())


# ---------------------------------------------------------------------------------------------
# construction: the integrator's builder, and every invalid combination as one-line InputError


def build(cfg):
    """What bench.experiment.config's builder does with a RunConfig (DESIGN.md: one builder)."""
    betas = make_betas(cfg.schedule, cfg.timesteps, cfg.zero_terminal_snr)
    diffusion = Diffusion(betas, prediction=cfg.prediction, weighting=cfg.weighting,
                          **{p: getattr(cfg, p) for p in weighting_params(cfg.weighting)})
    return diffusion, make_noise(cfg.noise, diffusion.alpha_bar)


def cfg(**kw):
    base = dict(schedule="cosine", timesteps=100, zero_terminal_snr=False, prediction="eps", weighting="none",
                min_snr_gamma=5.0, p2_k=1.0, p2_gamma=1.0, weight_bias=0.0, noise="gaussian")
    return SimpleNamespace(**{**base, **kw})


def test_builder_accepts_every_valid_combination():
    for p, w, zt in itertools.product(VP_PREDICTIONS, WEIGHTINGS.names(), (False, True)):
        if zt and (p == "eps" or w == "edm"):  # edm: infinite weight at SNR 0 (test above)
            continue
        d, noise = build(cfg(prediction=p, weighting=w, zero_terminal_snr=zt))
        assert d.prediction is PREDICTIONS.get(p) and d.zero_terminal_snr == zt
        assert torch.isfinite(d.loss_weight).all()


@pytest.mark.parametrize("kw,match", [
    ({"prediction": "eps", "zero_terminal_snr": True}, "zero terminal SNR.*use prediction `v` or `x0`"),
    ({"prediction": "v_pred"}, "unknown prediction 'v_pred'"),
    ({"weighting": "minsnr"}, "did you mean min_snr"),
    ({"weighting": "min_snr", "min_snr_gamma": 0.0}, "min_snr_gamma must be a finite number > 0"),
    ({"weighting": "min_snr", "min_snr_gamma": float("nan")}, "min_snr_gamma must be a finite number > 0"),
    ({"weighting": "p2", "p2_k": -1.0}, "p2_k must be a finite number > 0"),
    ({"weighting": "p2", "p2_gamma": -0.5}, "p2_gamma must be a finite number >= 0"),
    ({"weighting": "p2", "p2_gamma": float("inf")}, "p2_gamma must be a finite number >= 0"),
])
def test_invalid_combinations_are_one_line_input_errors(kw, match):
    with pytest.raises(InputError, match=match) as err:
        build(cfg(**kw))
    assert "\n" not in str(err.value)


def test_weighting_parameter_it_does_not_take():
    betas = make_betas("cosine", 100)
    with pytest.raises(InputError, match="weighting min_snr takes min_snr_gamma; got p2_k"):
        Diffusion(betas, weighting="min_snr", p2_k=1.0)
    with pytest.raises(InputError, match="weighting none takes no parameters; got min_snr_gamma"):
        Diffusion(betas, weighting="none", min_snr_gamma=5.0)
    with pytest.raises(UnknownNameError):
        weighting_params("nope")


@pytest.mark.parametrize("zt", [False, True])
def test_respace_keeps_prediction_and_weighting(zt):
    d = Diffusion(make_betas("cosine", T, zero_terminal_snr=zt), prediction="v", weighting="p2", p2_k=2.0, p2_gamma=0.5)
    ts = timestep_subsequence(T, 17)
    sub = respace(d, ts)
    assert sub.prediction is d.prediction and sub.weighting_name == "p2" and sub.weighting_kwargs == d.weighting_kwargs
    assert torch.allclose(sub.alpha_bar, d.alpha_bar[ts], rtol=1e-8, atol=0)  # 1 - (1 - ab/prev) rounding
    assert torch.allclose(sub.loss_weight, d.loss_weight[ts], rtol=1e-8, atol=0)  # a function of SNR only
    assert sub.zero_terminal_snr == zt and (sub.betas[-1].item() == 1.0) == zt


# ---------------------------------------------------------------------------------------------
# the objectives grids: every trial of every preset is valid, and the quick presets are CPU-small


GRIDS = ["objectives", "objectives_zt"]
PRESETS = ("full", "quick", "smoke")


def _read(name):
    return tomllib.loads((EXPERIMENTS / f"{name}.toml").read_text())


def _trials(name, preset):
    """The grid's trials as dicts (base, preset base, Cartesian product of the axes), without RunConfig."""
    raw = _read(name)
    base, axes = dict(raw["base"]), dict(raw["axes"])
    if preset != "full":
        base.update(raw["presets"][preset].get("base", {}))
        axes.update(raw["presets"][preset].get("axes", {}))
    keys = list(axes)
    return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*(axes[k] for k in keys))]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", GRIDS)
def test_every_objectives_trial_builds(name, preset):
    seen = set()
    for tr in _trials(name, preset):
        c = cfg(**{k: tr[k] for k in ("schedule", "timesteps", "zero_terminal_snr", "prediction", "weighting",
                                       "min_snr_gamma", "p2_k", "p2_gamma", "noise") if k in tr})
        build(c)  # would raise InputError (exit 2) for e.g. eps + zero terminal SNR
        seen.add((c.prediction, c.weighting, c.zero_terminal_snr))
    want = {"full": itertools.product(("eps", "x0", "v"), ("none", "min_snr", "p2")),
            "quick": itertools.product(("eps", "v"), ("none", "min_snr")),
            "smoke": itertools.product(("eps", "x0", "v"), ("min_snr",))}[preset]
    if name == "objectives":
        assert {(p, w) for p, w, _ in seen} == set(want)
    else:
        assert {zt for _, _, zt in seen} == {False, True} and {p for p, _, _ in seen} == {"v"}


@pytest.mark.parametrize("name", GRIDS)
def test_objectives_quick_preset_has_the_schedules_quick_budget(name):
    """Copied from experiments/schedules.toml's quick preset (which fits a 2-core CPU in ~30 min):
    the same per-trial budget and evaluation, and no more trials."""
    ref = _read("schedules")["presets"]["quick"]["base"]
    mine = _read(name)["presets"]["quick"]["base"]
    for k in ("model", "train_steps", "batch_size", "lr", "evals", "n_samples", "metrics", "n_reference", "image_seeds",
              "eval_at", "curve_metrics"):
        assert mine[k] == ref[k], k
    assert len(_trials(name, "quick")) <= len(_trials("schedules", "quick"))
    smoke = _trials(name, "smoke")
    assert all(t["dataset"] == "synthetic" and t["train_steps"] <= 20 and t["timesteps"] <= 100 for t in smoke)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", GRIDS)
def test_objectives_grid_loads_through_bench_grid(name, preset):
    """Through the real grid loader and config validation, once RunConfig has the objective fields."""
    from bench.experiment.config import RunConfig

    assert "prediction" in RunConfig.__dataclass_fields__
    from bench.experiment.grid import load_grid

    grid = load_grid(name, preset)
    trials = grid.trials()
    assert trials
    import bench.experiment.config as C
    for c in trials:
        C.validate(c)
