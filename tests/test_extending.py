"""docs/extending.md's recipes for a sampler option and a metric, applied word for word to a copy of
the package and run end to end (issue 30, item 7): a smoke grid trains with the new option and
scores the new metric; a reusing probe with another option value adopts that model without
training; a reusing probe that draws a learning curve does not adopt the curve drawn with the other
value. The doc cannot drift from the code: the code blocks this test applies are the doc's own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
RECIPE = re.compile(r"<!-- recipe: (?:append to (?P<append>\S+)|in (?P<into>\S+), after the line that declares (?P<after>\w+)) -->"
                    r"\s*```python\n(?P<code>.*?)```", re.S)

TRAINING = """
model = "tiny"
dataset = "synthetic"
schedule = "linear"
timesteps = 100
train_steps = 20
batch_size = 16
warmup_steps = 5
ema_decay = 0.9
checkpoint_every = 10
evals = "ddim_dimmed:5"
n_samples = 16
metrics = "fd_pixels,mean_intensity"
seed = 0
"""


def recipes() -> list[re.Match]:
    found = list(RECIPE.finditer(DOC.read_text()))
    assert len(found) == 3, "docs/extending.md: the sampler option (2 blocks) and the metric (1 block)"
    return found


def apply(recipe: re.Match, repo: Path) -> None:
    """One recipe block, applied as the doc says: appended to a file, or inserted after a field's line."""
    code = recipe["code"]
    if recipe["append"]:
        path = repo / recipe["append"]
        path.write_text(path.read_text() + "\n\n" + code)
        return
    path = repo / recipe["into"]
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if re.match(rf"\s+{recipe['after']}\s*:", line))
    while lines[at].count("(") > lines[at].count(")"):  # a declaration over several lines
        at += 1
    path.write_text("".join(lines[:at + 1]) + code + "".join(lines[at + 1:]))


def grid(path: Path, extra: str) -> Path:
    path.write_text(f'name = "{path.stem}"\ndescription = "docs/extending.md end to end"\n[base]\n{TRAINING}{extra}')
    return path


def run(repo: Path, grid_file: Path, out: Path, env: dict) -> pd.DataFrame:
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", str(grid_file), "--local", "--out", str(out)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "REPORT.md").exists()
    return pd.read_csv(out / "rows.csv")


def test_the_recipes_name_what_they_touch():
    files = {r["append"] or r["into"] for r in recipes()}
    assert files == {"bench/sampling/chain.py", "bench/experiment/config.py", "bench/scoring/metrics.py"}
    assert all((ROOT / f).exists() for f in files)


@pytest.mark.slow(reason="three smoke grids in subprocesses on a copy of the package: ~1.5 min on 2 cores")
def test_a_new_sampler_option_and_metric_work_end_to_end(tmp_path):
    repo = tmp_path / "repo"
    for part in ("bench", "experiments"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    for recipe in recipes():
        apply(recipe, repo)
    env = {**os.environ, "PYTHONPATH": str(repo), "BENCH_CACHE": str(tmp_path / "cache"), "BENCH_TRAINED": str(tmp_path / "trained")}
    env.pop("BENCH_DRIVER_CWD", None)

    # 1. trains with brightness 1, a learning-curve point at step 10, the new metric scored
    base = run(repo, grid(tmp_path / "base.toml", 'eval_at = "10"\n'), tmp_path / "base", env)
    assert (base["status"] == "ok").all() and set(base["sampler"]) == {"ddim_dimmed"}
    final = base[base["train_step"] == 20].iloc[0]
    curve = base[base["train_step"] == 10].iloc[0]
    assert 0.05 < final["mean_intensity"] < 1 and final["mean_intensity_ref"] > 0

    # 2. a probe at brightness 0.5 adopts that model (the option is not a training field) ...
    probe = run(repo, grid(tmp_path / "probe.toml", "reuse_training = true\nbrightness = 0.5\n"), tmp_path / "probe", env)
    row = probe.iloc[0]
    assert row["status"] == "ok" and isinstance(row["trained_in"], str) and "base" in row["trained_in"]
    # ... and samples the same images at half the intensity (the same weights and image seeds; uint8 rounding)
    assert row["mean_intensity"] == pytest.approx(0.5 * final["mean_intensity"], abs=2 / 255)

    # 3. a probe that draws a curve at brightness 0.5 must not adopt the curve drawn at 1: it trains
    curved = run(repo, grid(tmp_path / "curved.toml", 'reuse_training = true\nbrightness = 0.5\neval_at = "10"\n'),
                 tmp_path / "curved", env)
    assert not isinstance(curved["trained_in"].iloc[0], str)  # empty: trained here
    point = curved[curved["train_step"] == 10].iloc[0]
    assert point["brightness"] == 0.5
    assert point["mean_intensity"] == pytest.approx(0.5 * curve["mean_intensity"], abs=2 / 255)
