"""A ptdump-style listing: mappings coalesced into runs with the same attributes.

Consecutive pages are one run when they are virtually and physically contiguous, mapped at the
same level, with the same effective rights and the same leaf flags (ignoring A and D, which the
CPU sets as it goes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from kvmpage.paging.leaves import Leaf, Leaves
from kvmpage.paging.table import PageTableFlags
from kvmpage.paging.walk import RIGHTS, Rights
from kvmpage.x86 import ADDRESS_MASK, U64_MASK

_ACCESSED_DIRTY = 0x60
_FLAG_MASK = ~ADDRESS_MASK & U64_MASK
_LEVEL_NAME = {1: "4K", 2: "2M", 3: "1G"}


@dataclass(frozen=True, slots=True)
class Run:
    """``count`` pages of ``page_size`` from ``virt``, physically contiguous from ``phys``."""

    virt: int
    phys: int
    page_size: int
    level: int
    count: int
    flags: int  #: leaf flags of the first page (A/D may differ along the run)
    rights: Rights

    @property
    def size(self) -> int:
        """Bytes covered."""
        return self.page_size * self.count

    @property
    def virt_end(self) -> int:
        """First virtual address after the run."""
        return self.virt + self.size


def runs_of(leaves: Leaves) -> list[Run]:
    """``list(coalesce(leaves))``, a table at a time: a table that is one run costs one step,
    and no `Leaf` is made (a real kernel's 75,000 leaves in about 0.1 s)."""
    out: list[Run] = []
    cur_virt = cur_phys = cur_size = cur_level = count = flags = 0
    cur_rights: Rights | None = None
    next_virt = next_phys = -1
    addr_mask = ~_FLAG_MASK & ((1 << 64) - 1)
    for g in leaves.groups:
        span, level, base, words = g.span, g.level, g.base, g.words
        mask, nx = g.rights, g.nx
        page_mask = addr_mask & ~(span - 1)
        if g.contiguous():
            first = g.indices[0]
            items: Iterable[tuple[int, int]] = ((first, len(g.indices)),)
        else:
            items = ((i, 1) for i in g.indices)
        for i, n in items:
            raw = words[i]
            virt = base + i * span
            phys = raw & page_mask
            leaf_flags = raw & _FLAG_MASK
            r = mask & raw
            rights = RIGHTS[(r >> 1 & 1) | (r >> 2 & 1) << 1 | (not (nx or raw >> 63)) << 2]
            if (
                virt == next_virt
                and phys == next_phys
                and level == cur_level
                and rights is cur_rights
                and (flags ^ leaf_flags) & ~_ACCESSED_DIRTY == 0
            ):
                count += n
            else:
                if cur_rights is not None:
                    out.append(Run(cur_virt, cur_phys, cur_size, cur_level, count, flags,
                                   cur_rights))  # fmt: skip
                cur_virt, cur_phys, cur_size, cur_level = virt, phys, span, level
                count, flags, cur_rights = n, leaf_flags, rights
            next_virt = virt + n * span
            next_phys = phys + n * span
    if cur_rights is not None:
        out.append(Run(cur_virt, cur_phys, cur_size, cur_level, count, flags, cur_rights))
    return out


def coalesce(leaves: Iterable[Leaf]) -> Iterator[Run]:
    """Merge consecutive leaves into runs (leaves must come in ascending virtual order)."""
    return coalesce_spans((leaf, leaf, 1) for leaf in leaves)


def coalesce_spans(spans: Iterable[tuple[Leaf, Leaf, int]]) -> Iterator[Run]:
    """`coalesce` over spans ``(first, last, count)`` of leaves already known to form one run
    each (ascending virtual order): a whole freshly mapped table costs one step, not 512."""
    start: Leaf | None = None
    count = 0
    flags = 0
    next_virt = next_phys = 0
    for leaf, last, n in spans:
        leaf_flags = leaf.raw & _FLAG_MASK
        if (
            start is not None
            and next_virt == leaf.virt
            and start.level == leaf.level
            and next_phys == leaf.phys
            and (start.rights is leaf.rights or start.rights == leaf.rights)
            and (flags ^ leaf_flags) & ~_ACCESSED_DIRTY == 0
        ):
            count += n
        else:
            if start is not None:
                yield Run(
                    start.virt, start.phys, start.size, start.level, count, flags, start.rights
                )
            start, count, flags = leaf, n, leaf_flags
        next_virt = last.virt + last.size
        next_phys = last.phys + last.size
    if start is not None:
        yield Run(start.virt, start.phys, start.size, start.level, count, flags, start.rights)


def human_size(n: int) -> str:
    """``4K``, ``2M``, ``1G``, ``2032K``: the largest binary unit that divides ``n`` exactly
    (as ptdump prints sizes), so a size is never rounded."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


@functools.lru_cache(maxsize=4096)
def flag_names(flags: int) -> str:
    """Short names of the leaf flags that matter to a reader (P, W, U, PWT, PCD, A, D, G, NX).

    Cached: a listing of a real kernel repeats a few dozen flag combinations 75,000 times."""
    short = {
        "PRESENT": "P",
        "WRITABLE": "W",
        "USER_ACCESSIBLE": "U",
        "WRITE_THROUGH": "PWT",
        "NO_CACHE": "PCD",
        "ACCESSED": "A",
        "DIRTY": "D",
        "HUGE_PAGE": "PS",
        "GLOBAL": "G",
        "NO_EXECUTE": "NX",
    }
    names = PageTableFlags(flags).names()
    return " ".join(short.get(n, n) for n in names)


def format_runs(runs: Iterable[Run]) -> list[str]:
    """One line per run: virtual range, size, page size x count, physical start, rights, flags."""
    lines = [
        f"{'virtual start':>18}-{'end':<18} {'size':>6}  {'pages':<9} {'physical':>18}  "
        f"{'rights':6}  flags"
    ]
    for r in runs:
        pages = f"{r.count}x{_LEVEL_NAME[r.level]}"
        lines.append(
            f"{r.virt:#018x}-{r.virt_end - 1:#018x} {human_size(r.size):>6}  {pages:<9} "
            f"{r.phys:#018x}  {r.rights!s:6}  {flag_names(r.flags)}"
        )
    return lines
