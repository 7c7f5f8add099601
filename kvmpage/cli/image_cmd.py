"""``kvmpage image info FILE`` and ``kvmpage image strip IN OUT``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from kvmpage.cli.errors import EXIT_OK, CliError
from kvmpage.cli.image_dump import kpti_partner, scan_view
from kvmpage.cli.image_source import (
    context_json,
    context_lines,
    image_json,
    image_line,
    leaf_counts,
    open_source,
)
from kvmpage.cli.output import approx_size, emit_json, hexa
from kvmpage.image import Image, ImageError, PagingContext
from kvmpage.image.strip import strip


def cmd_image(args: argparse.Namespace) -> int:
    """Dispatch ``image info`` / ``image strip``."""
    if args.func == "image-info":
        return _info(args)
    return _strip(args)


def _cpus(image: Image) -> list[dict[str, Any]]:
    out = []
    for c in image.cpus:
        out.append(
            {
                "index": c.index,
                "source": c.source,
                "cr0": None if c.cr0 is None else hexa(c.cr0),
                "cr2": None if c.cr2 is None else hexa(c.cr2),
                "cr3": None if c.cr3 is None else hexa(c.cr3),
                "cr4": None if c.cr4 is None else hexa(c.cr4),
                "cpl": c.cpl,
                "rip": None if "rip" not in c.regs else hexa(c.regs["rip"]),
            }
        )
    return out


def _cpu_line(c: dict[str, Any]) -> str:
    regs = " ".join(f"{k.upper()}={c[k]}" for k in ("cr0", "cr2", "cr3", "cr4") if c[k] is not None)
    where = f", CPL {c['cpl']}" if c["cpl"] is not None else ""
    rip = f", RIP {c['rip']}" if c["rip"] is not None else ""
    return f"  cpu {c['index']}: {regs or 'no control registers'}{where}{rip} ({c['source']})"


def _info(args: argparse.Namespace) -> int:
    image, ctx = _open(args)
    try:
        cpus = _cpus(image)
        kernel = image.kernel_root()
        leaves_text = ""
        counts: dict[str, int] = {}
        faults = 0
        error = None
        try:
            view = scan_view(image, ctx)
            counts = {str(k): v for k, v in sorted(view.leaves.count_by_size().items())}
            faults = len(view.leaves.faults)
            leaves_text = leaf_counts(view.leaves)
            pair = kpti_partner(view)
        except (ImageError, ValueError) as e:  # the image is fine, its tables are not
            error = str(e)
            pair = None
        if args.json:
            emit_json(
                {
                    "command": "image info",
                    "exit_code": EXIT_OK,
                    "image": image_json(image),
                    "cpu_notes": cpus,
                    "vmcoreinfo": image.vmcoreinfo,
                    "kernel_top_table": None
                    if kernel is None
                    else {"phys": hexa(kernel[0]), "from": kernel[1]},
                    "context": context_json(ctx),
                    "leaves": counts,
                    "faults": faults,
                    "kpti_pair": None if pair is None else hexa(pair.cr3),
                    "scan_error": error,
                    "kvmpage_note": image.kvmpage_note,
                }
            )
            return EXIT_OK
        print(image_line(image))
        print(f"file: {approx_size(image.file_size)} on disk")
        segs = ", ".join(f"{s.start:#x}-{s.end - 1:#x}" for s in image.segments[:8])
        more = f" and {len(image.segments) - 8} more" if len(image.segments) > 8 else ""
        print(f"segments: {segs}{more}")
        for d in image.dropped:
            print(f"  ignored: {d}")
        print(f"cpus: {len(cpus)}" + ("" if cpus else " (no CPU note)"))
        for c in cpus:
            print(_cpu_line(c))
        if image.kernel_release:
            print(f"kernel: {image.kernel_release} (VMCOREINFO)")
        if kernel is not None:
            print(f"kernel's top-level table: {kernel[0]:#x} ({kernel[1]})")
        print("walking: " + "\n".join(context_lines(ctx)))
        _paging_line(ctx)
        if error is not None:
            print(f"leaves: cannot scan: {error}")
        else:
            print(f"leaves: {leaves_text}; {faults} entries the CPU faults on")
        if pair is not None:
            print(f"KPTI: the other half of the pair is CR3 {pair.cr3:#x} (dump --diff-cr3 kpti)")
        if image.kvmpage_note.get("stripped"):
            note = image.kvmpage_note
            kept = note.get("cr3s")
            cr3s = ", ".join(str(c) for c in kept) if isinstance(kept, list) else "?"
            print(f"stripped by kvmpage from {note.get('source')} ({note.get('source_format')}): "
                  f"page tables of CR3 {cr3s}")  # fmt: skip
        return EXIT_OK
    finally:
        image.close()


def _paging_line(ctx: PagingContext) -> None:
    cpu = ctx.cpu
    bits = [
        f"{ctx.levels}-level",
        f"PCID {ctx.pcid:#x}" if ctx.pcid is not None else "no PCID",
        f"CR0.WP={int(cpu.wp)}",
        f"SMEP={int(cpu.smep)}",
        f"SMAP={int(cpu.smap)}",
        f"NXE={int(cpu.nxe)}",
    ]
    print("paging: " + ", ".join(bits))


def _open(args: argparse.Namespace) -> tuple[Image, PagingContext]:
    args.image = args.file
    return open_source(args)


def _strip(args: argparse.Namespace) -> int:
    if os.path.abspath(args.out) == os.path.abspath(args.file):
        raise CliError("OUT must not be IN: the image file is never written")
    image, ctx = _open(args)
    try:
        contexts = [ctx, *(ctx.with_cr3(c) for c in args.also_cr3)]
        if args.kpti:
            view = scan_view(image, ctx)
            partner = kpti_partner(view)
            if partner is None:
                raise CliError(f"--kpti: no KPTI pair at CR3 {ctx.cr3:#x}")
            contexts.append(partner)
        for c in contexts:
            if not image.memory.contains(c.root, 4096):
                raise ImageError(image.path, f"CR3 {c.cr3:#x}: its table is not in the image")
        counts = strip(image, contexts, args.out)
        if args.json:
            emit_json(
                {
                    "command": "image strip",
                    "exit_code": EXIT_OK,
                    "image": image_json(image),
                    "out": args.out,
                    "cr3s": [hexa(c.cr3) for c in contexts],
                    **counts,
                }
            )
        else:
            print(
                f"wrote {args.out}: {counts['tables']} page-table pages in {counts['segments']} "
                f"segments, {approx_size(counts['bytes'])} (from {approx_size(image.file_size)}); "
                f"CR3 {', '.join(f'{c.cr3:#x}' for c in contexts)}"
            )
        return EXIT_OK
    finally:
        image.close()
