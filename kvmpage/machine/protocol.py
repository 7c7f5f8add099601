"""The batched probe/service protocol between the host and the guest agent.

The host fills an array of 64-byte command records in guest memory and runs the vCPU once; the
agent executes every record in order and writes its result into the second half of the same
record. A record is::

    +0   u64 addr        probe address, or the service's address operand
    +8   u64 arg         value to write, or the service's argument
    +16  u32 op          opcode (low byte) | OP_CPL3 for a ring-3 probe; 0 ends the batch
    +24  u64 rip         (result) RIP of the faulting instruction
    +32  u64 value       (result) value read / fetch stub's RAX / register after a service
    +40  u64 cr2         (result) CR2 on #PF, else 0
    +48  u64 error_code  (result) exception error code (0 for vectors without one)
    +56  u32 status      (result) 0 not run, 1 done, 2 faulted, 3 bad opcode
    +60  u32 vector      (result) exception vector when faulted

CPL3 probes run natively in a tight ring-3 loop (on a shadow-paging host that is the real MMU);
CPL0 probes and services run in ring 0, which a PVM host emulates instruction by instruction.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import overload

RECORD_SIZE = 64
C_ADDR = 0
C_ARG = 8
C_OP = 16
R_RIP = 24
R_VALUE = 32
R_CR2 = 40
R_ERROR = 48
R_STATUS = 56
R_VECTOR = 60

OP_CPL3 = 0x100
MSR_EFER = 0xC000_0080

ST_NOT_RUN = 0
ST_OK = 1
ST_FAULT = 2
ST_BAD_OP = 3

# 8-byte doorbell values: a magic no probe writes by accident ("KVM" + code)
DOORBELL_DONE = 0x4B56_4D01
DOORBELL_UNEXPECTED = 0x4B56_4D02

#: What a fetch probe's target must hold: ``movabs $tag, %rax; ret`` (see `fetch_stub`).
FETCH_STUB_LEN = 11

VECTOR_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}  # fmt: skip


class Op(IntEnum):
    """Command opcodes (the low byte of the ``op`` field)."""

    END = 0
    READ = 1
    WRITE = 2
    FETCH = 3
    INVLPG = 0x10
    LOAD_CR3 = 0x11
    WRITE_PHYS = 0x12
    READ_PHYS = 0x13
    SET_WP = 0x14
    SET_SMEP = 0x15
    SET_SMAP = 0x16
    SET_AC = 0x17
    SET_NXE = 0x18


PROBE_OPS = (Op.READ, Op.WRITE, Op.FETCH)
_PROBE_CODES = frozenset(int(op) | cpl for op in PROBE_OPS for cpl in (0, OP_CPL3))


def asm_constants() -> dict[str, int]:
    """The protocol constants the assembler needs (``--defsym``)."""
    consts = {
        "RECORD_SIZE": RECORD_SIZE, "C_ADDR": C_ADDR, "C_ARG": C_ARG, "C_OP": C_OP,
        "R_RIP": R_RIP, "R_VALUE": R_VALUE, "R_CR2": R_CR2, "R_ERROR": R_ERROR,
        "R_STATUS": R_STATUS, "R_VECTOR": R_VECTOR, "OP_CPL3": OP_CPL3, "ST_OK": ST_OK,
        "ST_FAULT": ST_FAULT, "ST_BAD_OP": ST_BAD_OP, "DOORBELL_DONE": DOORBELL_DONE,
        "DOORBELL_UNEXPECTED": DOORBELL_UNEXPECTED, "MSR_EFER": MSR_EFER,
    }  # fmt: skip
    consts.update({f"OP_{op.name}": int(op) for op in Op})
    return consts


def fetch_stub(tag: int) -> bytes:
    """Bytes to place at a fetch probe's target: ``movabs $tag, %rax; ret``.

    The agent ``call``s the target and records RAX, so a result value equal to ``tag`` proves
    the CPU executed the bytes in that very frame.
    """
    return b"\x48\xb8" + (tag & (1 << 64) - 1).to_bytes(8, "little") + b"\xc3"


@dataclass(frozen=True, slots=True)
class Fault:
    """An exception the agent caught: vector, error code and (for #PF) CR2."""

    vector: int
    error_code: int
    cr2: int

    @property
    def name(self) -> str:
        return VECTOR_NAMES.get(self.vector, f"vector {self.vector}")

    def __str__(self) -> str:
        cr2 = f" cr2={self.cr2:#x}" if self.vector == 14 else ""
        return f"{self.name} error={self.error_code:#x}{cr2}"


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one command.

    ``oracle`` names what decided the outcome: ``"mmu"`` for native execution, ``"kvm-emulator"``
    for a ring-0 access that this host emulates in software, ``"agent"`` for a service.
    """

    index: int
    op: Op
    cpl: int
    addr: int
    arg: int
    status: int
    value: int
    fault: Fault | None
    rip: int
    oracle: str

    @property
    def ok(self) -> bool:
        return self.status == ST_OK

    @property
    def ran(self) -> bool:
        return self.status != ST_NOT_RUN

    def __str__(self) -> str:
        what = f"{self.op.name.lower()}@cpl{self.cpl} {self.addr:#x}"
        if self.status == ST_OK:
            return f"{what}: ok value={self.value:#x} [{self.oracle}]"
        if self.fault is not None:
            return f"{what}: {self.fault} rip={self.rip:#x} [{self.oracle}]"
        return f"{what}: {'not run' if self.status == ST_NOT_RUN else 'bad opcode'}"


_CMD = struct.Struct("<QQI")
_RESULT = struct.Struct("<QQIIQQQQII")  # addr arg op pad rip value cr2 error status vector
_COLUMN_WIDTHS = {R_RIP: 8, R_VALUE: 8, R_CR2: 8, R_ERROR: 8, R_STATUS: 4, R_VECTOR: 4}


class Batch:
    """An ordered list of probes and services, encoded straight into command records.

    Probes take ``cpl`` 0 or 3. Services always run at CPL0. Building is cheap (one
    ``struct.pack`` per command); `reads` adds many ring-3 reads at once for throughput runs.
    """

    __slots__ = ("_buf", "_count", "cr3_loads", "phys_targets", "slots")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._count = 0
        #: PML4 slots of every virtual address used (a machine refuses its agent's slot).
        self.slots: set[int] = set()
        #: CR3 values loaded by `load_cr3` (each must map the agent).
        self.cr3_loads: list[int] = []
        #: Physical addresses written or read by `write_entry` / `read_phys`.
        self.phys_targets: list[int] = []

    def __len__(self) -> int:
        return self._count

    @property
    def data(self) -> bytes | bytearray:
        """The encoded records (``len(self) * RECORD_SIZE`` bytes)."""
        return self._buf

    def _add(self, op: int, addr: int, arg: int = 0) -> int:
        if not 0 <= addr < 1 << 64 or not 0 <= arg < 1 << 64:
            raise ValueError(f"address {addr:#x} / argument {arg:#x} must fit in 64 bits")
        rec = bytearray(RECORD_SIZE)
        _CMD.pack_into(rec, 0, addr, arg, op)
        self._buf += rec
        self._count += 1
        return self._count - 1

    def _probe(self, op: Op, addr: int, cpl: int, value: int = 0) -> int:
        if cpl not in (0, 3):
            raise ValueError(f"a probe runs at CPL 0 or 3, not {cpl}")
        self.slots.add((addr >> 39) & 511)
        return self._add(int(op) | (OP_CPL3 if cpl == 3 else 0), addr, value)

    # -- probes ---------------------------------------------------------------------------

    def read(self, addr: int, cpl: int = 3) -> int:
        """Read the u64 at ``addr``; returns the command's index."""
        return self._probe(Op.READ, addr, cpl)

    def write(self, addr: int, value: int, cpl: int = 3) -> int:
        """Write the u64 ``value`` to ``addr``."""
        return self._probe(Op.WRITE, addr, cpl, value)

    def fetch(self, addr: int, cpl: int = 3) -> int:
        """Call ``addr``, which must hold a `fetch_stub`; the result value is the stub's tag."""
        return self._probe(Op.FETCH, addr, cpl)

    def reads(self, addresses: Iterable[int], cpl: int = 3) -> range:
        """Append one read per address (fast path); returns the range of their indices."""
        if cpl not in (0, 3):
            raise ValueError(f"a probe runs at CPL 0 or 3, not {cpl}")
        op = int(Op.READ) | (OP_CPL3 if cpl == 3 else 0)
        try:
            column = array("Q", addresses)
        except (OverflowError, TypeError) as e:
            raise ValueError("every address must be an integer that fits in 64 bits") from e
        n = len(column)
        self.slots.update({a >> 39 & 511 for a in column})
        start = self._count
        # the records, filled a field at a time: address (word 0) and opcode (word 2)
        records = array("Q", bytes(n * RECORD_SIZE))
        stride = RECORD_SIZE // 8
        records[0::stride] = column
        records[2::stride] = array("Q", [op]) * n
        self._buf += records.tobytes()
        self._count += n
        return range(start, self._count)

    def probes(self, ops: Sequence[int], addresses: Sequence[int], values: Sequence[int]) -> range:
        """Append probes given as three columns (fast path for generated batches): the opcode
        (`Op.READ` / `Op.WRITE` / `Op.FETCH`, ``| OP_CPL3`` for ring 3), the address and the
        value to write (ignored by reads and fetches). Returns the range of their indices."""
        n = len(ops)
        if len(addresses) != n or len(values) != n:
            raise ValueError("probes: the three columns must have the same length")
        if not set(ops) <= _PROBE_CODES:
            raise ValueError("probes: every opcode must be a read, write or fetch probe")
        try:
            addr_col = array("Q", addresses)
            value_col = array("Q", values)
        except (OverflowError, TypeError) as e:
            raise ValueError("every address and value must fit in 64 bits") from e
        self.slots.update({a >> 39 & 511 for a in addr_col})
        start = self._count
        records = array("Q", bytes(n * RECORD_SIZE))
        stride = RECORD_SIZE // 8
        records[0::stride] = addr_col
        records[1::stride] = value_col
        records[2::stride] = array("Q", ops)
        self._buf += records.tobytes()
        self._count += n
        return range(start, self._count)

    # -- services (CPL0) ------------------------------------------------------------------

    def invlpg(self, addr: int) -> int:
        """``invlpg`` the page holding ``addr``."""
        self.slots.add((addr >> 39) & 511)
        return self._add(Op.INVLPG, addr)

    def load_cr3(self, cr3: int) -> int:
        """``mov cr3``; the result value is CR3 read back. Reloading the same CR3 flushes."""
        self.cr3_loads.append(cr3)
        return self._add(Op.LOAD_CR3, 0, cr3)

    def write_entry(self, phys_addr: int, value: int) -> int:
        """Write a u64 (a table entry) at a guest-physical address from CPL0, as a kernel would."""
        self.phys_targets.append(phys_addr)
        return self._add(Op.WRITE_PHYS, phys_addr, value)

    def read_phys(self, phys_addr: int) -> int:
        """Read the u64 at a guest-physical address from CPL0 through the agent's physmap."""
        self.phys_targets.append(phys_addr)
        return self._add(Op.READ_PHYS, phys_addr)

    def set_wp(self, on: bool) -> int:
        """Set or clear CR0.WP; the result value is CR0."""
        return self._add(Op.SET_WP, 0, int(on))

    def set_smep(self, on: bool) -> int:
        """Set or clear CR4.SMEP; the result value is CR4."""
        return self._add(Op.SET_SMEP, 0, int(on))

    def set_smap(self, on: bool) -> int:
        """Set or clear CR4.SMAP; the result value is CR4."""
        return self._add(Op.SET_SMAP, 0, int(on))

    def set_ac(self, on: bool) -> int:
        """Set or clear RFLAGS.AC for the following CPL0 probes (SMAP override)."""
        return self._add(Op.SET_AC, 0, int(on))

    def _take_from(self, index: int) -> bytes:
        """Remove and return the encoded records from ``index`` on (bookkeeping is kept)."""
        raw = bytes(self._buf[index * RECORD_SIZE :])
        del self._buf[index * RECORD_SIZE :]
        self._count = min(self._count, index)
        return raw

    def _extend(self, raw: bytes) -> None:
        """Append records previously returned by `_take_from`."""
        self._buf += raw
        self._count += len(raw) // RECORD_SIZE

    def set_nxe(self, on: bool) -> int:
        """Set or clear EFER.NXE (with it clear, bit 63 of an entry is reserved); the result
        value is EFER. The agent's own tables never use NX, so this is always safe."""
        return self._add(Op.SET_NXE, 0, int(on))

    def commands(self) -> Iterator[tuple[int, int, int]]:
        """Decode the records back to ``(op, addr, arg)`` triples."""
        for i in range(self._count):
            addr, arg, op = _CMD.unpack_from(self._buf, i * RECORD_SIZE)
            yield op, addr, arg


class BatchResults(Sequence[Result]):
    """The results of a batch, decoded lazily from a copy of the record array."""

    __slots__ = ("_cpl0_oracle", "_cpl3_oracle", "_data", "_n")

    def __init__(self, data: bytes, count: int, cpl0_oracle: str, cpl3_oracle: str = "mmu") -> None:
        self._data = data
        self._n = count
        self._cpl0_oracle = cpl0_oracle
        self._cpl3_oracle = cpl3_oracle

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Result: ...

    @overload
    def __getitem__(self, index: slice) -> list[Result]: ...

    def __getitem__(self, index: int | slice) -> Result | list[Result]:
        if isinstance(index, slice):
            return [self._result(i) for i in range(*index.indices(self._n))]
        return self._result(index)

    def _result(self, index: int) -> Result:
        if not -self._n <= index < self._n:
            raise IndexError(index)
        index %= self._n
        addr, arg, opfield, _pad, rip, value, cr2, error, status, vector = _RESULT.unpack_from(
            self._data, index * RECORD_SIZE
        )
        code = opfield & 0xFF
        cpl = 3 if opfield & OP_CPL3 else 0
        try:
            op = Op(code)
        except ValueError:
            op = Op.END
        oracle = "agent"
        if op in PROBE_OPS:
            oracle = self._cpl3_oracle if cpl == 3 else self._cpl0_oracle
        fault = Fault(vector, error, cr2 if vector == 14 else 0) if status == ST_FAULT else None
        if fault is not None:
            value = 0
        return Result(index, op, cpl, addr, arg, status, value, fault, rip, oracle)

    def __iter__(self) -> Iterator[Result]:
        for i in range(self._n):
            yield self._result(i)

    def raw(self, start: int = 0, stop: int | None = None) -> list[tuple[int, ...]]:
        """Records ``start`` to ``stop`` (default: all) as ``(addr, arg, op, pad, rip, value,
        cr2, error, status, vector)`` tuples, decoded in one pass (no `Result` objects)."""
        stop = self._n if stop is None else min(stop, self._n)
        return list(_RESULT.iter_unpack(self._data[start * RECORD_SIZE : stop * RECORD_SIZE]))

    def result(self, index: int) -> Result:
        """The `Result` of one record (same as ``self[index]``)."""
        return self._result(index)

    def column(self, offset: int) -> list[int]:
        """One field of every record, by its offset in the record (``R_VALUE``, ``R_CR2``,
        ``R_ERROR``: 8 bytes; ``R_STATUS``, ``R_VECTOR``: 4 bytes), without decoding records."""
        if offset not in _COLUMN_WIDTHS:
            raise ValueError(f"no result field at offset {offset}")
        width = _COLUMN_WIDTHS[offset]
        words = memoryview(self._data).cast("Q" if width == 8 else "I")
        return words[offset // width :: RECORD_SIZE // width][: self._n].tolist()

    def statuses(self) -> list[int]:
        """Every record's status, fast (no `Result` objects)."""
        return self.column(R_STATUS)

    def values(self) -> list[int]:
        """Every record's result value, fast (no `Result` objects; 0 for a faulted probe)."""
        return self.column(R_VALUE)
