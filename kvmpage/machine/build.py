"""Assemble the guest agent with GNU as and extract its flat bytes.

    python -m kvmpage.machine.build           # guest/agent.s -> kvmpage/machine/agent.bin
    python -m kvmpage.machine.build --check   # reassemble and verify agent.bin is byte-identical

Every constant the agent needs comes from `layout` and `protocol` and is passed with
``--defsym``, so Python and assembly cannot drift apart. The agent is position independent; its
``.text`` must carry no relocations, which is checked, so no linker is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from kvmpage.machine import layout, protocol

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent.parent
SOURCE = REPO_DIR / "guest" / "agent.s"
AGENT_BIN = PACKAGE_DIR / "agent.bin"


class BuildError(Exception):
    """The agent could not be assembled, or the result is not a flat position-independent image."""


def assembler() -> str:
    """Path of GNU as (``$AS`` overrides)."""
    path = os.environ.get("AS") or shutil.which("as")
    if not path:
        raise BuildError("GNU as not found: install binutils (apt-get install binutils)")
    return path


def defsyms() -> list[str]:
    consts = {**layout.asm_constants(), **protocol.asm_constants()}
    args: list[str] = []
    for name, value in sorted(consts.items()):
        args += ["--defsym", f"{name}={value}"]
    return args


def assemble(source: Path = SOURCE) -> bytes:
    """Assemble ``source`` and return the flat bytes of its ``.text`` section."""
    if not source.is_file():
        raise BuildError(f"agent source {source} not found: building needs a source checkout")
    with tempfile.TemporaryDirectory(prefix="kvmpage-agent-") as tmp:
        obj = Path(tmp) / "agent.o"
        cmd = [assembler(), "--64", *defsyms(), "-o", str(obj), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"as failed ({proc.returncode}):\n{proc.stderr}")
        return text_section(obj.read_bytes())


def text_section(elf: bytes) -> bytes:
    """The ``.text`` bytes of a relocatable ELF64 object; refuse one with relocations."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise BuildError("not a little-endian ELF64 object")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    sections = []
    for i in range(shnum):
        name, stype, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        sections.append((name, stype, off, size))
    strtab_off = sections[shstrndx][2]

    def name_of(index: int) -> str:
        start = strtab_off + index
        return elf[start : elf.index(b"\0", start)].decode()

    text: bytes | None = None
    for name, stype, off, size in sections:
        sname = name_of(name)
        if sname == ".text":
            text = elf[off : off + size]
        elif stype in (4, 9) and size and sname.endswith(".text"):  # SHT_RELA / SHT_REL
            raise BuildError(
                f"agent .text has relocations ({sname}); it must be position independent"
            )
    if text is None:
        raise BuildError("no .text section in the assembled agent")
    return text


def build_main(
    argv: list[str] | None, source: Path, target: Path, module: str, description: str
) -> int:
    """The command line of a guest-code build: assemble ``source`` into ``target``, or with
    ``--check`` verify that the shipped ``target`` is what ``source`` assembles to (exit 1 when
    stale, 2 when it cannot be assembled). ``module`` names the command in messages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--check", action="store_true", help=f"verify {target.name} instead of writing it"
    )
    args = parser.parse_args(argv)
    try:
        image = assemble(source)
    except BuildError as e:
        print(f"{module}: {e}", file=sys.stderr)
        return 2
    if args.check:
        shipped = target.read_bytes() if target.exists() else b""
        if shipped != image:
            print(
                f"{target} is stale: reassembling {source.name} gives {len(image)} bytes that "
                f"differ from the shipped {len(shipped)}; run python -m {module}",
                file=sys.stderr,
            )
            return 1
        print(f"{target.name} matches {source.name} ({len(image)} bytes)")
        return 0
    target.write_bytes(image)
    print(f"wrote {target} ({len(image)} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kvmpage.machine.build [--check]``: the agent."""
    return build_main(argv, SOURCE, AGENT_BIN, "kvmpage.machine.build", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
