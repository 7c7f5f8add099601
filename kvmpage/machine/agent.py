"""The agent loader: places the agent, its tables and descriptor tables in guest memory.

The agent reserves the top of guest RAM: a 2 MiB area of small pages (its own PML4 and the
tables below its slot, code, GDT, IDT, TSS, mailbox, stacks), then the command array in 2 MiB
pages. Everything the CPU needs is laid out as one byte image computed once per geometry and
copied into guest memory with a single slice assignment, which keeps VM bring-up cheap.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from importlib import resources

from kvmpage.kvm import abi
from kvmpage.machine import layout as L
from kvmpage.machine import pte
from kvmpage.machine.protocol import RECORD_SIZE
from kvmpage.x86 import (
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
)

AGENT_MAGIC = b"KVMPAGNT"
AGENT_ABI = 1
_HEADER = struct.Struct("<8sIIIIIIII")

# physical offsets inside the small area
_P4 = 0x0000
_PDPT = 0x1000
_PD_LOW = 0x2000
_PT_LOW = 0x3000
_PD_CMD = 0x4000
_PD_PHYSMAP = 0x5000  # one PD per GiB of RAM
_VA_AREA = 0x2_0000  # slot offset X lives at physical small + _VA_AREA + X
SMALL_AREA = L.LARGE_PAGE
MAX_PHYSMAP_PDS = (_VA_AREA - _PD_PHYSMAP) // L.PAGE

BOOT_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
BOOT_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT


@dataclass(frozen=True, slots=True)
class AgentImage:
    """The assembled agent and the offsets its header publishes."""

    code: bytes
    kernel_entry: int
    user_code: int
    isr_stubs: int
    isr_stride: int
    user_exit: int

    @classmethod
    def parse(cls, code: bytes) -> AgentImage:
        magic, abi, kentry, ucode, isr, stride, uexit, end, _ = _HEADER.unpack_from(code)
        if magic != AGENT_MAGIC or abi != AGENT_ABI:
            raise ValueError(f"agent.bin is not a kvmpage agent of ABI {AGENT_ABI}")
        if end != len(code) or ucode % L.PAGE or len(code) > L.CODE_MAX:
            raise ValueError("agent.bin header does not match its size")
        return cls(code, kentry, ucode, isr, stride, uexit)


@functools.cache
def agent_image() -> AgentImage:
    """The shipped agent (``kvmpage/machine/agent.bin``), read once."""
    code = resources.files("kvmpage.machine").joinpath("agent.bin").read_bytes()
    return AgentImage.parse(code)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the agent sits in a guest of ``memory_size`` bytes, in PML4 slot ``slot``."""

    memory_size: int
    capacity: int
    slot: int
    #: Whether EFER.NXE is on at boot (the guest's CPUID grants NX).
    nx: bool

    @property
    def base(self) -> int:
        """Virtual address of the slot."""
        return L.slot_base(self.slot)

    @property
    def cmd_bytes(self) -> int:
        """Bytes of the command array: room for ``capacity`` records plus the end record."""
        need = (self.capacity + 1) * RECORD_SIZE
        return -(-need // L.LARGE_PAGE) * L.LARGE_PAGE

    @property
    def cmd_phys(self) -> int:
        return self.memory_size - self.cmd_bytes

    @property
    def small_phys(self) -> int:
        return self.cmd_phys - SMALL_AREA

    @property
    def reserved(self) -> tuple[int, int]:
        """The physical range ``[start, end)`` the agent owns; user frames must stay below."""
        return self.small_phys, self.memory_size

    @property
    def p4_phys(self) -> int:
        """The agent's own PML4 (only its slot present): CR3 at boot."""
        return self.small_phys + _P4

    @property
    def slot_entry(self) -> int:
        """The PML4 entry that maps the agent; installed in every user address space."""
        return pte.entry(self.small_phys + _PDPT, pte.P | pte.W | pte.U | pte.A)

    @property
    def doorbell_gpa(self) -> int:
        """An unbacked guest-physical page right above RAM: writing it is an MMIO exit."""
        return self.memory_size

    def va(self, offset: int) -> int:
        return self.base + offset

    def phys_of(self, offset: int) -> int:
        """Physical address of a small-page slot offset."""
        if offset == L.USTATE_S_OFF:
            offset = L.USTATE_U_OFF
        return self.small_phys + _VA_AREA + offset

    def validate(self) -> None:
        if self.memory_size % L.LARGE_PAGE:
            raise ValueError(f"guest memory must be a multiple of 2 MiB, got {self.memory_size:#x}")
        if self.capacity < 1 or self.cmd_bytes > L.CMD_MAX_BYTES:
            raise ValueError(f"batch capacity {self.capacity} out of range")
        if self.small_phys < L.LARGE_PAGE:
            raise ValueError(
                f"{self.memory_size:#x} bytes of guest memory leave no room for the agent "
                f"({self.cmd_bytes + SMALL_AREA:#x} bytes reserved)"
            )
        if -(-self.memory_size // pte.SIZE_1G) > MAX_PHYSMAP_PDS:
            raise ValueError("guest memory too large for the agent's physmap")


def build_small_area(pl: Placement) -> bytes:
    """The whole 2 MiB small-page area of the agent, ready to copy to ``pl.small_phys``."""
    return _build_small_area(pl)


@functools.lru_cache(maxsize=16)
def small_area_pages(pl: Placement) -> tuple[tuple[int, bytes], ...]:
    """The non-zero 4 KiB pages of the small area as ``(physical address, bytes)``.

    Guest RAM starts zeroed, and touching a fresh anonymous page costs a host page fault, so
    only these pages are copied (about 20 instead of 512).
    """
    area = _build_small_area(pl)
    zero = bytes(L.PAGE)
    return tuple(
        (pl.small_phys + off, area[off : off + L.PAGE])
        for off in range(0, len(area), L.PAGE)
        if area[off : off + L.PAGE] != zero
    )


@functools.lru_cache(maxsize=16)
def _build_small_area(pl: Placement) -> bytes:
    pl.validate()
    img = agent_image()
    area = bytearray(SMALL_AREA)
    small = pl.small_phys

    def put(off: int, value: int) -> None:
        struct.pack_into("<Q", area, off, value)

    upper = pte.P | pte.W | pte.U | pte.A
    put(_P4 + 8 * pl.slot, pl.slot_entry)
    put(_PDPT + 8 * 0, pte.entry(small + _PD_LOW, upper))
    put(_PDPT + 8 * (L.CMD_USER_OFF >> 30), pte.entry(small + _PD_CMD, upper))
    put(_PD_LOW, pte.entry(small + _PT_LOW, upper))

    # 4 KiB pages: code (kernel part supervisor, user part user), data, stacks, doorbell
    def map4k(offset: int, phys: int, flags: int) -> None:
        put(_PT_LOW + 8 * (offset >> 12), pte.entry(phys, flags | pte.P | pte.A))

    for off in range(0, len(img.code), L.PAGE):
        user = pte.U if off >= img.user_code else 0
        map4k(L.CODE_OFF + off, pl.phys_of(L.CODE_OFF + off), user)
    # no NX anywhere in the agent's tables: EFER.NXE may then be switched off by a service
    kdata = pte.W | pte.D
    for off in (L.GDT_OFF, L.IDT_OFF, L.TSS_OFF, L.KSTATE_OFF, L.USTATE_S_OFF):
        map4k(off, pl.phys_of(off), kdata)
    for off in range(L.KSTACK_OFF, L.KSTACK_TOP_OFF, L.PAGE):
        map4k(off, pl.phys_of(off), kdata)
    for off in range(L.USTATE_U_OFF, L.USTACK_TOP_OFF, L.PAGE):
        map4k(off, pl.phys_of(off), kdata | pte.U)
    map4k(L.DOORBELL_OFF, pl.doorbell_gpa, kdata)
    map4k(L.USER_DOORBELL_OFF, pl.doorbell_gpa, kdata | pte.U)

    # the command array, twice: user view and supervisor alias
    large = pte.P | pte.W | pte.A | pte.D | pte.PS
    first_user = (L.CMD_USER_OFF >> 21) & 511
    first_super = (L.CMD_SUPER_OFF >> 21) & 511
    for i in range(pl.cmd_bytes // L.LARGE_PAGE):
        phys = pl.cmd_phys + i * L.LARGE_PAGE
        put(_PD_CMD + 8 * (first_user + i), phys | large | pte.U)
        put(_PD_CMD + 8 * (first_super + i), phys | large)

    # physmap: all RAM, supervisor, 2 MiB pages
    for gib in range(-(-pl.memory_size // pte.SIZE_1G)):
        pd = _PD_PHYSMAP + gib * L.PAGE
        put(_PDPT + 8 * ((L.PHYSMAP_OFF >> 30) + gib), pte.entry(small + pd, upper & ~pte.U))
        for j in range(512):
            phys = gib * pte.SIZE_1G + j * L.LARGE_PAGE
            if phys >= pl.memory_size:
                break
            put(pd + 8 * j, phys | large)

    # code
    code_at = _VA_AREA + L.CODE_OFF
    area[code_at : code_at + len(img.code)] = img.code
    # GDT
    tss_va = pl.va(L.TSS_OFF)
    gdt = [
        0,
        0x00209B0000000000,  # kernel code64, DPL0, accessed
        0x00CF93000000FFFF,  # kernel data
        0x00CFF3000000FFFF,  # user data, DPL3
        0x0020FB0000000000,  # user code64, DPL3
        _tss_low(tss_va, 0x67),
        tss_va >> 32,
    ]
    for i, desc in enumerate(gdt):
        put(_VA_AREA + L.GDT_OFF + 8 * i, desc)
    # IDT: 32 interrupt gates to the stubs; #BP is DPL3: the ring-3 loop yields with int3
    for vec in range(32):
        handler = pl.va(L.CODE_OFF + img.isr_stubs + vec * img.isr_stride)
        gate = 0xEE if vec == 3 else 0x8E
        lo = (
            (handler & 0xFFFF)
            | (L.KERNEL_CS << 16)
            | (gate << 40)
            | ((handler >> 16) & 0xFFFF) << 48
        )
        put(_VA_AREA + L.IDT_OFF + 16 * vec, lo)
        put(_VA_AREA + L.IDT_OFF + 16 * vec + 8, handler >> 32)
    # TSS: RSP0 = kernel stack top; no I/O bitmap
    struct.pack_into("<Q", area, _VA_AREA + L.TSS_OFF + 4, pl.va(L.KSTACK_TOP_OFF))
    struct.pack_into("<H", area, _VA_AREA + L.TSS_OFF + 102, 104)
    # mailbox
    put(_VA_AREA + L.KSTATE_OFF + L.KS_RFLAGS, L.RFLAGS_DEFAULT)
    frame = (
        pl.va(L.CODE_OFF + img.user_code),  # user_entry is the first byte of the user pages
        L.USER_CS,
        L.RFLAGS_DEFAULT,
        pl.va(L.USTACK_TOP_OFF),
        L.USER_DS,
    )
    struct.pack_into("<5Q", area, _VA_AREA + L.KSTATE_OFF + L.KS_IRET_FRAME, *frame)
    return bytes(area)


def _tss_low(base: int, limit: int) -> int:
    """Low quadword of a 64-bit busy-TSS descriptor."""
    return (
        (limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | 0x8B << 40  # present, type 11 (busy 64-bit TSS)
        | ((limit >> 16) & 0xF) << 48
        | ((base >> 24) & 0xFF) << 56
    )


@functools.lru_cache(maxsize=16)
def boot_sregs(pl: Placement) -> abi.kvm_sregs:
    """Long-mode segment and control registers for the boot state (read-only; reused)."""
    s = abi.kvm_sregs()

    def seg(sel: int, typ: int, code: bool) -> abi.kvm_segment:
        return abi.kvm_segment(
            base=0, limit=0xFFFFFFFF, selector=sel, type=typ, present=1, dpl=sel & 3,
            db=0 if code else 1, s=1, l=1 if code else 0, g=1,
        )  # fmt: skip

    s.cs = seg(L.KERNEL_CS, 0xB, True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(s, name, seg(L.KERNEL_DS, 0x3, False))
    s.tr = abi.kvm_segment(
        base=pl.va(L.TSS_OFF), limit=0x67, selector=L.TSS_SEL, type=0xB, present=1, s=0
    )
    s.ldt = abi.kvm_segment(type=0x2, present=1, unusable=1)
    s.gdt = abi.kvm_dtable(base=pl.va(L.GDT_OFF), limit=8 * L.GDT_ENTRIES - 1)
    s.idt = abi.kvm_dtable(base=pl.va(L.IDT_OFF), limit=16 * 32 - 1)
    s.cr0 = BOOT_CR0
    s.cr3 = pl.p4_phys
    s.cr4 = BOOT_CR4
    s.efer = EFER_LME | EFER_LMA | (EFER_NXE if pl.nx else 0)
    return s
