"""The data side of a report: a run directory loaded as a ``Run``, metrics aggregated over seeds, and
the results tables (``tables/<metric>.csv|md|tex``).

A table has one row per arm and one column per evaluation (``sampler:steps``), one block per
dataset, plus the real-vs-real floor. A cell is mean ± std over the seeds that finished (n); the
best mean of a column is marked (bold in Markdown / LaTeX, a ``best`` flag in CSV): the lowest or the
highest, as the metric's contract (``bench.scoring.metrics.METRICS``, ``higher_is_better``) says. A floor
states its own n; "at this sample size" only where it equals the arms' n.

Final rows only: a grid with ``eval_at`` adds learning-curve rows (``train_step`` below the end of
training) to rows.csv; ``Run.rows`` holds the final evaluations alone (``final_mask``), which every
table, comparison, plot and sentence reads, and ``Run.curve`` the learning-curve rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.experiment.config import RunConfig, fill_defaults
from bench.experiment.labels import arm_labels_of
from bench.experiment.rundir import read_rows
from bench.report import kept
from bench.sampling.sample import SAMPLERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYS = ["dataset", "label", "sampler", "sample_steps"]
FLOOR_LABEL = "real vs real (floor)"


@dataclass
class Run:
    """Everything a report is built from: the run dir's rows.csv, floors.csv, grid.toml, env.json.

    ``rows`` is given every row of rows.csv (plus ``label``, the arm with any other varying axis
    appended) and keeps only the final evaluations (``final_rows``); ``all_rows`` keeps them all and
    ``curve`` the learning-curve rows (``curve_rows``: evaluations before the end of training)."""

    dir: Path
    rows: pd.DataFrame
    floors: pd.DataFrame | None
    grid: dict[str, Any]
    env: dict[str, Any]
    all_rows: pd.DataFrame = field(init=False, repr=False)
    curve: pd.DataFrame = field(init=False, repr=False)
    cache: dict = field(init=False, repr=False, default_factory=dict)  # per-image arrays, bootstrap results
    derived: dict = field(default_factory=dict, repr=False)  # derived.json as found (bench.report.kept)
    fresh: dict = field(init=False, repr=False, default_factory=dict)  # what this build derived from artifacts

    def __post_init__(self) -> None:
        self.all_rows = self.rows
        final = final_mask(self.rows)
        self.rows, self.curve = self.rows[final], self.rows[~final]

    @property
    def id(self) -> str:
        return self.dir.resolve().name

    @property
    def name(self) -> str:
        return str(self.grid.get("name") or self.dir.resolve().parent.name)

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(self.rows["label"]))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.rows["dataset"]))

    @property
    def evals(self) -> list[tuple[str, int]]:
        """(sampler, steps) in order: samplers as they first appear, steps ascending."""
        ev = self.rows.loc[self.rows["sampler"].notna() & (self.rows["sampler"] != ""), ["sampler", "sample_steps"]]
        order = {s: i for i, s in enumerate(dict.fromkeys(ev["sampler"]))}
        pairs = {(str(s), int(n)) for s, n in ev.itertuples(index=False)}
        return sorted(pairs, key=lambda p: (order[p[0]], p[1]))

    @property
    def metrics(self) -> list[str]:
        """Metric names listed in the rows' ``metrics`` field that have a column (first listed = primary)."""
        listed = [m.strip() for ms in self.rows["metrics"].dropna() for m in str(ms).split(",") if m.strip()]
        return [m for m in dict.fromkeys(listed) if m in self.rows.columns]

    def trials(self) -> pd.DataFrame:
        """One row per trial (its first evaluation row)."""
        return self.rows.drop_duplicates("trial_id")

    def adopted_trials(self) -> pd.DataFrame:
        """The trials whose model came from another trial's work dir (``trained_in`` set: adopted or continued,
        ``reuse_training``); none where the rows predate the column. Empty cells read back as NaN."""
        trials = self.trials()
        if "trained_in" not in trials.columns:
            return trials.iloc[0:0]
        return trials[[isinstance(x, str) and x != "" for x in trials["trained_in"]]]


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)

    rows = with_nfe(fill_defaults(read_rows(run_dir)))  # the rule of config_from_row, for the whole table
    rows["label"] = arm_labels(rows)
    floors_path = run_dir / "floors.csv"
    floors = pd.read_csv(floors_path) if floors_path.exists() and floors_path.stat().st_size else None
    grid_path, env_path = run_dir / "grid.toml", run_dir / "env.json"
    grid = tomllib.loads(grid_path.read_text()) if grid_path.exists() else {}
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    return Run(run_dir, rows, floors, grid, env, kept.load(run_dir))


def with_nfe(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``nfe`` (model evaluations) on every evaluation row: rows written before the column
    existed get steps x evaluations per step, exact for the samplers of that time (1 a step: ddpm, ddim,
    cold, euler, dpmpp_2m); a sampler whose count depends on the process (heun) always wrote its own."""
    rows = rows.copy()
    nfe = pd.to_numeric(rows["nfe"], errors="coerce") if "nfe" in rows.columns else pd.Series(np.nan, index=rows.index)
    per_step = rows.get("sampler", pd.Series(np.nan, index=rows.index)).map(
        lambda n: SAMPLERS.get(n).evals_per_step if n in SAMPLERS and SAMPLERS.get(n).nfe_of is None else np.nan)
    steps = pd.to_numeric(rows.get("sample_steps", pd.Series(np.nan, index=rows.index)), errors="coerce")
    nfe = nfe.fillna(steps * per_step.astype(float))
    rows["nfe"] = nfe.astype("Int64")
    return rows


def final_mask(rows: pd.DataFrame) -> pd.Series:
    """True for a trial's final evaluation rows, False for its learning-curve rows.

    A row is final when it has no ``train_step`` (runs without learning curves; error rows) or its
    ``train_step`` reached the end of training: ``train_steps_done`` where recorded (a diverged trial
    stops early and is evaluated there), else ``train_steps``. Of rows that tie for one trial and
    evaluation (a curve point at the very step training stopped), the last is final."""
    if "train_step" not in rows.columns:
        return pd.Series(True, index=rows.index)
    step = pd.to_numeric(rows["train_step"], errors="coerce")
    end = pd.Series(np.nan, index=rows.index)
    for col in ("train_steps", "train_steps_done"):  # the later one wins where both are known
        if col in rows.columns:
            v = pd.to_numeric(rows[col], errors="coerce")
            end = v.where(v.notna(), end)
    final = step.isna() | end.isna() | (step >= end)
    keys = [c for c in ("trial_id", "sampler", "sample_steps") if c in rows.columns]
    if keys:
        dup = rows[final].duplicated(keys, keep="last")
        final &= ~dup.reindex(rows.index, fill_value=False)
    return final


def final_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The final evaluation rows of rows.csv (``final_mask``): what every table and comparison reads."""
    return rows[final_mask(rows)]


def curve_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve rows of rows.csv: evaluations before the end of training (``final_mask``)."""
    return rows[~final_mask(rows)]


def arm_labels(rows: pd.DataFrame) -> pd.Series:
    """The ``arm`` column as the report names it (``bench.experiment.labels.arm_labels_of``: SD3's names in a
    formulation run, ``[k=v, ...]`` for any other field that varies within an (arm, dataset) pair)."""
    present = ["arm", "dataset", *(f.name for f in dataclasses.fields(RunConfig) if f.name in rows.columns and f.name != "dataset")]
    return pd.Series(arm_labels_of(rows[present].to_dict("records")), index=rows.index, dtype=object).astype(str)


def _plain(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --- small text helpers ---------------------------------------------------------------------------------
def values(run: Run, col: str, rows: pd.DataFrame | None = None) -> str:
    """The distinct values of a column as text ('64' or '64, 128'); '?' if absent."""
    df = run.rows if rows is None else rows
    if col not in df.columns:
        return "?"
    vals = [int(v) if isinstance(v, float) and v.is_integer() else v for v in df[col].dropna()]
    return ", ".join(str(v) for v in dict.fromkeys(vals)) or "?"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "none"


# --- the metric contract ---------------------------------------------------------------------------
def higher_is_better(metric: str) -> bool:
    """The registered direction of ``metric`` (``bench.scoring.metrics.METRICS``)."""
    from bench.scoring.metrics import METRICS

    if metric in METRICS:
        return bool(METRICS.get(metric).higher_is_better)
    # A name not registered (a metric retired since an old run was made) is read as lower is better:
    # every metric of the suite was a distance before metrics declared their direction.
    return False


def metric_obj(metric: str):
    """The registered ``bench.scoring.metrics.Metric`` of ``metric``, or None (a name retired since the run)."""
    from bench.scoring.metrics import METRICS

    return METRICS.find(metric)


def is_fd_infinity(metric: str) -> bool:
    """A registered FD-infinity (Chong & Forsyth 2020) variant of a Fréchet distance (declared ``extrapolated``)."""
    m = metric_obj(metric)
    return m is not None and m.extrapolated


def direction(metric: str) -> str:
    """'higher is better' or 'lower is better', as ``higher_is_better`` reads the metric."""
    return "higher is better" if higher_is_better(metric) else "lower is better"


# --- aggregation ---------------------------------------------------------------------------------
def aggregate(run: Run, metric: str) -> pd.DataFrame:
    """Per (dataset, label, sampler, sample_steps): mean, std (ddof 1), n (seeds with a value),
    trials, diverged, error, and ``best`` (the best mean of its dataset and evaluation: the lowest, or
    the highest for a higher-is-better metric)."""
    df = run.rows[run.rows["sampler"].notna() & (run.rows["sampler"] != "")].copy()
    df["sample_steps"] = df["sample_steps"].astype(int)
    vals = pd.to_numeric(df[metric], errors="coerce") if metric in df.columns else pd.Series(np.nan, index=df.index)
    df["_v"] = vals.where(df["status"] == "ok")
    df["_div"], df["_err"] = df["status"] == "diverged", df["status"] == "error"
    out = df.groupby(KEYS, sort=False).agg(mean=("_v", "mean"), std=("_v", "std"), n=("_v", "count"),
                                           trials=("_v", "size"), diverged=("_div", "sum"), error=("_err", "sum"))
    out = out.reset_index()
    best = out.groupby(["dataset", "sampler", "sample_steps"])["mean"].transform(
        "max" if higher_is_better(metric) else "min")
    out["best"] = (out["n"] > 0) & np.isclose(out["mean"], best, rtol=1e-12, atol=0)
    return out


def floor_row(run: Run, metric: str, dataset: str) -> pd.Series | None:
    """The floors.csv row of ``dataset`` with a value of ``metric``, at the run's image size and
    n_samples where such a row exists; None if no floor was recorded."""
    f = run.floors
    if f is None or metric not in f.columns or "dataset" not in f.columns:
        return None
    f = f[(f["dataset"] == dataset) & pd.to_numeric(f[metric], errors="coerce").notna()]
    rows = run.rows[run.rows["dataset"] == dataset]
    for col in ("image_size", "n_samples"):
        if col in f.columns and col in rows.columns and len(rows) and len(f[f[col] == rows[col].mode().iloc[0]]):
            f = f[f[col] == rows[col].mode().iloc[0]]
    return f.iloc[0] if len(f) else None


def floor_value(run: Run, metric: str, dataset: str) -> float | None:
    """The real-vs-real value of ``metric`` for ``dataset`` (``floor_row``), if recorded."""
    r = floor_row(run, metric, dataset)
    return None if r is None else float(r[metric])


def floor_n(run: Run, metric: str, dataset: str) -> int | None:
    """The number of real images that stood in for generated ones in the floor of ``metric`` on
    ``dataset`` (floors.csv ``<metric>_n_real``, or ``n_generated`` in runs from before it: held-out
    images, fewer than asked where the held-out split is smaller); None if unknown."""
    r = floor_row(run, metric, dataset)
    col = next((c for c in (f"{metric}_n_real", "n_generated") if r is not None and c in r.index and pd.notna(r[c])), None)
    n = None if col is None else pd.to_numeric(r[col], errors="coerce")
    return None if n is None or not np.isfinite(n) else int(n)


def floor_is_train(run: Run, metric: str) -> bool:
    """Whether the floor of ``metric`` scored training images against a held-out reference
    (``Metric.floor_split``: metrics whose reference is the held-out split, as sharpness_gap) rather
    than held-out images against the training reference; from floors.csv, so a run reads as it ran."""
    col = f"{metric}_floor_split"
    return run.floors is not None and col in run.floors.columns and "train" in set(run.floors[col].dropna())


HELDOUT_FLOOR = "held-out vs training images"  # floor_words of a floor of held-out images against the training reference


def floor_words(run: Run, metric: str) -> str:
    """What the floor row of ``metric`` compares, for captions and the method."""
    if floor_is_train(run, metric):
        return "training images scored as the samples are, against the held-out images"
    m = metric_obj(metric)
    if m is not None and m.needs_heldout:  # the stand-ins are the metric's own held-out comparison (memorization)
        return f"{HELDOUT_FLOOR} (the held-out images are also this metric's held-out comparison: its value by definition)"
    return HELDOUT_FLOOR


def arm_n(run: Run, metric: str, dataset: str) -> list[int]:
    """The distinct numbers of generated images the arms' values of ``metric`` on ``dataset`` are from."""
    if metric not in run.rows.columns:
        return []
    rows = run.rows[(run.rows["dataset"] == dataset) & pd.to_numeric(run.rows[metric], errors="coerce").notna()]
    col = "n_generated" if "n_generated" in rows.columns else "n_samples"
    vals = pd.to_numeric(rows[col], errors="coerce").dropna() if col in rows.columns else pd.Series(dtype=float)
    return sorted({int(v) for v in vals})


def floor_phrase(run: Run, metric: str, dataset: str) -> str | None:
    """How the floor of ``metric`` on ``dataset`` relates to the arms' sample size, e.g. "floor at this
    sample size (n = 200)" where the floor's n equals the arms' n_generated, else "floor at n = 45
    (arms at n = 64)"; None without a floor."""
    if floor_value(run, metric, dataset) is None:
        return None
    fn, an = floor_n(run, metric, dataset), arm_n(run, metric, dataset)
    arms = ", ".join(map(str, an)) or "not recorded"
    if fn is not None and an == [fn]:
        return f"floor at this sample size (n = {fn})"
    return f"floor at n = {fn if fn is not None else 'not recorded'} (arms at n = {arms})"


def metric_meta(run: Run, metric: str) -> dict[str, str]:
    """Feature extractor, n_generated and n_reference of ``metric`` (from the rows that have a value),
    and floor_n, the number of real images per side of its real-vs-real floor."""

    def values(frame: pd.DataFrame | None, col: str) -> str:
        if frame is None or col not in frame.columns or metric not in frame.columns:
            return "not recorded"
        vals = frame.loc[pd.to_numeric(frame[metric], errors="coerce").notna(), col].dropna().tolist()
        vals = [_plain(int(v)) if isinstance(v, float) and v.is_integer() else _plain(v) for v in vals]
        return ", ".join(dict.fromkeys(vals)) or "not recorded"

    gen = "n_generated" if "n_generated" in run.rows.columns else "n_samples"
    return {"features": values(run.rows, f"{metric}_features"), "n_generated": values(run.rows, gen),
            "n_reference": values(run.rows, f"{metric}_n_ref"),
            "floor_n": values(run.floors, f"{metric}_n_real" if run.floors is not None and f"{metric}_n_real" in
                              run.floors.columns else "n_generated")}


def decimals(values) -> int:
    """Decimals giving the typical |value| three significant digits, at least 2."""
    v = np.abs(np.asarray([x for x in values if x is not None and np.isfinite(x) and x != 0], dtype=float))
    return 2 if not len(v) else max(2, 2 - math.floor(math.log10(float(np.median(v)))))


def cell_text(r, d: int) -> str:
    """'11.00 ± 1.41' (n >= 2), '7.00' (n = 1), '—' (no value)."""
    if r["n"] == 0:
        return "—"
    return f"{r['mean']:.{d}f}" + (f" ± {r['std']:.{d}f}" if r["n"] > 1 else "")


def cell_note(r) -> str:
    """'(n=2)', or '(n=1 of 2; 1 diverged)', or '(diverged)' when no seed finished."""
    lost = ", ".join(f"{int(r[k])} {k}" for k in ("diverged", "error") if r[k])
    if r["n"] == 0:
        return f"({lost})" if lost else ""
    return f"(n={r['n']})" if r["n"] == r["trials"] else f"(n={r['n']} of {r['trials']}" + (f"; {lost})" if lost else ")")


# --- the three formats ----------------------------------------------------------------------------
def caption(run: Run, metric: str) -> str:
    m = metric_meta(run, metric)
    floors = [(ds, floor_phrase(run, metric, ds)) for ds in run.datasets]
    floors = [f"{ds}: {ph}" for ds, ph in floors if ph]
    real = "training" if floor_is_train(run, metric) else "held-out"
    floor = (f" the floor row is real vs real: {floor_words(run, metric)}, {m['floor_n']} {real} images; "
             f"{'; '.join(floors)}." if floors else " no real-vs-real floor was recorded (floors.csv).")
    best = "highest" if higher_is_better(metric) else "lowest"
    return (f"{metric} ({direction(metric)}). Feature extractor: {m['features']}. n_generated = {m['n_generated']} "
            f"images per evaluation; n_reference = {m['n_reference']} real images. Cells: mean ± std over seeds "
            f"(n = seeds that finished); best ({best} mean) per column in bold;{floor}")


def table_frame(run: Run, metric: str) -> pd.DataFrame:
    """The CSV form: metric, features, n_generated, n_reference, dataset, arm, row (arm|floor), then per
    evaluation E = sampler:steps: E_mean, E_std, E_n, E_best (the floor has E_mean only)."""
    agg = aggregate(run, metric).set_index(KEYS)
    meta = {"metric": metric, **metric_meta(run, metric)}
    out = []
    for ds in run.datasets:
        for label in labels_of(run, ds):
            rec = {**meta, "dataset": ds, "arm": label, "row": "arm"}
            for s, k in run.evals:
                r = agg.loc[(ds, label, s, k)] if (ds, label, s, k) in agg.index else None
                rec.update({f"{s}:{k}_{c}": (r[c] if r is not None else np.nan) for c in ("mean", "std", "n", "best")})
            out.append(rec)
        fv = floor_value(run, metric, ds)
        if fv is not None:
            out.append({**meta, "dataset": ds, "arm": FLOOR_LABEL, "row": "floor",
                        **{f"{s}:{k}_mean": fv for s, k in run.evals}})
    df = pd.DataFrame(out)
    for s, k in run.evals:  # counts as integers, flags as booleans (pandas would make both float)
        df[f"{s}:{k}_n"] = df[f"{s}:{k}_n"].astype("Int64")
        df[f"{s}:{k}_best"] = df[f"{s}:{k}_best"].astype("boolean")
    return df


def datasets_with(run: Run, metric: str) -> list[str]:
    """The datasets on which ``metric`` has at least one value."""
    vals = pd.to_numeric(run.rows[metric], errors="coerce") if metric in run.rows.columns else None
    return [] if vals is None else list(dict.fromkeys(run.rows.loc[vals.notna(), "dataset"]))


def labels_of(run: Run, dataset: str) -> list[str]:
    """The arms that ran on ``dataset``, in grid order."""
    return list(dict.fromkeys(run.rows.loc[run.rows["dataset"] == dataset, "label"]))


Cell = tuple[str, str, bool]  # (value text, note, best)


def table_cells(run: Run, metric: str) -> dict[str, list[tuple[str, list[Cell]]]]:
    """Per dataset: [(row label, [(text, note, best) per evaluation])], arms first, then the floor."""
    agg = aggregate(run, metric).set_index(KEYS)
    d = decimals(agg["mean"].tolist() + [floor_value(run, metric, ds) for ds in run.datasets])
    out: dict[str, list[tuple[str, list[Cell]]]] = {}
    for ds in run.datasets:
        body = out.setdefault(ds, [])
        for label in labels_of(run, ds):
            keys = [(ds, label, s, k) for s, k in run.evals]
            body.append((label, [(cell_text(agg.loc[key], d), cell_note(agg.loc[key]), bool(agg.loc[key, "best"]))
                                 if key in agg.index else ("", "", False) for key in keys]))
        fv = floor_value(run, metric, ds)
        if fv is not None:
            body.append((FLOOR_LABEL, [(f"{fv:.{d}f}", "", False)] * len(run.evals)))
    return out


def to_markdown(run: Run, metric: str) -> str:
    cols = [f"{s}:{k}" for s, k in run.evals]
    lines = [f"*{md_escape(caption(run, metric))}*", ""]
    for ds, body in table_cells(run, metric).items():
        lines += [f"**Dataset: {md_escape(ds)}**", "", "| arm | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for label, cells in body:
            texts = [f"**{t}** {n}".strip() if best else f"{t} {n}".strip() for t, n, best in cells]
            lines.append("| " + " | ".join(md_escape(x) for x in [label, *texts]) + " |")
        lines.append("")
    return "\n".join(lines)


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
               "—": "---", "<": r"\textless{}", ">": r"\textgreater{}"}


def tex_escape(text: str) -> str:
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(run: Run, metric: str) -> str:
    """A booktabs ``table``: samplers as column groups, one block per dataset, the floor last in each."""
    groups = [(s, [k for s2, k in run.evals if s2 == s]) for s in dict.fromkeys(s for s, _ in run.evals)]
    ncol = 1 + len(run.evals)
    head = " & ".join([""] + [rf"\multicolumn{{{len(ks)}}}{{c}}{{{tex_escape(s)}}}" for s, ks in groups])
    rules, start = "", 2
    for _, ks in groups:
        rules += rf"\cmidrule(lr){{{start}-{start + len(ks) - 1}}}"
        start += len(ks)
    lines = [rf"% {tex_escape(metric)} --- generated by bench.report from rows.csv; do not edit",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(caption(run, metric))}}}",
             rf"\label{{tab:{_tex_key(run.name)}-{_tex_key(metric)}}}",
             rf"\begin{{tabular}}{{l{'r' * len(run.evals)}}}", r"\toprule", head + r" \\", rules,
             " & ".join(["Arm"] + [f"{k} steps" for _, ks in groups for k in ks]) + r" \\"]
    for ds, body in table_cells(run, metric).items():
        lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{tex_escape(ds)}}}}} \\"]
        for label, cells in body:
            texts = [(rf"\textbf{{{tex_escape(t)}}} " if best else tex_escape(t) + " ") + tex_escape(n)
                     for t, n, best in cells]
            lines.append(" & ".join([tex_escape(label)] + [x.strip() for x in texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _tex_key(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in str(text))


def write_tables(run: Run, out_dir: Path) -> dict[str, dict[str, Path]]:
    """tables/<metric>.csv|md|tex for every metric; returns {metric: {format: path}}."""
    from bench.files import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for m in run.metrics:
        paths = {ext: out_dir / f"{m}.{ext}" for ext in ("csv", "md", "tex")}
        write_text_atomic(paths["csv"], table_frame(run, m).to_csv(index=False))
        write_text_atomic(paths["md"], to_markdown(run, m))
        write_text_atomic(paths["tex"], to_latex(run, m))
        written[m] = paths
    return written
