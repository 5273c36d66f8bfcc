import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread: on a small shared machine two OpenMP threads stall whenever another process
    takes a core (each parallel region waits for the descheduled thread), and these models are small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
