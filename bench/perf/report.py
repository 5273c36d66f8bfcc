"""``bench perf`` output: perf.csv (one row per measured case), perf.md (tables), env.json, train.png.

Each Markdown table states its unit and shows every rate as ``median (min-max, n=reps)``, so a
reader sees how many repetitions a number rests on and how much it moved between them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench.env import git_info
from bench.files import write_text_atomic

HEADINGS = {
    "ceiling": ("Ceiling: dense matmul", "GFLOP/s of one n x n matmul (2 n^3 FLOP); the best repetition is the roofline "
                "for the fraction-of-ceiling column."),
    "train": ("Training step", "images/s of one optimizer step (data, noise, forward, backward, clip, AdamW, EMA). "
              "GFLOP/image counts convolutions, matmuls and attention of forward + backward. The ratio is bench / "
              "diffusers images/s, taken per repetition (the two alternate, back to back)."),
    "sample": ("Sampling", "image-steps/s (images x sampler steps per second) of bench.sampling.sample with per-image seeds; "
               "'vs forward' = that rate / the bare model forward at the same batch (1.0 = no sampler overhead)."),
    "features": ("Feature extraction (scoring)", "images/s, uint8 images in, features out, at the batch scoring uses. "
                 "Inception runs in channels_last; the NCHW rows are torchmetrics' default layout, and their ratio is "
                 "channels_last / NCHW per repetition."),
    "packing": ("Concurrent trials on one device", "aggregate training images/s of k processes training at once; "
                "'vs 1' = / the first layout."),
    "time_to_fd": ("Wall time to a fixed FD", "seconds of training (the trials' train_seconds, without evaluations) "
                   "until each arm's learning curve first reaches the baseline arm's score at two points of its "
                   "training, interpolated linearly between curve points: median (min-max, n = seeds that reached "
                   "it); speed-up = baseline seconds / arm seconds per training seed (paired), median (min-max). "
                   "Training images/s = images / train_seconds at the end, as the run packed its trials. The same "
                   "in optimizer steps: where the arms cost the same per step, read the steps (the seconds add "
                   "how the runner packed the trials on the cores)."),
    "fanout": ("Grid fan-out: smoke grid (2 trials), Ray Tune vs --local", "seconds; ratio = / the --local run's sum of "
               "its trials' wall times (what the trials cost without any runner)."),
}


def fmt(x: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant figures (thousands separated), '' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, str):
        return x
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    dec = max(0, digits - 1 - mag)
    return f"{x:,.{dec}f}"


def rate(row: dict, lo: str = "lo", hi: str = "hi", med: str = "median") -> str:
    """'median (lo-hi, n=reps)'."""
    n = int(row.get("reps") or 0)
    if n <= 1:
        return f"{fmt(row[med])} (n={n})"
    return f"{fmt(row[med])} ({fmt(row[lo])}-{fmt(row[hi])}, n={n})"


def ratio(row: dict) -> str:
    if pd.isna(row.get("ratio")):
        return ""
    if pd.isna(row.get("ratio_lo")):
        return f"{row['ratio']:.2f}x"
    return f"**{row['ratio']:.2f}x** ({row['ratio_lo']:.2f}-{row['ratio_hi']:.2f})"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def train_table(df: pd.DataFrame) -> list[str]:
    lines = []
    bench = df[df["impl"] == "bench"]
    for _, b in bench.iterrows():
        peer = df[(df["impl"] == "diffusers") & (df["model"] == b["model"]) & (df["image_size"] == b["image_size"])
                  & (df["channels"] == b["channels"])]
        p = peer.iloc[0].to_dict() if len(peer) else None
        lines.append([f"{b['model']}", f"{int(b['params']):,}", f"{int(b['channels'])}x{int(b['image_size'])}²",
                      f"{int(b['batch'])}", rate(b), fmt(b["gflop_per_image"]), fmt(b["achieved_gflops"]),
                      f"{100 * b['ceiling_fraction']:.1f} %" if pd.notna(b["ceiling_fraction"]) else "",
                      rate(p) if p else f"— ({b['note']})" if isinstance(b.get("note"), str) else "—",
                      ratio(p) if p else ""])
    return _table(["model", "params", "image", "batch", "bench images/s", "GFLOP/image", "achieved GFLOP/s",
                   "of ceiling", "diffusers images/s", "bench / diffusers"], lines)


def time_to_fd_table(df: pd.DataFrame) -> list[str]:
    """Arm | training images/s | per target: seconds, and the speed-up baseline / arm paired by seed.

    A time marked <= rests on a seed that was at the target at its first curve point (so that time is
    an upper bound and the speed-up a lower bound, marked >=)."""
    arms = list(dict.fromkeys(df["arm"]))
    goals = list(dict.fromkeys(df.loc[df["metric"] == "training seconds", "target_of"]))
    units = [u for u in ("training seconds", "training steps") if (df["metric"] == u).any()]  # steps: since issue 36
    score = df["score"].iloc[0]
    head = ["arm", "training images/s"] + [c for u in units for g in goals for c in (
        f"{u.split()[-1]} to {score} <= the baseline's at {g} (mean {fmt(df.loc[df['target_of'] == g, 'target'].iloc[0])})",
        "speed-up (paired seeds)")]
    lines = []
    for arm in arms:
        sub = df[df["arm"] == arm]
        line = [arm, rate(sub[sub["metric"] == "images/s"].iloc[0])]
        for u, g in ((u, g) for u in units for g in goals):
            r = sub[(sub["metric"] == u) & (sub["target_of"] == g)].iloc[0]
            mark = "<= " if r["bounds"] else ""
            line.append(f"not reached ({r['note']})" if not r["reps"]
                        else mark + rate(r) + ("" if r["reps"] == r["seeds"] and not r["bounds"] else f" — {r['note']}"))
            spread = "" if r["ratio_lo"] == r["ratio_hi"] else f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}, "
            line.append("" if pd.isna(r["ratio"]) else
                        f"{'>= ' if r['bounds'] else ''}**{r['ratio']:.2f}x** ({spread}n={int(r['paired'])})")
        lines.append(line)
    return _table(head, lines)


def generic_table(df: pd.DataFrame, section: str) -> list[str]:
    unit = df["metric"].iloc[0]
    has_ratio = df["ratio"].notna().any() if "ratio" in df else False
    label = {"sample": "vs forward", "packing": "vs 1", "fanout": "ratio", "features": "channels_last / NCHW"}.get(section, "ratio")
    header = ["case", unit] + ([label] if has_ratio else []) + (["note"] if "note" in df and df["note"].notna().any() else [])
    lines = []
    for _, r in df.iterrows():
        line = [r["case"], rate(r)]
        if has_ratio:
            line.append(f"{r['ratio']:.2f}" if pd.notna(r.get("ratio")) else "")
        if len(header) > len(line):
            line.append(r["note"] if isinstance(r.get("note"), str) else "")
        lines.append(line)
    return _table(header, lines)


def environment(ctx, sections: list[str], wall_s: float) -> dict[str, Any]:
    import platform
    import sys
    from importlib import metadata

    import torch

    from bench.env import cpu_model

    versions = {}
    for pkg in ("bench", "torch", "diffusers", "ray", "torchmetrics"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else f"cpu: {cpu_model()}",
        "cpu_count": __import__("os").cpu_count(), "torch_threads": ctx.threads, "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}", "versions": versions, "git": git_info(),
        "sections": sections, "quick": ctx.quick, "reps": ctx.reps, "wall_s": round(wall_s, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": ctx.notes,
    }


def command_options(ctx, sections: list[str]) -> str:
    """The options of the ``bench perf`` command that measured this (to repeat it)."""
    from bench.perf.sections import ORDER

    opts = " --quick" if ctx.quick else ""
    opts += "" if set(sections) >= set(ORDER) - {"time_to_fd"} else f" --only {','.join(sections)}"
    return opts + (f" --from-run {ctx.from_run}" if ctx.from_run else "")


def write_outputs(target: Path, rows: list[dict[str, Any]], ctx, sections: list[str], wall_s: float) -> None:
    df = pd.DataFrame(rows)
    env = environment(ctx, sections, wall_s)
    write_text_atomic(target / "perf.csv", df.to_csv(index=False))
    write_text_atomic(target / "env.json", json.dumps(env, indent=1))
    git = env["git"]
    command = f"`python -m bench perf{command_options(ctx, sections)}` on {env['finished'][:10]}"
    if sections == ["time_to_fd"]:  # nothing measured here: the numbers are the run's own
        md = [f"# bench perf — time to a fixed FD in run `{Path(ctx.from_run).resolve().name}`", "",
              f"Read by {command} (commit {git.get('commit', '?')[:7]}{' (dirty)' if git.get('dirty') else ''}) from "
              f"the run's learning curves: the times are the run's trials' own, on the machine the notes name; "
              f"every number is over the run's training seeds (n = seeds).", ""]
    else:
        md = [f"# bench perf — {env['device']}", "",
              f"Measured by {command}: "
              f"{env['device']}, {env['cpu_count']} CPU cores, {ctx.threads} torch threads, torch {env['versions']['torch']}, "
              f"diffusers {env['versions']['diffusers'] or '(not installed)'}, commit {git.get('commit', '?')[:7]}"
              f"{' (dirty)' if git.get('dirty') else ''}; {wall_s / 60:.1f} min in all. Every rate is the median over "
              f"repetitions, with min-max and the number of repetitions; compared cases alternate within a repetition.", ""]
    for section in [s for s in sections if len(df) and s in set(df["section"])]:
        title, what = HEADINGS.get(section, (section, ""))
        part = df[df["section"] == section]
        md += [f"## {title}", "", what, ""]
        md += train_table(part) if section == "train" else time_to_fd_table(part) if section == "time_to_fd" \
            else generic_table(part, section)
        md += [""]
    if ctx.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in ctx.notes] + [""]
    write_text_atomic(target / "perf.md", "\n".join(md))
    if len(df) and "train" in set(df["section"]):
        plot_train(df[df["section"] == "train"], target / "train.png")
    for name, write in ctx.figures.items():
        write(target / name)


def plot_train(df: pd.DataFrame, path: Path) -> None:
    """Training images/s per preset and image shape, bench vs diffusers, with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.assign(shape=[f"{int(c)}x{int(s)}²" for c, s in zip(df["channels"], df["image_size"])])
    shapes, models = list(dict.fromkeys(df["shape"])), list(dict.fromkeys(df["model"]))
    impls = list(dict.fromkeys(df["impl"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1, 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for j, impl in enumerate(impls):
            sub = df[(df["model"] == model) & (df["impl"] == impl)].set_index("shape")
            xs = [i + (j - (len(impls) - 1) / 2) * 0.38 for i, s in enumerate(shapes) if s in sub.index]
            ys = [sub.loc[s, "median"] for s in shapes if s in sub.index]
            err = [[sub.loc[s, "median"] - sub.loc[s, "lo"] for s in shapes if s in sub.index],
                   [sub.loc[s, "hi"] - sub.loc[s, "median"] for s in shapes if s in sub.index]]
            ax.bar(xs, ys, width=0.38, yerr=err, capsize=2, label=impl, hatch="" if j == 0 else "//",
                   color=("#4c72b0", "#dd8452", "#55a868")[j % 3])
        ax.set_xticks(range(len(shapes)), shapes)
        ax.set_title(f"{model} ({int(df[df['model'] == model]['params'].iloc[0]) / 1e6:.1f}M params)", fontsize=9)
        ax.set_ylabel("training images/s")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("training throughput (median, min-max bars; batch per preset as in perf.md)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
