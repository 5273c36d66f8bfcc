"""Nothing silently merged or reinterpreted (issue 31): duplicate axis values or arms, a claim that
compares a cell with itself, --resume of a directory that does not exist, the resume hint of a grid
given by path, and the mode of a run's files. Each is one line and exit 2 before work (or a correct
hint)."""

import stat
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.experiment.claims import parse_claims
from bench.experiment.grid import load_grid
from bench.files import write_text_atomic
from bench.registry import InputError
from bench.run.plan import plan_grid

ROOT = Path(__file__).resolve().parent.parent
GRID = '''name = "mine"
[base]
dataset = "synthetic"
train_steps = 2
[axes]
schedule = ["linear", "cosine"]
'''


def grid_file(tmp_path, text=GRID) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("bench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("text, message", [
    (GRID.replace('["linear", "cosine"]', '["linear", "cosine", "linear"]'), "axis schedule lists 'linear' more than once"),
    (GRID + '[[arms]]\nprediction = "v"\n[[arms]]\nprediction = "eps"\n[[arms]]\nprediction = "v"\n',
     "[[arms]] number 3 repeats number 1"),
])
def test_repeats_are_refused_not_merged(tmp_path, capsys, text, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(str(grid_file(tmp_path, text)))
    assert main(["run", "--grid", str(grid_file(tmp_path, text)), "--local", "--dry-run", "--out", str(tmp_path / "r")]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("better, than", [
    ({"schedule": "cosine"}, {"schedule": "cosine"}),
    ([{"schedule": "cosine"}, {"schedule": "cosine"}], [{"schedule": "linear"}, {"schedule": "sigmoid"}]),
])
def test_a_claim_that_compares_a_cell_with_itself_is_refused(better, than):
    with pytest.raises(InputError, match="compares a cell with itself"):
        parse_claims([{"claim": "c", "source": "s", "metric": "fd_pixels", "better": better, "than": than}], "grid x")


def test_resume_of_a_directory_that_does_not_exist_is_refused(tmp_path, capsys):
    """Before: a mistyped --out with --resume silently started a fresh run."""
    code = main(["run", "--grid", str(grid_file(tmp_path)), "--local", "--dry-run", "--out", str(tmp_path / "typo"), "--resume"])
    assert code == 2 and "nothing to resume" in one_error_line(capsys)
    assert not (tmp_path / "typo").exists()


def test_the_resume_hint_of_a_grid_given_by_path_names_the_path(tmp_path):
    """Before: it named the grid ('mine'), and that command failed with 'unknown grid'."""
    path = grid_file(tmp_path)
    plan = plan_grid(str(path), "full", None, tmp_path / "run")
    assert f"--grid {path.resolve()} " in plan.resume_command()
    assert "--grid noise " in plan_grid("noise", "smoke", None, tmp_path / "run2").resume_command()


def test_run_files_get_the_ordinary_mode(tmp_path):
    """Before: rows.csv, REPORT.md and env.json were 0600 (mkstemp's mode); now what the umask gives
    (0644 under the usual 022)."""
    from bench.files import current_umask

    path = write_text_atomic(tmp_path / "REPORT.md", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask() != 0o600


@pytest.mark.parametrize("setting, part", [("image_size=100000", "activations"), ("timesteps=4000000000", "schedule")])
def test_a_config_that_cannot_fit_in_memory_is_refused_before_anything_allocates(tmp_path, capsys, monkeypatch, setting, part):
    """Before: image_size=100000 was an allocator traceback (rc 1); a huge timesteps grew a dry run to
    22 GB until it was killed (rc 137, no message)."""
    import resource

    from bench.run import resources

    monkeypatch.setattr(resources, "physical_memory", lambda: 16 * 2**30)  # the same refusal on a 1 TB server
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # and on a GPU host (activations would not count)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = main(["run", "--grid", "noise", "--preset", "smoke", "--local", "--dry-run", "--set", setting, "--out", str(tmp_path / "r")])
    line = one_error_line(capsys)
    assert code == 2 and "of memory, mostly " + part in line and "this machine has" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000  # KiB: nothing large was allocated


def test_the_memory_bound_of_the_committed_grids_fits_a_small_machine():
    """Every preset of every grid file fits 8 GiB by the estimate, the GPU-scale full presets included
    (the bound refuses only what cannot run); on a GPU the activations do not count against the host."""
    from bench.experiment.grid import grid_names, preset_names
    from bench.run.resources import check_memory, trial_bytes

    for name in grid_names():
        for preset in preset_names(name):
            check_memory(load_grid(name, preset).trials(), available=8 * 2**30, on_gpu=False)
    mnist = load_grid("schedules", "quick").trials()[0]
    assert trial_bytes(mnist)["training images"] == 2 * 60_000 * 28 * 28 * 4
    huge = load_grid("noise", "smoke", {"image_size": 100_000}).trials()
    with pytest.raises(InputError, match="mostly training images"):
        check_memory(huge, available=8 * 2**30, on_gpu=True)


def test_a_preset_a_custom_grid_lacks_names_the_presets_it_has(tmp_path, capsys):
    """Before: the refusal listed smoke among the known presets, then refused --preset smoke."""
    code = main(["run", "--grid", str(grid_file(tmp_path)), "--preset", "smoke", "--dry-run", "--local", "--out", str(tmp_path / "r")])
    line = one_error_line(capsys)
    assert code == 2 and "grid has no [presets.smoke]; its presets: full" in line and "quick" not in line
