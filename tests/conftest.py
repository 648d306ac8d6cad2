"""Fixtures shared by test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): tiny networks run faster on one thread, and much
    faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
