"""A small typed wrapper around the parts of Unicorn (QEMU's TCG, in-process) that kvmpage uses.

Every Unicorn object and constant stays in this module: the package is imported lazily (the
library core needs nothing beyond the standard library) and typed ``Any`` here, so the rest of
kvmpage sees plain ints and callables.

What Unicorn does not expose, and how it is reached (docs/tcg.md):

- An exception is not delivered through the guest's IDT; Unicorn calls a host hook with the
  vector only. The *error code* stays in QEMU's CPU state (``CPUX86State.error_code``), which
  Unicorn copies whole into a saved context. `ExceptionState` finds that field in the context
  by experiment (three #GP with known error codes) instead of trusting a struct layout, and
  refuses to run if it cannot.
- Because no exception is ever delivered, QEMU's "exception in flight" (``old_exception``)
  is never cleared, and the next #PF would be promoted to a double fault (#DF), then to a
  triple fault. After each fault the host clears it (the same context, written back).
"""

from __future__ import annotations

import ctypes
import importlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmpage.tcg.errors import TcgError, TcgUnavailable

#: what `pip install` needs for this oracle (also the extra's pin in pyproject.toml)
REQUIREMENT = "unicorn>=2.1.1,<2.2"
INSTALL_HINT = "pip install 'kvmpage[tcg]' (or pip install '" + REQUIREMENT + "')"
#: the CPU model: the QEMU model with NX, SMEP, SMAP, 1 GiB pages, LA57, PCID and PKU
CPU_MODEL = "Icelake-Server"

_REGS = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "cs", "ss",
)  # fmt: skip
MSR_EFER = 0xC000_0080


def _import() -> tuple[Any, Any]:
    """The ``unicorn`` package and its x86 constants, or `TcgUnavailable` saying how to get it."""
    try:
        uc = importlib.import_module("unicorn")
        x86 = importlib.import_module("unicorn.x86_const")
    except ImportError as e:
        raise TcgUnavailable(
            f"the tcg oracle needs the Python package unicorn (QEMU's TCG in-process), which "
            f"is not installed: {INSTALL_HINT}"
        ) from e
    version = getattr(uc, "__version__", "0")
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor != (2, 1):
        raise TcgUnavailable(
            f"the tcg oracle needs unicorn 2.1.x, this is unicorn {version}: {INSTALL_HINT}"
        )
    return uc, x86


def available() -> str | None:
    """None when the tcg oracle can be used here, else why not (with the install command)."""
    try:
        _import()
    except TcgUnavailable as e:
        return str(e)
    return None


def unicorn_version() -> str:
    """The installed Unicorn's version (``2.1.4``)."""
    uc, _ = _import()
    return str(uc.__version__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved CPU state (Unicorn context); `Engine.restore` puts it back."""

    handle: Any


class Engine:
    """One x86-64 CPU of QEMU's TCG (`CPU_MODEL`), with physical memory and hooks.

    `map_ram` maps host memory into guest-physical ranges (zero-copy); `map_mmio` has the
    other ranges answered by host callbacks. Nothing is delivered through the
    guest's IDT: `on_exception` gets ``vector`` for every exception, and `error_code` reads the
    error code of the last one.
    """

    def __init__(self) -> None:
        uc, x86 = _import()
        self._uc_mod = uc
        self._x86 = x86
        self.uc: Any = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        self.uc.ctl_set_cpu_model(x86.UC_CPU_X86_ICELAKE_SERVER)
        self._reg = {name: getattr(x86, f"UC_X86_REG_{name.upper()}") for name in _REGS}
        self._scratch = self.uc.context_save()
        self._state: ExceptionState | None = None

    # -- memory ----------------------------------------------------------------------------

    def map_ram(self, start: int, size: int, host_address: int) -> None:
        """Guest-physical ``[start, start + size)`` is the host memory at ``host_address``
        (zero-copy)."""
        self.uc.mem_map_ptr(start, size, self._uc_mod.UC_PROT_ALL, host_address)

    def map_mmio(
        self,
        start: int,
        size: int,
        read: Callable[[int, int], int],
        write: Callable[[int, int, int], None],
    ) -> None:
        """Guest-physical ``[start, start + size)`` is answered by ``read(gpa, size)`` and
        ``write(gpa, size, value)``."""

        def on_read(_uc: Any, offset: int, size: int, _data: Any) -> int:
            return read(start + offset, size) & ((1 << (8 * size)) - 1)

        def on_write(_uc: Any, offset: int, size: int, value: int, _data: Any) -> None:
            write(start + offset, size, value)

        self.uc.mmio_map(start, size, on_read, None, on_write, None)

    # -- registers -------------------------------------------------------------------------

    def regs(self, *names: str) -> tuple[int, ...]:
        """The values of the named registers (``rip``, ``rsi``, ``cr2``...)."""
        return tuple(int(v) for v in self.uc.reg_read_batch([self._reg[n] for n in names]))

    def set_regs(self, **values: int) -> None:
        """Write the named registers."""
        self.uc.reg_write_batch([(self._reg[n], v) for n, v in values.items()])

    def read_msr(self, msr: int) -> int:
        return int(self.uc.reg_read(self._x86.UC_X86_REG_MSR, msr))

    def write_msr(self, msr: int, value: int) -> None:
        self.uc.reg_write(self._x86.UC_X86_REG_MSR, (msr, value))

    def set_descriptor_tables(self, gdt: tuple[int, int], idt: tuple[int, int]) -> None:
        """GDTR and IDTR as ``(base, limit)``."""
        self.uc.reg_write(self._x86.UC_X86_REG_GDTR, (0, gdt[0], gdt[1], 0))
        self.uc.reg_write(self._x86.UC_X86_REG_IDTR, (0, idt[0], idt[1], 0))

    # -- running ---------------------------------------------------------------------------

    def on_exception(self, callback: Callable[[int], None]) -> None:
        """``callback(vector)`` for every exception the guest raises (instead of the IDT);
        `on_invalid_opcode` gets #UD."""
        self.uc.hook_add(self._uc_mod.UC_HOOK_INTR, lambda _uc, vector, _data: callback(vector))

    def on_invalid_opcode(self, callback: Callable[[], bool]) -> None:
        """``callback()`` when the guest executes an invalid opcode (#UD): True to go on (the
        callback moved RIP), False to stop with an error."""
        self.uc.hook_add(self._uc_mod.UC_HOOK_INSN_INVALID, lambda _uc, _data: callback())

    def start(self, begin: int, until: int) -> None:
        """Run from ``begin`` until RIP reaches ``until`` (or `stop`); `TcgError` when Unicorn
        itself stops with an error (an invalid opcode nobody handled, unmapped memory)."""
        try:
            self.uc.emu_start(begin, until)
        except self._uc_mod.UcError as e:
            raise TcgError(f"unicorn stopped: {e}") from e

    def stop(self) -> None:
        """End the current `start` (safe from a hook or another thread)."""
        self.uc.emu_stop()

    def flush_tlb(self) -> None:
        """Empty QEMU's softmmu TLB (its cache of translations)."""
        uc = self._uc_mod
        self.uc.ctl(uc.UC_CTL_TLB_FLUSH, uc.UC_CTL_IO_WRITE)

    def flush_code(self) -> None:
        """Drop every translated block (the host may have rewritten code in RAM)."""
        self.uc.ctl_flush_tb()

    def save(self) -> Snapshot:
        return Snapshot(self.uc.context_save())

    def update(self, snapshot: Snapshot) -> None:
        """Save the CPU state into ``snapshot``."""
        self.uc.context_update(snapshot.handle)

    def restore(self, snapshot: Snapshot) -> None:
        self.uc.context_restore(snapshot.handle)

    # -- the exception state Unicorn hides -------------------------------------------------

    @property
    def calibrating(self) -> bool:
        """Whether `calibrate` is running (its exceptions are read after the engine stops)."""
        return self._state is None

    @property
    def exception_state(self) -> ExceptionState:
        if self._state is None:
            raise TcgError("the engine's exception state is not calibrated yet")
        return self._state

    def calibrate(self, raise_gp: Callable[[int], None], clean: Snapshot) -> None:
        """Find where the error code lives: ``raise_gp(selector)`` must make the guest raise
        #GP(selector & ~3) from the state ``clean`` (which has no exception in flight)."""
        self._state = ExceptionState.find(self, raise_gp, clean)

    def error_code(self) -> int:
        """The error code of the exception being reported; also clears QEMU's record of an
        exception in flight, so the next fault is not promoted to #DF."""
        return self.exception_state.take(self)

    def context_bytes(self) -> bytes:
        """The current CPU state as Unicorn saves it (for calibration)."""
        self.uc.context_update(self._scratch)
        return bytes(self._scratch)


# offsets inside QEMU's CPUX86State, relative to error_code (target/i386/cpu.h of QEMU 5.0,
# which Unicorn 2.1 is): int error_code; int exception_is_int; u64 exception_next_eip;
# u64 dr[8]; void *cpu_breakpoint[4]; int old_exception
_IS_INT = 4
_OLD_EXCEPTION = 4 + 4 + 8 + 8 * 8 + 4 * 8
_GP = 13
_SELECTORS = (0x1233, 0x2347, 0x345B)  # RPL bits set: the error code drops them


@dataclass(frozen=True, slots=True)
class ExceptionState:
    """Where, in a saved Unicorn context, QEMU keeps the last exception's error code."""

    offset: int

    @classmethod
    def find(
        cls, engine: Engine, raise_gp: Callable[[int], None], clean: Snapshot
    ) -> ExceptionState:
        """Raise #GP with three known error codes and keep the one offset that held each, next
        to a zero ``exception_is_int`` and an ``old_exception`` of 13 (and -1 in ``clean``)."""
        engine.restore(clean)
        before = engine.context_bytes()
        seen: list[bytes] = []
        for selector in _SELECTORS:
            engine.restore(clean)
            raise_gp(selector)
            seen.append(engine.context_bytes())
        engine.restore(clean)

        def i32(data: bytes, at: int) -> int:
            return int(struct.unpack_from("<i", data, at)[0])

        end = len(before) - _OLD_EXCEPTION - 4
        found = [
            at
            for at in range(0, end, 4)
            if all(i32(s, at) == sel & ~3 for s, sel in zip(seen, _SELECTORS, strict=True))
            and all(i32(s, at + _IS_INT) == 0 and i32(s, at + _OLD_EXCEPTION) == _GP for s in seen)
            and i32(before, at + _OLD_EXCEPTION) == -1
        ]
        if len(found) != 1:
            raise TcgError(
                f"unicorn {unicorn_version()}: cannot find the exception error code in its CPU "
                f"state ({len(found)} candidates); the tcg oracle cannot report error codes "
                f"with this build ({REQUIREMENT} is supported)"
            )
        return cls(found[0])

    def take(self, engine: Engine) -> int:
        """The error code now; and the exception is marked delivered (``old_exception = -1``)."""
        handle = engine._scratch
        engine.uc.context_update(handle)
        base = ctypes.cast(handle.context, ctypes.c_void_p).value
        assert base is not None
        code = ctypes.c_int32.from_address(base + self.offset).value
        ctypes.c_int32.from_address(base + self.offset + _OLD_EXCEPTION).value = -1
        engine.uc.context_restore(handle)
        return code & 0xFFFF_FFFF
