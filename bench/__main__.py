"""Command line: ``python -m bench ls | run | report | plot-schedules | plot-noises | sample | perf``.

Exit codes: 0 all trials finished (a diverged trial is a result), 1 some trial raised (the rest
still ran, the report is still written), 2 bad input found before any work (one line on stderr).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.progress import say
from bench.registry import InputError, did_you_mean


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list registered schedules, paths, densities, spacings, noises, samplers, lr_schedules, "
                                   "emas, datasets, models, metrics, grids, config")
    ls.add_argument("kind", nargs="?", help="one of: " + ", ".join(LISTERS))
    ls.set_defaults(func=cmd_ls)

    run = sub.add_parser("run", help="train, sample and score every trial of a grid")
    run.add_argument("--grid", required=True, help="grid name (experiments/NAME.toml) or path to a .toml")
    run.add_argument("--preset", default=None,
                     help="full (as written, GPU scale) | standard (schedules, noise: models that learn MNIST, "
                          "~2-3 h on a 2-core CPU) | quick (2-core CPU, ~45 min) | smoke (seconds); "
                          "default: full where CUDA is available, else quick")
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
    run.add_argument("--track", default="", metavar="NAMES",
                     help="experiment tracking through Ray Tune callbacks: mlflow (local file store RUN_DIR/mlruns), "
                          "wandb (offline into RUN_DIR/wandb), comma-separated; TensorBoard files are always written "
                          "(bench ls trackers)")
    run.add_argument("--verbose", action="store_true",
                     help="also show Ray Tune's own status tables (off by default: bench's progress lines say the same, "
                          "and Ray's tables buried them)")
    run.add_argument("--yes", action="store_true",
                     help=f"run the full preset even where its estimate exceeds {CONFIRM_HOURS:g} h")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rebuild tables, plots and REPORT.md of a run from its rows.csv")
    rep.add_argument("run_dir", type=Path)
    rep.set_defaults(func=cmd_report)

    ps = sub.add_parser("plot-schedules", help="alpha_bar(t), log-SNR(t), beta(t) of every schedule")
    ps.add_argument("--out", type=Path, default=Path("schedules.png"))
    ps.add_argument("-T", "--timesteps", type=int, default=1000)
    ps.add_argument("--schedules", nargs="*", help="default: every registered schedule")
    ps.add_argument("--shifts", default="1,3", help="shifts (>= 1) at which the second figure, OUT_paths, draws lambda(t) of every path")
    ps.set_defaults(func=cmd_plot_schedules)

    pn = sub.add_parser("plot-noises", help="the same image at several t under each noise type and corruption, one row each")
    pn.add_argument("--out", type=Path, default=Path("noises.png"), help="PNG path (the PDF is written beside it)")
    pn.add_argument("--dataset", default="mnist")
    pn.add_argument("--index", type=int, default=0, help="which held-out image")
    pn.add_argument("--schedule", default="linear")
    pn.add_argument("-T", "--timesteps", type=int, default=1000)
    pn.set_defaults(func=cmd_plot_noises)

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
    pf.add_argument("--only", help="comma-separated sections: ceiling, train, sample, features, packing, fanout, "
                                   "time_to_fd")
    pf.add_argument("--from-run", type=Path, help="time_to_fd: the run whose learning curves it reads (e.g. of the "
                                                  "budget grid)")
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


def _list_models():
    from bench.models.unet import MODELS, describe_model

    for name in MODELS.names():
        print(f"  {name:<16} {describe_model(name)}")


def _list_grids():
    from bench.experiment.grid import grid_names, load_grid

    for name in grid_names():
        g = load_grid(name)
        print(f"  {name:<16} {len(g.trials())} trials (full); {g.description}")


def _list_config():
    from bench.experiment.config import describe_fields

    for name, tp, default, role, phrase in describe_fields():
        print(f"  {name:<18} {tp:<6} {default!r:<9} {role:<14} {phrase}")


LISTERS = {
    "schedules": _registry_lister("bench.process.schedules", "SCHEDULES"),
    "noises": _registry_lister("bench.process.noise", "NOISES"),
    "corruptions": _registry_lister("bench.process.corruptions", "CORRUPTIONS"),
    "samplers": _registry_lister("bench.sampling.sample", "SAMPLERS"),
    "paths": _registry_lister("bench.process.paths", "PATHS"),
    "densities": _registry_lister("bench.process.densities", "DENSITIES"),
    "spacings": _registry_lister("bench.process.spacings", "SPACINGS"),
    "predictions": _registry_lister("bench.process.diffusion", "PREDICTIONS"),
    "weightings": _registry_lister("bench.process.diffusion", "WEIGHTINGS"),
    "lr_schedules": _registry_lister("bench.optim.lr", "LR_SCHEDULES"),
    "emas": _registry_lister("bench.optim.ema", "EMAS"),
    "datasets": _registry_lister("bench.data.datasets", "DATASETS"),
    "models": _list_models,
    "metrics": _registry_lister("bench.scoring.metrics", "METRICS"),
    "grids": _list_grids,
    "trackers": _registry_lister("bench.run.tracking", "TRACKERS"),
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
CONFIRM_HOURS = 4.0  # a run of the full preset estimated longer than this needs --yes, on a CPU and on a GPU


def cmd_run(args) -> int:
    """Plan and check everything, then run. Without --preset the preset follows the hardware (gpu with
    CUDA where the grid has it, quick without; else the grid as written), said in one line. The full
    preset (paper scale) first prints the dry run's estimate, and a run estimated over
    ``CONFIRM_HOURS`` is refused (exit 2, nothing started) unless --yes: a newcomer should learn that a
    grid takes days in seconds, not after hours of silence."""
    import torch

    from bench.experiment.config import parse_set
    from bench.files import absolute_path_settings
    from bench.run.dryrun import print_plan
    from bench.run.fanout import Fanout
    from bench.run.plan import plan_grid
    from bench.run.runner import run_grid
    from bench.run.tracking import parse_track

    absolute_path_settings()
    overrides = parse_set(args.set)
    fanout = Fanout(args.local, args.address, args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent,
                    parse_track(args.track), args.verbose)
    # the trials run on a GPU: CUDA is visible and they are given one (--local: this process's device)
    cuda = torch.cuda.is_available() and (args.local or fanout.resources()[1] > 0)
    preset = args.preset or _default_preset(args.grid, cuda)
    plan = plan_grid(args.grid, preset, overrides, args.out, args.resume, fanout)  # every check before work: exit 2
    if args.preset is None:
        _say_preset(args.grid, preset, cuda)
    threads, at_once = fanout.slots()
    if args.dry_run:
        print_plan(plan.grid, plan.trials, plan.run_dir, threads, at_once, ray=not args.local, sizes=plan.sizes)
        return 0
    if preset == "full":
        _confirm_full(args, plan, threads, at_once, cuda)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends a run as cleanly as Ctrl-C (Ray workers stopped, --resume said)
    rows = run_grid(plan)
    return 1 if plan.problems or any(r["status"] == "error" for r in rows) else 0


def _say_preset(grid: str, preset: str, cuda: bool) -> None:
    from bench.experiment.grid import preset_names

    why = {"gpu": "CUDA is available: the preset sized for one GPU",
           "quick": "no CUDA GPU here; full is GPU scale"}.get(preset, "CUDA is available, and the grid has no gpu preset: "
                                                                   "it runs as written" if cuda else
                                                           "no CUDA GPU here, and the grid has no quick preset: it runs as written")
    say(f"no --preset given: using {preset} ({why}); choose with --preset {'|'.join(preset_names(grid))}")


def _confirm_full(args, plan, threads: int, at_once: int, cuda: bool) -> None:
    """The full preset is paper scale: its estimate is said, and over ``CONFIRM_HOURS`` it needs --yes."""
    from bench.experiment.grid import preset_names
    from bench.progress import duration
    from bench.run.dryrun import estimate

    names = preset_names(args.grid)
    smaller = "gpu" if cuda and "gpu" in names else "quick" if not cuda and "quick" in names else None
    where = "a GPU" if cuda else "a CPU"
    say(f"preset full{' is paper scale' if smaller else ''} ({len(plan.trials)} trials as the grid file is written); "
        f"timing this {'GPU' if cuda else 'CPU'} for an estimate (seconds)...")
    est = estimate(plan.trials, threads, at_once, ray=not args.local, sizes=plan.sizes)
    advice = (f"`python -m bench run --grid {args.grid} --preset {smaller}` is sized for "
              f"{'one GPU (~2 h)' if smaller == 'gpu' else 'a 2-core CPU (~45 min)'} (its --dry-run estimates yours)"
              if smaller else f"the grid has no smaller preset but {', '.join(n for n in names if n != 'full') or 'none'}")
    if est.total_s > CONFIRM_HOURS * 3600 and not args.yes:
        raise InputError(f"preset full on {where}: estimated {duration(est.total_s)} ({len(plan.trials)} trials, "
                         f"{at_once} at a time); {advice}, or add --yes to run full here anyway")
    say(f"warning: preset full on {where}: {est.line()}; {advice}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _default_preset(grid: str, cuda: bool) -> str:
    """With CUDA: gpu where the grid has it; without: quick where it has it; else full (as written)."""
    from bench.experiment.grid import preset_names

    names = preset_names(grid)
    return "gpu" if cuda and "gpu" in names else "quick" if not cuda and "quick" in names else "full"


# --- the rest ----------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from bench.experiment.rundir import check_readable
    from bench.report import build_report

    check_readable(args.run_dir)  # a garbled input file: one line, exit 2
    build_report(args.run_dir)
    print(args.run_dir / "REPORT.md")
    return 0


def cmd_plot_schedules(args) -> int:
    from bench.process.paths import check_shift
    from bench.process.schedules import SCHEDULES
    from bench.report import plot_schedules
    from bench.report.formulation import plot_paths

    names = args.schedules or SCHEDULES.names()
    for n in names:
        SCHEDULES.get(n)
    shifts = [check_shift("--shifts", _number(s)) for s in args.shifts.split(",") if s.strip()]
    plot_schedules(names, args.timesteps, args.out)
    paths_out = args.out.with_name(f"{args.out.stem}_paths{args.out.suffix}")
    plot_paths(names, args.timesteps, shifts, paths_out)
    print(args.out)
    print(paths_out)
    return 0


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def cmd_plot_noises(args) -> int:
    from bench.report.forward import default_rows, plot_forward

    png = plot_forward(args.out, default_rows(args.schedule, args.timesteps), dataset=args.dataset, index=args.index)
    print(f"wrote {png} and {png.with_suffix('.pdf')}")
    return 0


def cmd_sample(args) -> int:
    from bench.run.trial import sample_from_workdir
    from bench.training.train import read_config

    workdir = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    if (workdir / "config.json").exists():  # a trial work dir: its checkpoint must be there and readable
        try:
            read_config(args.checkpoint)
        except FileNotFoundError:
            raise InputError(f"{args.checkpoint}: no checkpoint yet (the trial has not reached its first "
                             f"checkpoint_every steps): pass the work dir of a trained trial") from None
        except Exception as e:  # noqa: BLE001 - any failure to read it is the same answer
            raise InputError(f"{args.checkpoint}: the checkpoint cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:100] if str(e) else ''}); `bench run ... --resume` "
                             f"trains the trial again") from None
    sample_from_workdir(args.checkpoint, args.sampler, args.steps, args.n, args.seed, args.out)
    print(args.out)
    return 0


def cmd_perf(args) -> int:
    from bench.perf import run_perf

    target = run_perf(args.out, quick=args.quick, only=args.only, device=args.device, reps=args.reps,
                      from_run=args.from_run)
    print(target / "perf.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
