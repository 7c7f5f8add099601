"""`Image`: a memory image opened as physical memory plus the CPU state it recorded.

Opening maps the file (``mmap``) and reads only its headers: nothing is copied, so opening a
large image takes milliseconds and costs no memory for its contents. The image's physical
memory is a `kvmpage.memory.SegmentedMemory` over the file's own bytes: read-only, or a private
copy-on-write mapping with ``writable=True`` (writes, such as a mapper's, stay in this process;
the file is never written). Addresses no segment covers are absent, never zeros.
"""

from __future__ import annotations

import itertools
import mmap
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from kvmpage.image import formats
from kvmpage.image.context import ContextError, PagingContext, make_context
from kvmpage.image.elf import parse_core
from kvmpage.image.errors import ImageError
from kvmpage.image.notes import (
    KVMPAGE_NOTE,
    QEMU_NOTE,
    CpuRegisters,
    cpus_of,
    kvmpage_note,
    vmcoreinfo,
)
from kvmpage.memory import PhysMemoryError
from kvmpage.paging.arch import Features
from kvmpage.paging.leaves import DEFAULT_LIMIT, Leaves
from kvmpage.paging.walk import Walk, walk
from kvmpage.segmented import Segment, SegmentedMemory

if TYPE_CHECKING:
    from kvmpage.image.tables import ImageTables

#: Where the kernel image is mapped on x86-64 Linux (``__START_KERNEL_map``).
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000


@dataclass(frozen=True)
class SegmentInfo:
    """One range of physical memory the image holds, and where it is in the file."""

    start: int
    end: int
    file_offset: int


class Image:
    """An opened memory image (see `open_image`). Close it (or use ``with``) to unmap the file."""

    def __init__(
        self,
        path: str,
        kind: str,
        description: str,
        mm: mmap.mmap,
        segments: list[SegmentInfo],
        *,
        cpus: list[CpuRegisters] | None = None,
        info: dict[str, str] | None = None,
        dropped: list[str] | None = None,
        extra: dict[str, object] | None = None,
        writable: bool = False,
    ) -> None:
        self.path = path
        #: ``"elf"``, ``"lime"`` or ``"raw"``
        self.format = kind
        #: the format for people (``"ELF64 core (QEMU dump-guest-memory)"``...)
        self.description = description
        self._mm = mm
        self.segments = segments
        self.cpus = cpus or []
        #: the kernel's VMCOREINFO (``OSRELEASE``, symbols...), empty when absent
        self.vmcoreinfo = info or {}
        #: segments of the file that were not used, with the reason
        self.dropped = dropped or []
        #: what a kvmpage-stripped image records (``stripped``, ``source``, ``cr3s``...)
        self.kvmpage_note = extra or {}
        self.writable = writable
        self.file_size = len(mm)
        view = memoryview(mm)
        try:
            self.memory = SegmentedMemory(
                [Segment(s.start, view[s.file_offset : s.file_offset + s.end - s.start])
                 for s in segments],
                readonly=not writable,
            )  # fmt: skip
        except PhysMemoryError as e:
            raise ImageError(path, str(e)) from None
        finally:
            view.release()

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the memory views, then unmap the file (idempotent)."""
        self.memory.close()
        if not self._mm.closed:
            self._mm.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it holds ----------------------------------------------------------------------------

    @property
    def kernel_release(self) -> str | None:
        """``OSRELEASE`` from VMCOREINFO (``"6.1.0-28-amd64"``), when the kernel published it."""
        return self.vmcoreinfo.get("OSRELEASE")

    @property
    def memory_bytes(self) -> int:
        """Bytes of physical memory the image holds."""
        return sum(s.end - s.start for s in self.segments)

    def kernel_root(self) -> tuple[int, str] | None:
        """The kernel's own top-level table (``init_top_pgt``, Linux's ``swapper_pg_dir``) as a
        physical address, from VMCOREINFO: the symbol's address minus ``__START_KERNEL_map``
        plus ``phys_base``."""
        info = self.vmcoreinfo
        for name in ("init_top_pgt", "swapper_pg_dir"):
            value = info.get(f"SYMBOL({name})")
            if value is None:
                continue
            try:
                va = int(value, 16)
                phys_base = int(info.get("NUMBER(phys_base)", "0"), 0)
            except ValueError:
                return None
            if va < START_KERNEL_MAP:
                return None
            # phys_base may be "negative" (printed as a 64-bit two's complement)
            root = (va - START_KERNEL_MAP + phys_base) % (1 << 64)
            return root, f"VMCOREINFO SYMBOL({name})"
        return None

    def kernel_levels(self) -> int | None:
        """5 or 4 when VMCOREINFO says whether the kernel uses 5-level paging."""
        value = self.vmcoreinfo.get("NUMBER(pgtable_l5_enabled)")
        if value is None:
            return None
        return 5 if value.strip() not in ("0", "") else 4

    # -- walking its tables -----------------------------------------------------------------------

    def context(
        self,
        *,
        cpu: int | None = None,
        cr3: int | None = None,
        cr0: int | None = None,
        cr4: int | None = None,
        efer: int | None = None,
    ) -> PagingContext:
        """The tables and CPU state to walk: CPU ``cpu`` (default 0) of the image, with any of
        its control registers replaced. Raises `ImageError` naming the file when none fits."""
        try:
            return make_context(
                self.cpus, cpu=cpu, cr3=cr3, cr0=cr0, cr4=cr4, efer=efer,
                kernel_root=self.kernel_root(), kernel_levels=self.kernel_levels(),
            )  # fmt: skip
        except ContextError as e:
            raise ImageError(self.path, str(e)) from None

    def leaves(
        self,
        context: PagingContext | None = None,
        *,
        features: Features = Features(),  # noqa: B008 (frozen)
        start: int = 0,
        end: int = 1 << 64,
        limit: int = DEFAULT_LIMIT,
        skip_top: frozenset[int] = frozenset(),
    ) -> Leaves:
        """Every mapping of the tables of ``context`` (default: `context()`), as the CPU walks
        them (`kvmpage.paging.leaves`), with the entries it faults on."""
        ctx = context if context is not None else self.context()
        self._check_root(ctx)
        return Leaves.scan(
            self.memory, ctx.root, cpu=ctx.cpu, features=features, start=start, end=end,
            limit=limit, skip_top=skip_top,
        )  # fmt: skip

    def walk(
        self,
        va: int,
        context: PagingContext | None = None,
        *,
        features: Features = Features(),  # noqa: B008 (frozen)
    ) -> Walk:
        """The walk of ``va`` under ``context`` (`kvmpage.paging.walk.walk`)."""
        ctx = context if context is not None else self.context()
        self._check_root(ctx)
        return walk(self.memory, ctx.root, va, ctx.cpu, features)

    def _check_root(self, ctx: PagingContext) -> None:
        if not self.memory.contains(ctx.root, 4096):
            raise ImageError(
                self.path,
                f"CR3 {ctx.cr3:#x}: its top-level table at {ctx.root:#x} is not in the image "
                f"(the image holds {_ranges_text(self.segments)})",
            )

    def tables(self, context: PagingContext | None = None) -> ImageTables:
        """The crate's `Translate` over the tables of ``context`` (a `MappedPageTable` reading
        them where they are, 4 or 5 levels as the context says). Mapping operations are refused
        unless the image was opened with ``writable=True``: then they change this process's
        private copy, never the file."""
        from kvmpage.image.tables import ImageTables

        ctx = context if context is not None else self.context()
        self._check_root(ctx)
        return ImageTables(self, ctx)

    def __repr__(self) -> str:
        mode = "writable copy" if self.writable else "read-only"
        return (
            f"Image({self.path!r}, {self.description}, {len(self.segments)} segments, "
            f"{self.memory_bytes:#x} bytes, {len(self.cpus)} CPUs, {mode})"
        )


def _ranges_text(segments: list[SegmentInfo], most: int = 4) -> str:
    parts = [f"{s.start:#x}-{s.end - 1:#x}" for s in segments[:most]]
    more = f" and {len(segments) - most} more" if len(segments) > most else ""
    return ", ".join(parts) + more


def open_image(path: str | os.PathLike[str], *, writable: bool = False) -> Image:
    """Open the memory image at ``path``: an ELF64 core, a LiME file, or raw physical memory.

    ``writable``: map the file copy-on-write, so the image's tables can be changed in this
    process (the file never is). Raises `ImageError` (naming the file) for anything that is not
    a usable image.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(name, f"cannot open: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ImageError(name, "the file is empty")
        access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
        try:
            mm = mmap.mmap(fd, 0, access=access)
        except (OSError, ValueError) as e:
            raise ImageError(name, f"cannot map the file: {e}") from None
    finally:
        os.close(fd)
    try:
        return _read(name, mm, writable)
    except BaseException:
        mm.close()
        raise


def _read(path: str, mm: mmap.mmap, writable: bool) -> Image:
    kind = formats.detect(path, mm[:16])
    if kind == formats.ELF:
        view = memoryview(mm)
        try:
            core = parse_core(path, view)
        finally:
            view.release()
        segments = [SegmentInfo(s.paddr, s.end, s.offset) for s in core.segments]
        _check_alignment(path, segments)
        info: dict[str, str] = {}
        extra: dict[str, object] = {}
        for note in core.notes:
            if note.name == "VMCOREINFO":
                info = vmcoreinfo(note.desc)
            elif note.name == KVMPAGE_NOTE:
                extra = kvmpage_note(note.desc)
        names = {n.name for n in core.notes}
        if KVMPAGE_NOTE in names:
            what = "ELF64 core (kvmpage image strip)"
        elif QEMU_NOTE in names:
            what = "ELF64 core (QEMU dump-guest-memory)"
        elif info:
            what = "ELF64 core (kdump vmcore)"
        else:
            what = "ELF64 core"
        return Image(path, kind, what, mm, segments, cpus=cpus_of(core.notes), info=info,
                     dropped=core.dropped, extra=extra, writable=writable)  # fmt: skip
    if kind == formats.LIME:
        view = memoryview(mm)
        try:
            ranges = formats.lime_ranges(path, view)
        finally:
            view.release()
        segments = sorted(
            (SegmentInfo(start, start + n, off) for start, off, n in ranges), key=lambda s: s.start
        )
        for a, b in itertools.pairwise(segments):
            if b.start < a.end:
                raise ImageError(path, f"LiME ranges {a.start:#x}-{a.end - 1:#x} and "
                                       f"{b.start:#x}-{b.end - 1:#x} overlap")  # fmt: skip
        _check_alignment(path, segments)
        return Image(path, kind, "LiME", mm, segments, writable=writable)
    usable = len(mm) & ~7
    if usable == 0:
        raise ImageError(path, "too small to hold physical memory")
    return Image(path, kind, "raw physical memory from address 0", mm,
                 [SegmentInfo(0, usable, 0)], writable=writable)  # fmt: skip


def _check_alignment(path: str, segments: list[SegmentInfo]) -> None:
    for s in segments:
        if s.start % 8 or (s.end - s.start) % 8:
            raise ImageError(
                path, f"segment {s.start:#x}-{s.end - 1:#x} is not 8-byte aligned (page "
                "tables are read as 8-byte words)",
            )  # fmt: skip
