"""Suite-wide settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests use small tensors: one intra-op thread is as fast, and far faster when the two
    CPU cores are shared with other processes (OpenMP spin-waiting made a tiny CNN step 30x
    slower). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
