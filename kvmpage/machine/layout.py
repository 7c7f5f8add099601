"""Where the agent lives: its fixed virtual layout inside the reserved PML4 slot.

Every offset here is relative to the base of the agent's slot (``slot << 39``, sign-extended).
The agent computes that base from its own RIP, so the same assembled bytes work in any slot.
The constants are handed to the assembler with ``--defsym`` (see `asm_constants`), so this
module is the one source of truth for both sides.
"""

from __future__ import annotations

from kvmpage.addr import canonicalize

PAGE = 4096
LARGE_PAGE = 2 << 20
SLOT_SPAN = 1 << 39
DEFAULT_AGENT_SLOT = 511

# -- 4 KiB pages in the first 2 MiB of the slot (one page table) ----------------------------------
CODE_OFF = 0x0000_0000  # agent.bin: kernel pages, then user pages
CODE_MAX = 0x0001_0000
GDT_OFF = 0x0001_0000
IDT_OFF = 0x0001_1000
TSS_OFF = 0x0001_2000
KSTATE_OFF = 0x0001_3000  # mailbox: batch state and the unexpected-exception dump (supervisor)
USTATE_S_OFF = 0x0001_4000  # supervisor alias of the user state page
DOORBELL_OFF = 0x0001_5000  # maps an unbacked guest-physical page: a write is an MMIO exit
KSTACK_OFF = 0x0001_8000
KSTACK_TOP_OFF = 0x0002_0000
USTATE_U_OFF = 0x0002_0000  # user view of the user state page (the CPL3 loop's cursor)
USTACK_OFF = 0x0002_1000
USTACK_TOP_OFF = 0x0002_5000
USER_DOORBELL_OFF = 0x0002_5000  # the doorbell again, user-accessible: ring 3 ends batches
SMALL_AREA_END = 0x0002_6000

# -- large regions (2 MiB pages) ------------------------------------------------------------------
CMD_USER_OFF = 0x4000_0000  # the command array as ring 3 sees it (U=1)
CMD_SUPER_OFF = 0x6000_0000  # the same frames for ring 0 (U=0), so SMAP never gets in the way
CMD_MAX_BYTES = CMD_SUPER_OFF - CMD_USER_OFF
PHYSMAP_OFF = 0x40_0000_0000  # all guest RAM, supervisor, read-write, NX
PHYSMAP_MAX = SLOT_SPAN - PHYSMAP_OFF

# -- segments -------------------------------------------------------------------------------------
KERNEL_CS = 0x08
KERNEL_DS = 0x10
USER_DS = 0x18 | 3
USER_CS = 0x20 | 3
TSS_SEL = 0x28
GDT_ENTRIES = 7  # null, kcode, kdata, udata, ucode, tss (two slots)

# -- kernel state page (u64 fields) ---------------------------------------------------------------
KS_GUARD = 0x00  # the record ring 0 is working on (0 while ring 3 runs): a fault there is expected
KS_STATUS = 0x08  # DOORBELL_UNEXPECTED after an unplanned exception
KS_RFLAGS = 0x18  # RFLAGS of ring 0 while dispatching (carries AC for SMAP)
KS_IRET_FRAME = 0x20  # RIP, CS, RFLAGS, RSP, SS of the ring-3 loop's entry, built by the loader
KS_DUMP = 0x100  # unexpected-exception dump, `DUMP_FIELDS` u64 values
DUMP_FIELDS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "vector", "error_code", "rip", "cs", "rflags", "rsp", "ss",
    "cr0", "cr2", "cr3", "cr4",
)  # fmt: skip

# -- user state page ------------------------------------------------------------------------------
US_CURSOR = 0x00  # user VA of the command record the CPL3 loop is on

RFLAGS_DEFAULT = 0x2
RFLAGS_AC = 1 << 18


def slot_base(slot: int) -> int:
    """The canonical virtual address where PML4 slot ``slot`` starts."""
    if not 0 <= slot < 512:
        raise ValueError(f"PML4 slot must be in 0..511, got {slot}")
    return canonicalize(slot << 39)


def asm_constants() -> dict[str, int]:
    """The layout constants the assembler needs (``--defsym``)."""
    names = [
        "CODE_OFF", "GDT_OFF", "IDT_OFF", "TSS_OFF", "KSTATE_OFF", "USTATE_S_OFF",
        "DOORBELL_OFF", "USER_DOORBELL_OFF", "KSTACK_TOP_OFF", "USTATE_U_OFF", "USTACK_TOP_OFF",
        "CMD_USER_OFF", "CMD_SUPER_OFF", "PHYSMAP_OFF", "USER_CS", "USER_DS", "KS_STATUS",
        "KS_GUARD", "KS_RFLAGS", "KS_IRET_FRAME", "KS_DUMP", "US_CURSOR", "RFLAGS_DEFAULT",
        "RFLAGS_AC",
    ]  # fmt: skip
    return {name: globals()[name] for name in names}
