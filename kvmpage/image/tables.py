"""`ImageTables`: the crate's read-only `Translate` over a memory image's own tables.

It is a `MappedPageTable` that reads each table where it is in the image (`PhysicalFrames`), so
``translate``, ``translate_addr`` and ``translate_page`` answer with the crate's semantics. The
mapping operations are refused with `ReadOnlyImageError` before anything happens, unless the
image was opened with ``writable=True``: then `mapper` is that `MappedPageTable`, working on the
process's private copy of the image (the file is never written), and what it builds can be
verified on the CPU like a layout. A 5-level image (CR4.LA57) gets a 5-level mapper, which
takes `VirtAddr57` and `Page57` as well as the 48-bit types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmpage.addr import AnyVirtAddr, PhysAddr
from kvmpage.image.context import PagingContext
from kvmpage.paging.mapper import MappedPageTable, PhysicalFrames, TranslateResult
from kvmpage.paging.page import Page, PhysFrame
from kvmpage.paging.table import PageTable

if TYPE_CHECKING:
    from kvmpage.image.image import Image


class ReadOnlyImageError(TypeError):
    """A mapping operation on the tables of an image opened read-only."""


_MUTATORS = (
    "map_to", "map_to_with_table_flags", "map_range", "identity_map", "unmap", "update_flags",
    "set_flags_p5_entry", "set_flags_p4_entry", "set_flags_p3_entry", "set_flags_p2_entry",
    "clean_up",
    "clean_up_addr_range",
)  # fmt: skip


class ImageTables:
    """`Translate` over the tables of ``context`` in ``image`` (see the module docstring)."""

    def __init__(self, image: Image, context: PagingContext) -> None:
        self.image = image
        self.context = context
        memory = image.memory
        self._mapper = MappedPageTable(
            PageTable(memory, context.root), PhysicalFrames(memory), levels=context.levels
        )

    @property
    def mapper(self) -> MappedPageTable:
        """The mapper itself, for mapping operations (a writable image only)."""
        if not self.image.writable:
            raise self._refused("mapper")
        return self._mapper

    def translate(self, addr: AnyVirtAddr) -> TranslateResult:
        """The crate's ``Translate::translate``."""
        return self._mapper.translate(addr)

    def translate_addr(self, addr: AnyVirtAddr) -> PhysAddr | None:
        """The crate's ``Translate::translate_addr``."""
        return self._mapper.translate_addr(addr)

    def translate_page(self, page: Page[Any]) -> PhysFrame[Any]:
        """The crate's ``Mapper::translate_page``."""
        return self._mapper.translate_page(page)

    def _refused(self, name: str) -> ReadOnlyImageError:
        return ReadOnlyImageError(
            f"{name}: {self.image.path} is open read-only; open_image(path, writable=True) maps "
            "a private copy whose tables can be changed (the file is never written)"
        )

    def __getattr__(self, name: str) -> Any:
        if name in _MUTATORS:
            if not self.image.writable:
                raise self._refused(name)
            return getattr(self._mapper, name)
        raise AttributeError(name)
