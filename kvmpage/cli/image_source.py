"""What the commands share about memory images: opening one as the options ask, and saying
what it is (text and JSON). The options themselves are `kvmpage.cli.image_args`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from kvmpage.cli.errors import CliError
from kvmpage.cli.output import approx_size, hexa
from kvmpage.image import Image, PagingContext, open_image
from kvmpage.layout.dump import Run
from kvmpage.layout.regions import Regions, linux_regions, user_kernel_regions
from kvmpage.paging.leaves import Leaves
from kvmpage.x86 import ADDRESS_MASK


def open_source(args: argparse.Namespace, path: str | None = None) -> tuple[Image, PagingContext]:
    """Open ``path`` (default ``args.image``) and the context the options ask for. The caller
    closes the image."""
    image = open_image(path if path is not None else args.image)
    try:
        ctx = image.context(cpu=args.cpu, cr3=args.cr3, cr0=args.cr0, cr4=args.cr4, efer=args.efer)
    except BaseException:
        image.close()
        raise
    return image, ctx


def parse_range(text: str) -> tuple[int, int]:
    """``--range START-END`` (END inclusive when it ends in ``fff``, else exclusive) or
    ``START+SIZE`` (``+1G``, ``+0x200000``): the half-open virtual range ``[start, end)``."""
    try:
        if "+" in text:
            a, b = text.split("+", 1)
            start = int(a.replace("_", ""), 16)
            end = start + _size(b)
        else:
            a, b = text.split("-", 1)
            start, last = int(a.replace("_", ""), 16), int(b.replace("_", ""), 16)
            end = last + 1 if last & 0xFFF == 0xFFF else last
    except ValueError:
        raise CliError(
            f"--range {text!r}: expected START-END or START+SIZE in hex, e.g. "
            "0xffff888000000000-0xffff888100000000 or 0xffff888000000000+1G"
        ) from None
    if not 0 <= start < end <= 1 << 64:
        raise CliError(f"--range {text!r}: the range is empty or outside 64 bits")
    return start, end


def _size(text: str) -> int:
    t = text.strip().upper()
    for unit, shift in (("K", 10), ("M", 20), ("G", 30), ("T", 40)):
        if t.endswith(unit):
            return int(t[:-1], 0) << shift
    return int(t, 16)


def regions_for(image: Image, ctx: PagingContext, runs: Sequence[Run]) -> Regions:
    """Linux's region markers when the image is a Linux kernel's (VMCOREINFO), else the two
    halves."""
    if image.vmcoreinfo:
        return linux_regions(image.vmcoreinfo, ctx.levels, runs)
    return user_kernel_regions()


def self_slots(image: Image, ctx: PagingContext) -> frozenset[int]:
    """Top-level entries that point back at the top-level table (recursive slots): the tables
    seen as data, listed only on request."""
    words = image.memory.table_words(ctx.root)
    return frozenset(
        i
        for i, raw in enumerate(words)
        if raw & 1 and not raw & 0x80 and raw & ADDRESS_MASK == ctx.root
    )


def image_json(image: Image) -> dict[str, Any]:
    """The ``image`` object of every command's JSON for an image."""
    return {
        "path": image.path,
        "format": image.format,
        "description": image.description,
        "file_size": image.file_size,
        "memory_bytes": image.memory_bytes,
        "segments": [
            {"start": hexa(s.start), "end": hexa(s.end - 1), "file_offset": s.file_offset}
            for s in image.segments
        ],
        "dropped_segments": image.dropped,
        "cpus": len(image.cpus),
        "kernel_release": image.kernel_release,
        "stripped": bool(image.kvmpage_note.get("stripped")),
    }


def context_json(ctx: PagingContext) -> dict[str, Any]:
    """The ``context`` object: the registers used and where each came from."""
    cpu = ctx.cpu
    return {
        "cpu": ctx.cpu_index,
        "cr0": hexa(ctx.cr0),
        "cr3": hexa(ctx.cr3),
        "cr4": hexa(ctx.cr4),
        "efer": hexa(ctx.efer),
        "root": hexa(ctx.root),
        "pcid": None if ctx.pcid is None else hexa(ctx.pcid),
        "levels": ctx.levels,
        "sources": dict(ctx.sources),
        "notes": list(ctx.notes),
        "state": {
            "wp": cpu.wp,
            "smep": cpu.smep,
            "smap": cpu.smap,
            "nxe": cpu.nxe,
            "la57": cpu.la57,
        },
    }


def image_line(image: Image) -> str:
    """One line that says what the image is."""
    cpus = f"{len(image.cpus)} CPU{'s' if len(image.cpus) != 1 else ''}"
    kernel = f", kernel {image.kernel_release}" if image.kernel_release else ""
    stripped = ", stripped (page tables only)" if image.kvmpage_note.get("stripped") else ""
    n = len(image.segments)
    return (
        f"image {image.path}: {image.description}, {approx_size(image.memory_bytes)} of physical "
        f"memory in {n} segment{'s' if n != 1 else ''}, {cpus}{kernel}{stripped}"
    )


def context_lines(ctx: PagingContext) -> list[str]:
    """The registers used, then every assumption with the option that changes it."""
    return [ctx.describe(), *(f"note: {n}" for n in ctx.notes)]


def leaf_counts(leaves: Leaves) -> str:
    """``74210 leaves (4K: 74012, 2M: 198)``."""
    counts = leaves.count_by_size()
    names = {4096: "4K", 2 << 20: "2M", 1 << 30: "1G"}
    parts = ", ".join(f"{names[k]}: {v}" for k, v in sorted(counts.items()))
    return f"{len(leaves)} leaves" + (f" ({parts})" if parts else "")
