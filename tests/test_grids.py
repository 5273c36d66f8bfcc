"""Every grid file under experiments/, in every preset it defines: it loads, its parameters apply,
and every trial validates before any work (a generated test: a new grid file is picked up)."""

import re

import pytest

from bench.experiment import claims
from bench.experiment.grid import check_params_apply, grid_names, load_grid, preset_names, validate_trials
from bench.run.checks import check_late_failures


def _cases():
    for name in grid_names():
        for preset in preset_names(name):
            yield name, preset


@pytest.mark.parametrize("name,preset", list(_cases()))
def test_grid_preset_validates(name, preset):
    grid = load_grid(name, preset)
    trials = grid.trials()
    assert trials, (name, preset)
    check_params_apply(grid, trials)
    validate_trials(trials)
    check_late_failures(trials)
    assert len({t.arm() for t in trials}) >= 1
    # every claim is measurable in the full grid as written (strict); the CPU presets narrow the
    # evaluations on purpose, so a claim need only be measured by one of them (next test)
    kept = claims.check(grid.claims, trials, name, strict=preset == "full")
    if preset == "full":
        assert kept == grid.claims, (name, preset)


@pytest.mark.parametrize("name", grid_names())
def test_every_claim_is_measured_by_a_cpu_preset(name):
    """A claim no CPU preset can measure would never get a verdict on this project's machines: each claim
    picks one score per seed in at least one of the presets a committed run uses (quick, standard, or a
    grid's own variant of them; not smoke, not gpu)."""
    presets = [p for p in preset_names(name) if p not in ("full", "smoke", "gpu")]
    measured = set()
    for preset in presets:
        grid = load_grid(name, preset)
        measured |= {c.claim for c in claims.check(grid.claims, grid.trials(), name, strict=False)}
    assert measured == {c.claim for c in load_grid(name).claims}, name  # no CPU preset: no claims either


def test_probe_grids_train_as_the_schedules_grid_so_its_models_are_adopted():
    """The probes are evaluation-only: each preset's trials have the training key of a schedules-grid
    trial of the same preset (bench.training.trained), so a machine that ran that grid trains nothing again."""
    from bench.training.trained import train_key

    for probe in ("probe_sampler_steps", "probe_skip_start"):
        for preset in {"full", "quick", "standard"} & set(preset_names(probe)):
            schedules = {train_key(c) for c in load_grid("schedules", preset).trials()}
            trials = load_grid(probe, preset).trials()
            assert all(c.reuse_training and not c.eval_at for c in trials)
            assert {train_key(c) for c in trials} <= schedules, (probe, preset)


def test_the_formulations_ode_preset_evaluates_the_standard_models():
    """standard_ode samples the standard formulation models again with a near-converged ODE solver: every one
    of its trials has the training key of a standard trial, so where that run is on the machine it trains nothing."""
    from bench.training.trained import train_key

    standard = {train_key(c) for c in load_grid("formulations", "standard").trials()}
    ode = load_grid("formulations", "standard_ode").trials()
    assert len(ode) == len(standard) == 55 and all(c.reuse_training and not c.eval_at for c in ode)
    assert {train_key(c) for c in ode} == standard


def test_the_standard_noise_grids_gaussian_arm_adopts_the_standard_schedules_models_and_curves():
    """Its Gaussian trials have the training key and the curve key of the schedules grid's standard
    cosine trials (bench.training.trained), so where that run is on the machine they train nothing again."""
    from bench.training.trained import curve_key, train_key

    schedules = {(train_key(c), curve_key(c)) for c in load_grid("schedules", "standard").trials()}
    noise = load_grid("noise", "standard").trials()
    gaussian = [c for c in noise if c.noise == "gaussian"]
    assert len(gaussian) == 5 and all(c.reuse_training for c in noise)
    assert {(train_key(c), curve_key(c)) for c in gaussian} <= schedules


# --- [[arms]]: arms that differ in several fields at once ----------------------------------------------
ARMS_GRID = '''name = "armed"
[base]
dataset = "synthetic"
schedule = "cosine"
train_steps = 10
[axes]
seed = [0, 1]
[[arms]]
schedule = "linear"
[[arms]]
schedule = "sigmoid"
prediction = "v"
[presets.one.base]
prediction = "x0"
[[presets.one.arms]]
schedule = "exponential"
'''


def _armed(tmp_path, text=ARMS_GRID):
    path = tmp_path / "armed.toml"
    path.write_text(text)
    return path


def test_arms_are_crossed_with_the_axes_in_file_order(tmp_path):
    grid = load_grid(str(_armed(tmp_path)))
    got = [(c.schedule, c.prediction, c.seed, c.train_steps) for c in grid.trials()]
    assert got == [("linear", "eps", 0, 10), ("linear", "eps", 1, 10), ("sigmoid", "v", 0, 10), ("sigmoid", "v", 1, 10)]
    assert grid.varied() == ["seed", "schedule", "prediction"]  # every arm sets schedule: [base]'s cosine runs nowhere
    # grid.toml (what a run records) makes the same trials, and the report's reading of it too
    from bench.experiment.config import trial_id
    from bench.experiment.grid import grid_of_record, read_toml

    recorded = _write(tmp_path, grid.to_toml())
    again, record = load_grid(str(recorded)), grid_of_record(read_toml(recorded))
    ids = [trial_id(c) for c in grid.trials()]
    assert [trial_id(c) for c in again.trials()] == ids == [trial_id(c) for c in record.trials()]


def _write(tmp_path, text):
    path = tmp_path / "recorded.toml"
    path.write_text(text)
    return path


def test_arms_in_presets_and_set(tmp_path):
    one = load_grid(str(_armed(tmp_path)), "one")  # the preset's arms replace the file's; its base applies to them
    assert [(c.schedule, c.prediction, c.seed) for c in one.trials()] == [("exponential", "x0", 0), ("exponential", "x0", 1)]
    assert any("sets the arms" in n for n in one.notes)
    fixed = load_grid(str(_armed(tmp_path)), overrides={"prediction": "x0"})  # --set fixes an arm field for every arm
    assert [(c.schedule, c.prediction) for c in fixed.trials()] == [("linear", "x0")] * 2 + [("sigmoid", "x0")] * 2
    # --set of every arm field leaves no arm: grid.toml must not hold an empty [[arms]] (it would not load again)
    both = load_grid(str(_armed(tmp_path)), overrides={"prediction": "x0", "schedule": "cosine"})
    assert both.arms == [] and len(both.trials()) == 2 and "[[arms]]" not in both.to_toml()
    # a [base] value stays for the arms that do not set the field
    kept = load_grid(str(_armed(tmp_path, ARMS_GRID.replace('train_steps = 10', 'train_steps = 10\nprediction = "x0"'))))
    assert [c.prediction for c in kept.trials()] == ["x0", "x0", "v", "v"]


@pytest.mark.parametrize("text,message", [
    (ARMS_GRID.replace('[[arms]]\nschedule = "linear"', '[[arms]]\nseed = 3'), "seed is both an axis and a field of [[arms]]"),
    (ARMS_GRID.replace('prediction = "v"', 'prediction = 2'), "prediction must be str"),
    (ARMS_GRID.replace('prediction = "v"', 'predicton = "v"'), "unknown config key 'predicton'"),
    ('name = "x"\narms = [1]\n', "[[arms]] must be one or more tables of fields"),
    (ARMS_GRID.replace('[[presets.one.arms]]\nschedule = "exponential"', '[[presets.one.arms]]\nprediction = "v"'),
     "[presets.one] sets prediction both in its base and in its arms"),
])
def test_bad_arms_are_one_clear_error(tmp_path, text, message):
    from bench.registry import InputError

    with pytest.raises(InputError, match=re.escape(message)):
        load_grid(str(_armed(tmp_path, text)), "one" if "presets.one] sets" in message else "full")


def test_tune_points_resolve_to_their_trials(tmp_path):
    """run_ray's search space: every pending trial is a point that, whatever Tune draws for the fields
    it leaves out, resolves to that trial (arms fields included; gaussian's theta_0 left out)."""
    from bench.experiment.config import from_dict, trial_id
    from bench.run.fanout import search_space

    # two arms of one schedule, one with a parameter at its default (None): Tune must not draw the other's
    defaults = _armed(tmp_path, ARMS_GRID.replace('schedule = "linear"', 'schedule = "linear"\nbeta_end = 0.03')
                      .replace('schedule = "sigmoid"\nprediction = "v"', 'schedule = "linear"\nprediction = "v"'))
    for grid in (load_grid(str(_armed(tmp_path))), load_grid("noise", "quick"), load_grid(str(defaults))):
        trials = grid.trials()
        base, choices, points = search_space(grid, trials, trials[1:])
        assert len(points) == len(trials) - 1 and all(set(p) == set(grid.varied()) for p in points)
        for cfg, point in zip(trials[1:], points):
            assert all(point[k] in choices[k] for k in point)  # Tune warns about a preset value outside its domain
            assert trial_id(from_dict({**base, **point}).canonical()) == trial_id(cfg)
        assert len({trial_id(from_dict({**base, **p}).canonical()) for p in points}) == len(points)
