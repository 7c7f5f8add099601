#!/usr/bin/env python3
"""Build the wheel as pip does for any user and check that it works on its own.

    .venv/bin/python scripts/check_wheel.py [--tcg] [--keep DIR]

1. ``pip wheel --no-deps``: the wheel, built with pip's default build isolation (setuptools
   from the index, as on a user's machine), from a copy of pyproject.toml, README.md and
   kvmpage/ (so the checkout gets no ``build/``);
2. a fresh virtual environment in a temporary directory, and ``pip install`` of that wheel
   (``kvmpage[tcg]`` with ``--tcg``: Unicorn from the index);
3. from a directory outside the checkout: ``kvmpage verify`` and ``kvmpage host`` (and
   ``kvmpage verify --oracle tcg`` with ``--tcg``), each of which must exit 0.

Prints each step and the wheel's non-module files; exits 1 at the first failure. The test
suite does the same offline (tests/test_packaging.py); this script is the by-hand check of
the real thing, network and all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(what: str, argv: list[str], cwd: Path | None = None) -> str:
    """Run ``argv``; print ``what`` and the outcome; stop the script if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"FAILED: {what} (exit status {proc.returncode})\n{proc.stdout}{proc.stderr}")
        raise SystemExit(1)
    print(f"ok: {what}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tcg", action="store_true", help="install kvmpage[tcg], try the tcg oracle")
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmpage-wheel-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src, dist, env = work / "src", work / "dist", work / "env"
        elsewhere = work / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(ROOT / "kvmpage", src / "kvmpage",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        pip = [sys.executable, "-m", "pip"]
        step("build the wheel", [*pip, "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)])
        (wheel,) = dist.glob("kvmpage-*.whl")
        with zipfile.ZipFile(wheel) as z:
            data = [n for n in z.namelist() if n.startswith("kvmpage/") and not n.endswith(".py")]
        print(f"    {wheel.name}: {', '.join(data)}")
        step("a fresh environment", [sys.executable, "-m", "venv", str(env)])
        target = f"{wheel}[tcg]" if args.tcg else str(wheel)
        install = [str(env / "bin" / "pip"), "install", "--quiet", target]
        step(f"pip install {Path(target).name}", install)
        kvmpage = str(env / "bin" / "kvmpage")
        out = step(f"kvmpage verify (in {elsewhere})", [kvmpage, "verify"], cwd=elsewhere)
        print(f"    {out.strip().splitlines()[-1]}")
        out = step("kvmpage host", [kvmpage, "host"], cwd=elsewhere)
        print(f"    {out.strip().splitlines()[1]}")
        if args.tcg:
            out = step("kvmpage verify --oracle tcg", [kvmpage, "verify", "--oracle", "tcg"],
                       cwd=elsewhere)  # fmt: skip
            print(f"    {out.strip().splitlines()[-1]}")
    print("the wheel works on its own")


if __name__ == "__main__":
    main()
