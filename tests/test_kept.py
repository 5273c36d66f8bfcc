"""What a committed run keeps of its per-trial artifacts (bench.report.kept): numbers and notes
derived where the artifacts are, reused where they are not."""

import math
from types import SimpleNamespace

from bench.report import kept
from bench.style import Plot


def run_at(tmp_path, derived=None, artifacts=()):
    for kind in artifacts:
        (tmp_path / kind).mkdir(parents=True, exist_ok=True)
        (tmp_path / kind / "x").write_text("1")
    return SimpleNamespace(dir=tmp_path, derived=derived or {}, fresh={})


def test_a_number_is_computed_and_recorded_where_the_artifacts_are_and_reused_where_not(tmp_path):
    here = run_at(tmp_path, artifacts=["per_image"])
    assert kept.number(here, "per_image", ["boot", "fd", ["ddim", 10]], lambda: [1.5, math.nan]) == [1.5, math.nan]
    kept.write(here, [Plot(tmp_path / "plots" / "a.png", "a caption")], ["a note"])
    clone = run_at(tmp_path / "clone", derived=kept.load(tmp_path))
    (tmp_path / "clone" / "plots").mkdir(parents=True)
    (tmp_path / "clone" / "plots" / "a.png").write_bytes(b"png")
    got = kept.number(clone, "per_image", ["boot", "fd", ["ddim", 10]], lambda: "recomputed")
    assert got[0] == 1.5 and math.isnan(got[1])  # NaN survives JSON
    assert kept.number(clone, "per_image", ["boot", "other"], lambda: "recomputed") == "recomputed"
    assert kept.had(clone, "per_image") and not kept.had(clone, "logs")
    assert kept.figure(clone, "samples", tmp_path / "clone" / "plots" / "a.png").caption == "a caption"
    assert kept.figure(here, "per_image", tmp_path / "plots" / "a.png") is None  # artifacts here: draw it
    assert kept.notes(clone, ["new"]) == ["a note", "new"]  # notes of figures not drawn now are kept
    assert kept.notes(run_at(tmp_path / "all", artifacts=kept.ARTIFACTS), ["new"]) == ["new"]
