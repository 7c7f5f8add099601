"""Layout files: a TOML description of an address space, read into a `LayoutSpec`.

The format is documented in ``docs/layout.md`` (examples in ``examples/``). Reading is strict
because a layout is a test input: unknown keys, unknown flags, wrong types, misaligned or
non-canonical addresses, overlaps, physical ranges outside guest memory, the guest agent's slot
are all errors. Every error is a `LayoutError` whose message starts with the file name and
names the key and what was expected, so a command can print it as it is. Whether the layout
fits in a guest beside the agent (its memory, this host's limit) is the commands' check when
they place it: `kvmpage.cli.placement.place`.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvmpage.addr import canonicalize, is_canonical
from kvmpage.layout import fasttoml
from kvmpage.layout.spec import (
    MAX_PAGES,
    LayoutError,
    LayoutSpec,
    MapperKind,
    MappingSpec,
    check,
    check_physical,
)
from kvmpage.paging import PageSize, PageTableFlags, Size1GiB, Size2MiB, Size4KiB
from kvmpage.paging.access import CpuState

#: The guest agent's level-4 slot when a layout leaves it free (a machine's default, too).
AGENT_SLOT = 511
DEFAULT_MEMORY = 64 << 20

_SIZES: dict[str, type[PageSize]] = {}
for _cls, _names in (
    (Size4KiB, ("4k", "4kib", "4096")),
    (Size2MiB, ("2m", "2mib")),
    (Size1GiB, ("1g", "1gib")),
):
    for _n in _names:
        _SIZES[_n] = _cls
_BY_RANK: tuple[type[PageSize], ...] = (Size1GiB, Size2MiB, Size4KiB)

#: Short names accepted for flags, besides the crate's names (``PRESENT``, ``NO_EXECUTE``...).
FLAG_ALIASES = {
    "P": "PRESENT",
    "W": "WRITABLE",
    "RW": "WRITABLE",
    "U": "USER_ACCESSIBLE",
    "USER": "USER_ACCESSIBLE",
    "PWT": "WRITE_THROUGH",
    "PCD": "NO_CACHE",
    "A": "ACCESSED",
    "D": "DIRTY",
    "G": "GLOBAL",
    "NX": "NO_EXECUTE",
    "XD": "NO_EXECUTE",
}
_TOP_KEYS = {"name", "memory", "max_page_size", "agent_slot", "mapper", "cpu", "mapping"}
_MAPPER_KEYS = {"kind", "phys_offset", "recursive_index"}
_CPU_KEYS = {"wp", "smep", "smap", "nxe", "ac", "la57"}
#: The default physical-memory offset: Linux's direct map, 4-level and 5-level (L5-14).
PHYS_OFFSETS = {4: 0xFFFF_8880_0000_0000, 5: 0xFF11_0000_0000_0000}
_MAPPING_KEYS = {"name", "virt", "phys", "page_size", "count", "length", "flags"}
#: Flag lists already read (a layout of 60,000 mappings has a handful of distinct ones).
_FLAGS_SEEN: dict[tuple[str, ...], PageTableFlags] = {}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


class _Reader:
    """Typed access to one table of the file, with error messages that name the key."""

    def __init__(self, path: str, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        self.path = path
        self.where = where
        self.table = table
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.error(
                unknown[0], f"unknown key (expected one of {', '.join(sorted(allowed))})"
            )

    def error(self, key: str, message: str) -> LayoutError:
        prefix = f"{self.where}, " if self.where else ""
        return LayoutError(f"{self.path}: {prefix}key {key!r}: {message}")

    def has(self, key: str) -> bool:
        return key in self.table

    def integer(self, key: str, default: int | None = None) -> int:
        """An integer: a TOML integer (0x... allowed) or a string like "0xffff_8880_0000_0000"."""
        if key not in self.table:
            if default is None:
                raise self.error(key, "missing (expected an integer address, e.g. 0x400000)")
            return default
        value = self.table[key]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.replace("_", ""), 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(
                key, f"expected a non-negative integer such as 0x400000, got {value!r}"
            )
        return value

    def size(self, key: str, default: int) -> int:
        """A byte count: an integer or a string like "64M", "16 KiB", "1G"."""
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, str):
            m = _SIZE_RE.match(value)
            if m is not None:
                shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
                return int(m.group(1)) << shift
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise self.error(key, f'expected a size such as 4096, "16K" or "64M", got {value!r}')

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def string(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def page_size(self, key: str, default: str) -> type[PageSize] | None:
        """A page size by name, or None for "largest"."""
        value = self.table.get(key, default)
        if isinstance(value, str) and value.lower() == "largest":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.lower().replace(" ", "") in _SIZES:
            return _SIZES[value.lower().replace(" ", "")]
        raise self.error(key, f'expected "4K", "2M", "1G" or "largest", got {value!r}')

    def flags(self, key: str) -> PageTableFlags:
        value = self.table.get(key, ["PRESENT"])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f'expected a list of flag names like ["WRITABLE", "NX"], got '
                                  f"{value!r}")  # fmt: skip
        names = tuple(value)
        known = _FLAGS_SEEN.get(names)
        if known is None:
            known = _FLAGS_SEEN[names] = self._flags(key, names)
        return known

    def _flags(self, key: str, value: tuple[str, ...]) -> PageTableFlags:
        flags = PageTableFlags.PRESENT
        for name in value:
            canonical = FLAG_ALIASES.get(name.upper(), name.upper())
            if canonical in ("HUGE_PAGE", "PS"):
                raise self.error(key, f"{name!r} is set by page_size, do not list it")
            member = PageTableFlags.__members__.get(canonical)
            if member is None:
                names = [n for n in PageTableFlags.__members__ if n != "HUGE_PAGE"]
                close = difflib.get_close_matches(canonical, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(
                    key,
                    f"unknown flag {name!r} ({hint}expected one of {', '.join(names)}, or the "
                    f"short names {', '.join(FLAG_ALIASES)})",
                )
            flags |= member
        return flags


def load_layout(path: str | Path) -> LayoutSpec:
    """Read and check the layout file at ``path``; raise `LayoutError` naming file and key."""
    name = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise LayoutError(f"{name}: cannot read the layout file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise LayoutError(f"{name}: not UTF-8 text ({e.reason})") from None
    return parse_layout(text, name, default_name=Path(path).stem)


def parse_layout(text: str, path: str = "<layout>", *, default_name: str = "layout") -> LayoutSpec:
    """`load_layout` on text already read (``path`` names it in error messages)."""
    try:  # the plain subset layout files use is read fast; tomllib reads everything else
        doc = fasttoml.loads(text)
        if doc is None:
            doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LayoutError(f"{path}: not valid TOML: {e}") from None
    top = _Reader(path, "", doc, _TOP_KEYS)
    memory = top.size("memory", DEFAULT_MEMORY)
    if memory % (2 << 20) or memory < 4 << 20:
        raise top.error("memory", f"expected a multiple of 2M, at least 4M, got {memory:#x}")
    cap_size = top.page_size("max_page_size", "1G") or Size1GiB
    cpu_table = _Reader(path, "[cpu]", _table(top, "cpu"), _CPU_KEYS)
    cpu = CpuState(
        wp=cpu_table.boolean("wp", True),
        smep=cpu_table.boolean("smep", False),
        smap=cpu_table.boolean("smap", False),
        nxe=cpu_table.boolean("nxe", True),
        ac=cpu_table.boolean("ac", False),
        la57=cpu_table.boolean("la57", False),
    )
    levels = cpu.levels
    named_slot = top.has("agent_slot")
    agent_slot = top.integer("agent_slot", AGENT_SLOT)
    if agent_slot > 511:
        raise top.error("agent_slot", f"expected a top-level index 0..511, got {agent_slot}")
    mapper = _Reader(path, "[mapper]", _table(top, "mapper"), _MAPPER_KEYS)
    kind: MapperKind = "offset"
    kind_name = mapper.string("kind", "offset", ("offset", "mapped", "recursive"))
    if kind_name == "mapped":
        kind = "mapped"
    elif kind_name == "recursive":
        kind = "recursive"
    phys_offset = mapper.integer("phys_offset", PHYS_OFFSETS[levels])
    if not is_canonical(phys_offset, levels) or phys_offset % 4096:
        raise mapper.error("phys_offset", f"expected a canonical, 4K-aligned address, got "
                                          f"{phys_offset:#x}")  # fmt: skip
    recursive: int | None = None
    if mapper.has("recursive_index"):
        recursive = mapper.integer("recursive_index")
        if recursive > 511 or (named_slot and recursive == agent_slot):
            raise mapper.error(
                "recursive_index",
                f"expected a top-level index 0..511 other than the guest agent's {agent_slot}, "
                f"got {recursive}",
            )
    elif kind == "recursive":
        raise mapper.error("recursive_index", "missing: a recursive mapper needs its index")
    raw_mappings = doc.get("mapping", [])
    if not isinstance(raw_mappings, list) or not all(isinstance(m, dict) for m in raw_mappings):
        raise top.error("mapping", "expected [[mapping]] tables")
    if not raw_mappings:
        raise top.error("mapping", "no [[mapping]] tables: a layout needs at least one mapping")
    mappings: list[MappingSpec] = []
    for i, raw in enumerate(raw_mappings, 1):
        mappings.extend(_mapping(path, i, raw, cap_size, levels))
    pages = sum(m.count for m in mappings)
    if pages > MAX_PAGES:
        raise top.error(
            "mapping",
            f"the layout maps {pages} pages; kvmpage builds at most {MAX_PAGES} in one layout "
            '(use page_size = "largest" or larger pages)',
        )
    if not named_slot:
        agent_slot = choose_agent_slot(mappings, recursive, top, levels=levels)
    spec = LayoutSpec(
        name=top.string("name", default_name),
        mappings=tuple(mappings),
        kind=kind,
        memory_size=memory,
        phys_offset=phys_offset,
        recursive_index=recursive,
        reserved_p4=frozenset({agent_slot}),
        cpu=cpu,
        source=path,
        agent_slot_chosen=not named_slot,
    )
    check(spec)
    check_physical(spec)
    return spec


#: Level-4 slots the agent never takes when it chooses: a PVM host keeps 256 for itself (CPL3
#: code cannot run there), and the agent runs CPL3 code in its slot.
_AVOIDED_SLOTS = frozenset({256})


def choose_agent_slot(
    mappings: Sequence[MappingSpec],
    recursive: int | None,
    top: _Reader | None = None,
    *,
    levels: int = 4,
) -> int:
    """The guest agent's top-level slot for a layout that names none: 511 when the layout leaves
    it free, else the highest free slot of the kernel half, else the highest free one of the
    user half (a higher-half kernel's -2 GiB image lives in 511). At 5 levels the slots are
    the level-5 table's (L5-13): a 5-level Linux keeps its kernel image, modules and fixmap in
    slot 511, where every 48-bit kernel address lies, so the agent moves below it."""
    used: set[int] = set() if recursive is None else {recursive}
    shift = 3 + 9 * levels
    for m in mappings:
        last = canonicalize(m.virt + m.length - 1, levels) if m.length else m.virt
        used.update(range((m.virt >> shift) & 511, ((last >> shift) & 511) + 1))
    order: list[int] = [*range(511, 255, -1), *range(255, -1, -1)]
    avoided = _AVOIDED_SLOTS if levels == 4 else frozenset()  # (TCG runs 5 levels: no PVM)
    for slot in order:
        if slot not in used and slot not in avoided:
            return slot
    message = (
        f"every level-{levels} slot is used by the mappings (or the recursive slot): the kvmpage "
        "guest agent needs one free slot for its code and data; leave one free"
    )
    if top is not None:
        raise top.error("mapping", message)
    raise LayoutError(message)


def _table(top: _Reader, key: str) -> Mapping[str, Any]:
    value = top.table.get(key, {})
    if not isinstance(value, dict):
        raise top.error(key, f"expected a table [{key}], got {value!r}")
    return value


def _mapping(
    path: str, i: int, table: Mapping[str, Any], cap: type[PageSize], levels: int = 4
) -> list[MappingSpec]:
    """One ``[[mapping]]`` table as one `MappingSpec`, or several for ``page_size = "largest"``
    (``levels``: 5 in a layout with ``[cpu] la57 = true``, where addresses have 57 bits)."""
    name = table.get("name", f"mapping-{i}")
    where = f"[[mapping]] #{i}" + (f" ({name})" if isinstance(name, str) else "")
    r = _Reader(path, where, table, _MAPPING_KEYS)
    name = r.string("name", f"mapping-{i}")
    origin = f"{path}: [[mapping]] #{i}"
    virt = r.integer("virt")
    if virt >= 1 << 64:
        raise r.error("virt", f"expected a 64-bit address, got {virt:#x}")
    if not is_canonical(virt, levels):
        top_bit = 9 * levels + 11
        raise r.error(
            "virt",
            f"{virt:#x} is not canonical (bits 63..{top_bit} must all equal bit {top_bit})"
            + (
                "; it is canonical at 5 levels ([cpu] la57 = true)" if is_canonical(virt, 5) else ""
            ),
        )
    phys = None if r.table.get("phys", "allocate") == "allocate" else r.integer("phys")
    size = r.page_size("page_size", "4K")
    flags = r.flags("flags")
    if r.has("count") and r.has("length"):
        raise r.error("length", "give either count or length, not both")
    if size is None:
        if r.has("count"):
            raise r.error("count", 'page_size = "largest" needs a length, not a count')
        length = r.size("length", 0)
        if length <= 0 or length % 4096:
            raise r.error("length", f"expected a positive multiple of 4K, got {length:#x}")
        if virt % 4096 or (phys is not None and phys % 4096):
            raise r.error("virt" if virt % 4096 else "phys", "expected a 4K-aligned address")
        return _largest(name, origin, virt, phys, length, flags, cap)
    if r.has("length"):
        length = r.size("length", 0)
        if length <= 0 or length % size.SIZE:
            raise r.error(
                "length", f"expected a positive multiple of the page size {size.DEBUG_STR}, "
                          f"got {length:#x}"
            )  # fmt: skip
        count = length // size.SIZE
    else:
        count = r.integer("count", 1)
        if count < 1:
            raise r.error("count", f"expected at least 1, got {count}")
    return [MappingSpec(name, virt, size, count, flags, phys, origin=origin)]


def _largest(
    name: str,
    origin: str,
    virt: int,
    phys: int | None,
    length: int,
    flags: PageTableFlags,
    cap: type[PageSize],
) -> list[MappingSpec]:
    """Split a range into runs of the largest page sizes that fit its alignment and length.

    At each point the largest size (up to ``cap``) to which both the virtual and the physical
    address are aligned, and that still fits, is used; the pieces are computed a run at a time
    (at most a handful: up in size, then down), never a page at a time, so a range of any
    length is split at once and its page count can be bounded before anything else.
    """
    sizes = [s for s in _BY_RANK if s.SIZE <= cap.SIZE]  # largest first
    if phys is not None:  # a size whose alignment virt and phys do not share is never usable
        sizes = [s for s in sizes if (virt - phys) % s.SIZE == 0]
    pieces: list[tuple[type[PageSize], int, int]] = []  # size, offset, count
    offset = 0
    while offset < length:
        left = length - offset
        at = virt + offset
        size = next(s for s in sizes if at % s.SIZE == 0 and left >= s.SIZE)
        count = left // size.SIZE
        larger = [s for s in sizes if s.SIZE > size.SIZE]
        if larger:  # stop where the next larger size becomes usable, if it still fits there
            step = larger[-1].SIZE
            until = (-at % step) // size.SIZE
            if left - until * size.SIZE >= step:
                count = until
        pieces.append((size, offset, count))
        offset += count * size.SIZE
    return [
        MappingSpec(
            name if len(pieces) == 1 else f"{name}[{n}]",
            virt + start,
            s,
            count,
            flags,
            None if phys is None else phys + start,
            origin=origin,
        )
        for n, (s, start, count) in enumerate(pieces)
    ]
