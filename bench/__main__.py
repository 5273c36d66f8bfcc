"""Command line: ``python -m bench ls | run | report | plot-schedules | sample | perf``.

Exit codes: 0 all trials finished (a diverged trial is a result), 1 some trial raised (the rest
still ran, the report is still written), 2 bad input found before any work (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.registry import InputError


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
            import difflib

            close = difflib.get_close_matches(kind, LISTERS, n=1)
            raise InputError(f"unknown kind {kind!r}: {'did you mean ' + close[0] + '? ' if close else ''}known: {', '.join(LISTERS)}")
        print(f"{kind}:")
        LISTERS[kind]()
    return 0


# --- run ---------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from bench import rundir
    from bench.config import parse_set
    from bench.grid import load_grid, validate_trials
    from bench.plan import check_data, print_plan

    if (args.cpus_per_trial is not None and args.cpus_per_trial <= 0) or (args.gpus_per_trial is not None and args.gpus_per_trial < 0):
        raise InputError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise InputError("--max-concurrent must be >= 1")
    if args.local and args.address:
        raise InputError("--local runs in this process; it cannot be combined with --address")
    grid = load_grid(args.grid, args.preset, parse_set(args.set))
    trials = grid.trials()
    validate_trials(trials)
    run_dir = args.out or (rundir.latest_run_dir(grid) if args.resume else None) or rundir.default_run_dir(grid)
    rundir.check(run_dir, grid, args.resume)
    check_data(trials)
    if args.dry_run:
        print_plan(grid, trials, run_dir)
        return 0
    return execute(args, grid, trials, run_dir)


def execute(args, grid, trials, run_dir: Path) -> int:
    import torch

    from bench import rundir, tune

    rundir.prepare(run_dir, grid)
    t0 = time.time()
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if torch.cuda.is_available() else 0.0)
    cpus = args.cpus_per_trial or (None if args.local else 1.0)
    env = rundir.write_env(run_dir, {"runner": "local" if args.local else "ray", "address": args.address,
                                     "cpus_per_trial": cpus, "gpus_per_trial": gpus})
    collector = tune.Collector(run_dir, trials)
    done = tune.preload_finished(trials, run_dir, collector) if args.resume else 0
    print(f"bench: {len(trials)} trials of grid {grid.name!r} ({grid.preset}) -> {run_dir}"
          + (f" ({done} finished earlier)" if done else ""), file=sys.stderr, flush=True)
    _guarded("floors", run_dir, lambda: _floors(run_dir, trials))  # first: they compute the references
    t_fan = time.time()
    if args.local:
        tune.run_local(trials, run_dir, collector, threads=int(cpus) if cpus else None)
    else:
        tune.run_ray(grid, trials, run_dir, collector, args.address, cpus, gpus, args.max_concurrent)
    rundir.finish(run_dir, env, time.time() - t0, fanout_s=time.time() - t_fan)
    rows = [r for rs in collector.rows.values() for r in rs]
    _guarded("report", run_dir, lambda: _report(run_dir))
    n_err = len({r["trial_id"] for r in rows if r["status"] == "error"})
    n_div = len({r["trial_id"] for r in rows if r["status"] == "diverged"})
    print(f"bench: done in {time.time() - t0:.0f} s: {len(trials) - n_err - n_div} ok, {n_div} diverged, {n_err} error; "
          f"rows in {run_dir / rundir.ROWS}", file=sys.stderr)
    return 1 if n_err else 0


def _floors(run_dir: Path, trials) -> None:
    from bench.plan import write_floors

    t0 = time.time()
    write_floors(run_dir, trials)
    print(f"bench: real-vs-real floors and reference statistics ready ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)


def _report(run_dir: Path) -> None:
    from bench.report import build_report

    build_report(run_dir)


def _guarded(step: str, run_dir: Path, fn) -> None:
    """Floors and report: a failure is reported and never loses rows.csv (a trial that needs a
    missing reference computes it itself, or reports its own error)."""
    import traceback

    try:
        fn()
    except Exception as e:  # noqa: BLE001
        print(f"bench: warning: {step} failed ({type(e).__name__}: {e}); rows.csv is intact, "
              f"rerun `python -m bench report {run_dir}`", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)


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
    from bench.plan import sample_checkpoint

    sample_checkpoint(args.checkpoint, args.sampler, args.steps, args.n, args.seed, args.out)
    print(args.out)
    return 0


def cmd_perf(args) -> int:
    from bench.perf import run_perf

    target = run_perf(args.out, quick=args.quick, only=args.only, device=args.device, reps=args.reps)
    print(target / "perf.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
