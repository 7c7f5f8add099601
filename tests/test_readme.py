"""The README's CI snippet does what it says: the job fails when ``kvmpage verify`` or
``kvmpage dump --strict`` fails, with the first failure's status, and passes when both pass.
It used to end in ``exit $status`` after a ``dump --strict`` whose failure nobody recorded.

The snippet is taken from README.md as it is and run by ``sh`` and by ``bash -e`` (what CI
services run steps with), with a fake ``kvmpage`` whose exit statuses the test chooses (and,
on a host with /dev/kvm, with the real one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

FAKE = """#!/bin/sh
case "$1" in
  verify)
    if [ "$FAKE_VERIFY" = 2 ]; then
      echo '{"schema_version": 2, "command": "verify", "exit_code": 2, "error": "no /dev/kvm"}'
    else
      echo '{"runs": [{"verdict": "disagree", "virt": "0x1000", "virt_end": "0x1fff",
        "mappings": ["m"]}], "not_verified": [], "report": {"disagreements": []}}'
    fi
    exit "$FAKE_VERIFY" ;;
  dump) exit "$FAKE_DUMP" ;;
esac
exit 99
"""


def ci_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## In CI") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def _run(shell: list[str], snippet: str, workdir: Path, env: dict[str, str]) -> int:
    return subprocess.run(
        [*shell, "-c", snippet], cwd=workdir, env=env, capture_output=True, check=False
    ).returncode


@pytest.mark.parametrize("shell", [["sh"], ["bash", "-e"]], ids=["sh", "bash -e"])
@pytest.mark.parametrize(
    ("verify", "dump", "expected"),
    [(0, 0, 0), (1, 0, 1), (2, 0, 2), (0, 1, 1), (1, 1, 1), (2, 1, 2)],
)
def test_the_ci_snippet_fails_when_anything_fails(
    tmp_path: Path, shell: list[str], verify: int, dump: int, expected: int
) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"no {shell[0]} here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kvmpage"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FAKE_VERIFY": str(verify), "FAKE_DUMP": str(dump)}  # fmt: skip
    assert _run(shell, ci_snippet(), tmp_path, env) == expected


@pytest.mark.kvm
def test_the_ci_snippet_with_the_real_kvmpage(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("kvmpage")
    if not exe.exists():
        pytest.skip("the kvmpage console script is not installed next to this Python")
    env = {**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"}
    clean = ci_snippet().replace("my-layout.toml", str(ROOT / "examples" / "recursive.toml"))
    alias = ci_snippet().replace("my-layout.toml", str(ROOT / "examples" / "wx-alias.toml"))
    assert _run(["sh"], clean, tmp_path, env) == 0
    assert _run(["sh"], alias, tmp_path, env) == 1  # a W+X alias: --strict fails
