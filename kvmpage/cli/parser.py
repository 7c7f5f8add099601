"""The ``kvmpage`` command line: the commands, their options and their ``--help`` texts.

`build_parser` is all argparse; what each command does is in its ``*_cmd`` module, and how a
run ends (exit status, one-line errors, JSON error documents) in `kvmpage.cli.main`.
"""

from __future__ import annotations

import argparse

from kvmpage.cli import args as arg
from kvmpage.cli.args import Parser
from kvmpage.cli.image_args import add_image_args, hex_value

__all__ = ["EXAMPLES", "build_parser"]

EXAMPLES = """\
examples:
  kvmpage verify                          check the built-in layout against the CPU
  kvmpage verify examples/kernel.toml     check a layout file (exit 1 on any disagreement)
  kvmpage verify --json > report.json     machine-readable result for CI (docs/json-schema.md)
  kvmpage walk 0x601234                   walk one address, then read/write/fetch it at CPL3/0
  kvmpage dump examples/wx-alias.toml     list the mappings and audit W+X, also across aliases
  kvmpage dump a.toml --diff b.toml       what changed between two layouts
  kvmpage host                            which oracle checks what on this host
  kvmpage image info guest.elf            what a memory image (QEMU dump, vmcore, LiME) holds
  kvmpage dump --image guest.elf          its kernel's mappings, as the CPU walks them
  kvmpage verify --image guest.elf        its kernel's own tables, checked on the CPU
  kvmpage fuzz --seed 1 --seconds 60      differential campaign; reproducers in ./fuzz-reproducers
  kvmpage matrix --sample 20000 --seed 1  the permission matrix, a sample covering every value

exit status: 0 passed, 1 found a problem, 2 could not run (reason on stderr),
141 stdout closed early, 130/143 interrupted by Ctrl-C/SIGTERM (docs/json-schema.md)
"""

_VERIFY_EXAMPLES = """\
examples:
  kvmpage verify
  kvmpage verify examples/kernel.toml
  kvmpage verify examples/recursive.toml --json | jq .ok
  kvmpage verify --cpl3-only --seed 7 big.toml
  kvmpage verify --oracle tcg             QEMU's TCG MMU instead of KVM (1 GiB pages, no /dev/kvm)
  kvmpage verify --oracle both            KVM and TCG side by side; a difference is a finding
  kvmpage verify --image guest.elf --oracle tcg   a memory image's own tables on TCG (5-level too)

exit status: 0 every probe that ran agreed (the output says what did not run), 1 any
disagreement, or with --strict anything not verified or an audit finding, 2 could not run
"""
_WALK_EXAMPLES = """\
examples:
  kvmpage walk 0x601234                   a user data page of the built-in layout
  kvmpage walk 0x603000                   the hole: every probe faults
  kvmpage walk 0xffff888000001000         the physical-memory window (the level-4 table)
  kvmpage walk 0x400000 examples/kernel.toml --software-only

exit status: 0 the CPU did what the software walk predicts, 1 it did not, 2 could not run
"""
_DUMP_EXAMPLES = """\
examples:
  kvmpage dump
  kvmpage dump examples/wx-alias.toml --strict   exit 1 on any audit finding
  kvmpage dump examples/kernel.toml --diff examples/kernel-hardened.toml

exit status: 0 ok, 1 an audit finding with --strict or a difference with --diff, 2 could not
run
"""
_FUZZ_EXAMPLES = """\
examples:
  kvmpage fuzz                            one minute, a random seed (printed first)
  kvmpage fuzz --seed 42 --seconds 600    repeat a campaign, longer
  kvmpage fuzz --seed 42 --json | jq .failures

exit status: 0 every step agreed, 1 a case disagreed (reproducer saved), 2 could not run
"""
_IMAGE_EXAMPLES = """\
examples:
  kvmpage image info guest.elf                 format, CPUs, CR3, kernel release, leaves
  kvmpage image strip guest.elf tables.elf     page-table pages only (shareable)
  kvmpage dump --image guest.elf               the listing and the audit
  kvmpage verify --image guest.elf             the kernel's own tables on the CPU
"""
_MATRIX_EXAMPLES = """\
examples:
  kvmpage matrix                          a sample of 20,000 combinations (seed 0)
  kvmpage matrix --sample 50000 --seed 7  another sample; the same seed gives the same one
  kvmpage matrix --full                   everything (about 2 million combinations)
  kvmpage matrix --full --shard 2/4 --json > part2.json     one of four parts, for a CI runner
  kvmpage matrix --merge part1.json part2.json part3.json part4.json

exit status: 0 the CPU agrees with the permission model on every combination, 1 any
disagreement, 2 could not run (or --merge: a shard is missing)
"""
_HOST_EXAMPLES = """\
examples:
  kvmpage host
  kvmpage host --json | jq .oracles
  kvmpage host --oracle tcg               what QEMU's TCG can check (no /dev/kvm needed)
"""


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for
    (importlib.metadata costs every other command about 15 ms of start-up)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("kvmpage")
        except PackageNotFoundError:
            number = "(not installed)"
        print(f"kvmpage {number}")  # on stdout, as argparse's own version action
        parser.exit()


def _common(quiet: bool = True, device: bool = True) -> Parser:
    p = Parser(add_help=False)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress display on stderr")
    if device:
        p.add_argument(
            "--device", default="/dev/kvm", metavar="PATH", help="KVM device (default /dev/kvm)"
        )
    return p


def _layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "layout",
        metavar="LAYOUT",
        nargs="?",
        help="TOML layout file (docs/layout.md); default: the built-in layout",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kvmpage`` command line: every command, its options, help texts and examples."""
    from kvmpage.layout.audit import KINDS

    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="kvmpage",
        description="x86-64 page tables built in Python, checked against the CPU through KVM.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser(
        "verify",
        parents=[_common()],
        help="build a layout on KVM and check every mapping against the CPU",
        description="Build LAYOUT's tables (or copy a memory image's, --image) into a guest on "
        "KVM (or QEMU's TCG MMU, --oracle), read, write and execute through every mapping (and "
        "the holes next to them) at CPL3 and CPL0, compare with the software's prediction, and "
        "print the mappings with a verdict per oracle.",
        epilog=_VERIFY_EXAMPLES,
        formatter_class=fmt,
    )
    _layout_arg(v)
    v.add_argument(
        "--seed", type=arg.seed, default=0, help="seed of the sample in large layouts (0..2**32-1)"
    )
    v.add_argument("--cpl3-only", action="store_true", help="skip the (slower) CPL0 probes")
    v.add_argument(
        "--all",
        action="store_true",
        help="probe every page with the full set (read/write/fetch at CPL3 and CPL0) instead of "
        "sampling layouts of more than 2048 pages",
    )
    v.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 unless everything was verified: no probe left out, no sampled page, no "
        "feature the layout uses that this host cannot check, no audit finding (kvmpage dump)",
    )
    v.add_argument(
        "--limit",
        type=arg.integer(0),
        default=10,
        help="disagreements shown in full (default 10)",
    )
    v.add_argument(
        "--oracle",
        choices=("kvm", "tcg", "both"),
        default="kvm",
        help="what checks the tables: kvm (the CPU, /dev/kvm; default), tcg (QEMU's TCG MMU "
        "through Unicorn, no /dev/kvm needed: pip install 'kvmpage[tcg]'), or both, side by "
        "side; with --image too (a 5-level image runs on tcg only where KVM has no LA57: both "
        "then says KVM did not run)",
    )
    add_image_args(v)
    v.add_argument(
        "--all-leaves",
        action="store_true",
        dest="all_leaves",
        help="with --image: probe every leaf fully (default: a sample that covers "
        "every run and every distinct level/flags/rights)",
    )
    v.set_defaults(func="verify")

    w = sub.add_parser(
        "walk",
        parents=[_common()],
        help="walk one address level by level, then probe it on the CPU",
        description="Walk VA through LAYOUT level by level (index, entry address, raw entry, "
        "flags, rights so far), then read, write and fetch its page at CPL3 and CPL0 on a KVM "
        "guest (or QEMU's TCG with --oracle tcg) and show what the CPU did.",
        epilog=_WALK_EXAMPLES,
        formatter_class=fmt,
    )
    w.add_argument("va", metavar="VA", help="virtual address (0x... hex or decimal)")
    _layout_arg(w)
    w.add_argument(
        "--software-only", action="store_true", help="only the software walk (no /dev/kvm)"
    )
    w.add_argument(
        "--oracle",
        choices=("kvm", "tcg"),
        default="kvm",
        help="what runs the probes: kvm (the CPU, /dev/kvm; default) or tcg (QEMU's TCG MMU "
        "through Unicorn, no /dev/kvm needed; also 5-level tables and 1 GiB pages)",
    )
    add_image_args(w)
    w.set_defaults(func="walk")

    d = sub.add_parser(
        "dump",
        parents=[_common(device=False)],
        help="list the mappings, audit them (W+X also across aliases...), diff two layouts",
        description="Build LAYOUT with the software mapper (or read a memory image with "
        "--image) and list every mapping as the CPU would see it: runs of pages with the same "
        "attributes, their physical addresses, page size, effective rights and leaf flags. "
        "Then an audit: W+X, also a frame writable through one address and executable through "
        "another, user pages in the kernel half, writable page tables, user frames the kernel "
        "maps executable, and with KPTI what the user tables map of the kernel. No KVM needed.",
        epilog=_DUMP_EXAMPLES,
        formatter_class=fmt,
    )
    _layout_arg(d)
    d.add_argument(
        "--diff",
        metavar="OTHER",
        help="compare with another layout (or 'builtin'); with --image, another image",
    )
    d.add_argument("--strict", action="store_true", help="exit 1 when the audit finds anything")
    d.add_argument(
        "--limit", type=arg.integer(0), default=20, help="audit findings shown (default 20)"
    )
    d.add_argument(
        "--allow",
        action="append",
        choices=sorted(KINDS),
        metavar="KIND",
        help=f"drop audit findings of KIND (repeatable): {', '.join(sorted(KINDS))}",
    )
    add_image_args(d)
    d.add_argument(
        "--range",
        metavar="START-END",
        help="only this virtual range (hex; "
        "START-END or START+SIZE such as 0xffff888000000000+1G); images only",
    )
    d.add_argument(
        "--format",
        choices=("text", "ptdump"),
        default="text",
        help="text (runs with physical addresses) or ptdump (Linux's "
        "/sys/kernel/debug/page_tables format); images only",
    )
    d.add_argument(
        "--diff-cr3",
        metavar="HEX|kpti",
        help="compare with the tables of another "
        "CR3 of the same image ('kpti': the other half of a KPTI pair); images only",
    )
    d.add_argument(
        "--include-recursive",
        action="store_true",
        help="also list what a self-referencing top-level slot maps; images only",
    )
    d.set_defaults(func="dump")

    h = sub.add_parser(
        "host",
        parents=[_common()],
        help="what this host's KVM can verify, and how that was established",
        description="Describe the KVM behind --device: the hypervisor kind, which oracle "
        "answers CPL3 and CPL0 accesses, and each paging feature with the evidence from a "
        "guest that tried it.",
        epilog=_HOST_EXAMPLES,
        formatter_class=fmt,
    )
    h.add_argument(
        "--oracle",
        choices=("kvm", "tcg"),
        default="kvm",
        help="describe KVM (default) or the tcg oracle (QEMU's TCG; needs no /dev/kvm)",
    )
    h.set_defaults(func="host")

    i = sub.add_parser(
        "image",
        help="what a memory image holds; strip it down to its page tables",
        description="Memory images (QEMU dump-guest-memory, kdump vmcores in ELF form, LiME, raw "
        "physical memory): 'info' says what one holds, 'strip' writes a small ELF core with only "
        "its page-table pages and notes (to share a layout without the memory's contents).",
        epilog=_IMAGE_EXAMPLES,
        formatter_class=fmt,
    )
    isub = i.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    info = isub.add_parser(
        "info",
        parents=[_common(device=False)],
        help="format, segments, CPUs and their control registers, kernel release, leaves",
        description="Say what a memory image holds: format, physical segments, CPUs with CR0, "
        "CR3, CR4, the kernel release (VMCOREINFO), paging mode, and the leaves per page size "
        "under the chosen CPU's CR3.",
    )
    info.add_argument("file", metavar="FILE", help="the memory image")
    add_image_args(info, with_image=False)
    info.set_defaults(func="image-info")
    st = isub.add_parser(
        "strip",
        parents=[_common(quiet=False, device=False)],
        help="write a small ELF core with only the page-table pages and notes",
        description="Write OUT: an ELF core with every page-table page reachable from the chosen "
        "CR3 (and from each --also-cr3), byte for byte, and the notes (CPU state, VMCOREINFO), "
        "but none of the memory they map. kvmpage lists the same mappings from OUT as from IN.",
    )
    st.add_argument("file", metavar="IN", help="the memory image")
    st.add_argument("out", metavar="OUT", help="the stripped ELF core to write")
    add_image_args(st, with_image=False)
    st.add_argument(
        "--also-cr3",
        action="append",
        type=hex_value,
        metavar="HEX",
        default=[],
        help="also keep the tables of this CR3 (repeatable)",
    )
    st.add_argument(
        "--kpti",
        action="store_true",
        help="also keep the other half of a KPTI pair (CR3 xor 0x1000)",
    )
    st.set_defaults(func="image-strip")

    f = sub.add_parser(
        "fuzz",
        parents=[_common(device=False)],
        help="random layouts and operation sequences, every step verified on KVM",
        description="A differential campaign: random mapper kinds, mappings (every page size "
        "the host can verify, random flags) and operations (map_to, unmap, update_flags, "
        "set_flags_p4/p3/p2_entry, clean_up), each followed by its flush and a full "
        "verification on a fresh guest. A disagreeing case is shrunk and saved as a layout "
        "file with the operations as comments.",
        epilog=_FUZZ_EXAMPLES,
        formatter_class=fmt,
    )
    f.add_argument(
        "--seed", type=arg.seed, default=None, help="campaign seed, 0..2**32-1 (default: random)"
    )
    f.add_argument(
        "--seconds", type=arg.seconds, default=60.0, help="time budget, > 0 (default 60)"
    )
    f.add_argument(
        "--cases", type=arg.integer(1), default=1_000_000, help="at most this many cases (>= 1)"
    )
    f.add_argument(
        "--length",
        type=arg.integer(1, 1000),
        default=12,
        help="operations per case, 1..1000 (default 12)",
    )
    f.add_argument(
        "--save",
        default="fuzz-reproducers",
        metavar="DIR",
        help="where reproducers go (checked before the campaign starts)",
    )
    f.set_defaults(func="fuzz")

    mx = sub.add_parser(
        "matrix",
        parents=[_common()],
        help="the permission matrix (entry bits x CPU state x access) checked on KVM",
        description="Enumerate combinations of entry bits at every level of the walk (P, W, "
        "U, NX, A, D, PS, one reserved bit at a time, attribute bits the walk must ignore), "
        "CPU state (CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC) and access (CPL0/CPL3 "
        "x read/write/fetch, once or after a priming read); build each as fresh page tables in "
        "a KVM guest, probe it, and compare fault, error code, CR2, the frame reached and the "
        "A/D bits of every entry with kvmpage's permission model. docs/matrix.md explains it.",
        epilog=_MATRIX_EXAMPLES,
        formatter_class=fmt,
    )
    how = mx.add_mutually_exclusive_group()
    how.add_argument("--sample", type=int, metavar="N", default=None,
                     help="N combinations: a pairwise covering array (every value of every "
                     "dimension, every pair), then seeded random ones (default 20000)")  # fmt: skip
    how.add_argument(
        "--full",
        action="store_true",
        help="the full matrix (docs/matrix.md: about 2 million combinations)",
    )
    how.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT",
        help="combine the --json reports of shards into one report",
    )
    mx.add_argument("--seed", type=int, default=0, help="seed of the selection (default 0)")
    mx.add_argument(
        "--shard",
        metavar="K/N",
        help="run the K-th of N disjoint parts (the same on every machine)",
    )
    mx.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="processes, each with its own VM (default: 1 for fewer than 100,000 "
                    "combinations, else one per CPU, at most 4)")  # fmt: skip
    mx.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="disagreements kept in full in the report (default 1000)",
    )
    mx.add_argument(
        "--show", type=int, default=10, help="disagreements printed in full (default 10)"
    )
    mx.set_defaults(func="matrix")
    return parser
