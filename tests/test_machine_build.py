"""The agent build (`kvmpage.machine.build`): reassembling the source gives the shipped
agent.bin byte for byte, and what cannot be built is a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmpage.machine import build


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as is not installed")
def test_reassembling_the_agent_reproduces_agent_bin() -> None:
    assert build.assemble() == build.AGENT_BIN.read_bytes()
    assert build.main(["--check"]) == 0


def test_build_without_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match="source checkout"):
        build.assemble(tmp_path / "agent.s")


def test_text_section_rejects_non_elf() -> None:
    with pytest.raises(build.BuildError, match="ELF64"):
        build.text_section(b"not an elf at all")
