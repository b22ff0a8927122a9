"""Shared test setup: CPU only, quiet logs, paths to the checked-in fixtures."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DATA = pathlib.Path(__file__).parent / "data"

# The longest test files first: the suite runs on pytest-xdist workers per file (README's command), and a long file
# dispatched last would leave the other workers idle at the end.
LONGEST_FIRST = ("test_scale_out.py", "test_fasttcm_train.py", "test_sharded_step.py", "test_spot_demo.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
