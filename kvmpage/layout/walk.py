"""A readable level-by-level walk of one virtual address, with hardware semantics."""

from __future__ import annotations

from dataclasses import dataclass

from kvmpage.layout.dump import flag_names
from kvmpage.layout.scan import Rights
from kvmpage.memory import PhysMemory

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
_LEVEL_NAME = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One level of a walk: which entry was read, what it held, the rights so far."""

    level: int
    index: int
    entry_addr: int
    raw: int
    rights: Rights


@dataclass(frozen=True, slots=True)
class Walk:
    """The steps of a walk and its end: the physical address, or why it stopped."""

    va: int
    steps: tuple[WalkStep, ...]
    phys: int | None
    page_size: int | None
    stop: str | None  #: why no translation (not present, reserved bit), None when mapped


def walk(memory: PhysMemory, p4_phys: int, va: int) -> Walk:
    """Walk ``va`` from the level-4 table at ``p4_phys`` as the CPU does."""
    steps: list[WalkStep] = []
    table = p4_phys
    writable = user = executable = True
    for level in (4, 3, 2, 1):
        index = (va >> (3 + 9 * level)) & 511
        entry_addr = table + 8 * index
        raw = memory.read_u64(entry_addr)
        writable &= bool(raw & 2)
        user &= bool(raw & 4)
        executable &= not raw >> 63
        steps.append(WalkStep(level, index, entry_addr, raw, Rights(writable, user, executable)))
        if not raw & 1:
            return Walk(va, tuple(steps), None, None, f"level-{level} entry not present")
        if raw & 0x80 and level == 4:
            return Walk(va, tuple(steps), None, None, "PS set in a level-4 entry (reserved)")
        if level == 1 or raw & 0x80:
            span = 1 << (12 + 9 * (level - 1))
            phys = (raw & ADDRESS_MASK & ~(span - 1)) | (va & (span - 1))
            return Walk(va, tuple(steps), phys, span, None)
        table = raw & ADDRESS_MASK
    raise AssertionError("unreachable")


def format_steps(steps: tuple[WalkStep, ...] | list[WalkStep]) -> list[str]:
    """One text line per level: index, entry address, raw value, flags, rights so far."""
    lines = []
    for s in steps:
        flags = flag_names(s.raw & ~ADDRESS_MASK & ((1 << 64) - 1)) or "-"
        rights = str(s.rights) if s.raw & 1 else "-"
        lines.append(
            f"  {_LEVEL_NAME[s.level]:<4} [{s.index:3d}] @ {s.entry_addr:#012x} = {s.raw:#018x}  "
            f"{flags:<28} so far: {rights}"
        )
    return lines


def steps_of(va: int, entries: tuple[int, ...], addrs: tuple[int, ...]) -> list[WalkStep]:
    """`WalkStep` records for a walk given as raw entries and their addresses (PML4E first)."""
    steps = []
    writable = user = executable = True
    for i, (raw, addr) in enumerate(zip(entries, addrs, strict=True)):
        level = 4 - i
        writable &= bool(raw & 2)
        user &= bool(raw & 4)
        executable &= not raw >> 63
        index = (va >> (3 + 9 * level)) & 511
        steps.append(WalkStep(level, index, addr, raw, Rights(writable, user, executable)))
    return steps


def format_walk(memory: PhysMemory, p4_phys: int, va: int) -> list[str]:
    """The walk of ``va`` as text lines, one per level, then the result."""
    return walk_lines(walk(memory, p4_phys, va))


def walk_lines(w: Walk) -> list[str]:
    """A `Walk` as text lines: a heading, one line per level, then where it ended."""
    lines = [f"walk of {w.va:#018x}", *format_steps(w.steps)]
    if w.phys is None:
        lines.append(f"  -> not mapped: {w.stop} (an access faults with #PF)")
    else:
        assert w.page_size is not None
        lines.append(f"  -> physical {w.phys:#x} ({w.page_size >> 10} KiB page)")
    return lines
