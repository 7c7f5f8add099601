"""The CPU state and the kernel's own description that an ELF core's notes carry.

- ``QEMU`` notes (one per CPU, written by ``dump-guest-memory``): ``QEMUCPUState``, with the
  general registers, the segments and CR0, CR2, CR3, CR4 (not EFER).
- ``CORE``/``NT_PRSTATUS`` (one per CPU in every core): the general registers only.
- ``VMCOREINFO``: ``KEY=value`` lines the kernel publishes (``OSRELEASE``, symbols such as
  ``SYMBOL(init_top_pgt)``, ``NUMBER(phys_base)``, ``NUMBER(pgtable_l5_enabled)``...).
- ``KVMPAGE``: what a stripped image adds (EFER, the CR3s kept), as JSON.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from kvmpage.image.elf import Note

NT_PRSTATUS = 1
QEMU_NOTE = "QEMU"
KVMPAGE_NOTE = "KVMPAGE"
_QEMU_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")  # fmt: skip
_QEMU_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
_QEMU_CR_AT = 8 + 8 * len(_QEMU_REGS) + 24 * len(_QEMU_SEGMENTS)  # 392
QEMU_STATE_SIZE = _QEMU_CR_AT + 5 * 8  # 432 (QEMU 5.0 and later add kernel_gs_base: 440)
_PRSTATUS_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
                  "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss",
                  "fs_base", "gs_base", "ds", "es", "fs", "gs")  # fmt: skip
_PRSTATUS_REG_AT = 112


@dataclass(frozen=True)
class CpuRegisters:
    """One CPU's registers as an image recorded them; a control register the image does not
    hold is None."""

    index: int
    source: str  #: which note: ``"QEMU note"``, ``"NT_PRSTATUS"``, ``"kvmpage note"``
    cr0: int | None = None
    cr2: int | None = None
    cr3: int | None = None
    cr4: int | None = None
    efer: int | None = None
    regs: dict[str, int] = field(default_factory=dict)

    @property
    def cpl(self) -> int | None:
        """The privilege level the CPU was at (CS's low two bits), when CS is known."""
        cs = self.regs.get("cs")
        return None if cs is None else cs & 3


def qemu_cpu(index: int, desc: bytes) -> CpuRegisters | None:
    """A ``QEMU`` note's ``QEMUCPUState``; None when it is too short to hold the CRs."""
    if len(desc) < QEMU_STATE_SIZE:
        return None
    regs = dict(zip(_QEMU_REGS, struct.unpack_from(f"<{len(_QEMU_REGS)}Q", desc, 8), strict=True))
    for i, name in enumerate(_QEMU_SEGMENTS):
        selector, _limit, _flags, _pad, base = struct.unpack_from("<IIIIQ", desc, 152 + 24 * i)
        regs[name] = selector
        regs[f"{name}_base"] = base
    cr0, _cr1, cr2, cr3, cr4 = struct.unpack_from("<5Q", desc, _QEMU_CR_AT)
    return CpuRegisters(index, "QEMU note", cr0, cr2, cr3, cr4, None, regs)


def encode_qemu_cpu(regs: CpuRegisters) -> bytes:
    """A ``QEMUCPUState`` holding ``regs`` (what `qemu_cpu` reads back; for stripped images)."""
    out = bytearray(QEMU_STATE_SIZE)
    struct.pack_into("<II", out, 0, 1, QEMU_STATE_SIZE)
    struct.pack_into(f"<{len(_QEMU_REGS)}Q", out, 8, *(regs.regs.get(n, 0) for n in _QEMU_REGS))
    for i, name in enumerate(_QEMU_SEGMENTS):
        struct.pack_into(
            "<IIIIQ", out, 152 + 24 * i, regs.regs.get(name, 0), 0, 0, 0,
            regs.regs.get(f"{name}_base", 0),
        )  # fmt: skip
    crs = (regs.cr0 or 0, 0, regs.cr2 or 0, regs.cr3 or 0, regs.cr4 or 0)
    struct.pack_into("<5Q", out, _QEMU_CR_AT, *crs)
    return bytes(out)


def prstatus(index: int, desc: bytes) -> CpuRegisters | None:
    """An ``NT_PRSTATUS`` note (general registers, no control registers)."""
    end = _PRSTATUS_REG_AT + 8 * len(_PRSTATUS_REGS)
    if len(desc) < end:
        return None
    values = struct.unpack_from(f"<{len(_PRSTATUS_REGS)}Q", desc, _PRSTATUS_REG_AT)
    return CpuRegisters(index, "NT_PRSTATUS", regs=dict(zip(_PRSTATUS_REGS, values, strict=True)))


def vmcoreinfo(desc: bytes) -> dict[str, str]:
    """The ``KEY=value`` lines of a ``VMCOREINFO`` note."""
    out: dict[str, str] = {}
    for line in desc.rstrip(b"\0").decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def kvmpage_note(desc: bytes) -> dict[str, Any]:
    """The JSON of a ``KVMPAGE`` note ({} when unreadable)."""
    try:
        value = json.loads(desc.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def cpus_of(notes: list[Note]) -> list[CpuRegisters]:
    """One `CpuRegisters` per CPU: from the ``QEMU`` notes when there are any (they hold the
    control registers), else from ``NT_PRSTATUS``; a ``KVMPAGE`` note adds EFER."""
    qemu = [n for n in notes if n.name == QEMU_NOTE]
    extra = next((kvmpage_note(n.desc) for n in notes if n.name == KVMPAGE_NOTE), {})
    efers = extra.get("efer", [])
    cpus: list[CpuRegisters] = []
    if qemu:
        for n in qemu:
            regs = qemu_cpu(len(cpus), n.desc)
            if regs is not None:
                efer = efers[regs.index] if regs.index < len(efers) else None
                if isinstance(efer, int):
                    regs = CpuRegisters(regs.index, regs.source, regs.cr0, regs.cr2, regs.cr3,
                                        regs.cr4, efer, regs.regs)  # fmt: skip
                cpus.append(regs)
        if cpus:
            return cpus
    for n in notes:
        if n.name == "CORE" and n.type == NT_PRSTATUS:
            regs = prstatus(len(cpus), n.desc)
            if regs is not None:
                cpus.append(regs)
    return cpus
