"""Fixtures shared by test files, and the Hypothesis profile: property tests draw the same examples on
every run (``derandomize``), so a passing suite passes again on a clean clone; set
``HYPOTHESIS_PROFILE=explore`` to draw fresh examples when hunting for counterexamples."""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): tiny networks run faster on one thread, and much
    faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
