"""What the tcg oracle can check, established by trying each feature in a TCG guest.

The same record as KVM's (`kvmpage.kvm.host.HostProfile`, kind ``tcg``), so the verifier and
the commands read both alike: CPUID as the emulated CPU answers the ``cpuid`` instruction, and
each paging feature tried with the same probes and the same verdict rules as on KVM
(`kvmpage.machine.features`): NX, SMEP, SMAP (with and without AC), a 1 GiB page, a host rewrite
of a walked entry, every top-level slot at CPL3; PCID and PKU by CPUID and a CR4 bit that
sticks; LA57 by a read through a 5-level table at an address only LA57 makes canonical.
Cached per process (about 30 ms).
"""

from __future__ import annotations

import threading

from kvmpage.kvm.host import CpuidSummary, FeatureResult, HostProfile, HypervisorKind, Support
from kvmpage.machine import pte
from kvmpage.machine.features import (
    CR4_LA57,
    CR4_PCIDE,
    CR4_PKE,
    _blocked_slots,
    _huge,
    _nx,
    _smap,
    _smep,
    _verdict,
)
from kvmpage.machine.protocol import Batch, fetch_stub
from kvmpage.tcg.machine import TcgMachine

_LOCK = threading.Lock()
_CACHE: list[HostProfile] = []

_TAG = 0x7A67_FEA7_0000_0000
_USER_VA = 0x0000_0040_0000_0000
_NX_VA = _USER_VA + 0x2000
_REWRITE_VA = _USER_VA + 0x3000
_HUGE_VA = 0x0000_0080_0000_0000
_LA57_VA = 0x0001_0000_0000_0000  # canonical only with 57-bit addresses: level-5 slot 1
_STUB_OFF = 0x800


def tcg_profile(*, refresh: bool = False) -> HostProfile:
    """The tcg oracle's profile (tried in a TCG guest once per process)."""
    with _LOCK:
        if refresh or not _CACHE:
            _CACHE[:] = [_probe()]
        return _CACHE[0]


def _cpuid(m: TcgMachine) -> CpuidSummary:
    def leaf(function: int, index: int = 0) -> dict[str, int]:
        return m.call(m.stub.cpuid_insn, rax=function, rcx=index)

    basic, ext, ext7, size = leaf(1), leaf(0x8000_0001), leaf(7), leaf(0x8000_0008)
    return CpuidSummary(
        nx=bool(ext["rdx"] >> 20 & 1),
        smep=bool(ext7["rbx"] >> 7 & 1),
        smap=bool(ext7["rbx"] >> 20 & 1),
        pdpe1gb=bool(ext["rdx"] >> 26 & 1),
        pcid=bool(basic["rcx"] >> 17 & 1),
        invpcid=bool(ext7["rbx"] >> 10 & 1),
        pku=bool(ext7["rcx"] >> 3 & 1),
        la57=bool(ext7["rcx"] >> 16 & 1),
        maxphyaddr=size["rax"] & 0xFF,
        linear_bits=size["rax"] >> 8 & 0xFF,
    )


def _probe() -> HostProfile:
    with TcgMachine(8 << 20, capacity=64) as m:
        cpuid = _cpuid(m)
        mem = m.memory
        frames = pte.FrameBump(mem, pte.SIZE_4K, m.reserved[0])
        space = pte.SimpleSpace(mem, frames)
        user, nx_page, old, new = (frames.alloc() for _ in range(4))
        for f in (user, nx_page, old, new):
            mem.write_u64(f, _TAG | f)
        mem.write(user + _STUB_OFF, fetch_stub(_TAG | user))
        mem.write(nx_page + _STUB_OFF, fetch_stub(_TAG | nx_page))
        rw_user = pte.P | pte.W | pte.U | pte.A | pte.D
        space.map(_USER_VA, user, rw_user)
        space.map(_NX_VA, nx_page, rw_user | pte.NX)
        rewrite_pte = space.map(_REWRITE_VA, old, rw_user)
        mem.write_u64(0, _TAG)
        space.map(_HUGE_VA, 0, rw_user, level=3)
        m.install_agent_slot(space.p4)

        b = Batch()
        b.load_cr3(space.p4)
        i_nx_ctl = b.fetch(_USER_VA + _STUB_OFF)
        i_nx = b.fetch(_NX_VA + _STUB_OFF)
        i_smep_on = b.set_smep(True)
        i_smep = b.fetch(_USER_VA + _STUB_OFF, cpl=0)
        b.set_smep(False)
        i_smap_on = b.set_smap(True)
        i_smap = b.read(_USER_VA, cpl=0)
        b.set_ac(True)
        i_smap_ac = b.read(_USER_VA, cpl=0)
        b.set_ac(False)
        b.set_smap(False)
        i_huge = b.read(_HUGE_VA)
        i_first = b.read(_REWRITE_VA)
        res = m.run(b)
        features = {
            "nx": _nx(cpuid.nx, res, i_nx_ctl, i_nx),
            "smep": _smep(res, i_smep_on, i_smep),
            "smap": _smap(res, i_smap_on, i_smap, i_smap_ac),
            "1gib-pages": _huge(res, i_huge),
        }
        mem.write_u64(rewrite_pte, new | rw_user)
        b = Batch()
        b.invlpg(_REWRITE_VA)
        i_again = b.read(_REWRITE_VA)
        again = m.run(b)[i_again]
        seen = again.ok and again.value == _TAG | new
        first_ok = res[i_first].ok and res[i_first].value == _TAG | old
        features["host-rewrite-seen"] = _verdict(
            seen and first_ok,
            "host rewrite of a walked PTE + invlpg: guest read the "
            + ("new frame" if seen else str(again)),
        )
        for name, bit, granted in (("pcid", CR4_PCIDE, cpuid.pcid), ("pku", CR4_PKE, cpuid.pku)):
            features[name] = _cr4_bit(m, name, bit, granted)
    features["la57"] = _la57(cpuid.la57)
    with TcgMachine(24 << 20, capacity=1024) as m:
        failing = _blocked_slots(m, range(512))
    features["cpl3-every-pml4-slot"] = _verdict(
        not failing,
        "CPL3 reads in every PML4 slot: "
        + (f"not-present #PF in slot(s) {sorted(failing)}" if failing else "every slot worked"),
    )
    return HostProfile(HypervisorKind.TCG, cpuid, features, frozenset(failing))


def _cr4_bit(m: TcgMachine, name: str, bit: int, granted: bool) -> FeatureResult:
    """CPUID must grant it and a ``mov`` to CR4 must keep the bit (then the CPU is reset)."""
    if not granted:
        return _verdict(False, f"CPUID does not grant {name.upper()}")
    try:
        cr4 = m.call(m.stub.cr4_or, rdx=bit)["rax"]
    finally:
        m.reset_cpu()
    return _verdict(bool(cr4 & bit), f"granted by CPUID; CR4 after setting bit {bit:#x}: {cr4:#x}")


def _la57(granted: bool) -> FeatureResult:
    """A read through a 5-level table at an address that only 57-bit paging makes canonical."""
    if not granted:
        return _verdict(False, "CPUID does not grant LA57")
    with TcgMachine(8 << 20, capacity=64, la57=True) as m:
        mem = m.memory
        frames = pte.FrameBump(mem, pte.SIZE_4K, m.reserved[0])
        space = pte.SimpleSpace(mem, frames)  # its PML4 goes under the level-5 root
        root, page = frames.alloc(), frames.alloc()
        mem.write_u64(page, _TAG | page)
        space.map(_LA57_VA & ((1 << 48) - 1), page, pte.P | pte.W | pte.U)
        mem.write_u64(root + 8 * (_LA57_VA >> 48 & 511), space.p4 | pte.P | pte.W | pte.U)
        m.install_agent_slot(root)
        b = Batch()
        b.load_cr3(root)
        i = b.read(_LA57_VA)
        r = m.run(b)[i]
    ok = r.ok and r.value == _TAG | page
    what = str(r.fault) if r.fault is not None else f"value {r.value:#x}"
    return FeatureResult(
        Support.WORKS if ok else Support.UNSUPPORTED,
        f"CR4.LA57 on at boot; CPL3 read of {_LA57_VA:#x} through a level-5 table: {what}",
    )


__all__ = ["CR4_LA57", "tcg_profile"]
