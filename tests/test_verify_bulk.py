"""The verifier's large-layout path on real /dev/kvm: pages read a table at a time, tags written
in a pipeline with the guest's runs, and a wrong prediction still caught and explained."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from kvmpage.layout.spec import BuiltLayout, LayoutSpec, MappingSpec, build
from kvmpage.machine import Machine
from kvmpage.machine.protocol import R_VALUE
from kvmpage.paging import PageTableFlags, Size2MiB, Size4KiB
from kvmpage.paging.access import AccessKind, CpuState, Fault, Outcome
from kvmpage.verify import PlanOptions, Predictor, Verifier, bulk, session
from kvmpage.verify import verifier as verify_module
from kvmpage.verify.probes import Probe

pytestmark = pytest.mark.kvm

F = PageTableFlags
P, W, U, NX = F.PRESENT, F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE
MEMORY = 64 << 20
FORCE_BULK = PlanOptions(full_limit=64, sample=16)


@pytest.fixture
def machine() -> Iterator[Machine]:
    with Machine(MEMORY, timeout=30.0) as m:
        yield m


def large(m: Machine) -> BuiltLayout:
    """About 2,600 pages over several tables, user and supervisor, 4 KiB and 2 MiB."""
    spec = LayoutSpec(
        name="large",
        memory_size=MEMORY,
        reserved_p4=frozenset({m.agent_slot}),
        mappings=(
            MappingSpec("user", 0x40_0000, Size4KiB, 1500, P | W | U | NX),
            MappingSpec("kernel", 0xFFFF_C000_0000_0000, Size4KiB, 600, P | W),
            MappingSpec("user-ro", 0x7F00_0000_0000, Size4KiB, 500, P | U),
            MappingSpec("huge", 0x4000_0000, Size2MiB, 2, P | U),
        ),
    )
    return build(spec, m.memory, alloc_end=m.reserved[0])


def test_a_large_layout_is_verified_page_by_page_in_bulk(machine: Machine) -> None:
    built = large(machine)
    v = Verifier(built.mapper, machine)
    report = v.verify(FORCE_BULK)
    assert report.ok, report.format(limit=3)
    cov = report.coverage
    assert cov.pages == 1500 + 600 + 500 + 2 and cov.pages_read_only > 2000
    mmu = report.oracles[machine.host_profile().cpl3_oracle]
    # every read-only page was read once at CPL3 (supervisor pages fault, as predicted)
    assert mmu.agree >= cov.pages_read_only and mmu.disagree == 0
    assert report.entries_checked >= cov.pages and report.data_checked >= 1900
    assert sum(1 for _, _, ok in v.last_checks if ok) == len(v.last_checks) > 2000


def wrong_in_bulk(change: Callable[[Outcome], Outcome], doc: str) -> type[Predictor]:
    """A predictor whose bulk predictions (only) are ``change``d."""

    class WrongInBulk(Predictor):
        def bulk_reads(
            self, parents: tuple[int, ...], raws: list[int], vas: list[int], **kwargs: bool
        ) -> tuple[Outcome | None, list[Outcome]]:
            shared, outcomes = super().bulk_reads(parents, raws, vas, **kwargs)
            wrong = [change(o) for o in outcomes]
            return (wrong[0] if shared is not None else None), wrong

    WrongInBulk.__doc__ = doc
    return WrongInBulk


BulkSaysFault = wrong_in_bulk(
    lambda o: dataclasses.replace(o, fault=Fault(14, 0x4, 0), reason="software: not present"),
    "A broken bulk prediction: every page read in bulk is said to fault not-present.",
)
BulkForgetsAccessed = wrong_in_bulk(
    lambda o: dataclasses.replace(o, a_must=o.a_must - {1}, a_may=o.a_may - {1}),
    "A broken bulk prediction: the walk never sets A in the leaf.",
)


def test_a_wrong_bulk_prediction_is_reported_page_by_page(machine: Machine) -> None:
    built = large(machine)
    report = Verifier(built.mapper, machine, predictor=BulkSaysFault).verify(FORCE_BULK)
    probes = [d for d in report.disagreements if d.kind == "probe"]
    user_pages = 1500 + 500 - 2 * 16  # roughly: the user pages read in bulk
    assert len(probes) > user_pages * 0.9, report.format(limit=2)
    d = probes[0]
    assert "the access completed" in d.why and d.access == "read" and d.cpl == 3
    text = d.format()
    assert "PML4" in text and "KVM_TRANSLATE" in text


def test_a_wrong_accessed_bit_in_bulk_is_reported_per_entry(machine: Machine) -> None:
    built = large(machine)
    report = Verifier(built.mapper, machine, predictor=BulkForgetsAccessed).verify(FORCE_BULK)
    ad = [d for d in report.disagreements if d.kind == "accessed-dirty"]
    assert len(ad) > 1900, report.format(limit=2)
    assert all("A set although no walk used this entry" in d.why for d in ad)
    # each names the read that went through its entry
    assert all(f"read@cpl3 {d.va:#x}" in d.software_walk[0] for d in ad)
    assert not [d for d in report.disagreements if d.kind == "probe"]


def test_a_wrong_expected_frame_in_bulk_is_reported(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expect the tag of the next frame for one page: the CPU reached another frame."""
    real = bulk.predict_chunk
    shifted: list[int] = []

    def predict_shifted(*args, **kwargs):  # type: ignore[no-untyped-def]
        chunk = real(*args, **kwargs)
        if chunk is not None and chunk.tagged and not shifted:
            chunk.values[3] = chunk.values[3] + 0x1000  # type: ignore[operator]
            shifted.append(chunk.vas[3])
        return chunk

    monkeypatch.setattr(bulk, "predict_chunk", predict_shifted)
    report = Verifier(large(machine).mapper, machine).verify(FORCE_BULK)
    assert [d.va for d in report.disagreements] == shifted
    assert "reached a different frame" in report.disagreements[0].why


def test_the_pipelined_run_stages_each_batch_before_it_runs(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many small pipelined batches: a read whose tag were written too late would return 0 and
    disagree, so agreement on every page shows the ordering held."""
    monkeypatch.setattr(verify_module, "PIPELINE_MIN", 100)
    monkeypatch.setattr(session, "PIPELINE_READS", 300)
    runs: list[int] = []
    real_run = machine.run

    def counting_run(batch, **kwargs):  # type: ignore[no-untyped-def]
        runs.append(len(batch))
        return real_run(batch, **kwargs)

    monkeypatch.setattr(machine, "run", counting_run)
    v = Verifier(large(machine).mapper, machine)
    report = v.verify(FORCE_BULK)
    assert report.ok, report.format(limit=3)
    assert len(runs) > 6
    assert report.oracles[machine.host_profile().cpl3_oracle].agree > 2000
    assert report.seconds.keys() == {"plan", "predict+tag+run", "compare"}


def test_an_error_while_making_a_batch_ends_the_run_cleanly(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third batch cannot be made (say, memory runs out while tagging): the run in flight
    finishes, the error comes out, and the machine and the session stay usable."""
    monkeypatch.setattr(verify_module, "PIPELINE_MIN", 100)
    monkeypatch.setattr(session, "PIPELINE_READS", 300)
    calls: list[int] = []
    real_take = bulk.BulkReads.take

    def failing(self: bulk.BulkReads, limit: int) -> list[int]:
        calls.append(limit)
        if len(calls) == 3:
            raise MemoryError("simulated: tagging failed")
        return real_take(self, limit)

    monkeypatch.setattr(bulk.BulkReads, "take", failing)
    v = Verifier(large(machine).mapper, machine)
    with pytest.raises(MemoryError, match="simulated"):
        v.verify(FORCE_BULK)
    monkeypatch.setattr(bulk.BulkReads, "take", real_take)
    report = v.verify(FORCE_BULK)
    assert report.ok, report.format(limit=3)


def test_runs_fill_each_batch_and_add_no_empty_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes that fill a batch exactly take one KVM_RUN, not one plus an empty one; reads from
    a source fill the room the probes leave."""
    with Machine(MEMORY, capacity=64) as m:
        built = large(m)
        s = session.Session(m, built.p4_phys)
        s.sync()  # the CR3 load and the CPU state: nothing is pending after this
        runs: list[int] = []
        real_run = m.run

        def counting_run(batch, **kwargs):  # type: ignore[no-untyped-def]
            runs.append(len(batch))
            return real_run(batch, **kwargs)

        monkeypatch.setattr(m, "run", counting_run)
        probes = [Probe(0x40_0000 + 4096 * i, AccessKind.READ, 3, None) for i in range(64)]
        assert len(s.run(probes, CpuState())) == 64 and runs == [64]
        runs.clear()
        reads = [0x40_0000 + 4096 * i for i in range(100)]
        results = s.run(probes[:10], CpuState(), reads)
        assert runs == [64, 46] and len(results) == 110
        user = built.phys_of["user"]
        assert results.column(R_VALUE)[10:] == [
            m.memory.read_u64(user + 4096 * i) for i in range(100)
        ]


def test_past_the_detail_limit_disagreements_keep_their_reason_but_not_their_walks(
    machine: Machine,
) -> None:
    """A systematic error in a large layout is reported in full, fast: every disagreement is
    counted and has its one-line reason; only the first few pay for both walks."""
    built = large(machine)
    v = Verifier(built.mapper, machine, predictor=BulkSaysFault, detail_limit=5)
    report = v.verify(FORCE_BULK)
    probes = [d for d in report.disagreements if d.kind == "probe"]
    assert len(probes) > 1800 and report.to_dict()["disagreement_count"] == len(probes)
    explained = [d for d in probes if d.hardware_walk]
    assert len(explained) == 5 and all(
        "KVM_TRANSLATE" in "".join(d.hardware_walk) for d in explained
    )
    rest = [d for d in probes if not d.hardware_walk]
    assert all("walks left out: more than 5" in d.software_walk[0] and d.why for d in rest)
    assert "walks left out" in rest[0].format()
    mmu = report.oracles[machine.host_profile().cpl3_oracle]
    assert mmu.disagree == len(probes)
