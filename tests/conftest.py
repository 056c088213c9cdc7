"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is faster on a shared 2-core box; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
