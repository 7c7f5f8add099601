"""The guest protocol (`kvmpage.machine.protocol`) without a VM: a batch's commands encoded as
the agent reads them, probes in columns encoded like single probes, result records decoded,
and the fetch stub's shape."""

from __future__ import annotations

import struct

import pytest

from kvmpage.machine.protocol import (
    OP_CPL3,
    RECORD_SIZE,
    ST_FAULT,
    ST_OK,
    Batch,
    BatchResults,
    Op,
    fetch_stub,
)


def test_batch_encoding() -> None:
    b = Batch()
    assert b.read(0x1000) == 0
    b.write(0x2000, 5, cpl=0)
    b.load_cr3(0x3000)
    assert len(b) == 3 and len(b.data) == 3 * RECORD_SIZE
    assert list(b.commands()) == [
        (OP_CPL3 | Op.READ, 0x1000, 0),
        (Op.WRITE, 0x2000, 5),
        (Op.LOAD_CR3, 0, 0x3000),
    ]
    assert b.cr3_loads == [0x3000]
    assert b.reads([0x1000, 0x2000]) == range(3, 5)
    with pytest.raises(ValueError, match="CPL"):
        b.read(0, cpl=1)


def test_batch_probes_in_columns_encode_like_single_probes() -> None:
    one, bulk = Batch(), Batch()
    one.read(0x1000)
    one.write(0xFFFF_8000_0000_2000, 5, cpl=0)
    one.fetch(0x3040)
    ops = [OP_CPL3 | Op.READ, Op.WRITE, OP_CPL3 | Op.FETCH]
    assert bulk.probes(ops, [0x1000, 0xFFFF_8000_0000_2000, 0x3040], [0, 5, 0]) == range(3)
    assert bulk.data == one.data and bulk.slots == one.slots == {0, 256}
    with pytest.raises(ValueError, match="read, write or fetch"):
        bulk.probes([Op.LOAD_CR3], [0], [0])
    with pytest.raises(ValueError, match="same length"):
        bulk.probes([Op.READ], [0, 1], [0])
    with pytest.raises(ValueError, match="64 bits"):
        bulk.probes([Op.READ], [1 << 64], [0])
    assert len(bulk) == 3


def test_results_decoding() -> None:
    data = bytearray(2 * RECORD_SIZE)
    struct.pack_into("<QQI", data, 0, 0x1000, 0, OP_CPL3 | Op.READ)
    struct.pack_into("<QII", data, 32, 0xABC, 0, 0)
    struct.pack_into("<I", data, 56, ST_OK)
    struct.pack_into("<QQI", data, 64, 0x2000, 0, Op.READ)
    struct.pack_into("<QQQQII", data, 64 + 24, 0x55, 0, 0x2000, 0, ST_FAULT, 13)
    res = BatchResults(bytes(data), 2, "kvm-emulator")
    ok, gp = res[0], res[1]
    assert ok.ok and ok.value == 0xABC and ok.oracle == "mmu" and ok.cpl == 3
    assert gp.fault is not None and gp.fault.vector == 13
    assert gp.fault.cr2 == 0  # CR2 only means something for #PF
    assert gp.oracle == "kvm-emulator" and gp.rip == 0x55
    assert res.statuses() == [ST_OK, ST_FAULT]


def test_fetch_stub_shape() -> None:
    stub = fetch_stub(0x1122)
    assert stub[:2] == b"\x48\xb8" and stub[-1:] == b"\xc3" and len(stub) == 11
