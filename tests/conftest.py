import os
import random

# On a shared 2-core machine OpenMP's default busy-wait makes every torch CPU op many times slower
# whenever another process holds the other core; passive waiting avoids it. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

# Keep the CPU suite fast and deterministic on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIONS = os.path.join(REPO, "..", "shared", "data", "minions")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run through the device tool)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def minions_path():
    if not os.path.isdir(MINIONS):
        pytest.skip("the real sample ../shared/data/minions is not here")
    return MINIONS
