"""`TcgMachine`: the KVM `Machine`'s interface on QEMU's TCG (through Unicorn), so the verifier
runs unchanged on a second, independent MMU: every probe result is labelled ``tcg``.

The guest memory is laid out exactly like a KVM machine's (the agent's placement, tables,
descriptor tables and command array: `kvmpage.machine.agent`), so the same layout built in
either machine has the same physical addresses and the same probes. Only the code differs:
Unicorn does not deliver exceptions through the guest's IDT (it reports them to the host) and
cannot enter ring 0 from ring 3, so instead of the KVM agent a small stub (guest/tcg.s) runs
each group of consecutive probes of one CPL, or of services, in a loop; the host
starts it at the right privilege level (ring 3 is entered with a real ``iretq``; ring 0 comes
back as the saved ring-0 state), catches every fault, writes it into the command record with
the vector, the error code and CR2 that QEMU computed, and resumes the loop.

QEMU's softmmu TLB is emptied before every group of probes (docs/tcg.md): TCG does not model
the TLB, so every probe walks the tables as they are in memory; `models_tlb` is False and the
verifier leaves out probes whose answer would depend on a stale TLB entry.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Self

from kvmpage.kvm.host import CpuidSummary, HostProfile
from kvmpage.kvm.memory import GuestMemory
from kvmpage.machine import agent, pte
from kvmpage.machine import layout as L
from kvmpage.machine.agent_guest import AgentGuest
from kvmpage.machine.errors import (
    GuestCrashError,
    MachineClosedError,
    WatchdogTimeout,
)
from kvmpage.machine.interface import open_bus_value
from kvmpage.machine.protocol import (
    OP_CPL3,
    PROBE_OPS,
    RECORD_SIZE,
    ST_BAD_OP,
    ST_FAULT,
    Batch,
    BatchResults,
    Op,
)
from kvmpage.machine.watchdog import WATCHDOG
from kvmpage.tcg.engine import MSR_EFER, Engine, ExceptionState, unicorn_version
from kvmpage.tcg.errors import TcgError
from kvmpage.tcg.placement import Placement57, map_guest_memory
from kvmpage.tcg.profile import probe_tcg
from kvmpage.tcg.stub import stub_image
from kvmpage.x86 import CR4_LA57, EFER_LMA, EFER_LME, EFER_NXE

DEFAULT_MEMORY = 64 << 20
DEFAULT_CAPACITY = 16384
DEFAULT_TIMEOUT = 10.0
#: the oracle label of every probe this machine answers
ORACLE = "tcg"
#: guest-physical addresses up to here are answered (RAM, then MMIO): 2^52, the architecture's
#: largest MAXPHYADDR (TCG's own is 40: addresses above it are reserved bits in an entry)
PHYS_LIMIT = 1 << 52
_UNSET: Final = object()
_SERVICES = frozenset(int(op) for op in Op if op >= Op.INVLPG)
_RING0_PROBES = frozenset(int(op) for op in PROBE_OPS)
_RING3_PROBES = frozenset(int(op) | OP_CPL3 for op in PROBE_OPS)
#: in a 5-level guest the agent keeps a slot of the user's level-5 root (by default the last),
#: and the last slot of its own level-4 table below it
_LA57_SLOT = 511
_P5_OFF = 0x1F000  # the agent's own level-5 root, the last frame before its code area


#: the error-code offset found by calibration, per process (one Unicorn library)
_CALIBRATED: list[ExceptionState] = []


@dataclass
class _Loop:
    """What the exception hook needs to know about the loop that is running."""

    view: int  #: virtual address of record 0 in the view this CPL uses
    code: int  #: virtual address of the stub copy this CPL executes
    stack: int  #: stack top of this CPL
    resume: int  #: where a fault resumes (the probe or the service loop)
    services: bool = False


class TcgMachine(AgentGuest):
    """One QEMU TCG x86-64 CPU (Unicorn) with the kvmpage agent's memory layout.

    Same interface as `kvmpage.machine.Machine` where the verifier needs it: ``memory`` (a
    `PhysMemory` the mapper writes into), `run` (a `Batch` -> `BatchResults`, every probe
    labelled ``tcg``), `install_agent_slot`, ``agent_slot``, ``reserved``, ``capacity``,
    ``placement``, `host_profile`, ``cpl0_oracle``. `translate` has no independent answer here
    (QEMU's own translation would set A bits): ``translate_oracle`` is None.

    ``la57``: CR4.LA57 on (5-level paging); the user's root must then be a level-5 table, and the
    agent keeps its slot ``agent_slot`` (default 511), which points at the agent's own level-4
    table. The hook for 5-level layouts: build the root, `install_agent_slot` it,
    `Batch.load_cr3` it.

    ``ram``: the ranges below the agent's reserved memory that are RAM (4 KiB aligned), as the
    KVM machine's: the rest are holes, answered like addresses above RAM (MMIO: a read sees
    `mmio_read_value`, a write is logged and dropped). Default: everything below the agent.
    """

    cpl0_oracle = ORACLE
    cpl3_oracle = ORACLE
    #: no KVM_TRANSLATE-like second walker under TCG
    translate_oracle: str | None = None
    #: TCG does not model the TLB (see the module docstring)
    models_tlb = False

    def __init__(
        self,
        memory_size: int = DEFAULT_MEMORY,
        *,
        capacity: int = DEFAULT_CAPACITY,
        agent_slot: int = L.DEFAULT_AGENT_SLOT,
        timeout: float | None = DEFAULT_TIMEOUT,
        la57: bool = False,
        ram: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.engine = Engine()
        self.la57 = la57
        self.timeout = timeout
        if la57:
            self.placement: agent.Placement = Placement57(
                memory_size, capacity, _LA57_SLOT, nx=True, top=agent_slot
            )
        else:
            self.placement = agent.Placement(memory_size, capacity, agent_slot, nx=True)
        self.placement.validate()
        present = None
        if ram is not None:
            low = self.placement.reserved[0]
            if any(end > low for _, end in ram):
                raise ValueError(
                    f"RAM ranges must end below the agent's reserved memory at {low:#x}"
                )
            present = [*ram, self.placement.reserved]
        self.stub = stub_image()
        self._memory: GuestMemory | None = GuestMemory(memory_size, present=present)
        self.memory: GuestMemory = self._memory
        #: probes that reached no RAM: (guest-physical address, size, write, value)
        self.mmio_log: deque[tuple[int, int, bool, int]] = deque(maxlen=4096)
        #: what a read of guest-physical address ``gpa`` with no RAM returns
        self.mmio_read_value: Callable[[int], int] = open_bus_value
        #: wall time of the last batch's emulation, in ns
        self.last_run_ns = 0
        try:
            self._boot()
        except BaseException:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the guest memory (idempotent). The engine goes with the object."""
        memory, self._memory = self._memory, None
        if memory is not None:
            with contextlib.suppress(BufferError):
                memory.close()

    @property
    def closed(self) -> bool:
        return self._memory is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._memory is None:
            raise MachineClosedError("the machine is closed")

    # -- layout facts (as Machine) ----------------------------------------------------------

    @property
    def agent_slot(self) -> int:
        """The top-level slot of a user root that the agent reserves."""
        if isinstance(self.placement, Placement57):
            return self.placement.top
        return self.placement.slot

    @property
    def agent_p4(self) -> int:
        """The agent's own root (its PML4, or under LA57 its level-5 table): CR3 at boot."""
        return self.placement.small_phys + _P5_OFF if self.la57 else self.placement.p4_phys

    @property
    def agent_slot_entry(self) -> int:
        """The root entry that maps the agent (under LA57: its level-4 table)."""
        if self.la57:
            return pte.entry(self.placement.p4_phys, pte.P | pte.W | pte.U | pte.A)
        return self.placement.slot_entry

    # -- bring-up -------------------------------------------------------------------------

    def _boot(self) -> None:
        pl, mem, stub, engine = self.placement, self.memory, self.stub, self.engine
        for phys, page in agent.small_area_pages(pl):
            mem.write(phys, page)
        for code_off in (L.CODE_OFF, L.CODE_OFF + agent.agent_image().user_code):
            at = pl.phys_of(code_off)
            mem.zero(at, L.PAGE)
            mem.write(at, stub.code)
        if self.la57:
            mem.write_u64(self.agent_p4 + 8 * self.agent_slot, self.agent_slot_entry)
        self._kcode = pl.va(L.CODE_OFF)
        self._ucode = pl.va(L.CODE_OFF + agent.agent_image().user_code)
        map_guest_memory(engine, mem, PHYS_LIMIT, self._mmio_read, self._mmio_write)
        engine.set_descriptor_tables(
            (pl.va(L.GDT_OFF), 8 * L.GDT_ENTRIES - 1), (pl.va(L.IDT_OFF), 16 * 32 - 1)
        )
        engine.set_regs(cr4=agent.BOOT_CR4 | (CR4_LA57 if self.la57 else 0), cr3=self.agent_p4)
        engine.write_msr(MSR_EFER, EFER_LME | EFER_LMA | EFER_NXE)
        engine.set_regs(cr0=agent.BOOT_CR0, cs=L.KERNEL_CS, ss=L.KERNEL_DS)
        engine.on_exception(self._on_exception)
        engine.on_invalid_opcode(self._on_invalid_opcode)
        self._loop: _Loop | None = None
        self._failure: str | None = None
        self._boot_state = engine.save()
        self._ring0_state = engine.save()
        if not _CALIBRATED:
            engine.calibrate(self._raise_gp, self._boot_state)
            _CALIBRATED.append(engine.exception_state)
        else:
            engine._state = _CALIBRATED[0]
        self.reset_cpu()

    def _raise_gp(self, selector: int) -> None:
        """For calibration: #GP(selector) from ``mov %dx, %ds``, the hook stops at once."""
        self.engine.set_regs(rdx=selector)
        self._loop = None
        self.engine.start(self._kcode + self.stub.calib_gp, self._kcode + self.stub.calib_gp + 3)

    def reset_cpu(self) -> None:
        """Back to the boot state: the agent's root, CR0.WP on, SMEP/SMAP and AC off, NXE on."""
        self.engine.restore(self._boot_state)
        self.engine.flush_tlb()

    def call(self, offset: int, **regs: int) -> dict[str, int]:
        """Run the ring-0 stub routine at ``offset`` (``cpuid_insn``, ``cr4_or``) with
        ``regs``; returns rax, rbx, rcx, rdx afterwards. The CPU state is kept."""
        self._check_open()
        self.engine.set_regs(rsp=self.placement.va(L.KSTACK_TOP_OFF), **regs)
        self._loop = None
        self._failure = None
        # every routine is one instruction then `hlt`: stop at the `hlt`
        end = {self.stub.cpuid_insn: 2, self.stub.cr4_or: 13}[offset]
        self.engine.start(self._kcode + offset, self._kcode + offset + end)
        if self._failure is not None:
            raise TcgError(self._failure)
        return dict(
            zip(
                ("rax", "rbx", "rcx", "rdx"),
                self.engine.regs("rax", "rbx", "rcx", "rdx"),
                strict=True,
            )
        )

    # -- running --------------------------------------------------------------------------

    def run(self, batch: Batch, *, timeout: float | object | None = _UNSET) -> BatchResults:
        """Run every command of ``batch``; one result per command, in order."""
        self._check_open()
        start, n = self._load(batch)
        limit = self.timeout if timeout is _UNSET else timeout
        # the host wrote tables, tags and fetch stubs: no translation and no translated block
        # from before may survive (TCG has no TLB model; see the module docstring)
        self.engine.flush_tlb()
        self.engine.flush_code()
        ops = memoryview(batch.data).cast("I")[4 :: RECORD_SIZE // 4].tolist()
        arming = WATCHDOG.arm(limit, self.engine.stop) if limit is not None else None  # type: ignore[arg-type]
        t0 = time.perf_counter_ns()
        try:
            i = 0
            while i < n:
                op = ops[i]
                if op in _RING3_PROBES:
                    j = self._ring3(i)
                elif op in _RING0_PROBES:
                    j = self._ring0(i, services=False)
                elif op in _SERVICES:
                    j = self._ring0(i, services=True)
                    self.engine.flush_tlb()
                    self.engine.flush_code()
                else:
                    self.memory.write(start + i * RECORD_SIZE + 56, struct.pack("<I", ST_BAD_OP))
                    j = i + 1
                if arming is not None and arming.fired:
                    raise self._timeout(limit)
                if j <= i or self._failure is not None:
                    self._crash(self._failure or "the stub stopped without finishing a command")
                i = j
        finally:
            if arming is not None:
                WATCHDOG.disarm(arming)
        self.last_run_ns = time.perf_counter_ns() - t0
        return BatchResults(self.memory.read(start, n * RECORD_SIZE), n, ORACLE, ORACLE)

    def batch_slots(self, batch: Batch) -> set[int]:
        """The top-level slots the probes address (under LA57: level-5 slots)."""
        if not self.la57:
            return batch.slots
        return {cmd[1] >> 48 & 511 for cmd in batch.commands() if cmd[0] & 0xFF in (1, 2, 3, 0x10)}

    def _ring0(self, i: int, *, services: bool) -> int:
        """Run the ring-0 probes (or services) from record ``i``; the next record to run."""
        pl = self.placement
        view = pl.va(L.CMD_SUPER_OFF)
        entry = self.stub.service_loop if services else self.stub.probe_loop
        self._loop = _Loop(
            view, self._kcode, pl.va(L.KSTACK_TOP_OFF), self._kcode + entry, services
        )
        self.engine.set_regs(rsi=view + i * RECORD_SIZE, r8=0, rsp=self._loop.stack)
        self._start(self._kcode + entry, self._kcode + self.stub.stop)
        return self._stopped_at(self._kcode + self.stub.stop)

    def _start(self, begin: int, until: int) -> None:
        try:
            self.engine.start(begin, until)
        except TcgError as e:
            self._failure = self._failure or str(e)

    def _ring3(self, i: int) -> int:
        """Enter ring 3 with ``iretq`` and run the CPL3 probes from record ``i``; ring 0 comes
        back as it was (the state saved before the ``iretq``)."""
        pl = self.placement
        view = pl.va(L.CMD_USER_OFF)
        ustack = pl.va(L.USTACK_TOP_OFF)
        frame = (self._ucode + self.stub.probe_loop, L.USER_CS, L.RFLAGS_DEFAULT, ustack, L.USER_DS)
        frame_va = pl.va(L.KSTACK_TOP_OFF) - 8 * len(frame)
        self.memory.write(pl.phys_of(L.KSTACK_TOP_OFF - L.PAGE) + L.PAGE - 8 * len(frame),
                          struct.pack("<5Q", *frame))  # fmt: skip
        self._loop = _Loop(view, self._ucode, ustack, self._ucode + self.stub.probe_loop)
        self.engine.update(self._ring0_state)
        self.engine.set_regs(rsi=view + i * RECORD_SIZE, r8=OP_CPL3, rsp=frame_va)
        try:
            self._start(self._kcode + self.stub.enter_user, self._ucode + self.stub.stop)
            return self._stopped_at(self._ucode + self.stub.stop)
        finally:
            self.engine.restore(self._ring0_state)

    def _stopped_at(self, stop: int) -> int:
        rip, rsi = self.engine.regs("rip", "rsi")
        assert self._loop is not None
        if rip != stop:
            return -1  # stopped from outside (the watchdog) or by a failure
        return (rsi - self._loop.view) // RECORD_SIZE

    # -- exceptions ------------------------------------------------------------------------

    def _on_exception(self, vector: int) -> None:
        loop = self._loop
        if self.engine.calibrating:  # the state is read once the engine has stopped
            self.engine.stop()
            return
        error = self.engine.error_code()  # (also marks it delivered: no #DF next time)
        if loop is None:  # a host-called routine
            if self._failure is None and vector != 13:
                self._failure = f"exception {vector} (error {error:#x}) in a stub routine"
            self.engine.stop()
            return
        self._fault(vector, error)

    def _on_invalid_opcode(self) -> bool:
        if self._loop is None:
            self._failure = "invalid opcode in a stub routine"
            return False
        self._fault(6, 0)
        return self._failure is None

    def _fault(self, vector: int, error: int) -> None:
        """Record the fault of the record the loop is on and resume at the next one, or stop
        with `_failure` when the fault is not a probe's (or a service's)."""
        loop = self._loop
        assert loop is not None
        rip, rsi, cr2 = self.engine.regs("rip", "rsi", "cr2")
        index, rest = divmod(rsi - loop.view, RECORD_SIZE)
        if rest or not 0 <= index < self.capacity:
            self._failure = f"exception {vector} at rip={rip:#x} outside the probe loop"
            self.engine.stop()
            return
        at = self.placement.cmd_phys + index * RECORD_SIZE
        addr, _, op = struct.unpack_from("<QQI", self.memory.read(at, 20))
        probe_rips = {loop.code + o for o in (self.stub.read_insn, self.stub.write_insn,
                                              self.stub.call_insn)}  # fmt: skip
        own = (
            loop.services
            or rip in probe_rips
            or (op & 0xFF == Op.FETCH and rip == addr)  # the fetch itself faulted at its target
        )
        if not own:
            self._failure = (
                f"exception {vector} (error {error:#x}) at rip={rip:#x} while running record "
                f"{index} ({op:#x} {addr:#x}), not at the probe's own instruction"
            )
            self.engine.stop()
            return
        self.memory.write(
            at + 24,
            struct.pack("<QQQQII", rip, 0, cr2 if vector == 14 else 0, error, ST_FAULT, vector),
        )
        self.engine.set_regs(rsi=rsi + RECORD_SIZE, rsp=loop.stack, rip=loop.resume)

    def _crash(self, message: str) -> None:
        rip, rsi = self.engine.regs("rip", "rsi")
        self._failure = None
        self.reset_cpu()
        raise GuestCrashError(
            f"the TCG guest stopped unexpectedly: {message}; the CPU was reset to its boot state",
            {"rip": rip, "rsi": rsi},
        )

    def _timeout(self, limit: float | object | None) -> WatchdogTimeout:
        rip = self.engine.regs("rip")[0]
        self.reset_cpu()
        return WatchdogTimeout(
            f"the TCG guest did not finish its batch within {limit} s and was stopped at "
            f"rip={rip:#x}; the CPU was reset to its boot state"
        )

    # -- physical addresses without RAM ------------------------------------------------------

    def _mmio_read(self, gpa: int, size: int) -> int:
        """QEMU splits an 8-byte MMIO read in two 4-byte ones: each gets its bytes of the u64
        `mmio_read_value` gives for the aligned address (what one 8-byte read would see)."""
        value = self.mmio_read_value(gpa & ~7) >> (8 * (gpa & 7))
        self.mmio_log.append((gpa, size, False, value))
        return value

    def _mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.mmio_log.append((gpa, size, True, value))

    # -- other oracles --------------------------------------------------------------------

    def translate(self, va: int) -> int | None:
        """No second walker under TCG (QEMU's own probe would set A bits): always None."""
        return None

    def host_profile(self) -> HostProfile:
        """What the tcg oracle can check (tried in a TCG guest once per process)."""
        return tcg_profile()

    def granted_cpuid(self) -> CpuidSummary:
        return self.host_profile().cpuid

    @staticmethod
    def engine_version() -> str:
        return unicorn_version()


_PROFILE: list[HostProfile] = []
_PROFILE_LOCK = threading.Lock()


def tcg_profile(*, refresh: bool = False) -> HostProfile:
    """The tcg oracle's profile (`kvmpage.tcg.profile.probe_tcg`), tried in TCG guests once per
    process; ``refresh`` tries again."""
    with _PROFILE_LOCK:
        if refresh or not _PROFILE:
            _PROFILE[:] = [probe_tcg(_open)]
        return _PROFILE[0]


def _open(size: int, capacity: int, la57: bool) -> TcgMachine:
    """A fresh machine for the profile's probes."""
    return TcgMachine(size, capacity=capacity, la57=la57)
