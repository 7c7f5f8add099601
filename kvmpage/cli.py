"""The ``kvmpage`` command.

    kvmpage dump            the built-in layout's mappings, coalesced, as the CPU would see them
    kvmpage walk VA         the software walk of one address through the built-in layout

Exit status: 0 on success, 2 when the command could not run (with the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvmpage.addr import VirtAddr
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.dump import coalesce, format_runs, human_size
from kvmpage.layout.scan import scan
from kvmpage.layout.spec import BuiltLayout, LayoutError, build
from kvmpage.layout.walk import format_walk
from kvmpage.panic import Panic

EXAMPLES = """\
examples:
  kvmpage dump                       list the built-in layout's mappings
  kvmpage walk 0x601234              walk one user-data address level by level
  kvmpage walk 0xffff888000001000    walk an address of the physical-memory window
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmpage",
        description="x86-64 page tables built in Python, checked against the CPU through KVM.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dump = sub.add_parser(
        "dump",
        help="list the mappings of the built-in layout, coalesced into runs",
        description="Build the built-in layout with the software mapper and list every mapping "
        "as the CPU would see it: runs of pages with the same attributes, their physical "
        "addresses, page size, effective rights and leaf flags.",
    )
    dump.set_defaults(func=cmd_dump)
    walk = sub.add_parser(
        "walk",
        help="show the walk of one virtual address through the built-in layout",
        description="Walk VA through the built-in layout level by level: index, entry address, "
        "raw entry, decoded flags and the effective rights so far, then the translation.",
    )
    walk.add_argument("va", metavar="VA", help="virtual address (0x... hex or decimal)")
    walk.set_defaults(func=cmd_walk)
    return parser


def _header(built: BuiltLayout) -> str:
    spec = built.spec
    tables = built.allocator.in_use()
    extra = f", recursive slot {spec.recursive_index}" if spec.recursive_index is not None else ""
    return (
        f"layout {spec.name!r}: {spec.kind} mapper, {human_size(spec.memory_size)} physical "
        f"memory, level-4 table at {built.p4_phys:#x}, {tables} table frames{extra}"
    )


def cmd_dump(args: argparse.Namespace) -> int:
    """``kvmpage dump``."""
    built = build(builtin_layout())
    try:
        skip = frozenset() if built.spec.recursive_index is None else {built.spec.recursive_index}
        runs = list(coalesce(scan(built.memory, built.p4_phys, skip_p4=frozenset(skip))))
        print(_header(built))
        print("\n".join(format_runs(runs)))
        total = sum(r.size for r in runs)
        print(f"{len(runs)} runs, {human_size(total)} mapped (software walk; no hardware check)")
    finally:
        built.close()
    return 0


def cmd_walk(args: argparse.Namespace) -> int:
    """``kvmpage walk VA``."""
    try:
        value = int(args.va, 0)
    except ValueError:
        raise LayoutError(f"VA must be an integer like 0x601000, got {args.va!r}") from None
    try:
        va = VirtAddr.try_new(value)
    except ValueError as e:
        raise LayoutError(str(e)) from None
    built = build(builtin_layout())
    try:
        print(_header(built))
        print("\n".join(format_walk(built.memory, built.p4_phys, va._v)))
        result = built.mapper.translate(va)
        print(f"mapper.translate: {result}")
    finally:
        built.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kvmpage`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (LayoutError, Panic, OSError) as e:
        print(f"kvmpage {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
