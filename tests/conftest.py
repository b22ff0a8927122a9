"""Shared test setup: CPU only, quiet logs, paths to the checked-in fixtures."""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Compiling is most of the suite's time on 2 cores, and tiny test programs run no slower when compiled cheaply: LLVM
# at -O0 and XLA's classic loop emitters instead of the MLIR fusion emitters (the same HLO and float semantics, no
# fast-math either way) take 1/3 of the default compile time. Subprocesses inherit the flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# One persistent compilation cache for the session: the xdist workers and the CLI subprocesses inherit it, so a program
# compiled by one test (the same demo model's init and train step, say) is loaded by the next. Empty on every run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="clip_text_spot_jax_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]
else:
    _OWN_CACHE = None

DATA = pathlib.Path(__file__).parent / "data"

# The longest test files first: the suite runs on pytest-xdist workers per file (README's command), and a long file
# dispatched last would leave the other workers idle at the end.
LONGEST_FIRST = ("test_scale_out.py", "test_fasttcm_train.py", "test_sharded_step.py", "test_spot_demo.py")


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it (not an xdist worker)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
