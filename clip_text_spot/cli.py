"""The ``clip-text-spot`` command, and how every tool that reads many inputs treats the ones it cannot read.

    clip-text-spot train --config=configs/fasttcm.py:demo --workdir=runs/fasttcm_demo
    clip-text-spot predict --workdir=runs/fasttcm_demo photos/
    clip-text-spot COMMAND --help

One console script with sub-commands (installed by ``pip install``; ``python -m clip_text_spot COMMAND`` is the
same). Each sub-command runs its module exactly as ``python -m clip_text_spot.MODULE`` does, with the rest of the
command line, so options, help and exit status are the module's own.

``train`` takes ``--config`` as a path, as ``clip_text_spot.main`` does; the configs are not part of the installed
package (they live in the checkout's ``configs/``). Since config files import their siblings as ``configs.X``,
``main`` makes the folder holding the file importable as ``configs`` first (:func:`expose_config_package`), so
``--config=/path/to/checkout/configs/NAME.py`` works from any directory.

:class:`Skips` is the one policy for unreadable inputs (``predict``, ``predict_rec``, ``spot``, ``evaluate``): each
one is named on stderr and listed in the JSON summary's ``skipped``; the run fails only when nothing could be read,
or at the first unreadable input with ``--strict``.
"""

from __future__ import annotations

import functools
import importlib.util
import runpy
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

COMMANDS = {
    "train": ("clip_text_spot.main", "train a model from a config (resumes from --workdir)"),
    "predict": ("clip_text_spot.predict", "detect text in images (FastTCM / TCM)"),
    "predict-rec": ("clip_text_spot.predict_rec", "read word crops (DPTR)"),
    "spot": ("clip_text_spot.spot", "detect and read text in images"),
    "evaluate": ("clip_text_spot.evaluate", "official det / rec / e2e evaluation protocols"),
    "convert": ("clip_text_spot.convert", "import CLIP weights"),
    "prepare": ("clip_text_spot.data.prepare", "write a dataset as TFDS ArrayRecord"),
    "build-orp-bank": ("clip_text_spot.dptr.build_orp_bank", "DPTR's ORP bank of CLIP image tokens"),
}


class InputError(ValueError):
    """No input could be read, or (``--strict``) one could not."""


class Skips:
    """Reads inputs one by one, skipping (and reporting) those that cannot be read.

    ``read(name, load)`` returns ``load()``, or ``None`` when it raises ``ValueError`` or ``OSError`` (reader errors
    such as ``data.readers.common.ImageError`` are ``ValueError``\\ s): the input is then named on stderr and added to
    ``skipped``; with ``strict`` an :class:`InputError` naming it is raised instead. ``require(n)`` raises
    :class:`InputError` when ``n``, the number of inputs read, is 0; ``read_all`` reads a list of named inputs so.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.skipped: list[str] = []

    def read(self, name: str | None, load: Callable[[], T]) -> T | None:
        """``load()``, or ``None`` after reporting the input as skipped; ``name=None``: the error names it."""
        try:
            return load()
        except (ValueError, OSError) as err:
            where = name or getattr(err, "where", None) or "input"
            self.skip(where, getattr(err, "message", None) or str(err))
            return None

    def read_all(self, names: Iterable[str], load: Callable[[str], T], what: str = "input") -> list[tuple[str, T]]:
        """``(name, load(name))`` for each of ``names`` that can be read; :class:`InputError` when none can."""
        loaded = [(name, self.read(name, functools.partial(load, name))) for name in names]
        kept = [(name, value) for name, value in loaded if value is not None]
        self.require(len(kept), what)
        return kept

    def skip(self, name: str, reason: str) -> None:
        """Report ``name`` as unreadable (or raise with ``strict``)."""
        if self.strict:
            raise InputError(f"{name}: {reason} (--strict)")
        print(f"skipped {name}: {reason}", file=sys.stderr, flush=True)
        self.skipped.append(name)

    def require(self, read: int, what: str = "input") -> None:
        """Raise :class:`InputError` when none of the inputs could be read."""
        if read == 0:
            detail = f"all {len(self.skipped)} skipped" if self.skipped else "none given"
            raise InputError(f"no {what} could be read ({detail})")


def expose_config_package(argv: Sequence[str]) -> None:
    """Make the folder of the ``--config`` file importable as ``configs`` (its files import ``configs.common``)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        package = Path(value.split(":", 1)[0]).resolve().parent
        init = package / "__init__.py"
        if "configs" not in sys.modules and init.is_file():
            spec = importlib.util.spec_from_file_location("configs", init, submodule_search_locations=[str(package)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["configs"] = module
            spec.loader.exec_module(module)
        return


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    head = "usage: clip-text-spot COMMAND [options]   (COMMAND --help for its options)\n\ncommands:\n"
    return head + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int | None:
    """Run sub-command ``argv[0]`` with the remaining arguments (the console script's entry point)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"clip-text-spot: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, _ = COMMANDS[argv[0]]
    sys.argv = [f"clip-text-spot {argv[0]}", *argv[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
