"""Shared test setup: CPU only, quiet logs, paths to the checked-in fixtures."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DATA = pathlib.Path(__file__).parent / "data"
