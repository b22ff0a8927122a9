"""The installable package: a wheel built offline from a copy of the sources holds the one package with its assets
and the ``clip-text-spot`` command, installs into a fresh venv, and works from another directory; the dependency
ranges of pyproject.toml contain the versions requirements*.txt pin."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built without network or build isolation (setuptools from this environment) from a copy of the
    sources, so the checkout gets no build/ or egg-info folders."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "clip_text_spot", src / "clip_text_spot", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    run([*cmd, "-w", tmp / "dist", src])
    (path,) = (tmp / "dist").glob("clip_text_spot-*.whl")
    return path


def test_wheel_holds_one_package_with_its_assets_and_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"clip_text_spot", f"{wheel.name.rsplit('-', 3)[0]}.dist-info"}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clip_text_spot").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))  # folders without __init__.py too
    assert "clip_text_spot/assets/bpe_simple_vocab_16e6.txt.gz" in names
    assert not [n for n in names if "__pycache__" in n]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "clip-text-spot = clip_text_spot.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_and_runs_from_another_directory(wheel, tmp_path):
    """Installed with pip (no index, no dependencies) into a fresh venv that sees this environment's packages
    through a .pth line (so nothing is downloaded); the checkout is not on its path."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = {Path(p) for p in site.getsitepackages()} | {Path(sysconfig.get_path("purelib"))}
    (purelib / "deps.pth").write_text("\n".join(str(p) for p in sorted(ours)) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = (
        "import clip_text_spot; from clip_text_spot.models.clip.tokenizer import CLIPTokenizer; "
        "print(clip_text_spot.__file__); print(CLIPTokenizer(context_length=8)('a photo')['input_ids'].tolist()); "
        f"from clip_text_spot.cli import expose_config_package; expose_config_package(['--config={ROOT}/configs/"
        "fasttcm.py:demo']); from configs import fasttcm; print(fasttcm.get_config('demo').task)"
    )
    out = run([python, "-c", check], cwd=elsewhere, env=env).stdout.splitlines()
    assert Path(out[0]).is_relative_to(purelib)  # the installed copy, with its bundled BPE vocabulary
    assert out[1] == "[[49406, 320, 1125, 49407, 0, 0, 0, 0]]"  # OpenAI clip.tokenize("a photo")
    assert out[2] == "fasttcm"  # a config of the checkout, importing configs.common, from another directory
    script = venv / "bin" / "clip-text-spot"
    usage = run([script, "--help"], cwd=elsewhere, env=env).stdout
    assert all(f"  {c} " in usage for c in ("train", "predict", "predict-rec", "spot", "evaluate", "convert"))


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.mark.parametrize(
    "requirements,declared",
    [
        ("requirements.txt", PYPROJECT["project"]["dependencies"]),
        ("requirements-dev.txt", PYPROJECT["project"]["optional-dependencies"]["dev"]),
    ],
)
def test_pinned_versions_lie_in_the_declared_ranges(requirements, declared):
    pins = _pins(requirements)
    ranges = {canonicalize_name(r.name): r.specifier for r in map(Requirement, declared)}
    assert set(pins) == set(ranges)
    for name, version in pins.items():
        assert ranges[name].contains(version), (name, version, str(ranges[name]))


def test_command_lists_and_checks_subcommands(capsys):
    """(``python -m clip_text_spot predict`` runs in tests/test_spot_demo.py.)"""
    from clip_text_spot import cli

    assert cli.main(["--help"]) == 0 and "predict-rec" in capsys.readouterr().out
    assert cli.main([]) == 2 and "commands:" in capsys.readouterr().out
    assert cli.main(["detect"]) == 2 and "unknown command 'detect'" in capsys.readouterr().err
