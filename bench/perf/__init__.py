"""``bench perf``: throughput of the suite's parts on this machine, against its peers and the hardware.

Sections (registry ``SECTIONS``, run in this order; ``bench perf --only train,sample``):

- ``ceiling``: the device's measured dense matmul rate (CPU: float32 at the thread count the other
  sections use; CUDA: bf16 and TF32, plus the vendor's nominal bf16 peak) — the roofline every
  achieved FLOP/s is compared with;
- ``train``: images/s of one real training step (``bench.training.train``: data indexing, noise, forward,
  backward, clipping, AdamW, EMA) per UNet preset at 28x28x1 (MNIST), 32x32x1 (MNIST padded) and
  64x64x3 (craters); model FLOPs per image counted by ``torch.utils.flop_counter`` (convolutions,
  matmuls and attention; norms and pointwise ops are not counted, the usual convention), so the
  achieved FLOP/s and its fraction of the ceiling follow; and beside it the same step in
  diffusers (``bench.perf.peers``) at matched parameters, as the ratio bench / diffusers per repetition;
- ``sample``: image-steps/s of the real samplers (``bench.sampling.sample``: DDIM and respaced DDPM, Gaussian
  and gamma noise, per-image seeds) with the quick presets' model and sample count, next to the
  bare model forward at the same batch (the sampler's own overhead is the gap);
- ``features``: images/s of the feature extractors behind FID/KID (Inception-v3) and the MNIST
  classifier FD;
- ``packing``: aggregate training images/s of k concurrent trials (separate processes, as Ray runs
  them) on one device, at 1 and at all threads per trial on CPU, k in 1, 2, 4, 8 on one GPU;
- ``fanout``: the smoke grid through Ray Tune vs the sum of its trials run ``--local``;
- ``time_to_fd``: the training wall time each arm of a run needs to reach a fixed FD, read from the
  learning curves of ``--from-run RUN`` (``bench.perf.fd_time``; e.g. a run of the ``budget`` grid):
  the number that decides a budget, where images/s only says how fast a model trains.

Method: each case is warmed up, then timed in ``reps`` repetitions (CUDA synchronised at both
ends). Cases that are compared alternate within the repetitions (A B, B A, A B, ...) so that drift
in the machine's load hits both; a ratio is taken per repetition (A and B timed back to back) and
reported as median and min..max. Every table row says what its number is and how many repetitions
it rests on.

Output: ``<out>/<device>/perf.csv`` (one row per measured case), ``perf.md`` (the tables, with the
machine, the method and the command), ``env.json``, ``train.png`` and ``time_to_fd.png``; ``--out``
defaults to ``results/perf``. ``--only time_to_fd`` alone writes ``<out>/time_to_fd/<run id>/``: it
reads a run, it measures nothing on this device, and must not replace the device's measurement.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.env import cpu_model
from bench.models.unet import MODELS, build_model, count_params
from bench.perf.sections import ORDER
from bench.registry import InputError, Registry
from bench.timing import measure, ratios, spread, sync  # noqa: F401 (sections use them)
from bench.training.benchstep import TRAIN_DROPOUT, BenchStep  # noqa: F401 (the train section)

SECTIONS: Registry = Registry("perf section")
TRAIN_SHAPES = ((1, 28), (1, 32), (3, 64))  # (channels, size): MNIST, MNIST padded to 32, craters
CPU_TRAIN_BATCH = {"tiny": 32, "tiny_wide": 32, "small": 16, "base": 8}  # ~0.2-3 s a step on 2 cores; GPUs use GPU_BATCH
GPU_BATCH = 128  # the full grids' batch
# Nominal dense bf16 peaks (TFLOP/s, vendor data sheets, no sparsity), by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0,
                    "L4": 121.0, "RTX 4090": 165.2}


@dataclass
class Ctx:
    """What every section gets: the device, the effort level and what earlier sections found."""

    device: torch.device
    quick: bool = False
    reps: int = 5
    threads: int = 1
    ceiling_gflops: float = math.nan  # set by the ceiling section
    notes: list[str] = field(default_factory=list)  # what was skipped and why (goes into perf.md)
    from_run: Path | None = None  # the run whose learning curves time_to_fd reads
    from_run_measured: tuple | None = None  # fd_time.measure(from_run): run_perf reads the run before any section
    figures: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file name -> writer, for sections' plots


def train_batch(preset: str, device: torch.device) -> int:
    return GPU_BATCH if device.type == "cuda" else CPU_TRAIN_BATCH.get(preset, 8)


def presets_by_size() -> list[str]:
    """The UNet presets, smallest first."""
    return sorted(MODELS.names(), key=lambda p: count_params(build_model(p, 1, 32, 0.0)))


# --- sections ------------------------------------------------------------------------------------
def _row(section: str, case: str, metric: str, values: list[float], **extra) -> dict[str, Any]:
    return {"section": section, "case": case, "metric": metric, **spread(values), **extra}


@SECTIONS.register("ceiling")
def ceiling(ctx: Ctx) -> list[dict[str, Any]]:
    """Dense matmul GFLOP/s (2 n^3 per n x n product): float32 on CPU; bf16 and TF32 on CUDA."""
    cuda = ctx.device.type == "cuda"
    n = 8192 if cuda else (512 if ctx.quick else 2048)
    dtypes = {"bf16": torch.bfloat16, "tf32": torch.float32} if cuda else {"fp32": torch.float32}
    rows = []
    for label, dtype in dtypes.items():
        a, b = (torch.randn(n, n, device=ctx.device).to(dtype) for _ in range(2))
        calls = 100 if cuda else 1  # ~1 ms a product on a large GPU: time many per repetition
        r = measure({label: (lambda a=a, b=b: torch.mm(a, b), 2 * n**3 / 1e9)}, ctx.device, ctx.reps, calls=calls)[label]
        rows.append(_row("ceiling", f"matmul {n}x{n} {label}", "GFLOP/s", r, dtype=label, threads=ctx.threads))
    # the roofline: the vendor's bf16 peak where known, else the best repetition of the first dtype
    ctx.ceiling_gflops, source = rows[0]["hi"], f"best measured {rows[0]['case']}"
    name = torch.cuda.get_device_name(ctx.device) if cuda else ""
    peak = next((v * 1e3 for k, v in BF16_PEAK_TFLOPS.items() if cuda and k in name), None)
    if peak:
        rows.append({"section": "ceiling", "case": f"nominal bf16 dense peak ({name})", "metric": "GFLOP/s",
                     "median": peak, "lo": peak, "hi": peak, "reps": 0, "dtype": "bf16"})
        ctx.ceiling_gflops, source = peak, "nominal bf16 peak"
    ctx.notes.append(f"ceiling for the fraction-of-peak columns: {ctx.ceiling_gflops:,.0f} GFLOP/s ({source})")
    return rows


@SECTIONS.register("train")
def train(ctx: Ctx) -> list[dict[str, Any]]:
    """bench's training step per preset and shape, with diffusers beside it where it can run."""
    from bench.perf.peers import diffusers_missing, diffusers_supports, peer_step

    missing = diffusers_missing()
    if missing:
        ctx.notes.append(f"diffusers comparison skipped: {missing}")
    presets = presets_by_size()[:1] if ctx.quick else presets_by_size()
    shapes = TRAIN_SHAPES[1:2] if ctx.quick else TRAIN_SHAPES
    rows = []
    for preset in presets:
        for ch, size in shapes:
            rows += _train_case(ctx, preset, ch, size, missing or diffusers_supports(preset, size), peer_step)
    return rows


def _train_case(ctx: Ctx, preset: str, ch: int, size: int, peer_skip: str, peer_step) -> list[dict[str, Any]]:
    batch = train_batch(preset, ctx.device)
    ours = BenchStep(preset, ch, size, batch, ctx.device)
    gflop = ours.flops() / batch / 1e9
    cases = {"bench": (ours, batch)}
    if not peer_skip:
        cases["diffusers"] = (peer_step("diffusers", preset, ch, size, batch, ctx.device, ours.dropout), batch)
    calls = 1 if ctx.device.type == "cpu" else 20
    rates = measure(cases, ctx.device, ctx.reps, calls=calls, warmup=2 if ctx.device.type == "cpu" else 10)
    common = {"model": preset, "params": ours.params, "channels": ch, "image_size": size, "batch": batch, "dropout": ours.dropout,
              "dtype": "bf16-autocast" if ctx.device.type == "cuda" else "fp32", "threads": ctx.threads,
              "gflop_per_image": gflop}
    rows = []
    for impl, r in rates.items():
        achieved = statistics.median(r) * gflop
        extra = ratios(rates["bench"], rates["diffusers"]) if impl == "diffusers" else {}
        rows.append(_row("train", f"{impl} {preset} {ch}x{size}x{size}", "images/s", r, impl=impl, **common,
                         achieved_gflops=achieved, ceiling_fraction=achieved / ctx.ceiling_gflops, **extra))
    if peer_skip:
        rows[0]["note"] = peer_skip
    return rows


@SECTIONS.register("sample")
def sample(ctx: Ctx) -> list[dict[str, Any]]:
    """Samplers at the quick presets' model (tiny) and sample count on MNIST-shaped images."""
    from bench.experiment.config import RunConfig, build_process
    from bench.sampling.sample import sample_images

    n = 16 if ctx.quick else (256 if ctx.device.type == "cuda" else 200)
    steps = 5 if ctx.quick else 10
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = build_model("tiny", 1, 28, 0.0).to(ctx.device, memory_format=torch.channels_last).eval()
    _randomise_zero_layers(model)
    arms = {"gaussian": RunConfig(schedule="cosine"), "gamma": RunConfig(schedule="cosine", noise="gamma", theta_0=0.01)}
    processes = {name: build_process(cfg) for name, cfg in arms.items()}
    diffusion = processes["gaussian"].diffusion
    noises = {name: p.noise for name, p in processes.items()}
    x = torch.randn(n, *shape, device=ctx.device).contiguous(memory_format=torch.channels_last)
    t = torch.full((n,), 500, device=ctx.device)

    def forward():
        with torch.inference_mode():
            return model(x, t)

    cases = {"model forward": (forward, n)}
    for sampler in ("ddim", "ddpm"):
        for name, noise in noises.items():
            cases[f"{sampler}:{steps} {name}"] = (
                lambda s=sampler, nz=noise: sample_images(model, diffusion, nz, s, steps, n, shape, 0, n, ctx.device), n * steps)
    rates = measure(cases, ctx.device, ctx.reps)
    base = statistics.median(rates["model forward"])
    return [_row("sample", case, "image-steps/s", r, model="tiny", channels=1, image_size=28, batch=n, threads=ctx.threads,
                 ratio=statistics.median(r) / base) for case, r in rates.items()]


def _randomise_zero_layers(model: torch.nn.Module) -> None:
    """Give the zero-initialised output layers random weights, so that sampling timings see a model
    whose eps is not identically 0 (clipping and noise paths then do real work)."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)


@SECTIONS.register("features")
def features(ctx: Ctx) -> list[dict[str, Any]]:
    """Feature extraction (uint8 images in, features out) at the batch size scoring uses; Inception
    also in torchmetrics' default NCHW layout beside the channels_last one scoring runs (alternated)."""
    from bench.scoring.features import FEATURES, extract_features

    cases = [("inception", 1, 28), ("inception", 3, 64)] + ([] if ctx.quick else [("mnist-classifier", 1, 28)])
    rows = []
    for name, ch, size in cases:
        spec = FEATURES.get(name)
        bs = spec.cpu_batch if ctx.device.type == "cpu" else max(64, spec.cpu_batch)
        n = bs if ctx.quick else max(bs, 64 if ctx.device.type == "cpu" and name.startswith("inception") else 2048)
        images = torch.randint(0, 256, (n, ch, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        try:
            variants = {name: (lambda name=name, images=images, bs=bs: extract_features(name, images, ctx.device, batch_size=bs), n)}
            if name.startswith("inception"):
                variants[f"{name} NCHW"] = (_nchw_inception(images, bs, ctx.device), n)
            r = measure(variants, ctx.device, min(ctx.reps, 3) if name.startswith("inception") else ctx.reps)
        except (RuntimeError, FileNotFoundError) as e:  # weights or data absent on this machine
            ctx.notes.append(f"features {name} skipped: {str(e).splitlines()[0]}")
            continue
        for case, rates in r.items():
            extra = ratios(r[name], rates) if case != name else {}
            rows.append(_row("features", f"{case} {ch}x{size}x{size}", "images/s", rates, channels=ch, image_size=size,
                             batch=bs, threads=ctx.threads, note=spec.label + (" (torchmetrics default layout)" if extra else ""),
                             **extra))
    return rows


def _nchw_inception(images: torch.Tensor, bs: int, device: torch.device) -> Callable[[], Any]:
    """The FID Inception as torchmetrics ships it (NCHW), for the channels_last comparison."""
    import copy

    from bench.scoring.features import _inception_net, inception_runner

    net = inception_runner(copy.deepcopy(_inception_net(str(device))).to(memory_format=torch.contiguous_format))

    def run():
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                net(images[i : i + bs].to(device))

    return run


@SECTIONS.register("packing")
def packing(ctx: Ctx) -> list[dict[str, Any]]:
    """k concurrent training processes on one device (what Ray's fractional resources do to a grid).

    CPU: the quick presets' trial (tiny, 28x28, batch 32) as 1 and n trials (n = cores) at 1 thread
    and at n threads each (n x n is the oversubscription ``--cpus-per-trial`` prevents); CUDA: k in 1,
    2, 4, 8 small-UNet trials (28x28, batch 128) at 1 CPU thread each."""
    import multiprocessing as mp

    cores = os.cpu_count() or 1
    if ctx.device.type == "cuda":
        preset, batch, layouts = "small", GPU_BATCH, [(k, 1) for k in (1, 2, 4, 8)]
    else:
        preset, batch = "tiny", 32
        layouts = sorted({(1, 1), (1, cores), (cores, 1), (cores, cores)})
    seconds = 1.5 if ctx.quick else (20.0 if ctx.device.type == "cuda" else 15.0)
    spawn = mp.get_context("spawn")
    rows, single = [], None
    for k, threads in layouts:
        barrier, queue = spawn.Barrier(k), spawn.Queue()
        procs = [spawn.Process(target=_packed_trial, args=(preset, batch, str(ctx.device), threads, seconds, barrier, queue))
                 for _ in range(k)]
        for p in procs:
            p.start()
        per_trial = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        total = sum(per_trial)
        single = single or total
        rows.append(_row("packing", f"{k} trial{'s' if k > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                         "images/s (all trials)", [total], model=preset, channels=1, image_size=28, batch=batch,
                         threads=threads, trials=k, ratio=total / single,
                         note=f"per trial {min(per_trial):.0f}-{max(per_trial):.0f} images/s over {seconds:.0f} s"))
    return rows


def _packed_trial(preset: str, batch: int, device: str, threads: int, seconds: float, barrier, queue) -> None:
    """One packed trial (a spawned process): warm up, wait for the others, train for ``seconds``."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    step = BenchStep(preset, 1, 28, batch, dev)
    for _ in range(3):
        step()
    sync(dev)
    barrier.wait()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync(dev)
    queue.put(n * batch / (time.perf_counter() - t0))


@SECTIONS.register("fanout")
def fanout(ctx: Ctx) -> list[dict[str, Any]]:
    """The smoke grid (``schedules``, 2 trials) run ``--local`` and through Ray Tune, alternately.

    Compared: the Ray fan-out's wall time (``env.json`` fanout_s: cluster start, trials, shutdown)
    with the sum of the trials' own wall times in the ``--local`` run (rows.csv trial_s), i.e. what
    the trials cost without any runner; and with the ``--local`` fan-out's wall time."""
    reps = 1 if ctx.quick else 2
    got: dict[str, list[float]] = {"local fan-out": [], "local sum of trials": [], "ray fan-out": []}
    with tempfile.TemporaryDirectory(prefix="bench-perf-fanout-") as d:
        for r in range(reps):
            for runner in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                out = Path(d) / f"{runner}-{r}"
                cmd = [sys.executable, "-m", "bench", "run", "--grid", "schedules", "--preset", "smoke", "--out", str(out)]
                res = subprocess.run(cmd + (["--local"] if runner == "local" else []), capture_output=True, text=True,
                                     timeout=900, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
                if res.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")
                for k, v in fanout_times(out, runner).items():
                    got[k].append(v)
    base = statistics.median(got["local sum of trials"])
    return [_row("fanout", case, "seconds", v, trials=2, ratio=statistics.median(v) / base,
                 note="ratio: / the local run's sum of trial times") for case, v in got.items()]


def fanout_times(run_dir: Path, runner: str) -> dict[str, float]:
    """Seconds spent by a finished run: its fan-out (env.json) and, for --local, its trials (rows.csv)."""
    from bench.experiment.rundir import read_rows

    env = json.loads((run_dir / "env.json").read_text())
    if runner == "ray":
        return {"ray fan-out": float(env["fanout_s"])}
    rows = read_rows(run_dir)  # trial ids as text: "7e05622055" and "7e05622056" are not both inf
    return {"local fan-out": float(env["fanout_s"]),
            "local sum of trials": float(rows.groupby("trial_id")["trial_s"].max().sum())}


@SECTIONS.register("time_to_fd")
def time_to_fd(ctx: Ctx) -> list[dict[str, Any]]:
    """Training seconds to a fixed FD per arm of ``ctx.from_run`` (``bench.perf.fd_time``)."""
    from bench.perf import fd_time

    rows, points, notes = ctx.from_run_measured
    ctx.notes += notes
    ctx.figures["time_to_fd.png"] = lambda path: fd_time.plot(points, rows[0]["score"], path)
    return rows


# --- the command ---------------------------------------------------------------------------------
def device_slug(device: torch.device) -> str:
    """results/perf/<slug>: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {cpu_model()} {os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def parse_sections(only: str | None) -> list[str]:
    """The sections to run, in ``ORDER``; unknown names are an InputError (exit 2) before any work."""
    names = [s.strip() for s in only.split(",") if s.strip()] if only else list(ORDER)
    for name in names:
        SECTIONS.get(name)
    ordered = [s for s in ORDER if s in names] + [s for s in names if s not in ORDER]
    if "ceiling" not in ordered and any(s == "train" for s in ordered):
        ordered.insert(0, "ceiling")  # the train table's fraction-of-peak needs it
    return ordered


def run_perf(out: Path, quick: bool = False, only: str | None = None, device: str | None = None,
             reps: int | None = None, from_run: Path | None = None) -> Path:
    """Run the sections and write ``out/<device>/perf.{csv,md}``, ``env.json``, ``train.png`` (and
    ``time_to_fd.png``); ``--only time_to_fd`` alone writes ``out/time_to_fd/<run id>/`` instead, so
    that it never replaces a device's full measurement with one table."""
    sections = parse_sections(only)
    skipped, measured = [], None
    if from_run is not None and "time_to_fd" not in sections:
        raise InputError("--from-run is read by the time_to_fd section only: add it to --only")
    if "time_to_fd" in sections and from_run is None:
        if only:
            raise InputError("perf section time_to_fd needs --from-run RUN (a run with learning curves)")
        sections.remove("time_to_fd")
        skipped.append("time_to_fd skipped: it reads a run's learning curves (--from-run RUN)")
    if from_run is not None:
        from bench.perf.fd_time import measure

        measured = measure(from_run)  # bad input before any work (and cheap: it reads rows.csv)
    if device not in (None, "cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    from bench.env import enable_tf32, pick_device

    dev = torch.device(device or pick_device())
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible")
    if reps is not None and reps < 1:
        raise InputError("--reps must be >= 1")
    if dev.type == "cuda":
        enable_tf32()
    ctx = Ctx(device=dev, quick=quick, reps=reps or (2 if quick else 5), threads=torch.get_num_threads(),
              notes=skipped, from_run=from_run, from_run_measured=measured)
    target = Path(out) / ("time_to_fd/" + Path(from_run).resolve().name if sections == ["time_to_fd"] else device_slug(dev))
    target.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    from tqdm.auto import tqdm

    for name in tqdm(sections, desc="bench perf", unit="section", disable=not sys.stderr.isatty()):
        ts = time.time()
        try:
            new = SECTIONS.get(name)(ctx)
        except Exception as e:  # noqa: BLE001 - one section that cannot run (no Ray, no data) never loses the others
            ctx.notes.append(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
            print(f"bench perf: {name}: FAILED ({type(e).__name__}: {e}); the other sections go on", file=sys.stderr, flush=True)
            continue
        rows += new
        print(f"bench perf: {name}: {len(new)} rows in {time.time() - ts:.0f} s", file=sys.stderr, flush=True)
    from bench.perf.report import write_outputs

    write_outputs(target, rows, ctx, sections, time.time() - t0)
    return target
