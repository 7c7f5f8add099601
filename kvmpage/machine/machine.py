"""`Machine`: a ready 64-bit guest with the agent loaded, running batches of probes.

Bring-up is what Linux KVM selftests do, without firmware: the host writes the agent's page
tables, GDT (kernel and user segments, TSS), IDT (all 32 exceptions) and TSS (ring-0 stack) into
guest RAM, sets CPUID (always: without it a guest sees zeros), then programs long mode with
KVM_SET_SREGS / KVM_SET_REGS. The vCPU starts directly in 64-bit mode at the agent's dispatcher.

Typical use::

    with Machine() as m:
        p4 = <a 4 KiB frame below m.reserved[0], filled by the mapper>
        m.install_agent_slot(p4)
        b = Batch(); b.load_cr3(p4); b.read(va); b.write(va, 7, cpl=0)
        for r in m.run(b): print(r)
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self

from kvmpage.kvm import abi, limits
from kvmpage.kvm.errors import KvmError
from kvmpage.kvm.exits import InterruptedExit, MmioExit, exit_name
from kvmpage.kvm.handles import DEFAULT_DEVICE, Kvm, Vcpu, Vm
from kvmpage.kvm.host import CpuidSummary, HostProfile, HypervisorKind, cpl0_oracle, hypervisor_kind
from kvmpage.kvm.memory import GuestMemory
from kvmpage.kvm.signals import signals_deferred
from kvmpage.machine import agent
from kvmpage.machine import layout as L
from kvmpage.machine.agent_guest import AgentGuest
from kvmpage.machine.cpuid import CpuidCache
from kvmpage.machine.errors import (
    GuestCrashError,
    MachineClosedError,
    WatchdogTimeout,
)
from kvmpage.machine.interface import open_bus_value
from kvmpage.machine.profile import probe_kvm
from kvmpage.machine.protocol import (
    DOORBELL_DONE,
    DOORBELL_UNEXPECTED,
    RECORD_SIZE,
    Batch,
    BatchResults,
)
from kvmpage.machine.watchdog import WATCHDOG

DEFAULT_MEMORY = 64 << 20
DEFAULT_CAPACITY = 16384
DEFAULT_TIMEOUT = 10.0
_UNSET: Final = object()


@functools.cache
def _kind() -> HypervisorKind:
    return hypervisor_kind()


class Machine(AgentGuest):
    """One VM, one vCPU, long mode with 4-level paging, and the agent in PML4 slot ``agent_slot``.

    ``memory_size`` bytes of RAM start at guest-physical 0 (a multiple of 2 MiB); the agent keeps
    ``reserved`` at the top of it, so user tables and frames go below ``reserved[0]``. Batches
    hold up to ``capacity`` commands. ``timeout`` (seconds, None for no limit) bounds each run.

    CPU state set by services (CR3, CR0.WP, SMEP, SMAP, AC, NXE) persists from batch to batch
    until `reset_cpu` or a failure resets it. A machine is used by one thread at a time; several
    machines may run in parallel threads.
    """

    #: the label of `translate`'s answers (KVM's own walker, a second opinion on addresses)
    translate_oracle: str | None = "kvm-translate"
    #: a real TLB sits between the tables and the probes: a missing flush can show
    models_tlb = True

    def __init__(
        self,
        memory_size: int = DEFAULT_MEMORY,
        *,
        capacity: int = DEFAULT_CAPACITY,
        agent_slot: int = L.DEFAULT_AGENT_SLOT,
        timeout: float | None = DEFAULT_TIMEOUT,
        kvm: Kvm | None = None,
        device: str = DEFAULT_DEVICE,
        huge_pages: bool = False,
        ram: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """``huge_pages``: back guest RAM with transparent huge pages (`GuestMemory`): faster
        to fill and to touch once, slower to touch a second time.

        ``ram``: the ranges below the agent's reserved memory that are RAM (4 KiB aligned);
        the rest are holes, which the guest sees as MMIO (a memory image's layout). Default:
        everything below the agent is RAM."""
        self._kvm: Kvm | None = None
        self._vm: Vm | None = None
        self._unreleased: Vm | None = None  # closed, but its memory was still pinned by a view
        self._owns_kvm = kvm is None
        self.device = kvm.path if kvm is not None else device
        self.timeout = timeout
        try:
            self._kvm = kvm if kvm is not None else Kvm(device)
            self._kvm.require_machine_capabilities()
            nx = CpuidCache.supports_nx(self._kvm)
            self.placement = agent.Placement(memory_size, capacity, agent_slot, nx=nx)
            self.placement.validate()
            self._vm = self._kvm.create_vm()
            present = None
            if ram is not None:
                present = [*ram, self.placement.reserved]
                low = self.placement.reserved[0]
                if any(end > low for _, end in ram):
                    raise ValueError(
                        f"RAM ranges must end below the agent's reserved memory at {low:#x}"
                    )
            self.memory: GuestMemory = self._vm.add_memory(
                memory_size, huge_pages=huge_pages, present=present
            )
            self.vcpu: Vcpu = self._vm.create_vcpu(0)
            self.vcpu.set_cpuid_raw(CpuidCache.buffer(self._kvm))
            self._load_agent()
            self.reset_cpu()
        except BaseException:
            self.close()
            raise
        #: MMIO exits of probes that reached no RAM, most recent last.
        self.mmio_log: deque[MmioExit] = deque(maxlen=4096)
        #: What a read of guest-physical address ``gpa`` with no RAM returns (``gpa`` -> u64).
        self.mmio_read_value: Callable[[int], int] = open_bus_value
        #: Wall time of the last batch's KVM_RUN loop (excludes encoding and decoding), in ns.
        self.last_run_ns = 0
        #: Oracle label of CPL0 probe results on this host.
        self.cpl0_oracle = cpl0_oracle(_kind())

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy the VM and release every fd and mapping (idempotent and exception-safe).

        Ctrl-C and SIGTERM wait until it is done (`signals_deferred`). If a view of guest
        memory is still alive, every descriptor is closed all the same and `BufferError` says
        so; a later `close`, once the view is released, unmaps the memory.
        """
        with signals_deferred():
            vm, self._vm = self._vm, None
            if vm is not None:
                self._unreleased = vm
            kvm, self._kvm = self._kvm, None
            try:
                if self._unreleased is not None:
                    self._unreleased.close()
                    self._unreleased = None
            finally:
                if kvm is not None and self._owns_kvm:
                    kvm.close()

    @property
    def closed(self) -> bool:
        return self._vm is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except BufferError:
            if tb is None:
                raise
            # An exception is leaving the block (Ctrl-C inside a run, say): the frames it
            # unwound may still hold views of guest memory in their variables. Those frames
            # are finished; drop their variables and unmap, or let the first exception go on
            # (the memory is unmapped when the last view dies).
            traceback.clear_frames(tb)
            with contextlib.suppress(BufferError):
                self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _check_open(self) -> None:
        if self._vm is None:
            raise MachineClosedError("the machine is closed")

    # -- bring-up -------------------------------------------------------------------------

    def _load_agent(self) -> None:
        for phys, page in agent.small_area_pages(self.placement):
            self.memory.write(phys, page)

    def _boot_sregs(self) -> abi.kvm_sregs:
        return agent.boot_sregs(self.placement)

    def reset_cpu(self) -> None:
        """Put the vCPU back in the boot state: agent CR3, CR0.WP on, SMEP/SMAP and AC off."""
        self.vcpu.set_sregs(self._boot_sregs())
        regs = abi.kvm_regs()
        regs.rip = self.placement.va(L.CODE_OFF + agent.agent_image().kernel_entry)
        regs.rsp = self.placement.va(L.KSTACK_TOP_OFF)
        regs.rflags = L.RFLAGS_DEFAULT
        self.vcpu.set_regs(regs)
        kstate = self.placement.phys_of(L.KSTATE_OFF)
        area = agent.build_small_area(self.placement)
        offset = kstate - self.placement.small_phys
        self.memory.write(kstate, area[offset : offset + L.PAGE])  # mailbox, iret frame, RFLAGS

    # -- running --------------------------------------------------------------------------

    def run(self, batch: Batch, *, timeout: float | object | None = _UNSET) -> BatchResults:
        """Run every command of ``batch`` in one KVM_RUN; one result per command, in order."""
        self._check_open()
        start, n = self._load(batch)
        limit = self.timeout if timeout is _UNSET else timeout
        t0 = time.perf_counter_ns()
        self._execute(limit)  # type: ignore[arg-type]
        self.last_run_ns = time.perf_counter_ns() - t0
        return BatchResults(self.memory.read(start, n * RECORD_SIZE), n, self.cpl0_oracle)

    def _kick(self) -> None:
        self.vcpu.run_struct.immediate_exit = 1

    def _execute(self, timeout: float | None) -> None:
        arming = WATCHDOG.arm(timeout, self._kick) if timeout is not None else None
        try:
            while True:
                ex = self.vcpu.run()
                if (
                    isinstance(ex, MmioExit)
                    and ex.phys_addr == self.placement.doorbell_gpa
                    and ex.length == 8
                ):
                    if ex.value == DOORBELL_DONE:
                        return
                    if ex.value == DOORBELL_UNEXPECTED:
                        self._crash("the guest took an exception the agent did not expect",
                                    self._agent_dump())  # fmt: skip
                if isinstance(ex, MmioExit):
                    self._open_bus(ex)
                    continue
                if isinstance(ex, InterruptedExit):
                    if arming is not None and arming.fired:
                        break
                    continue  # a signal meant for someone else: resume the guest
                self._crash(f"unexpected exit {exit_name(ex.reason)}: {ex}", self._vcpu_dump())
        finally:
            if arming is not None:
                WATCHDOG.disarm(arming)
            if self._vm is not None:
                self.vcpu.run_struct.immediate_exit = 0
        dump = self._vcpu_dump()
        self._recover()
        raise WatchdogTimeout(
            f"the guest did not finish its batch within {timeout} s and was stopped at "
            f"rip={dump.get('rip', 0):#x}; the CPU was reset to its boot state"
        )

    def _open_bus(self, ex: MmioExit) -> None:
        """A probe reached a guest-physical address with no RAM: log it; a read sees
        `mmio_read_value` of the address (all-ones, the open bus, unless a verifier asks for
        the address's tag, so the value read proves which address the CPU reached)."""
        self.mmio_log.append(ex)
        if not ex.is_write:
            value = self.mmio_read_value(ex.phys_addr)
            mmio = self.vcpu.run_struct.exit.mmio
            for i in range(min(ex.length, 8)):
                mmio.data[i] = value >> (8 * i) & 0xFF

    def drop_shadow_tables(self) -> None:
        """Make KVM forget every shadow page table (delete and re-add the RAM memslot).

        After this, host-side edits of tables the guest already walked are seen on a shadow-
        paging host too (about 0.1-6 ms here, growing with the number of shadowed pages). On a
        TDP host it is harmless. `kvmpage.machine.bridge.replay_through_agent` is the cheaper
        remedy.
        """
        self._check_open()
        assert self._vm is not None
        mem = self.memory
        self._vm.set_memory_region(0, mem.guest_phys_addr, 0, mem.host_address)
        self._vm.set_memory_region(0, mem.guest_phys_addr, mem.size, mem.host_address)

    def _crash(self, message: str, dump: dict[str, int]) -> None:
        recovered = self._recover()
        suffix = (
            "the CPU was reset to its boot state (CR3, CR0.WP, SMEP/SMAP, AC)"
            if recovered
            else "the VM could not be reset and was destroyed"
        )
        raise GuestCrashError(f"{message}; {suffix}", dump)

    def _recover(self) -> bool:
        """Reset the vCPU after a failure; destroy the VM if even that fails."""
        try:
            self.reset_cpu()
            return True
        except KvmError:
            self.close()
            return False

    def _agent_dump(self) -> dict[str, int]:
        at = self.placement.phys_of(L.KSTATE_OFF) + L.KS_DUMP
        return {name: self.memory.read_u64(at + 8 * i) for i, name in enumerate(L.DUMP_FIELDS)}

    def _vcpu_dump(self) -> dict[str, int]:
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except KvmError:
            return {}
        dump = {field[0]: int(getattr(regs, field[0])) for field in abi.kvm_regs._fields_}
        for name in ("cr0", "cr2", "cr3", "cr4", "efer"):
            dump[name] = int(getattr(sregs, name))
        dump["cs"] = int(sregs.cs.selector)
        return dump

    # -- other oracles --------------------------------------------------------------------

    def translate(self, va: int) -> int | None:
        """KVM_TRANSLATE (oracle ``kvm-translate``): KVM's walk of the *current* tables under
        the vCPU's CR3; ignores U/S and R/W. None when KVM finds no valid translation."""
        self._check_open()
        tr = self.vcpu.translate(va)
        return int(tr.physical_address) if tr.valid else None

    def host_profile(self) -> HostProfile:
        """This host's profile (features tried in a separate small guest; cached per process)."""
        return host_profile(self.device)

    def granted_cpuid(self) -> CpuidSummary:
        """The CPUID the guest actually sees (KVM_GET_CPUID2 after setting it), cached."""
        self._check_open()
        path = self._kvm.path if self._kvm else DEFAULT_DEVICE
        summary = CpuidCache.granted.get(path)
        if summary is None:
            summary = CpuidSummary.from_entries(self.vcpu.get_cpuid())
            CpuidCache.granted[path] = summary
        return summary


_PROFILES: dict[str, HostProfile] = {}
_PROFILES_LOCK = threading.Lock()


def host_profile(device: str = DEFAULT_DEVICE, *, refresh: bool = False) -> HostProfile:
    """The profile of the KVM behind ``device`` (`kvmpage.machine.profile.probe_kvm`), tried
    in small guests once per device and process; ``refresh`` tries again."""
    with _PROFILES_LOCK:
        if refresh or device not in _PROFILES:
            _PROFILES[device] = probe_kvm(
                lambda size, capacity: Machine(size, capacity=capacity, device=device, timeout=5.0)
            )
        return _PROFILES[device]


def agent_reserved(memory_size: int, slot: int = L.DEFAULT_AGENT_SLOT) -> tuple[int, int]:
    """The physical range a `Machine` of ``memory_size`` bytes keeps for its agent (user frames
    go below it)."""
    return agent.Placement(memory_size, DEFAULT_CAPACITY, slot, nx=True).reserved


def memory_limit() -> limits.MemoryLimit:
    """The most guest memory one machine can have, and why: what the agent can address (one
    physmap table per GiB) or what this host can give (`kvmpage.kvm.limits`), whichever is
    less; read afresh each time (a few /proc reads)."""
    own = limits.MemoryLimit(
        agent.MAX_PHYSMAP_PDS << 30,
        f"kvmpage's guest agent, which maps guest memory with one table per GiB and has room "
        f"for {agent.MAX_PHYSMAP_PDS}",
    )
    return min(own, limits.guest_memory_limit(), key=lambda limit: limit.size)
