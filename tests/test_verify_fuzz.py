"""The differential campaign: a bounded run must agree everywhere; an injected bug is found,
shrunk to a small reproducer and saved as a layout file that loads again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmpage.verify import Predictor
from kvmpage.verify.fuzz import Op, campaign, random_case, reproducer_toml
from kvmpage.verify.probes import Probe

FUZZ_SECONDS = float(os.environ.get("KVMPAGE_FUZZ_SECONDS", "40"))


def test_random_cases_are_reproducible_from_their_seed() -> None:
    a = random_case(1234, ["4K", "2M"])
    b = random_case(1234, ["4K", "2M"])
    assert a == b and len(a.ops) == 12
    assert {op.kind for op in random_case(99, ["4K"], length=200).ops} >= {"map", "unmap"}
    assert all(op.size in ("4K", "2M") for op in a.ops)


@pytest.mark.kvm
def test_bounded_campaign_finds_no_disagreement(capsys: pytest.CaptureFixture[str]) -> None:
    """Random layouts and operation sequences over all mappers and the sizes the host verifies,
    every step verified: hardware agrees (bounded well under two minutes)."""
    result = campaign(20261125, seconds=FUZZ_SECONDS)
    out = capsys.readouterr().out
    assert "seed 20261125" in out
    assert result.cases > 20 and result.steps > 200 and result.probes > 10_000
    assert not result.failures, result.failures[0].report.format(limit=2)


class WritableEverywhere(Predictor):
    """A software walk that forgets the WRITABLE bit restricts anything."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e | 2 for e in entries), addrs


@pytest.mark.kvm
def test_injected_bug_is_found_shrunk_and_saved(tmp_path: Path) -> None:
    result = campaign(5, cases=40, seconds=60, predictor=WritableEverywhere, save_dir=tmp_path,
                      log=lambda _: None)  # fmt: skip
    assert result.failures, "a software walk that ignores W must disagree with the CPU"
    small = result.failures[0]
    assert len(small.case.ops) <= 2, small.case.ops
    assert small.case.ops[-1].kind in ("map", "update", "set_p4", "set_p3", "set_p2")
    d = small.report.disagreements[0]
    assert d.access == "write" and "faulted" in d.why
    path = result.reproducers[0]
    text = path.read_text()
    assert f"case seed {small.case.seed}" in text and "[[mapping]]" in text
    from kvmpage.layout.toml_file import parse_layout

    spec = parse_layout(text, str(path))
    assert spec.kind == small.case.kind
    assert len(spec.mappings) >= 1


def test_reproducer_text_lists_the_operations() -> None:
    from kvmpage.verify.fuzz import Case, Failure
    from kvmpage.verify.report import Disagreement, Report

    report = Report(host="test")
    report.disagreements.append(
        Disagreement("probe", 0x1000, "write", 3, "mmu", "ok", "#PF", "why", [], [])
    )
    case = Case(7, "offset", (Op("map", "4K", 0x1000, 3),))
    text = reproducer_toml(Failure(case, 0, report), [(0x1000, 4096, 0x2000, 0x3)])
    assert "#   0: map 4K 0x1000 [PRESENT | WRITABLE]" in text
    assert 'flags = ["PRESENT", "WRITABLE"]' in text
    assert "virt = 0x1000" in text and "phys = 0x2000" in text
