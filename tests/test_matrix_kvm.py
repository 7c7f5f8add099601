"""The permission matrix on /dev/kvm: the CI sample (over 20,000 combinations, every value of
every dimension that this host can run) agrees with the model; a deliberately wrong model, or a
wrong expectation of the frame reached, is reported; shards, merge, jobs, recycled tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import VALIDATOR

from kvmpage.cli import main, matrix_cmd
from kvmpage.machine import host_profile
from kvmpage.matrix import Selection, dims, run_matrix
from kvmpage.matrix.arena import Arena
from kvmpage.matrix.engine import Runner
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.matrix.run import machine_for
from kvmpage.matrix.select import sample_rows
from kvmpage.paging.access import AccessKind, CpuState, Features, Outcome, evaluate

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).parent.parent
CI_SAMPLE = 21000  #: a few per cent are filtered on a host without 1 GiB pages


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["matrix", *argv, "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    VALIDATOR.validate(doc)
    assert doc["exit_code"] == code
    return code, doc


@pytest.fixture(scope="module")
def host() -> HostFacts:
    return HostFacts.from_profile(host_profile())


def test_ci_sample_agrees_and_covers_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    """The CI sample: at least 20,000 combinations, 0 disagreements, and every value of every
    dimension covered, except values this host cannot run, each named with the reason."""
    code, doc = run_json(capsys, "--sample", str(CI_SAMPLE), "--seed", "11")
    assert doc["disagreement_count"] == 0, doc["summary"]
    assert code == 0 and doc["combinations"] >= 20000
    assert doc["combinations"] + sum(doc["skipped"].values()) == CI_SAMPLE
    for name, entry in doc["dimensions"].items():
        for value, why in entry["missing"].items():
            assert "unavailable" in why or "no reserved address bit" in why, (name, value, why)
    profile = host_profile()
    assert set(doc["oracles"]) == {profile.cpl3_oracle, profile.cpl0_oracle}
    assert doc["hosts"][0]["oracles"] == {"cpl3": profile.cpl3_oracle, "cpl0": profile.cpl0_oracle}
    for feature in ("1gib-pages", "pku", "la57"):
        if not profile.supports(feature):
            assert doc["unavailable"][feature].startswith(profile.features[feature].evidence)


def _wrong_write(
    entries: Any, va: int, *, access: AccessKind, cpl: int, cpu: CpuState, features: Features
) -> Outcome:
    """A deliberately wrong model: a CPL3 write to a present, read-only 4 KiB user page (every
    level writable and user) completes."""
    out = evaluate(entries, va, access=access, cpl=cpl, cpu=cpu, features=features)
    if (
        access is AccessKind.WRITE and cpl == 3 and len(entries) == 4 and out.fault is not None
        and out.reason == "write to a read-only page"
        and all(e & 6 == 6 for e in entries[:3]) and entries[3] & 5 == 5
    ):  # fmt: skip
        return evaluate([*entries[:3], entries[3] | 2], va, access=access, cpl=cpl, cpu=cpu,
                        features=features)  # fmt: skip
    return out


def _wrong_accessed(
    entries: Any, va: int, *, access: AccessKind, cpl: int, cpu: CpuState, features: Features
) -> Outcome:
    """A deliberately wrong model: a supervisor access that completes sets no A bit in the
    PML4E."""
    out = evaluate(entries, va, access=access, cpl=cpl, cpu=cpu, features=features)
    if cpl == 0 and out.fault is None:
        return Outcome(out.phys, None, out.leaf_level, out.page_size, out.levels,
                       out.a_must - {4}, out.a_may, out.d_must, "wrong on purpose")  # fmt: skip
    return out


def test_a_wrong_model_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The oracle can disagree: with a model that is wrong for some combinations, the matrix
    reports them (field, expected, actual, the oracle that answered) and exits 1."""
    monkeypatch.setattr(matrix_cmd, "MODEL", _wrong_write)
    code, doc = run_json(capsys, "--sample", "6000", "--seed", "3")
    assert code == 1 and doc["disagreement_count"] > 0
    fields = {(g["field"], g["expected"], g["actual"]) for g in doc["summary"]}
    assert ("outcome", "ok", "#PF(0x7)") in fields
    first = doc["disagreements"][0]
    assert first["oracle"] == host_profile().cpl3_oracle and first["combination"]["cpl"] == "3"
    assert first["combination"]["access"] == "write" and len(first["entries"]) == 4
    code = main(["matrix", "--sample", "6000", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 1 and "DISAGREEMENTS:" in out and "outcome" in out and "[mmu]" in out


def test_a_wrong_accessed_bit_is_reported_with_the_cpl0_oracle(host: HostFacts) -> None:
    result = run_matrix(Selection("sample", 3000, 5), model=_wrong_accessed)
    groups = result.totals.groups
    assert groups[("pml4e.a", "clear", "set")] > 0
    assert {d.oracle for d in result.totals.disagreements} == {host.cpl0_oracle}
    assert result.exit_code == 1


def test_a_wrong_frame_is_reported(monkeypatch: pytest.MonkeyPatch, host: HostFacts) -> None:
    """If the run expected another frame than the one the CPU reached, reads and fetches say
    "tag of another frame" and writes say the value is not where expected."""
    real = Arena.leaf_page

    def shifted(self: Arena, level: int, m: int) -> int:
        page = real(self, level, m)
        return page + (2 << 20) if level == 1 and m == 7 else page  # a 2 MiB frame's page

    monkeypatch.setattr(Arena, "leaf_page", shifted)
    rows = [r for r in sample_rows(20000, 8) if dims.stop_level(r) == "pte"]
    with machine_for(host, "/dev/kvm") as m:
        totals = Runner(m, host).run(rows)
    fields = {(f, a) for f, _, a in totals.groups}
    assert ("frame", "tag of another frame") in fields
    assert ("memory", "not written there") in fields
    assert all(d.va >> 12 & 511 == 7 for d in totals.disagreements)  # member 7 of each chunk


def test_shards_merge_into_the_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, whole = run_json(capsys, "--sample", "3000", "--seed", "2")
    paths = []
    for k in (1, 2, 3):
        _, part = run_json(capsys, "--sample", "3000", "--seed", "2", "--shard", f"{k}/3")
        assert part["selection"]["shard"] == {"index": k, "count": 3}
        path = tmp_path / f"part{k}.json"
        path.write_text(json.dumps(part))
        paths.append(str(path))
    code, merged = run_json(capsys, "--merge", *paths)
    assert code == 0 and merged["combinations"] == whole["combinations"]
    assert merged["skipped"] == whole["skipped"] and merged["shards"]["missing"] == []
    assert merged["dimensions"] == whole["dimensions"]


def test_jobs_check_the_same_combinations() -> None:
    one = run_matrix(Selection("sample", 3000, 6), jobs=1)
    two = run_matrix(Selection("sample", 3000, 6), jobs=2)
    assert two.totals.checked == one.totals.checked and two.jobs == 2
    twice = sum(1 for r in Selection("sample", 3000, 6).rows() if r[dims.C_TWICE])
    assert two.totals.probes == one.totals.probes <= one.totals.checked + twice
    assert two.totals.skipped == one.totals.skipped
    assert two.totals.disagreement_count == one.totals.disagreement_count == 0
    assert two.totals.covered() == one.totals.covered()


def test_full_matrix_part_agrees() -> None:
    """A slice of the full matrix (core product and covering array), every 1000th combination."""
    result = run_matrix(Selection("full", seed=0, shard=(17, 1000)))
    assert result.totals.checked > 1900 and result.totals.disagreement_count == 0


def test_tables_are_recycled_when_the_pool_runs_out(
    monkeypatch: pytest.MonkeyPatch, host: HostFacts
) -> None:
    """With a pool of a few chunks' tables, the run drops KVM's shadow tables and uses the
    frames again; nothing stale is measured (0 disagreements)."""
    real = Arena.__init__

    def small(self: Arena, machine: Any, gbpages: bool) -> None:
        real(self, machine, gbpages)
        self.pool_end = self.pool_start + 4 * 4096 * 5

    monkeypatch.setattr(Arena, "__init__", small)
    seen: list[int] = []
    rows = sample_rows(12000, 4)
    with machine_for(host, "/dev/kvm") as m:
        totals = Runner(m, host, progress=lambda t: seen.append(t.checked)).run(rows)
    assert totals.recycles >= 3 and totals.disagreement_count == 0
    assert seen == sorted(seen) and seen[-1] == totals.checked


def test_progress_is_reported() -> None:
    calls: list[tuple[int, int, int]] = []
    run_matrix(Selection("sample", 9000, 1), progress=lambda *a: calls.append(a))
    assert calls and all(total == 9000 for _, total, _ in calls)
    assert calls[-1][0] == 9000 and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_a_failing_job_reads_as_one_line(host: HostFacts) -> None:
    """What a job raises must cross the process boundary: it becomes one picklable line."""
    from kvmpage.matrix import run as run_module

    with pytest.raises(RuntimeError, match=r"^job 2 of 3: .*/nonexistent/kvm") as info:
        run_module._job(Selection("sample", 10), (1, 3), host, "/nonexistent/kvm", None, 10)
    assert "\n" not in str(info.value)


def test_cannot_run_without_kvm(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["matrix", "--device", "/nonexistent/kvm", "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["exit_code"] == 2 and "/nonexistent/kvm" in doc["error"]
    assert captured.err.count("\n") == 1


@pytest.fixture(autouse=True)
def _no_leftover_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(matrix_cmd, "MODEL", None)
    yield
