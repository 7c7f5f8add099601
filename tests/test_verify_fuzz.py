"""The differential campaign (`kvmpage.verify.fuzz`): a run bounded by its number of cases
must agree everywhere; an injected bug is found, shrunk to a small reproducer and saved as a
layout file that loads again.

The suite's campaign is bounded by cases, never by time, so it checks the same cases on every
machine whatever its load. The long campaign is opt-in: ``make fuzz`` (``pytest -m slow``), with
``KVMPAGE_FUZZ_CASES`` and ``KVMPAGE_FUZZ_SEED`` to change its size and seed."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmpage.machine import host_profile
from kvmpage.verify import Predictor, fuzz
from kvmpage.verify.fuzz import (
    CampaignResult,
    Case,
    Failure,
    Op,
    campaign,
    random_case,
    reproducer_toml,
)
from kvmpage.verify.probes import Probe
from kvmpage.verify.report import Disagreement, Report

#: the suite's campaign: enough cases for every mapper kind and page size, a few seconds
SUITE_CASES = 30
SUITE_SEED = 20261125


def test_random_cases_are_reproducible_from_their_seed() -> None:
    a = random_case(1234, ["4K", "2M"])
    b = random_case(1234, ["4K", "2M"])
    assert a == b and len(a.ops) == 12
    assert {op.kind for op in random_case(99, ["4K"], length=200).ops} >= {"map", "unmap"}
    assert all(op.size in ("4K", "2M") for op in a.ops)


def _recorded_campaign(
    monkeypatch: pytest.MonkeyPatch, seed: int, cases: int
) -> tuple[CampaignResult, list[Case]]:
    """``campaign(seed, cases=cases)`` with no time limit; the result and every case it ran."""
    ran: list[Case] = []
    real_run_case = fuzz.run_case

    def recording(
        case: Case,
        *,
        predictor: Callable[..., Predictor] = Predictor,
        on_step: Callable[[Report], None] | None = None,
    ) -> Failure | None:
        ran.append(case)
        return real_run_case(case, predictor=predictor, on_step=on_step)

    monkeypatch.setattr(fuzz, "run_case", recording)
    return campaign(seed, cases=cases, seconds=math.inf), ran


def _check_campaign(result: CampaignResult, ran: list[Case], cases: int) -> None:
    """Every case ran and every step of it was verified (over every mapper kind and every page
    size this host verifies, when there are enough cases for that); hardware agreed everywhere."""
    assert result.cases == len(ran) == cases
    assert result.steps == sum(len(case.ops) for case in ran)
    assert result.probes > 300 * cases
    if cases >= SUITE_CASES:
        sizes = {"4K", "2M"} | ({"1G"} if host_profile().supports("1gib-pages") else set())
        assert {case.kind for case in ran} == {"offset", "mapped", "recursive"}
        assert {op.size for case in ran for op in case.ops} == sizes
        ops = {op.kind for case in ran for op in case.ops}
        assert ops >= {"map", "map_range", "unmap", "update"}
    assert not result.failures, result.failures[0].report.format(limit=2)


@pytest.mark.kvm
def test_bounded_campaign_finds_no_disagreement(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random layouts and operation sequences over all mappers and the sizes the host verifies,
    every step verified: hardware agrees (bounded by the number of cases)."""
    result, ran = _recorded_campaign(monkeypatch, SUITE_SEED, SUITE_CASES)
    out = capsys.readouterr().out
    assert f"seed {SUITE_SEED}" in out and f"{SUITE_CASES} cases" in out
    _check_campaign(result, ran, SUITE_CASES)


@pytest.mark.slow
@pytest.mark.kvm
def test_long_campaign_finds_no_disagreement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The opt-in long run (``make fuzz``): ``KVMPAGE_FUZZ_CASES`` cases (default 1,000, under
    three minutes here) from ``KVMPAGE_FUZZ_SEED`` (default 1)."""
    cases = int(os.environ.get("KVMPAGE_FUZZ_CASES", "1000"))
    seed = int(os.environ.get("KVMPAGE_FUZZ_SEED", "1"))
    result, ran = _recorded_campaign(monkeypatch, seed, cases)
    _check_campaign(result, ran, cases)


class WritableEverywhere(Predictor):
    """A software walk that forgets the WRITABLE bit restricts anything."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e | 2 for e in entries), addrs


@pytest.mark.kvm
def test_injected_bug_is_found_shrunk_and_saved(tmp_path: Path) -> None:
    result = campaign(5, cases=40, seconds=math.inf, predictor=WritableEverywhere,
                      save_dir=tmp_path, log=lambda _: None)  # fmt: skip
    assert result.failures, "a software walk that ignores W must disagree with the CPU"
    small = result.failures[0]
    assert len(small.case.ops) <= 2, small.case.ops
    assert small.case.ops[-1].kind in ("map", "update", "set_p4", "set_p3", "set_p2")
    d = small.report.disagreements[0]
    assert d.access == "write" and "faulted" in d.why
    path = result.reproducers[0]
    assert path is not None, result.save_errors
    text = path.read_text()
    assert f"case seed {small.case.seed}" in text and "[[mapping]]" in text
    from kvmpage.layout.toml_file import parse_layout

    spec = parse_layout(text, str(path))
    assert spec.kind == small.case.kind
    assert len(spec.mappings) >= 1


def test_reproducer_text_lists_the_operations() -> None:
    report = Report(host="test")
    report.disagreements.append(
        Disagreement("probe", 0x1000, "write", 3, "mmu", "ok", "#PF", "why", [], [])
    )
    case = Case(7, "offset", (Op("map", "4K", 0x1000, 3),))
    text = reproducer_toml(Failure(case, 0, report), [(0x1000, 4096, 0x2000, 0x3)])
    assert "#   0: map 4K 0x1000 [PRESENT | WRITABLE]" in text
    assert 'flags = ["PRESENT", "WRITABLE"]' in text
    assert "virt = 0x1000" in text and "phys = 0x2000" in text
