"""`Verifier.probe`: the six probes behind ``kvmpage walk`` (needs /dev/kvm)."""

from __future__ import annotations

import dataclasses

import pytest

from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import build
from kvmpage.machine import Machine
from kvmpage.verify import Verifier

pytestmark = pytest.mark.kvm


def _verifier(m: Machine) -> Verifier:
    spec = dataclasses.replace(builtin_layout(gbpages=False), reserved_p4=frozenset({511}))
    built = build(spec, m.memory, alloc_end=m.reserved[0])
    return Verifier(built.mapper, m)


def test_probe_mapped_user_data_page_agrees_and_reaches_the_frame() -> None:
    with Machine(64 << 20) as m:
        checks = _verifier(m).probe(0x601234)
    assert [(c.probe.access.value, c.probe.cpl) for c in checks] == [
        ("read", 3), ("write", 3), ("fetch", 3), ("read", 0), ("write", 0), ("fetch", 0),
    ]  # fmt: skip
    assert all(c.verdict is not None and c.verdict.agree for c in checks)
    by = {(c.probe.access.value, c.probe.cpl): c for c in checks}
    read = by["read", 3]
    assert read.result is not None and read.result.ok and read.result.value == read.value
    fetch = by["fetch", 3]  # user data is NX: the fetch faults, as predicted
    assert fetch.result is not None and fetch.result.fault is not None


def test_probe_of_a_hole_faults_everywhere() -> None:
    with Machine(64 << 20) as m:
        checks = _verifier(m).probe(0x603000)
    assert all(c.result is not None and c.result.fault is not None for c in checks)
    assert all(c.verdict is not None and c.verdict.agree for c in checks)


def test_probe_never_runs_a_probe_that_reaches_a_page_table() -> None:
    with Machine(64 << 20) as m:
        v = _verifier(m)
        p4 = v.p4_phys
        before = bytes(m.memory.read(p4, 4096))
        checks = v.probe(0xFFFF_8880_0000_0000 + p4)  # the window onto the level-4 table
        after = bytes(m.memory.read(p4, 4096))
    reaching = [c for c in checks if c.expectation.phys is not None]
    assert {(c.probe.access.value, c.probe.cpl) for c in reaching} == {("read", 0), ("write", 0)}
    assert all(c.result is None and "page-table" in c.skipped for c in reaching)
    assert all(c.result is not None for c in checks if c not in reaching)
    mask = ~0x60  # A/D may be set by the walks of the other probes
    old = memoryview(before).cast("Q")
    new = memoryview(after).cast("Q")
    assert all(o & mask == n & mask for o, n in zip(old, new, strict=True))
