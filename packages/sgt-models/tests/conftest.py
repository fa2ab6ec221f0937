"""Test settings of sgt-models."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch() -> None:
    # The tiny models are far too small to profit from intra-op threads; on a shared, loaded CPU
    # the threads' spin-waiting makes a forward+backward 10-20x slower than one thread.
    torch.set_num_threads(1)
