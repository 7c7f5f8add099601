"""Assemble the TCG stub (guest/tcg.s) with GNU as, like the KVM agent.

python -m kvmpage.tcg.build           # guest/tcg.s -> kvmpage/tcg/stub.bin
python -m kvmpage.tcg.build --check   # reassemble and verify stub.bin is byte-identical
"""

from __future__ import annotations

from pathlib import Path

from kvmpage.machine.build import REPO_DIR, build_main

SOURCE = REPO_DIR / "guest" / "tcg.s"
STUB_BIN = Path(__file__).resolve().parent / "stub.bin"


def main(argv: list[str] | None = None) -> int:
    """``python -m kvmpage.tcg.build [--check]``: the TCG stub."""
    return build_main(argv, SOURCE, STUB_BIN, "kvmpage.tcg.build", __doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
