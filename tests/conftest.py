import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def trained_index(tmp_path_factory):
    """The trained-model index (bench.trained) of every trial the tests run goes to a temporary
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
