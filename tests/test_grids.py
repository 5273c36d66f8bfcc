"""Every grid file under experiments/, in every preset it defines: it loads, its parameters apply,
and every trial validates before any work (a generated test: a new grid file is picked up)."""

import pytest

from bench import claims
from bench.grid import check_params_apply, grid_names, load_grid, preset_names, validate_trials
from bench.runner import check_late_failures


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
    # every claim is measurable in the full grid as written (strict); the quick preset is the one the
    # committed runs use, so it must measure every claim too
    kept = claims.check(grid.claims, trials, name, strict=preset == "full")
    if preset in ("full", "quick"):
        assert kept == grid.claims, (name, preset)


def test_probe_grids_train_as_the_schedules_grid_so_its_models_are_adopted():
    """The probes are evaluation-only: each preset's trials have the training key of a schedules-grid
    trial of the same preset (bench.trained), so a machine that ran that grid trains nothing again."""
    from bench.trained import train_key

    for probe in ("probe_sampler_steps", "probe_skip_start"):
        for preset in ("full", "quick"):
            schedules = {train_key(c) for c in load_grid("schedules", preset).trials()}
            trials = load_grid(probe, preset).trials()
            assert all(c.reuse_training and not c.eval_at for c in trials)
            assert {train_key(c) for c in trials} <= schedules, (probe, preset)


def test_the_standard_noise_grids_gaussian_arm_adopts_the_standard_schedules_models_and_curves():
    """Its Gaussian trials have the training key and the curve key of the schedules grid's standard
    cosine trials (bench.trained), so where that run is on the machine they train nothing again."""
    from bench.trained import curve_key, train_key

    schedules = {(train_key(c), curve_key(c)) for c in load_grid("schedules", "standard").trials()}
    noise = load_grid("noise", "standard").trials()
    gaussian = [c for c in noise if c.noise == "gaussian"]
    assert len(gaussian) == 5 and all(c.reuse_training for c in noise)
    assert {(train_key(c), curve_key(c)) for c in gaussian} <= schedules
