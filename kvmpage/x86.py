"""The x86-64 architecture's bit assignments that every layer names: page-table entry bits and
the entry's address field, and the control-register bits of paging (Intel SDM vol. 3A ch. 2.5
and 4, AMD APM vol. 2 ch. 3.1 and 5).

One definition for the software model (`kvmpage.paging.arch`, which adds the rules built on
them), the machine that boots guests (`kvmpage.machine`), the image reader (`kvmpage.image`)
and the second oracle (`kvmpage.tcg`). Canonical addresses are `kvmpage.addr.canonicalize`.
"""

from __future__ import annotations

#: Bits 12..51 of an entry: the physical address of the next table or of the page.
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
U64_MASK = (1 << 64) - 1

# -- entry bits ------------------------------------------------------------------------------
P = 1 << 0  #: present
W = 1 << 1  #: writable
U = 1 << 2  #: user-accessible
PWT = 1 << 3  #: page-level write-through
PCD = 1 << 4  #: page-level cache disable
A = 1 << 5  #: accessed
D = 1 << 6  #: dirty (leaf)
PS = 1 << 7  #: page size: a leaf above level 1 (reserved at levels 4 and 5)
G = 1 << 8  #: global (leaf)
NX = 1 << 63  #: no-execute (reserved when EFER.NXE is clear)

# -- control registers -----------------------------------------------------------------------
CR0_PE = 1 << 0  #: protected mode
CR0_MP = 1 << 1  #: monitor coprocessor
CR0_ET = 1 << 4  #: extension type
CR0_NE = 1 << 5  #: native FPU errors
CR0_WP = 1 << 16  #: supervisor writes honour read-only pages
CR0_PG = 1 << 31  #: paging
CR4_PAE = 1 << 5  #: physical address extension (required for long mode)
CR4_PGE = 1 << 7  #: global pages
CR4_OSFXSR = 1 << 9  #: FXSAVE/SSE enabled
CR4_OSXMMEXCPT = 1 << 10  #: SIMD exceptions enabled
CR4_LA57 = 1 << 12  #: 5-level paging, 57-bit linear addresses
CR4_PCIDE = 1 << 17  #: process-context identifiers
CR4_SMEP = 1 << 20  #: supervisor-mode execution prevention
CR4_SMAP = 1 << 21  #: supervisor-mode access prevention
CR4_PKE = 1 << 22  #: protection keys for user pages
EFER_SCE = 1 << 0  #: syscall enable
EFER_LME = 1 << 8  #: long mode enable
EFER_LMA = 1 << 10  #: long mode active
EFER_NXE = 1 << 11  #: no-execute enable
