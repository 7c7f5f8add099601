"""The machine on a real /dev/kvm: faults with error code and CR2 at CPL3 and CPL0, tagged frames
through 4 KiB and 2 MiB mappings, 1 GiB pages per the profile, the live-update rule, the agent
slot rules, and crashes that leave the machine usable."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kvmpage.kvm.host import HostProfile, HypervisorKind
from kvmpage.machine import (
    AgentSlotConflict,
    Batch,
    BatchError,
    GuestCrashError,
    Machine,
    host_profile,
    pte,
)
from kvmpage.machine.protocol import ST_BAD_OP, Result, fetch_stub

pytestmark = pytest.mark.kvm

TAG = 0x7A67_0000_0000_0000
BASE_VA = 0x0000_0040_0000_0000  # PML4 slot 0 + 256 GiB
NON_CANONICAL = 0x0000_9000_0000_0000
STUB = 0x800  # fetch stubs sit at this offset of a frame; tags at offset 0

P, W, U, A, D, NX = pte.P, pte.W, pte.U, pte.A, pte.D, pte.NX
RSVD51 = 1 << 51


@dataclass
class Lab:
    """A machine plus one user address space built with the raw entry helper."""

    machine: Machine
    frames: pte.FrameBump
    space: pte.SimpleSpace
    next_va: int = BASE_VA

    def page(self, flags: int, *, stub: bool = True) -> tuple[int, int, int]:
        """Map a fresh tagged 4 KiB frame at a fresh VA; returns (va, frame, leaf entry address)."""
        frame = self.frames.alloc()
        self.machine.memory.write_u64(frame, TAG | frame)
        if stub:
            self.machine.memory.write(frame + STUB, fetch_stub(TAG | frame))
        va = self.next_va
        self.next_va += pte.SIZE_4K
        return va, frame, self.space.map(va, frame, flags)

    def batch(self) -> Batch:
        b = Batch()
        b.load_cr3(self.space.p4)
        return b


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Machine(32 << 20, capacity=4096, timeout=10.0) as m:
        frames = pte.FrameBump(m.memory, pte.SIZE_4K, m.reserved[0])
        space = pte.SimpleSpace(m.memory, frames)
        m.install_agent_slot(space.p4)
        yield Lab(m, frames, space)


@pytest.fixture(scope="module")
def profile() -> HostProfile:
    return host_profile()


def assert_pf(r: Result, error: int, va: int) -> None:
    assert r.fault is not None, f"expected #PF {error:#x}, got {r}"
    assert (r.fault.vector, r.fault.error_code, r.fault.cr2) == (14, error, va), str(r)


def assert_ok(r: Result, value: int) -> None:
    assert r.ok, str(r)
    assert r.value == value, str(r)


# -- the fault matrix -----------------------------------------------------------------------------

# (name, leaf flags, access, cpl, cpu settings, expected: None = ok, int = #PF error, "gp")
CASES = [
    ("cpl3 read not-present", 0, "read", 3, {}, 0x4),
    ("cpl3 write read-only wp=1", P | U, "write", 3, {"wp": True}, 0x7),
    ("cpl3 write read-only wp=0", P | U, "write", 3, {"wp": False}, 0x7),
    ("cpl3 read supervisor", P | W, "read", 3, {}, 0x5),
    ("cpl3 write supervisor", P | W, "write", 3, {}, 0x7),
    ("cpl3 fetch nx", P | W | U | NX, "fetch", 3, {}, 0x15),
    ("cpl3 fetch executable", P | W | U, "fetch", 3, {}, None),
    ("cpl3 read reserved bit 51", P | W | U | RSVD51, "read", 3, {}, 0xD),
    ("cpl3 read nx page with nxe=0", P | W | U | NX, "read", 3, {"nxe": False}, 0xD),
    ("cpl3 fetch nx page with nxe=0", P | W | U | NX, "fetch", 3, {"nxe": False}, 0xD),
    ("cpl3 fetch with nxe=0", P | W | U, "fetch", 3, {"nxe": False}, None),
    ("cpl0 read nx page with nxe=0", P | W | NX, "read", 0, {"nxe": False}, 0x9),
    ("cpl3 read user", P | U, "read", 3, {}, None),
    ("cpl3 write user", P | W | U, "write", 3, {}, None),
    ("cpl0 read not-present", 0, "read", 0, {}, 0x0),
    ("cpl0 write read-only supervisor wp=1", P, "write", 0, {"wp": True}, 0x3),
    ("cpl0 write read-only supervisor wp=0", P, "write", 0, {"wp": False}, None),
    ("cpl0 write read-only user wp=1", P | U, "write", 0, {"wp": True}, 0x3),
    ("cpl0 write read-only user wp=0", P | U, "write", 0, {"wp": False}, None),
    ("cpl0 fetch nx", P | W | NX, "fetch", 0, {}, 0x11),
    ("cpl0 fetch supervisor", P | W, "fetch", 0, {}, None),
    ("cpl0 smep fetch user", P | W | U, "fetch", 0, {"smep": True}, 0x11),
    ("cpl0 no smep fetch user", P | W | U, "fetch", 0, {"smep": False}, None),
    ("cpl0 smap read user ac=0", P | W | U, "read", 0, {"smap": True}, 0x1),
    ("cpl0 smap write user ac=0", P | W | U, "write", 0, {"smap": True}, 0x3),
    ("cpl0 smap read user ac=1", P | W | U, "read", 0, {"smap": True, "ac": True}, None),
    ("cpl0 smap write user ac=1", P | W | U, "write", 0, {"smap": True, "ac": True}, None),
    ("cpl0 no smap read user", P | W | U, "read", 0, {"smap": False}, None),
    ("cpl0 read reserved bit 51", P | W | RSVD51, "read", 0, {}, 0x9),
    ("cpl3 read non-canonical", None, "read", 3, {}, "gp"),
    ("cpl3 fetch non-canonical", None, "fetch", 3, {}, "gp"),
    ("cpl0 read non-canonical", None, "read", 0, {}, "gp"),
    ("cpl0 write non-canonical", None, "write", 0, {}, "gp"),
]


@pytest.mark.parametrize(
    ("leaf", "access", "cpl", "cpu", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_fault_matrix(
    lab: Lab,
    profile: HostProfile,
    leaf: int | None,
    access: str,
    cpl: int,
    cpu: dict[str, bool],
    expected: int | str | None,
) -> None:
    for feature in ("smep", "smap"):
        if cpu.get(feature) and not profile.supports(feature):
            pytest.skip(f"{feature} unsupported on this host: {profile.features[feature]}")
    if leaf is None:
        va, frame = NON_CANONICAL, 0
    else:
        va, frame, _ = lab.page(leaf | (A | D if leaf & P else 0))
    b = lab.batch()
    setters = {
        "wp": b.set_wp,
        "smep": b.set_smep,
        "smap": b.set_smap,
        "ac": b.set_ac,
        "nxe": b.set_nxe,
    }
    for name, on in cpu.items():
        setters[name](on)
    if access == "read":
        i = b.read(va, cpl)
    elif access == "write":
        i = b.write(va, 0x5555, cpl)
    else:
        i = b.fetch(va + STUB, cpl)
        va += STUB
    res = lab.machine.run(b)
    assert all(r.ok for r in res[:i]), [str(r) for r in res[:i]]
    r = res[i]
    assert r.oracle == ("mmu" if cpl == 3 else profile.cpl0_oracle)
    if expected is None:
        assert_ok(r, {"read": TAG | frame, "write": 0, "fetch": TAG | frame}[access])
        if access == "write":
            assert lab.machine.memory.read_u64(frame) == 0x5555
    elif expected == "gp":
        assert r.fault is not None and (r.fault.vector, r.fault.error_code) == (13, 0), str(r)
    else:
        assert isinstance(expected, int)
        assert_pf(r, expected, va)
        if access == "write" and leaf:
            assert lab.machine.memory.read_u64(frame) == TAG | frame  # nothing written


def test_services_report_control_registers(lab: Lab, profile: HostProfile) -> None:
    b = lab.batch()
    wp_off, wp_on = b.set_wp(False), b.set_wp(True)
    ac_on, ac_off = b.set_ac(True), b.set_ac(False)
    nxe_off, nxe_on = b.set_nxe(False), b.set_nxe(True)
    res = lab.machine.run(b)
    assert res[0].value == lab.space.p4  # CR3 read back
    assert not res[wp_off].value & 1 << 16 and res[wp_on].value & 1 << 16
    assert res[ac_on].value & 1 << 18 and not res[ac_off].value & 1 << 18
    assert not res[nxe_off].value & 1 << 11 and res[nxe_on].value & 1 << 11
    assert all(r.oracle == "agent" for r in res)


def test_bad_opcode_is_reported_not_fatal(lab: Lab) -> None:
    b = lab.batch()
    b._add(0x7F, 0)
    b._add(0x100 | 0x7F, 0)
    va, frame, _ = lab.page(P | U | A)
    i = b.read(va)
    res = lab.machine.run(b)
    assert res[1].status == ST_BAD_OP and res[2].status == ST_BAD_OP
    assert_ok(res[i], TAG | frame)


def test_batches_may_end_in_either_ring(lab: Lab) -> None:
    """A batch that ends in ring 3 leaves the vCPU there; the next one must still run in order."""
    va, frame, _ = lab.page(P | U | A)
    sva, sframe, _ = lab.page(P | W | A)
    lab.machine.run(lab.batch())
    plans = [
        [("r", va, 3)],
        [("r", va, 3), ("r", sva, 3)],  # ends in ring 3 after a fault
        [("r", sva, 0), ("r", va, 3)],
        [("r", sva, 0)],
        [],
        [("r", va, 3)],
        [],
        [("r", NON_CANONICAL, 3), ("r", va, 0), ("r", va, 3)],
    ]
    for plan in plans * 2:
        b = Batch()
        idx = [b.read(addr, cpl) for _, addr, cpl in plan]
        res = lab.machine.run(b)
        for i, (_, addr, cpl) in zip(idx, plan, strict=True):
            if addr == va:
                assert_ok(res[i], TAG | frame)
            elif addr == sva and cpl == 0:
                assert_ok(res[i], TAG | sframe)
            elif addr == sva:
                assert_pf(res[i], 0x5, sva)
            else:
                fault = res[i].fault
                assert fault is not None and fault.vector == 13


# -- tagged frames --------------------------------------------------------------------------------


def test_reads_through_4k_pages_land_on_tagged_frames(lab: Lab) -> None:
    rng = random.Random(4)
    frames = [lab.frames.alloc() for _ in range(300)]
    rng.shuffle(frames)
    for i, frame in enumerate(frames):
        lab.machine.memory.write_u64(frame + 8 * (i % 512), TAG | frame)
        lab.space.map(BASE_VA + i * pte.SIZE_4K, frame, P | U | (W if i % 2 else 0))
    b = lab.batch()
    cpl3 = b.reads([BASE_VA + i * pte.SIZE_4K + 8 * (i % 512) for i in range(len(frames))])
    cpl0 = [b.read(BASE_VA + i * pte.SIZE_4K + 8 * (i % 512), cpl=0) for i in range(0, 300, 37)]
    res = lab.machine.run(b)
    assert [res[i].value for i in cpl3] == [TAG | f for f in frames]
    assert [res[i].value for i in cpl0] == [TAG | frames[i] for i in range(0, 300, 37)]
    for i, frame in enumerate(frames[:50]):
        leaf = lab.space.entry_address(BASE_VA + i * pte.SIZE_4K, 1)
        assert lab.machine.memory.read_u64(leaf) & A, "the walk set the accessed bit"
        assert lab.machine.translate(BASE_VA + i * pte.SIZE_4K) == frame


@pytest.mark.parametrize("cpl", [3, 0])
def test_walks_set_accessed_and_dirty_bits(lab: Lab, cpl: int) -> None:
    flags = P | W | (U if cpl == 3 else 0)
    (rva, _, rleaf), (wva, _, wleaf) = lab.page(flags), lab.page(flags)
    b = lab.batch()
    b.read(rva, cpl)
    b.write(wva, 1, cpl)
    assert all(r.ok for r in lab.machine.run(b))
    mem = lab.machine.memory
    assert mem.read_u64(rleaf) & (A | D) == A
    assert mem.read_u64(wleaf) & (A | D) == A | D
    for level in (4, 3, 2):  # every upper entry on the path was accessed
        assert mem.read_u64(lab.space.entry_address(rva, level)) & A


def test_reads_through_2m_pages_land_on_tagged_frames(lab: Lab) -> None:
    huge = [lab.frames.alloc(pte.SIZE_2M) for _ in range(3)]
    offsets = [0, 0x1000, 0x12_3008, 0x1F_F000]
    for frame in huge:
        for off in offsets:
            lab.machine.memory.write_u64(frame + off, TAG | (frame + off))
    vas = [BASE_VA + (5 + i) * pte.SIZE_2M for i in range(3)]
    for va, frame in zip(vas, reversed(huge), strict=True):
        lab.space.map(va, frame, P | W | U, level=2)
    b = lab.batch()
    idx = [(b.read(va + off, cpl), frame + off)
           for va, frame in zip(vas, reversed(huge), strict=True)
           for off in offsets for cpl in (3, 0)]  # fmt: skip
    res = lab.machine.run(b)
    for i, phys in idx:
        assert_ok(res[i], TAG | phys)


def test_1gib_pages_follow_the_profile(lab: Lab, profile: HostProfile) -> None:
    if profile.kind is HypervisorKind.PVM:
        assert not profile.supports("1gib-pages"), "PVM hosts fault on 1 GiB pages"
    lab.machine.memory.write_u64(0, TAG)
    va = 0x0000_0080_0000_0000
    lab.space.map(va, 0, P | W | U, level=3)
    b = lab.batch()
    i3, i0 = b.read(va), b.read(va, cpl=0)
    res = lab.machine.run(b)
    if profile.supports("1gib-pages"):
        assert_ok(res[i3], TAG)
        assert_ok(res[i0], TAG)
    else:
        f3, f0 = res[i3].fault, res[i0].fault
        assert f3 is not None and f3.error_code & 0x8  # RSVD
        assert f0 is not None and f0.error_code & 0x8


# -- the live-update rule -------------------------------------------------------------------------


def test_change_applied_by_the_agent_is_always_seen(lab: Lab) -> None:
    va, old, leaf = lab.page(P | W | U)
    new = lab.frames.alloc()
    lab.machine.memory.write_u64(new, TAG | new)
    b = lab.batch()
    first = b.read(va)
    b.write_entry(leaf, new | P | W | U)
    b.invlpg(va)
    again3, again0 = b.read(va), b.read(va, cpl=0)
    b.write_entry(leaf, 0)
    b.invlpg(va)
    gone = b.read(va)
    res = lab.machine.run(b)
    assert_ok(res[first], TAG | old)
    assert_ok(res[again3], TAG | new)
    assert_ok(res[again0], TAG | new)
    assert_pf(res[gone], 0x4, va)


def test_host_rewrite_of_a_walked_table_matches_the_profile(lab: Lab, profile: HostProfile) -> None:
    va, old, leaf = lab.page(P | W | U)
    fresh_va, _, fresh_leaf = lab.page(P | W | U)
    new = lab.frames.alloc()
    lab.machine.memory.write_u64(new, TAG | new)
    b = lab.batch()
    b.read(va)
    lab.machine.run(b)
    # host-side rewrites: one of a walked leaf, one of a leaf the guest never used
    lab.machine.memory.write_u64(leaf, new | P | W | U)
    lab.machine.memory.write_u64(fresh_leaf, new | P | W | U)
    b = Batch()
    b.invlpg(va)
    b.load_cr3(lab.space.p4)
    walked, fresh = b.read(va), b.read(fresh_va)
    res = lab.machine.run(b)
    assert_ok(res[fresh], TAG | new)  # never walked: the host write is simply the table
    expected = new if profile.host_writes_visible_after_walk else old
    assert_ok(res[walked], TAG | expected)
    measured = profile.features["host-rewrite-seen"]
    assert measured.works == profile.host_writes_visible_after_walk, measured.evidence


def test_host_rewrite_is_seen_after_dropping_shadow_tables(lab: Lab) -> None:
    va, old, leaf = lab.page(P | W | U)
    new = lab.frames.alloc()
    lab.machine.memory.write_u64(new, TAG | new)
    b = lab.batch()
    first = b.read(va)
    assert_ok(lab.machine.run(b)[first], TAG | old)
    lab.machine.memory.write_u64(leaf, new | P | W | U)
    lab.machine.drop_shadow_tables()
    b = Batch()
    b.invlpg(va)
    i = b.read(va)
    assert_ok(lab.machine.run(b)[i], TAG | new)


def test_probe_beyond_ram_reads_open_bus(lab: Lab) -> None:
    m = lab.machine
    gpa = m.memory.size + 0x10_0000  # no memslot there
    va = lab.next_va
    lab.space.map(va, gpa, P | W | U)
    b = lab.batch()
    r3, w3, r0 = b.read(va), b.write(va, 7), b.read(va, cpl=0)
    res = m.run(b)
    assert_ok(res[r3], (1 << 64) - 1)
    assert res[w3].ok
    assert_ok(res[r0], (1 << 64) - 1)
    assert [(e.phys_addr, e.is_write) for e in m.mmio_log] == [
        (gpa, False),
        (gpa, True),
        (gpa, False),
    ]


def test_a_probe_writing_the_doorbell_page_does_not_end_the_batch(lab: Lab) -> None:
    m = lab.machine
    va = lab.next_va
    lab.space.map(va, m.placement.doorbell_gpa, P | W | U)
    b = lab.batch()
    w = b.write(va, 1)
    after = b.read(va)
    res = m.run(b)
    assert res[w].ok and res[after].ok and res[after].value == (1 << 64) - 1


# -- agent slot rules -----------------------------------------------------------------------------


def test_user_layout_in_the_agent_slot_is_refused(lab: Lab) -> None:
    m = lab.machine
    other = pte.SimpleSpace(m.memory, lab.frames)
    other.map(pte.canonical(m.agent_slot << 39), lab.frames.alloc(), P | W)
    with pytest.raises(AgentSlotConflict, match="reserves"):
        m.install_agent_slot(other.p4)
    b = Batch()
    b.read(pte.canonical(m.agent_slot << 39) + 0x123000)
    with pytest.raises(AgentSlotConflict):
        m.run(b)


def test_cr3_without_the_agent_is_refused(lab: Lab) -> None:
    bare = pte.SimpleSpace(lab.machine.memory, lab.frames)
    b = Batch()
    b.load_cr3(bare.p4)
    with pytest.raises(BatchError, match="install_agent_slot"):
        lab.machine.run(b)
    b = Batch()
    b.write_entry(lab.machine.reserved[0], 0)
    with pytest.raises(BatchError, match="reserved"):
        lab.machine.run(b)


def test_batch_larger_than_capacity_is_refused(lab: Lab) -> None:
    b = Batch()
    b.reads([BASE_VA] * (lab.machine.capacity + 1))
    with pytest.raises(BatchError, match="capacity"):
        lab.machine.run(b)


def test_agent_slot_is_configurable() -> None:
    with Machine(16 << 20, agent_slot=300) as m:
        frames = pte.FrameBump(m.memory, pte.SIZE_4K, m.reserved[0])
        space = pte.SimpleSpace(m.memory, frames)
        frame = frames.alloc()
        m.memory.write_u64(frame, TAG | frame)
        space.map(pte.canonical(511 << 39), frame, P | U)  # slot 511 is free for users now
        m.install_agent_slot(space.p4)
        b = Batch()
        b.load_cr3(space.p4)
        i = b.read(pte.canonical(511 << 39))
        assert_ok(m.run(b)[i], TAG | frame)


# -- crashes leave the machine usable -------------------------------------------------------------


def _still_works(lab: Lab) -> None:
    va, frame, _ = lab.page(P | U | A)
    b = lab.batch()
    i3, i0 = b.read(va), b.read(va, cpl=0)
    res = lab.machine.run(b)
    assert_ok(res[i3], TAG | frame)
    assert_ok(res[i0], TAG | frame)


def test_unexpected_exception_gives_a_register_dump(lab: Lab) -> None:
    va, frame, _ = lab.page(P | U | A)
    lab.machine.memory.write(frame + STUB, b"\x0f\x0b")  # at the target: the probe's own fault
    b = lab.batch()
    i = b.fetch(va + STUB)
    r = lab.machine.run(b)[i]
    assert r.fault is not None and r.fault.vector == 6 and r.rip == va + STUB
    lab.machine.memory.write(frame + STUB, b"\x90\x0f\x0b")  # nop; ud2: not a probe address
    with pytest.raises(GuestCrashError, match="did not expect") as info:
        lab.machine.run(b)
    assert info.value.dump["vector"] == 6 and info.value.dump["rip"] == va + STUB + 1
    assert "rip=" in str(info.value)
    _still_works(lab)


def test_ring3_page_faults_and_other_faults_interleave(lab: Lab) -> None:
    """The #PF fast path (back to ring 3 with the fault in registers) and the slow path of the
    other vectors resume the ring-3 loop at the right record, whatever order they come in."""
    ok_va, frame, _ = lab.page(P | U | A)
    ro_va, _, _ = lab.page(P | U | A)
    hole = lab.next_va + 0x10_0000
    b = lab.batch()
    plan = [
        (b.read(hole), 0x4, hole),
        (b.read(NON_CANONICAL), "gp", None),
        (b.write(ro_va + 8, 0), 0x7, ro_va + 8),
        (b.read(ok_va), None, None),
        (b.fetch(NON_CANONICAL), "gp", None),
        (b.fetch(hole + STUB), 0x14, hole + STUB),
        (b.read(hole, cpl=0), 0x0, hole),
        (b.read(hole), 0x4, hole),
        (b.read(ok_va), None, None),
    ]
    res = lab.machine.run(b)
    for i, expected, va in plan:
        if expected is None:
            assert_ok(res[i], TAG | frame)
        elif expected == "gp":
            fault = res[i].fault
            assert fault is not None and fault.vector == 13, str(res[i])
        else:
            assert isinstance(expected, int) and va is not None
            assert_pf(res[i], expected, va)


def test_rflags_ac_survives_faults_in_ring_0(lab: Lab, profile: HostProfile) -> None:
    """With SMAP on and RFLAGS.AC set, a CPL0 read of a user page succeeds, also right after a
    CPL0 fault (whose delivery clears AC on a PVM host: the agent puts RFLAGS back) and after
    ring 3 ran."""
    if not profile.supports("smap"):
        pytest.skip(f"this host has no SMAP: {profile.features['smap'].evidence}")
    va, frame, _ = lab.page(P | W | U | A)
    hole = lab.next_va + 0x10_0000
    b = lab.batch()
    b.set_smap(True)
    b.set_ac(True)
    reads = [b.read(va, cpl=0)]
    b.read(hole, cpl=0)  # #PF in ring 0
    reads.append(b.read(va, cpl=0))
    b.fetch(hole + STUB, cpl=0)  # #PF in ring 0, instruction fetch
    reads.append(b.read(va, cpl=0))
    b.read(hole)  # ring 3, #PF
    reads.append(b.read(va, cpl=0))
    b.set_ac(False)
    i_off = b.read(va, cpl=0)
    b.set_smap(False)
    res = lab.machine.run(b)
    for i in reads:
        assert_ok(res[i], TAG | frame)
    assert_pf(res[i_off], 0x1, va)


def test_unplanned_ring3_page_fault_gives_a_register_dump(lab: Lab) -> None:
    """A #PF in ring 3 that is not a probe's own access (here: a fetch stub that reads an
    unmapped address) is not recorded as the probe's result: the guest stops with a dump that
    carries the fault's error code, RIP and CR2."""
    va, frame, _ = lab.page(P | U | A)
    hole = lab.next_va + 0x20_0000
    # movabs $hole, %rax; mov (%rax), %rax; ret
    stub = b"\x48\xb8" + hole.to_bytes(8, "little") + b"\x48\x8b\x00\xc3"
    lab.machine.memory.write(frame + STUB, stub)
    b = lab.batch()
    b.fetch(va + STUB)
    with pytest.raises(GuestCrashError, match="did not expect") as info:
        lab.machine.run(b)
    dump = info.value.dump
    assert (dump["rax"], dump["rcx"], dump["rdx"]) == (0x4, va + STUB + 10, hole)
    _still_works(lab)


def test_unexpected_exit_gives_a_register_dump(lab: Lab) -> None:
    va, frame, _ = lab.page(P | W | A)
    lab.machine.memory.write(frame + STUB, b"\xf4")  # hlt in ring 0
    b = lab.batch()
    b.fetch(va + STUB, cpl=0)
    with pytest.raises(GuestCrashError, match="KVM_EXIT_HLT") as info:
        lab.machine.run(b)
    assert info.value.dump["rip"] == va + STUB + 1
    _still_works(lab)


def test_triple_fault_is_reported_and_the_machine_recovers(lab: Lab) -> None:
    b = lab.batch()
    b.write_entry(lab.space.p4 + 8 * lab.machine.agent_slot, 0)  # pull the rug
    with pytest.raises(GuestCrashError, match="KVM_EXIT_SHUTDOWN") as info:
        lab.machine.run(b)
    assert "cr3" in info.value.dump
    if lab.machine.closed:
        pytest.skip("this host cannot reset a vCPU after shutdown; the VM was destroyed")
    lab.machine.install_agent_slot(lab.space.p4)
    _still_works(lab)
