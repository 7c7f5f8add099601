"""The listing in the text format of Linux's ``/sys/kernel/debug/page_tables/*`` (ptdump).

So that a kernel developer can diff kvmpage's view of a dump against what their running kernel
printed. The rules are ptdump's, not the run listing's: a line ends where the raw flags, the
effective U/W/NX, the level or the region change (physical contiguity does not matter and no
physical address is printed); unmapped ranges are lines too, at the level of the non-present
entry; ``---[ name ]---`` starts each region; a region with a line limit (espfix) ends with
``... N entries skipped ...``. Levels are named as Linux names them: ``pgd`` (5-level only),
``p4d``, ``pud``, ``pmd``, ``pte``. Entries the CPU faults on (reserved bits) are printed with
their raw flags, as ptdump would, since it does not check reserved bits.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from kvmpage.layout.regions import Regions
from kvmpage.paging.arch import ADDRESS_MASK, PS, U64_MASK
from kvmpage.paging.leaves import Hole, Leaves

_USER, _RW, _PWT, _PCD, _GLB = 4, 2, 8, 0x10, 0x100
_NX = 1 << 63
_PAT_4K, _PAT_HUGE = 0x80, 0x1000
_FLAGS = ~ADDRESS_MASK & U64_MASK
_UNITS = "BKMGTPE"


def _level_names(levels: int) -> dict[int, str]:
    if levels == 5:
        return {5: "pgd", 4: "p4d", 3: "pud", 2: "pmd", 1: "pte"}
    return {4: "p4d", 3: "pud", 2: "pmd", 1: "pte"}


def _prot_text(prot: int, level: int) -> str:
    """ptdump's flag columns for a present entry's flags at ``level`` (1 = pte)."""
    if not prot & 1:
        return " " * 30
    huge = level in (2, 3)
    pse = huge and prot & PS
    pat = prot & (_PAT_HUGE if huge else _PAT_4K)
    return (
        ("USR " if prot & _USER else "    ")
        + ("RW " if prot & _RW else "ro ")
        + ("PWT " if prot & _PWT else "    ")
        + ("PCD " if prot & _PCD else "    ")
        + ("PSE " if pse else "    ")
        + ("PAT " if pat else "    ")
        + ("GLB " if prot & _GLB else "    ")
        + ("NX " if prot & _NX else "x  ")
    )


def _size_text(delta: int) -> str:
    unit = 0
    while delta and delta % 1024 == 0 and unit < len(_UNITS) - 1:
        delta //= 1024
        unit += 1
    return f"{delta:9d}{_UNITS[unit]}"


def _items(leaves: Leaves, holes: list[Hole]) -> Iterator[tuple[int, int, int, int, int]]:
    """``(virt, size, level, raw flags, effective U/W/NX)`` of every leaf, fault and hole, in
    virtual order (holes have flags 0)."""

    def of_leaves() -> Iterator[tuple[int, int, int, int, int]]:
        for group in leaves.groups:
            span, base = group.span, group.base
            for i in group.indices:
                raw = group.words[i]
                eff = (group.rights & raw & (_USER | _RW)) | (_NX if group.nx or raw & _NX else 0)
                yield base + i * span, span, group.level, raw & _FLAGS, eff

    faults = (
        (f.virt, f.size, f.level, f.raw & _FLAGS, f.raw & (_USER | _RW | _NX))
        for f in leaves.faults
    )
    empty = ((h.virt, h.size, h.level, 0, 0) for h in sorted(holes))
    return heapq.merge(of_leaves(), faults, empty)


def _split(
    items: Iterator[tuple[int, int, int, int, int]], starts: list[int]
) -> Iterator[tuple[int, int, int, int, int]]:
    """The items, cut where a region starts inside one (a long hole across a marker)."""
    k = 0
    for va, size, level, prot, eff in items:
        end = va + size
        while k < len(starts) and starts[k] <= va:
            k += 1
        while k < len(starts) and starts[k] < end:
            yield va, starts[k] - va, level, prot, eff
            va = starts[k]
            k += 1
        yield va, end - va, level, prot, eff


def ptdump_lines(leaves: Leaves, holes: list[Hole], regions: Regions, levels: int) -> list[str]:
    """The ptdump text of the scan ``leaves`` (with its ``holes``) under ``regions``."""
    names = _level_names(levels)
    markers = regions.markers
    lines: list[str] = []
    marker = -1
    printed = 0
    cur: list[int] | None = None  # start, end, level, prot, eff

    def flush() -> None:
        nonlocal printed
        if cur is None:
            return
        start, end, level, prot, _ = cur
        limit = markers[marker].max_lines if marker >= 0 else 0
        if not limit or printed < limit:
            top = min(end, U64_MASK)
            lines.append(
                f"0x{start:016x}-0x{top:016x}   {_size_text(end - start)} "
                f"{_prot_text(prot, level)}{names.get(level, '?')}"
            )
        printed += 1

    def enter(va: int) -> None:
        nonlocal marker, printed
        while marker + 1 < len(markers) and va >= markers[marker + 1].start:
            limit = markers[marker].max_lines if marker >= 0 else 0
            if limit and printed > limit:
                n = printed - limit
                lines.append(f"... {n} entr{'y' if n == 1 else 'ies'} skipped ... ")
            marker += 1
            printed = 0
            lines.append(f"---[ {markers[marker].name} ]---")

    for va, size, level, prot, eff in _split(_items(leaves, holes), [m.start for m in markers]):
        crossing = marker + 1 < len(markers) and va >= markers[marker + 1].start
        if (
            cur is not None
            and not crossing
            and cur[1] == va
            and cur[2] == level
            and cur[3] == prot
            and cur[4] == eff
        ):
            cur[1] = va + size
            continue
        flush()
        enter(va)
        cur = [va, va + size, level, prot, eff]
    flush()
    limit = markers[marker].max_lines if marker >= 0 else 0
    if limit and printed > limit:
        n = printed - limit
        lines.append(f"... {n} entr{'y' if n == 1 else 'ies'} skipped ... ")
    return lines
