"""The walk of one virtual address as text: one line per level, then where it ended.

The walk itself is `kvmpage.paging.walk.walk` (the one software walk); this module only
presents it, with the rights granted so far at each level under the CPU state.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmpage.layout.dump import flag_names
from kvmpage.memory import PhysicalMemory
from kvmpage.paging.arch import ADDRESS_MASK, LEVEL_NAMES, U64_MASK, CpuState, size_text
from kvmpage.paging.walk import ABSENT, Rights, Step, Walk, rights_of, walk

__all__ = ["format_steps", "format_walk", "steps_of", "walk_lines"]

_DEFAULT_CPU = CpuState()


def steps_of(va: int, entries: Sequence[int], addrs: Sequence[int], levels: int = 4) -> list[Step]:
    """`Step` records for a walk given as raw entries and their addresses (top level first)."""
    return [
        Step(levels - i, (va >> (3 + 9 * (levels - i))) & 511, addr, raw)
        for i, (raw, addr) in enumerate(zip(entries, addrs, strict=True))
    ]


def rights_so_far(steps: Sequence[Step], cpu: CpuState = _DEFAULT_CPU) -> list[Rights | None]:
    """The rights the entries down to each step grant together (None past a non-present one)."""
    out: list[Rights | None] = []
    for i, s in enumerate(steps):
        out.append(rights_of([t.raw for t in steps[: i + 1]], cpu) if s.raw & 1 else None)
    return out


def format_steps(steps: Sequence[Step], cpu: CpuState = _DEFAULT_CPU) -> list[str]:
    """One text line per level: index, entry address, raw value, flags, rights so far."""
    lines = []
    for s, rights in zip(steps, rights_so_far(steps, cpu), strict=True):
        flags = flag_names(s.raw & ~ADDRESS_MASK & U64_MASK) or "-"
        lines.append(
            f"  {LEVEL_NAMES[s.level]:<4} [{s.index:3d}] @ {s.entry_addr:#012x} = {s.raw:#018x}  "
            f"{flags:<28} so far: {rights if rights is not None else '-'}"
        )
    return lines


def format_walk(
    memory: PhysicalMemory, root: int, va: int, cpu: CpuState = _DEFAULT_CPU, **kwargs: object
) -> list[str]:
    """The walk of ``va`` as text lines, one per level, then the result."""
    return walk_lines(walk(memory, root, va, cpu, **kwargs), cpu)  # type: ignore[arg-type]


def walk_lines(w: Walk, cpu: CpuState = _DEFAULT_CPU) -> list[str]:
    """A `Walk` as text lines: a heading, one line per level, then where it ended."""
    lines = [f"walk of {w.va:#018x}", *format_steps(w.steps, cpu)]
    if w.phys is None:
        if not w.steps:  # not canonical: the reason says what happens
            lines.append(f"  -> {w.reason}")
        elif w.stop == ABSENT:
            lines.append(f"  -> unknown: {w.reason}")
        else:
            lines.append(f"  -> not mapped: {w.reason} (an access faults with #PF)")
    else:
        assert w.page_size is not None
        lines.append(f"  -> physical {w.phys:#x} ({size_text(w.page_size)} page)")
    return lines
