"""The package as pip builds it from pyproject.toml: the wheel holds every module, the guest
agent, the TCG stub and ``py.typed``; it declares the ``kvmpage`` command, the pytest plugin,
no runtime dependency and the ``tcg`` extra; installed into a fresh environment, its
``kvmpage`` command works from a directory that is not the checkout.

The wheel is built offline (``--no-build-isolation``, with the setuptools of the ``dev``
extra) from a copy of the sources, so the checkout gets no ``build/`` or ``*.egg-info``.
``scripts/check_wheel.py`` does the same by hand, with the build isolation pip uses by default.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the files besides the modules that the installed package needs at run time
DATA_FILES = ("kvmpage/py.typed", "kvmpage/machine/agent.bin", "kvmpage/tcg/stub.bin")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of pyproject.toml, README.md and kvmpage/."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "kvmpage", src / "kvmpage", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = tmp_path_factory.mktemp("dist")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "--quiet", "--wheel-dir", str(out), str(src)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("kvmpage-*-py3-none-any.whl")
    return built


def _modules_in_the_checkout() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "kvmpage").rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_holds_every_module_and_the_data_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        missing = (_modules_in_the_checkout() | set(DATA_FILES)) - names
        assert not missing, sorted(missing)
        for name in DATA_FILES:  # the very bytes of the checkout (the agent is not rebuilt)
            assert z.read(name) == (ROOT / name).read_bytes(), name
    assert len(_modules_in_the_checkout()) > 100  # the check above is not vacuous
    outside = sorted(n for n in names if not n.startswith(("kvmpage/", "kvmpage-")))
    assert outside == [], "only the package and its metadata belong in the wheel"


def test_the_wheel_declares_the_command_the_plugin_and_the_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(z.read(info).decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(z.read(info.replace("METADATA", "entry_points.txt")).decode())
    assert entry_points["console_scripts"]["kvmpage"] == "kvmpage.cli:main"
    assert entry_points["pytest11"]["kvmpage"] == "kvmpage.pytest_plugin"
    requires = metadata.get_all("Requires-Dist") or []
    assert requires and all("extra ==" in r for r in requires), "running needs nothing else"
    assert any(r.startswith("unicorn") and 'extra == "tcg"' in r for r in requires), requires
    assert {"tcg", "dev"} <= set(metadata.get_all("Provides-Extra") or [])
    assert metadata["Requires-Python"] == ">=3.11"


@pytest.mark.kvm
def test_the_installed_command_works_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """The wheel in a fresh environment (no pip, no dependencies, nothing from the checkout on
    the path): ``kvmpage verify`` finds its agent, ``kvmpage host`` probes the host."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    install = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
               "install", "--no-deps", "--no-index", "--quiet", str(wheel)]  # fmt: skip
    proc = subprocess.run(install, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True)

    where = run(str(env_dir / "bin" / "python"), "-c", "import kvmpage; print(kvmpage.__file__)")
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    kvmpage = str(env_dir / "bin" / "kvmpage")
    verify = run(kvmpage, "verify", "--json")
    assert verify.returncode == 0, verify.stderr
    doc = json.loads(verify.stdout)
    assert doc["exit_code"] == 0 and doc["report"]["disagreements"] == []
    assert doc["report"]["probes"] > 1000
    host = run(kvmpage, "host")
    assert host.returncode == 0 and "hypervisor:" in host.stdout, host.stderr
    # without the tcg extra the tcg oracle says how to get it, and stops with status 2
    tcg = run(kvmpage, "verify", "--oracle", "tcg")
    assert tcg.returncode == 2 and "pip install 'kvmpage[tcg]'" in tcg.stderr, tcg.stderr
