import os

import pytest
import torch

# --- two tiers --------------------------------------------------------------------------------------
# `python -m pytest -q` is the everyday tier (minutes). Tests marked @pytest.mark.slow(reason=...) —
# Ray grids, CLI subprocess grids, rebuilding every committed run, fixtures that run whole grids —
# run only with `--runslow` (or BENCH_SLOW=1), the convention of diffusers' RUN_SLOW; `.ci/run` runs
# both tiers. They are reported as skipped, with the switch that runs them, never as passed.
SLOW_ENV = "BENCH_SLOW"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help=f"also run the slow tier (tests marked slow; same as {SLOW_ENV}=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow(reason): the slow tier: runs only with --runslow or BENCH_SLOW=1; "
                                       "the reason says what it covers that no fast test does")


def run_slow(config) -> bool:
    return bool(config.getoption("--runslow")) or os.environ.get(SLOW_ENV, "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"slow tier: run with --runslow (or {SLOW_ENV}=1)")
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is None:
            continue
        if not (marker.kwargs.get("reason") or marker.args):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.slow needs reason='what it covers that no fast test does'")
        if not run_slow(config):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def trained_index(tmp_path_factory):
    """The trained-model index (bench.training.trained) of every trial the tests run goes to a temporary
    folder, never into the user's cache (subprocesses inherit it)."""
    before = os.environ.get("BENCH_TRAINED")
    os.environ["BENCH_TRAINED"] = str(tmp_path_factory.mktemp("trained-index"))
    yield
    if before is None:
        os.environ.pop("BENCH_TRAINED", None)
    else:
        os.environ["BENCH_TRAINED"] = before


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: on a small shared machine two OpenMP threads stall whenever another process
    takes a core (each parallel region waits for the descheduled thread), and these models are small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
