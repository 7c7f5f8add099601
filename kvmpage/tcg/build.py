"""Assemble the TCG stub (guest/tcg.s) with GNU as, like the KVM agent.

python -m kvmpage.tcg.build           # guest/tcg.s -> kvmpage/tcg/stub.bin
python -m kvmpage.tcg.build --check   # reassemble and verify stub.bin is byte-identical
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvmpage.machine.build import REPO_DIR, BuildError, assemble

SOURCE = REPO_DIR / "guest" / "tcg.s"
STUB_BIN = Path(__file__).resolve().parent / "stub.bin"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify stub.bin instead of writing")
    args = parser.parse_args(argv)
    try:
        image = assemble(SOURCE)
    except BuildError as e:
        print(f"kvmpage.tcg.build: {e}", file=sys.stderr)
        return 2
    if args.check:
        shipped = STUB_BIN.read_bytes() if STUB_BIN.exists() else b""
        if shipped != image:
            print(
                f"{STUB_BIN} is stale: reassembling {SOURCE.name} gives {len(image)} bytes that "
                f"differ from the shipped {len(shipped)}; run python -m kvmpage.tcg.build",
                file=sys.stderr,
            )
            return 1
        print(f"stub.bin matches {SOURCE.name} ({len(image)} bytes)")
        return 0
    STUB_BIN.write_bytes(image)
    print(f"wrote {STUB_BIN} ({len(image)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
