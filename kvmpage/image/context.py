"""Which tables to walk and under which CPU state: an image's CPU, with the user's overrides.

CR3 names the top-level table (its low 12 bits are the PCID when CR4.PCIDE is set, else the
PWT/PCD bits; both are masked and shown). CR0.WP, CR4.SMEP/SMAP/LA57 and EFER.NXE change what
the entries mean. Each value comes from the user (``--cr3`` ...), from the image's CPU note,
or is assumed, and `PagingContext.sources` says which: EFER in particular is not in QEMU's
note, and an assumption is always printed with the option that changes it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from kvmpage.image.notes import CpuRegisters
from kvmpage.paging.arch import ADDRESS_MASK, CpuState
from kvmpage.x86 import (
    CR0_PG,
    CR0_WP,
    CR4_LA57,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PKE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
)

#: What a 64-bit kernel runs with: protected mode, paging, WP, NE/ET/MP, AM.
ASSUMED_CR0 = 0x8005_0033
#: PAE, PGE, OSFXSR, OSXMMEXCPT: long mode without SMEP, SMAP, PCID or LA57.
ASSUMED_CR4 = 0x6A0
#: SCE, LME, LMA, NXE: every 64-bit kernel that can enables NX.
ASSUMED_EFER = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE


class ContextError(ValueError):
    """The CPU state does not allow a 64-bit walk (no CR3, paging off, not long mode...)."""


@dataclass(frozen=True)
class PagingContext:
    """The root table and the CPU state a walk of an image uses."""

    cpu_index: int | None
    cr0: int
    cr3: int
    cr4: int
    efer: int
    #: per register: ``"image"`` (a CPU note), ``"option"`` (the user), ``"assumed"``,
    #: ``"vmcoreinfo"`` (CR3 of the kernel's own top-level table)
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def root(self) -> int:
        """Physical address of the top-level table (CR3 without PCID/flag bits)."""
        return self.cr3 & ADDRESS_MASK

    @property
    def pcid(self) -> int | None:
        """The PCID in CR3's low 12 bits when CR4.PCIDE is set."""
        return self.cr3 & 0xFFF if self.cr4 & CR4_PCIDE else None

    @property
    def levels(self) -> int:
        return 5 if self.cr4 & CR4_LA57 else 4

    @functools.cached_property
    def cpu(self) -> CpuState:
        """The bits of this state the walk and the permission model use (made once: a walk
        of an image reads it on every call)."""
        return CpuState(
            wp=bool(self.cr0 & CR0_WP),
            smep=bool(self.cr4 & CR4_SMEP),
            smap=bool(self.cr4 & CR4_SMAP),
            nxe=bool(self.efer & EFER_NXE),
            ac=False,
            la57=bool(self.cr4 & CR4_LA57),
        )

    def describe(self) -> str:
        """``CR0=... CR3=... (PCID 0x1, root 0x...) CR4=... EFER=...`` with where each came
        from when it was not the image."""

        def tag(reg: str) -> str:
            src = self.sources.get(reg, "image")
            return "" if src == "image" else f" ({src})"

        pcid = f", PCID {self.pcid:#x}" if self.pcid is not None else ""
        low = self.cr3 & 0xFFF
        flags = f", low bits {low:#x}" if low and self.pcid is None else ""
        cpu = f"cpu {self.cpu_index}: " if self.cpu_index is not None else ""
        return (
            f"{cpu}CR0={self.cr0:#x}{tag('cr0')} CR3={self.cr3:#x}{tag('cr3')} (root "
            f"{self.root:#x}{pcid}{flags}) CR4={self.cr4:#x}{tag('cr4')} "
            f"EFER={self.efer:#x}{tag('efer')}; {self.levels}-level paging"
        )

    def with_cr3(self, cr3: int) -> PagingContext:
        """The same CPU state with another CR3 (the other half of a KPTI pair...)."""
        sources = {**self.sources, "cr3": "option"}
        return PagingContext(self.cpu_index, self.cr0, cr3, self.cr4, self.efer, sources,
                             self.notes)  # fmt: skip


def make_context(
    cpus: list[CpuRegisters],
    *,
    cpu: int | None = None,
    cr3: int | None = None,
    cr0: int | None = None,
    cr4: int | None = None,
    efer: int | None = None,
    kernel_root: tuple[int, str] | None = None,
    kernel_levels: int | None = None,
) -> PagingContext:
    """The `PagingContext` for CPU ``cpu`` (default 0) of an image with CPUs ``cpus``.

    ``kernel_root``: the kernel's own top-level table and where it was found (VMCOREINFO), for
    images whose notes have no CR3. ``kernel_levels``: paging levels the kernel says it uses.
    Raises `ContextError` when no CR3 can be found or the state is not 64-bit paging.
    """
    if cpu is not None and not 0 <= cpu < max(len(cpus), 1):
        have = f"CPUs 0..{len(cpus) - 1}" if cpus else "no CPU note"
        raise ContextError(f"--cpu {cpu}: the image has {have}")
    regs = cpus[cpu or 0] if cpus else None
    sources: dict[str, str] = {}
    notes: list[str] = []

    def pick(name: str, given: int | None, found: int | None, assumed: int) -> int:
        if given is not None:
            sources[name] = "option"
            return given
        if found is not None:
            sources[name] = "image"
            return found
        sources[name] = "assumed"
        return assumed

    found_cr3 = regs.cr3 if regs is not None else None
    if cr3 is None and found_cr3 is None:
        if kernel_root is None:
            where = f"its CPU notes ({regs.source})" if regs is not None else "it"
            raise ContextError(
                f"no CR3: {where} hold no control registers and the kernel's top-level table "
                "is not named in a VMCOREINFO note; give it with --cr3 ADDRESS"
            )
        cr3_value = kernel_root[0]
        sources["cr3"] = "vmcoreinfo"
        notes.append(f"CR3 is the kernel's top-level table ({kernel_root[1]})")
    else:
        cr3_value = pick("cr3", cr3, found_cr3, 0)
    cr0_value = pick("cr0", cr0, regs.cr0 if regs else None, ASSUMED_CR0)
    assumed_cr4 = ASSUMED_CR4 | (CR4_LA57 if kernel_levels == 5 else 0)
    cr4_value = pick("cr4", cr4, regs.cr4 if regs else None, assumed_cr4)
    efer_value = pick("efer", efer, regs.efer if regs else None, ASSUMED_EFER)
    for reg, value, option in (("cr0", cr0_value, "--cr0"), ("cr4", cr4_value, "--cr4"),
                               ("efer", efer_value, "--efer")):  # fmt: skip
        if sources[reg] == "assumed":
            why = "EFER is not in QEMU's CPU note" if reg == "efer" else f"the image has no {reg}"
            notes.append(f"{reg.upper()} assumed {value:#x} ({why}; {option} to change)")
    if not cr0_value & CR0_PG:
        raise ContextError(f"CR0={cr0_value:#x}: paging is off (CR0.PG clear), nothing to walk")
    if not cr4_value & CR4_PAE or not efer_value & EFER_LMA:
        raise ContextError(
            f"CR4={cr4_value:#x} EFER={efer_value:#x}: not 64-bit paging (needs CR4.PAE and "
            "EFER.LMA); kvmpage walks 4- and 5-level tables"
        )
    if kernel_levels is not None and kernel_levels != (5 if cr4_value & CR4_LA57 else 4):
        notes.append(
            f"the kernel says it uses {kernel_levels}-level paging (VMCOREINFO), CR4.LA57 "
            "disagrees: the CPU state wins"
        )
    if cr4_value & CR4_PKE:
        notes.append("CR4.PKE is set: protection keys (entry bits 59..62) are not modelled")
    return PagingContext(
        regs.index if regs is not None else None, cr0_value, cr3_value, cr4_value, efer_value,
        sources, tuple(notes),
    )  # fmt: skip
