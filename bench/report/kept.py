"""What a committed run keeps of the per-trial artifacts its report is drawn from (issue 32: a
repository that can be cloned and sent to an accelerator).

A run directory holds each trial's artifacts besides rows.csv: sample grids and denoising strips
(``samples/``), loss logs (``logs/``) and per-image features (``per_image/``): most of a run's bytes.
A committed run keeps none of them. It keeps what the report derived from them instead: the figures
(``plots/*.png``) and, in ``derived.json``, the numbers (the two-level bootstrap intervals and the
brightness intervals) and each figure's caption. ``bench report`` recomputes every one of them where
the artifacts are present and records them again; where they are absent (a fresh clone) it reuses
what ``derived.json`` and ``plots/`` hold, so the clone rebuilds the same REPORT.md and tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bench.files import write_text_atomic
from bench.style import Plot

DERIVED = "derived.json"
ARTIFACTS = ("samples", "logs", "per_image")  # the folders of per-trial artifacts a committed run leaves out


def load(run_dir: Path) -> dict[str, Any]:
    """derived.json of ``run_dir`` ({} where there is none or it cannot be read: everything is recomputed)."""
    try:
        return json.loads((Path(run_dir) / DERIVED).read_text())
    except (OSError, ValueError):
        return {}


def present(run, kind: str) -> bool:
    """Whether this checkout has the run's artifacts of ``kind`` (one of ``ARTIFACTS``)."""
    folder = run.dir / kind
    return folder.is_dir() and any(folder.iterdir())


def number(run, kind: str, key: list, compute: Callable[[], Any]) -> Any:
    """``compute()`` where the artifacts of ``kind`` are present (recorded for derived.json), else the
    value derived.json recorded under ``key`` (``compute()`` where it recorded none). The value must
    survive JSON as it is (lists, dicts, numbers, NaN, text)."""
    k = json.dumps(key, default=str)
    if present(run, kind):
        run.fresh[k] = compute()
        run.fresh[f"had:{kind}"] = True
        return run.fresh[k]
    return run.derived[k] if k in run.derived else compute()


def had(run, kind: str) -> bool:
    """Whether the run had artifacts of ``kind`` when its report was derived (here now, or recorded)."""
    return present(run, kind) or bool(run.derived.get(f"had:{kind}"))


def figure(run, kind: str, png: Path) -> Plot | None:
    """The committed figure ``png`` with its recorded caption where the artifacts of ``kind`` it is
    drawn from are absent; None where they are present (draw it) or nothing was kept (the figure's
    own code then says what is missing)."""
    caption = run.derived.get(f"figure:{Path(png).name}")
    if present(run, kind) or caption is None or not Path(png).exists():
        return None
    return Plot(Path(png), caption)


def notes(run, found: list[str]) -> list[str]:
    """The report's notes on missing inputs: ``found`` (this build's), and where an artifact kind is
    absent, also those recorded when the figures reused from plots/ were drawn (they were not drawn now)."""
    if all(present(run, kind) for kind in ARTIFACTS):
        return found
    return list(dict.fromkeys([*run.derived.get("notes", []), *found]))


def write(run, plots: list[Plot], found_notes: list[str]) -> None:
    """derived.json: what was recorded before, updated with this build's numbers, captions and notes."""
    out = {**run.derived, **run.fresh, **{f"figure:{p.png.name}": p.caption for p in plots},
           **{f"had:{kind}": True for kind in ARTIFACTS if present(run, kind)}, "notes": found_notes}
    write_text_atomic(run.dir / DERIVED, json.dumps(out, indent=1, sort_keys=True) + "\n")
