"""The command-line options for memory images (kept free of heavy imports: every command's
parser is built at start-up).

``--image FILE`` replaces a layout in ``dump``, ``walk`` and ``verify``; ``--cpu N`` chooses
whose registers to use, and ``--cr3``/``--cr0``/``--cr4``/``--efer`` (hex) replace any of them.
"""

from __future__ import annotations

import argparse


def hex_value(text: str) -> int:
    """A register value from the command line: hex, with or without ``0x`` (``_`` allowed)."""
    cleaned = text.strip().lower().replace("_", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a hex value like 0x1a2b000, got {text!r}"
        ) from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 64 bits")
    return value


def cpu_index(text: str) -> int:
    """``--cpu N``: a CPU number."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a CPU number like 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a CPU number is 0 or more, got {value}")
    return value


def add_image_args(p: argparse.ArgumentParser, *, with_image: bool = True) -> None:
    """``--image`` (unless the command takes the file positionally) and the CPU options."""
    g = p.add_argument_group("memory images")
    if with_image:
        g.add_argument(
            "--image",
            metavar="FILE",
            help="a memory image instead of a layout: QEMU dump-guest-memory, a kdump vmcore "
            "(ELF), LiME, or raw physical memory (raw needs --cr3)",
        )
    g.add_argument("--cpu", type=cpu_index, metavar="N", help="whose registers (default: CPU 0)")
    for reg, what in (
        ("cr3", "the top-level table (PCID bits are masked)"),
        ("cr0", "CR0 (WP)"),
        ("cr4", "CR4 (SMEP, SMAP, LA57, PCIDE)"),
        ("efer", "EFER (NXE; not in QEMU's note: assumed 0xd01)"),
    ):
        g.add_argument(
            f"--{reg}", type=hex_value, metavar="HEX", help=f"replace the image's {what}"
        )
