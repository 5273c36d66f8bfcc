"""Trial identity: stable across added fields, equal to every committed run's ids."""

import dataclasses
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from bench.experiment.config import ID_FIELDS_V1, RunConfig, config_from_row, trial_id

RESULTS = Path(__file__).resolve().parent.parent / "results"
COMMITTED = sorted(RESULTS.rglob("rows.csv"))

# A RunConfig with one more defaulted field, as docs/extending.md's recipe for a new parameter adds one.
Extended = dataclasses.make_dataclass("Extended", [("new_param", Optional[float], dataclasses.field(default=None)),
                                                   ("new_flag", bool, dataclasses.field(default=False))],
                                      bases=(RunConfig,), frozen=True)


def test_committed_runs_exist():
    assert len(COMMITTED) >= 4, COMMITTED


@pytest.mark.parametrize("rows_csv", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS).parent))
def test_committed_trial_ids_survive_a_new_defaulted_field(rows_csv):
    rows = pd.read_csv(rows_csv, dtype={"trial_id": str})
    assert len(rows)
    for row in rows.drop_duplicates("trial_id").to_dict("records"):
        assert trial_id(config_from_row(row)) == row["trial_id"]
        assert trial_id(config_from_row(row, Extended)) == row["trial_id"]


def test_a_new_field_enters_the_id_only_when_set():
    base = Extended()
    assert trial_id(base) == trial_id(RunConfig())
    assert trial_id(dataclasses.replace(base, new_param=0.5)) != trial_id(base)
    assert trial_id(dataclasses.replace(base, new_flag=True)) != trial_id(base)


def test_fields_since_the_first_release_leave_the_default_id_alone():
    # Anchor: the id of the default config as computed by the first release (commit 2508968).
    assert trial_id(RunConfig()) == _v1_id(RunConfig())
    later = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ID_FIELDS_V1]
    assert later, "the objective fields were added after the first release"
    assert trial_id(RunConfig().replace(prediction="v")) != trial_id(RunConfig())


def _v1_id(cfg) -> str:
    """The first release's trial_id, written out: sha1 of the JSON of the v1 fields."""
    import hashlib
    import json

    d = {k: getattr(cfg, k) for k in ID_FIELDS_V1}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def test_ls_config_has_a_phrase_per_field_and_names_the_components_of_each_parameter():
    from bench.experiment.config import COMPONENT_PARAMS, describe_fields

    rows = {name: (tp, default, phrase) for name, tp, default, _, phrase in describe_fields()}
    assert set(rows) == {f.name for f in dataclasses.fields(RunConfig)}
    assert all(len(phrase) > 10 for _, _, phrase in rows.values())
    assert rows["tau"][2].startswith("parameter of schedule sigmoid (default 1);")
    assert "schedule linear (default 0.0001)" in rows["beta_start"][2] and "schedule scaled_linear (default 0.00085)" in rows["beta_start"][2]
    assert "noise gamma (default 0.001)" in rows["theta_0"][2]
    assert "weighting min_snr (default 5)" in rows["min_snr_gamma"][2]
    assert "corruption blur (default 20)" in rows["sigma_blur_max"][2]
    assert all(rows[k][2].startswith("parameter of ") and "parameter of ;" not in rows[k][2] for k in COMPONENT_PARAMS)


def test_a_row_written_before_a_field_existed_reads_as_its_default():
    """A run resumed across a release mixes rows without a new column (NaN there after pandas) and
    rows with it: the old rows must keep their config, hence their trial id."""
    import math

    from bench.experiment.config import config_from_row

    cfg = RunConfig(schedule="cosine", image_seeds="per_seed", eval_at="0.5")
    row = {**cfg.to_dict(), "skip_start": math.nan, "reuse_training": math.nan, "corruption": math.nan,
           "prediction": math.nan, "data_root": math.nan, "cosine_s": math.nan}
    back = config_from_row(row)
    assert back == cfg and trial_id(back) == trial_id(cfg)


def test_trial_labels_name_the_fields_that_vary_within_an_arm():
    """Progress lines of the budget grid tell its 8 trials apart (all one arm, one seed); a grid whose
    arms differ only by their axes keeps the short name."""
    from bench.experiment.grid import load_grid
    from bench.experiment.labels import trial_labels

    budget = load_grid("budget").trials()
    labels = trial_labels(budget)
    assert len(set(labels.values())) == len(budget) == 8
    assert labels[trial_id(budget[0])] == "cosine / gaussian / v, none [model=tiny, batch_size=32, lr=0.001] | mnist | seed 0"
    quick = load_grid("schedules", "quick").trials()
    assert trial_labels(quick)[trial_id(quick[0])] == "linear / gaussian | mnist | seed 0"


def test_progress_lines_the_report_and_reference_ranks_name_arms_alike():
    """One rule (bench.experiment.labels): a formulation grid's progress lines use SD3's names of the vp arms, and
    the labels computed from the grid's trials are the committed quick run's labels, computed from its rows.csv."""
    from bench.experiment.grid import load_grid
    from bench.experiment.labels import arm_labels_of, trial_labels
    from bench.report.tables import load_run

    quick = load_grid("formulations", "quick").trials()
    assert trial_labels(quick)[trial_id(quick[0])] == "eps/ddpm-linear | mnist | seed 0"
    planned = arm_labels_of([{**c.to_dict(), "arm": c.arm()} for c in quick])
    run = load_run(Path(__file__).resolve().parents[1] / "results" / "formulations" / "quick-20261207-113002")
    assert list(dict.fromkeys(planned)) == run.labels


SOLVER_OPTIONS = ("spacing", "rho", "solver_sigma_max", "s_churn", "s_tmin", "s_tmax", "s_noise")


def test_every_field_declares_exactly_one_role_and_the_derived_lists_are_the_historical_ones():
    """Issue 30: a field's role is declared once (bench.experiment.config.role); the lists that were written by hand
    in four modules are derived from it, and must stay what they were, or committed runs would resume,
    adopt and label differently."""
    from bench.experiment.config import NOT_IN_LABEL, ROLES, SAMPLER_OPTION, describe_fields, fields_with, undeclared_roles
    from bench.sampling.sample import SAMPLERS
    from bench.training import trained
    from bench.training.train import NOT_TRAINING_FIELDS

    assert undeclared_roles() == []
    roles = {f.name: f.metadata["role"] for f in dataclasses.fields(RunConfig)}
    assert sum(len(fields_with(r)) for r in ROLES) == len(roles)  # exactly one each
    assert NOT_TRAINING_FIELDS == {"train_steps", "checkpoint_every", "data_root", "evals", "n_samples", "ddim_eta",
                                   "var_type", "metrics", "sample_seed", "n_reference", "image_seeds", "skip_start",
                                   "eval_at", "curve_metrics", "reuse_training",
                                   "sample_shift",  # issue 33: euler's grid shift, a sampler option like ddim_eta
                                   *SOLVER_OPTIONS}  # issue 34: the grid and heun's churn
    assert trained.EVAL_ONLY == NOT_TRAINING_FIELDS - {"train_steps"}
    assert trained.CURVE_FIELDS == {"n_samples", "sample_seed", "image_seeds", "n_reference", "ddim_eta", "var_type",
                                    "skip_start", "sample_shift", *SOLVER_OPTIONS}
    assert NOT_IN_LABEL == {"seed", "dataset", "data_root", "sample_seed"}
    assert fields_with(SAMPLER_OPTION) == {o for _, s in SAMPLERS.items() for o in s.options}  # what samplers declare
    assert {name: role for name, _, _, role, _ in describe_fields()} == roles  # bench ls config shows them


def test_a_field_without_a_role_is_caught():
    @dataclasses.dataclass(frozen=True)
    class Later(RunConfig):
        new_knob: int = 0  # declared without role(): no metadata

    from bench.experiment.config import role, undeclared_roles

    assert undeclared_roles(Later) == ["new_knob"]

    with pytest.raises(ValueError, match="unknown field role"):
        role("trainz", 0)
