"""Command line: ``python -m bench ls | run | report | plot-schedules | sample | perf``.

Exit codes: 0 all trials finished (a diverged trial is a result), 1 some trial raised (the rest
still ran, the report is still written), 2 bad input found before any work (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.registry import InputError, did_you_mean


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list registered schedules, noises, samplers, datasets, models, metrics, grids, config")
    ls.add_argument("kind", nargs="?", help="one of: " + ", ".join(LISTERS))
    ls.set_defaults(func=cmd_ls)

    run = sub.add_parser("run", help="train, sample and score every trial of a grid")
    run.add_argument("--grid", required=True, help="grid name (experiments/NAME.toml) or path to a .toml")
    run.add_argument("--preset", default="full", help="full (as written, GPU scale) | quick (2-core CPU) | smoke (seconds)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    run.add_argument("--out", type=Path, help="run directory (default results/GRID/PRESET-TIMESTAMP)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out (default: the latest of this grid+preset)")
    run.add_argument("--dry-run", action="store_true", help="validate every trial, print the plan and an estimate, stop")
    run.add_argument("--local", action="store_true", help="run trials in this process, one after another (no Ray)")
    run.add_argument("--address", help="connect to an existing Ray cluster (e.g. 127.0.0.1:6379) instead of starting one")
    run.add_argument("--cpus-per-trial", type=float, default=None,
                     help="CPU cores (and torch threads) per trial (default: 1 under Ray; all with --local)")
    run.add_argument("--gpus-per-trial", type=float, default=None, help="fractions pack trials on one GPU (default 1 if CUDA, else 0)")
    run.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rebuild tables, plots and REPORT.md of a run from its rows.csv")
    rep.add_argument("run_dir", type=Path)
    rep.set_defaults(func=cmd_report)

    ps = sub.add_parser("plot-schedules", help="alpha_bar(t), log-SNR(t), beta(t) of every schedule")
    ps.add_argument("--out", type=Path, default=Path("schedules.png"))
    ps.add_argument("-T", "--timesteps", type=int, default=1000)
    ps.add_argument("--schedules", nargs="*", help="default: every registered schedule")
    ps.set_defaults(func=cmd_plot_schedules)

    sa = sub.add_parser("sample", help="sample a PNG grid from a trained trial's checkpoint")
    sa.add_argument("checkpoint", type=Path, help="a trial work dir (or its checkpoints/*.pt)")
    sa.add_argument("--sampler", default="ddim")
    sa.add_argument("--steps", type=int, default=50)
    sa.add_argument("-n", type=int, default=64)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", type=Path, default=Path("samples.png"))
    sa.set_defaults(func=cmd_sample)

    pf = sub.add_parser("perf", help="measure throughput (train vs diffusers, sample, features, packing, fan-out) "
                                     "and write results/perf/DEVICE/")
    pf.add_argument("--out", type=Path, default=Path("results/perf"), help="writes OUT/DEVICE/ (default results/perf)")
    pf.add_argument("--quick", action="store_true", help="smallest cases, 2 repetitions (a smoke check, seconds)")
    pf.add_argument("--only", help="comma-separated sections: ceiling, train, sample, features, packing, fanout")
    pf.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    pf.add_argument("--reps", type=int, help="repetitions per case (default 5; 2 with --quick)")
    pf.set_defaults(func=cmd_perf)
    return p


# --- ls ----------------------------------------------------------------------------------------
def _registry_lister(module: str, attr: str):
    def lister():
        import importlib

        reg = getattr(importlib.import_module(module), attr)
        for name, obj in reg.items():
            doc = getattr(obj, "description", None) or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            print(f"  {name:<16} {doc}")

    return lister


def _list_grids():
    from bench.grid import grid_names, load_grid

    for name in grid_names():
        g = load_grid(name)
        print(f"  {name:<16} {len(g.trials())} trials (full); {g.description}")


def _list_config():
    from bench.config import describe_fields

    for name, tp, default in describe_fields():
        print(f"  {name:<18} {tp:<6} default {default!r}")


LISTERS = {
    "schedules": _registry_lister("bench.schedules", "SCHEDULES"),
    "noises": _registry_lister("bench.noise", "NOISES"),
    "samplers": _registry_lister("bench.sample", "SAMPLERS"),
    "predictions": _registry_lister("bench.diffusion", "PREDICTIONS"),
    "weightings": _registry_lister("bench.diffusion", "WEIGHTINGS"),
    "datasets": _registry_lister("bench.data", "DATASETS"),
    "models": _registry_lister("bench.unet", "MODELS"),
    "metrics": _registry_lister("bench.metrics", "METRICS"),
    "grids": _list_grids,
    "config": _list_config,
}


def cmd_ls(args) -> int:
    kinds = [args.kind] if args.kind else list(LISTERS)
    for kind in kinds:
        if kind not in LISTERS:
            raise InputError(f"unknown kind {kind!r}: {did_you_mean(kind, LISTERS)}known: {', '.join(LISTERS)}")
        print(f"{kind}:")
        LISTERS[kind]()
    return 0


# --- run ---------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from bench.config import parse_set
    from bench.dryrun import check_data, print_plan
    from bench.runner import Fanout, plan_grid, run_grid

    fanout = Fanout(args.local, args.address, args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent)
    fanout.check()
    plan = plan_grid(args.grid, args.preset, parse_set(args.set), args.out, args.resume)
    check_data(plan.trials)
    if args.dry_run:
        print_plan(plan.grid, plan.trials, plan.run_dir)
        return 0
    rows = run_grid(plan, fanout)
    return 1 if any(r["status"] == "error" for r in rows) else 0


# --- the rest ----------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from bench.report import build_report

    build_report(args.run_dir)
    print(args.run_dir / "REPORT.md")
    return 0


def cmd_plot_schedules(args) -> int:
    from bench.report import plot_schedules
    from bench.schedules import SCHEDULES

    names = args.schedules or SCHEDULES.names()
    for n in names:
        SCHEDULES.get(n)
    plot_schedules(names, args.timesteps, args.out)
    print(args.out)
    return 0


def cmd_sample(args) -> int:
    from bench.trial import sample_from_workdir

    sample_from_workdir(args.checkpoint, args.sampler, args.steps, args.n, args.seed, args.out)
    print(args.out)
    return 0


def cmd_perf(args) -> int:
    from bench.perf import run_perf

    target = run_perf(args.out, quick=args.quick, only=args.only, device=args.device, reps=args.reps)
    print(target / "perf.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
