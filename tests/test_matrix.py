"""The permission matrix without KVM: what a combination means (normalization, the structural
rules, the entries it writes), the covering array, selections and shards, the model's cached
answers against the model itself, host filtering, and the JSON report and its merge."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpage.cli import main
from kvmpage.cli.output import SCHEMA_VERSION
from kvmpage.kvm.host import CpuidSummary, FeatureResult, HostProfile, HypervisorKind, Support
from kvmpage.matrix import dims
from kvmpage.matrix.cover import covering_array, pairs_of, required_pairs, universal
from kvmpage.matrix.dims import make_row
from kvmpage.matrix.document import MergeError, merge, merged_exit_code, to_json
from kvmpage.matrix.expect import ACCESS_KINDS, FETCH_OFFSET, Expectations, entry_config
from kvmpage.matrix.hostfacts import HostFacts
from kvmpage.matrix.report import Disagreement, Totals
from kvmpage.matrix.run import MatrixResult
from kvmpage.matrix.select import Selection, core_count, core_rows, sample_rows
from kvmpage.paging.access import CpuState, evaluate

ROOT = Path(__file__).parent.parent
VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((ROOT / "docs" / "json-schema.json").read_text())
)


def profile(maxphyaddr: int = 48, gb_granted: bool = False, gb_works: bool = False,
            smep: bool = True) -> HostProfile:  # fmt: skip
    def f(ok: bool, why: str) -> FeatureResult:
        return FeatureResult(Support.WORKS if ok else Support.UNSUPPORTED, why)

    cpuid = CpuidSummary(nx=True, smep=smep, smap=True, pdpe1gb=gb_granted, pcid=False,
                         invpcid=False, pku=False, la57=False, maxphyaddr=maxphyaddr,
                         linear_bits=48)  # fmt: skip
    features = {
        "nx": f(True, "nx ok"), "smep": f(smep, "smep evidence"), "smap": f(True, "smap ok"),
        "1gib-pages": f(gb_works, "#PF error=0xd"), "pku": f(False, "CPUID does not grant PKU"),
        "la57": f(False, "CPUID does not grant LA57"),
    }  # fmt: skip
    return HostProfile(HypervisorKind.PVM, cpuid, features, frozenset({256}))


HOST = HostFacts.from_profile(profile())


# -- what a combination means ---------------------------------------------------------------


def test_the_default_row_is_a_plain_walk_to_a_4k_page() -> None:
    row = dims.DEFAULT_ROW
    assert dims.normalize(row) == row and dims.structural_problem(row) is None
    assert dims.stop_level(row) == "pte" and dims.leaf_reached(row)
    cfg = entry_config(row, HOST)
    assert cfg.leaf == 1 and len(cfg.flags) == 4
    assert all(f == dims.P | dims.W | dims.U for f in cfg.flags)


def test_normalize_resets_what_the_walk_never_reads() -> None:
    row = make_row(pde_p="0", pte_w="0", pte_rsvd="b51", leaf_attr="g", table_attr="pcd")
    norm = dims.normalize(row)
    assert dims.value(norm, "pde.p") == "0" and dims.value(norm, "table.attr") == "pcd"
    assert dims.value(norm, "pte.w") == "1" and dims.value(norm, "pte.rsvd") == "none"
    assert dims.value(norm, "leaf.attr") == "none"  # the walk stops above the leaf
    assert dims.normalize(norm) == norm
    # NX with EFER.NXE clear is a reserved bit: the walk stops there too
    nx = dims.normalize(make_row(efer_nxe="0", pdpte_nx="1", pde_w="0"))
    assert dims.stop_level(nx) == "pdpte" and dims.value(nx, "pde.w") == "1"
    # a 2 MiB leaf: the PTE is not read, the leaf attribute stays
    big = dims.normalize(make_row(pde_ps="1", pte_u="0", leaf_attr="pat"))
    assert dims.value(big, "pte.u") == "1" and dims.value(big, "leaf.attr") == "pat"


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"pde_rsvd": "b13"}, "address bits"),
        ({"pdpte_rsvd": "b29"}, "address bits"),
        ({"pde_d": "1"}, "D is a leaf dimension"),
        ({"pte_rsvd": "b51", "pte_nx": "1", "efer_nxe": "0"}, "more than one reserved bit"),
        ({"pde_ps": "1", "pde_rsvd": "b20", "pde_nx": "1", "efer_nxe": "0"}, "more than one"),
    ],
)
def test_structural_rules_refuse_meaningless_combinations(values: dict[str, str], why: str) -> None:
    problem = dims.structural_problem(dims.normalize(make_row(**values)))
    assert problem is not None and why in problem


def test_entry_config_sets_the_bits_each_value_names() -> None:
    big = entry_config(make_row(pde_ps="1", pde_rsvd="b17", pde_d="1", leaf_attr="pat"), HOST)
    assert big.leaf == 2 and len(big.flags) == 3
    assert big.flags[2] == dims.P | dims.W | dims.U | dims.PS | dims.D | 1 << 17 | 1 << 12
    pte = entry_config(make_row(leaf_attr="pat", table_attr="d", pte_rsvd="maxphy"), HOST)
    assert pte.flags[3] == dims.P | dims.W | dims.U | dims.PS | 1 << 48  # PAT is bit 7 here
    assert all(f & dims.D for f in pte.flags[:3])  # bit 6 of every non-leaf entry
    ps4 = entry_config(make_row(pml4e_rsvd="ps", pml4e_nx="1", pml4e_a="1"), HOST)
    assert ps4.flags[0] == dims.P | dims.W | dims.U | dims.PS | dims.A | dims.NX
    stop = entry_config(make_row(pdpte_p="0", pdpte_w="0"), HOST)
    assert stop.leaf == 0 and stop.flags[1] == dims.U  # written up to the non-present entry
    gb = entry_config(make_row(pdpte_ps="1"), HOST)
    assert gb.leaf == 3 and gb.flags[1] & dims.PS


def test_rows_round_trip_through_json_and_text() -> None:
    rng = random.Random(5)
    for row in rng.sample(covering_array(0), 50):
        assert dims.from_dict(dims.as_dict(row)) == row
        assert dims.describe(row).startswith(f"cpl{dims.value(row, 'cpl')} ")
    with pytest.raises(ValueError, match="unknown value"):
        make_row(pte_rsvd="b13")


# -- the covering array and the selections ---------------------------------------------------


def test_covering_array_covers_every_feasible_pair_and_every_value() -> None:
    rows = covering_array(0)
    covered = set()
    for row in rows:
        assert dims.normalize(row) == row and dims.structural_problem(row) is None
        covered.update(pairs_of(row))
    assert required_pairs() <= covered
    values = {(a, va) for a, va, _, _ in covered} | {(b, vb) for _, _, b, vb in covered}
    assert len(values) == sum(len(d.values) for d in dims.DIMENSIONS)
    # infeasible pairs are not required: a PTE bit below a non-present PML4E
    assert (dims.INDEX["pml4e.p"], 0, dims.INDEX["pte.w"], 0) not in required_pairs()


def test_universal_rows_cover_every_pair_they_can() -> None:
    """Rows that mean the same on every host come first and cover every pair such rows can hold,
    so a host without 1 GiB pages or without reserved address bits still gets those pairs."""
    covered = set()
    for row in covering_array(3):
        if universal(row):
            covered.update(pairs_of(row))
    from kvmpage.matrix.cover import _universal_pair

    assert {p for p in required_pairs() if _universal_pair(p)} <= covered


def test_covering_array_is_deterministic_per_seed() -> None:
    assert covering_array(1) == covering_array(1)
    assert covering_array(1) != covering_array(2)


def test_sample_is_deterministic_grouped_by_cpu_state_and_covers_every_value() -> None:
    rows = sample_rows(3000, 9)
    assert rows == sample_rows(3000, 9) and len(rows) == len(set(rows)) == 3000
    assert rows == sorted(rows, key=lambda r: r[: dims.CPU_END])
    assert set(covering_array(9)) <= set(rows)
    assert all(dims.structural_problem(r) is None and dims.normalize(r) == r for r in rows)
    deep = sum(1 for r in rows if dims.stop_level(r) == "pte")
    assert deep > len(rows) // 5  # walk-stopping values are drawn less often


@pytest.mark.parametrize("mode", ["sample", "full"])
def test_shards_and_jobs_partition_the_selection(mode: str) -> None:
    whole = Selection(mode, 4000, seed=4)
    if mode == "full":
        positions = [3, 1000, core_count() - 1, core_count(), core_count() + 5]
        rows = {i: r for i, r in enumerate(whole.rows()) if i in positions}
        for n in (3, 7):
            for i in positions:
                part = Selection(mode, 4000, 4, (i % n + 1, n))
                assert next(itertools.islice(part.rows(), i // n, None)) == rows[i]
        shards = [Selection(mode, seed=4, shard=(k, 5)) for k in range(1, 6)]
        assert sum(s.count() for s in shards) == whole.count()
        return
    everything = list(whole.rows())
    parts = [list(Selection(mode, 4000, 4, (k, 3)).rows((j, 2))) for k in (1, 2, 3) for j in (0, 1)]
    assert sorted(r for p in parts for r in p) == sorted(everything)
    assert [len(p) for p in parts] == [
        Selection(mode, 4000, 4, (k, 3)).count((j, 2)) for k in (1, 2, 3) for j in (0, 1)
    ]


def test_full_core_product_counts_what_it_leaves_out() -> None:
    filtered: Counter[str] = Counter()
    rows = core_rows(filtered)
    first = next(rows)
    assert first[: dims.CPU_END] == (0, 0, 0, 0, 0)
    assert core_count() == 2_042_880
    assert filtered["more than one reserved bit at a time"] > 0
    assert any(k.startswith("not walked") for k in filtered)
    assert any("without pde.ps" in k for k in filtered)


def test_selection_rejects_bad_shards_and_sizes() -> None:
    with pytest.raises(ValueError, match="shard"):
        Selection("sample", 10, 0, (3, 2))
    with pytest.raises(ValueError, match="mode"):
        Selection("everything")
    with pytest.raises(ValueError, match="at least 1"):
        Selection("sample", 0)


# -- the model's answers, cached by flags, are the model's answers -------------------------


def test_cached_expectations_match_the_model_on_the_real_entries() -> None:
    """The cache asks the model with flags only and a small address; the model's answer for the
    real entries (with table and frame addresses) at the real address is the same."""
    exp = Expectations(HOST)
    for key, row in enumerate(sample_rows(1500, 2)):
        cfg = entry_config(row, HOST, key)
        cpu = row[: dims.CPU_END]
        cpl = 3 if row[dims.C_CPL] else 0
        access = row[dims.C_ACCESS]
        exp.switch(cpu)
        got = exp.get(cpl, access, cfg)
        assert exp.get(cpl, access, cfg) is got
        addrs = (0x5000, 0x6000, 0x40_0000 if cfg.leaf == 2 else 0x7000, 0x9000)
        entries = [f | a for f, a in zip(cfg.flags, addrs, strict=False)]
        va = 0xFFFF_8812_3456_7000 + (FETCH_OFFSET if access == 2 else 0)
        wp, nxe, smep, smap, ac = (bool(v) for v in cpu)
        want = evaluate(entries, va, access=ACCESS_KINDS[access], cpl=cpl,
                        cpu=CpuState(wp=wp, smep=smep, smap=smap, nxe=nxe, ac=ac),
                        features=HOST.features)  # fmt: skip
        assert got.vector == (want.fault.vector if want.fault else 0)
        assert got.error == (want.fault.error_code if want.fault else 0)
        assert got.span == (want.page_size or 0)
        assert got.a_must == sum(1 << lv for lv in want.a_must)
        assert got.a_may == sum(1 << lv for lv in want.a_may)
        assert got.d_must == sum(1 << lv for lv in want.d_must)
    assert exp.calls == 1500  # the second ask came from the cache


# -- what a host can run -------------------------------------------------------------------------


def test_host_facts_filter_what_the_host_cannot_run() -> None:
    gb = make_row(pdpte_ps="1")
    gb_rsvd = make_row(pdpte_ps="1", pdpte_rsvd="b51")
    assert HOST.problem(gb) is None  # PS in a PDPTE is a reserved bit here: checked
    assert "more than one reserved bit" in (HOST.problem(gb_rsvd) or "")
    assert "1gib-pages" in HOST.unavailable and "pku" in HOST.unavailable
    broken = HostFacts.from_profile(profile(gb_granted=True, gb_works=False))
    assert broken.problem(gb) == "unavailable: 1gib-pages"
    good = HostFacts.from_profile(profile(gb_granted=True, gb_works=True))
    assert good.problem(gb) is None and good.problem(gb_rsvd) is None
    assert "1gib-pages" not in good.unavailable
    wide = HostFacts.from_profile(profile(maxphyaddr=52))
    assert "MAXPHYADDR is 52" in (wide.problem(make_row(pte_rsvd="b51")) or "")
    assert "reserved-address-bits" in wide.unavailable
    no_smep = HostFacts.from_profile(profile(smep=False))
    assert no_smep.problem(make_row(cr4_smep="1")) == "unavailable: smep"
    assert no_smep.unavailable["smep"] == "smep evidence"
    assert HOST.rsvd_bit("maxphy") == 1 << 48 and HOST.rsvd_bit("b20") == 1 << 20


# -- the report and the merge ----------------------------------------------------------------------


def _result(shard: tuple[int, int], rows: list[dims.Row], wrong: int = 0) -> MatrixResult:
    totals = Totals(checked=len(rows), probes=len(rows), runs=1)
    totals.oracles["mmu"] = len(rows)
    totals.skipped["unavailable: smep"] = 2
    for row in rows:
        totals.heads.add(row[: dims.ENTRY_START])
        totals.walks.add((row[dims.C_NXE], row[dims.ENTRY_START :]))
    for row in rows[:wrong]:
        d = Disagreement(row, "outcome", "ok", "#PF(0x5)", "mmu", 0x1000, "detail", "allowed",
                         [("pml4e", 0x1000, 0x27, 0x27)])  # fmt: skip
        totals.add(d, 1000)
    return MatrixResult(Selection("sample", 100, 1, shard), HOST, totals, 1.5)


def test_report_json_matches_the_schema_and_names_what_is_missing() -> None:
    rows = covering_array(0)[:40]
    doc = {"schema_version": SCHEMA_VERSION, **to_json(_result((1, 1), list(rows), wrong=3), 1)}
    VALIDATOR.validate(doc)
    assert doc["disagreement_count"] == 3 and doc["summary"][0]["count"] == 3
    assert doc["disagreements"][0]["combination"]["cpl"] in ("0", "3")
    missing = doc["dimensions"]["pdpte.rsvd"]["missing"]
    assert missing and all("1gib-pages" in why or "not in" in why for why in missing.values())
    assert doc["unavailable"]["1gib-pages"].startswith("#PF error=0xd")


def test_merge_adds_shards_up_and_refuses_mixed_selections() -> None:
    rows = list(covering_array(0)[:60])
    a = {"schema_version": SCHEMA_VERSION, **to_json(_result((1, 2), rows[:30], wrong=1), 1)}
    b = {"schema_version": SCHEMA_VERSION, **to_json(_result((2, 2), rows[30:]), 0)}
    doc = merge([("a.json", a), ("b.json", b)], 1000)
    assert doc["combinations"] == 60 and doc["disagreement_count"] == 1
    assert doc["skipped"] == {"unavailable: smep": 4} and doc["shards"]["missing"] == []
    assert merged_exit_code(doc, [a, b]) == 1
    VALIDATOR.validate({"schema_version": SCHEMA_VERSION, "exit_code": 1, **doc})
    alone = merge([("a.json", a)], 1000)
    assert alone["shards"]["missing"] == [2] and merged_exit_code(alone, [a]) == 2
    with pytest.raises(MergeError, match="both shard 1"):
        merge([("a.json", a), ("c.json", a)], 1000)
    other = json.loads(json.dumps(b))
    other["selection"]["seed"] = 7
    with pytest.raises(MergeError, match="different selection"):
        merge([("a.json", a), ("o.json", other)], 1000)
    with pytest.raises(MergeError, match="not a kvmpage matrix report"):
        merge([("x.json", {"command": "verify"})], 1000)


def test_cli_merge_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(covering_array(0)[:20])
    paths = []
    for k, part in ((1, rows[:10]), (2, rows[10:])):
        p = tmp_path / f"part{k}.json"
        p.write_text(
            json.dumps({"schema_version": SCHEMA_VERSION, **to_json(_result((k, 2), part), 0)})
        )
        paths.append(str(p))
    assert main(["matrix", "--merge", *paths]) == 0
    out = capsys.readouterr().out
    assert "merged 2 report(s) of shards 1, 2 of 2" in out and "0 disagreements" in out
    assert main(["matrix", "--merge", paths[0], "--json"]) == 2
    captured = capsys.readouterr()
    doc: dict[str, Any] = json.loads(captured.out)
    VALIDATOR.validate(doc)
    assert doc["error"] == "shard(s) 2 of 2 missing" and "missing" in captured.err
    assert main(["matrix", "--merge", str(tmp_path / "nope.json"), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    assert "cannot read" in doc["error"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard", "3/2"], "K must be between 1 and N"),
        (["--shard", "x"], "expected K/N"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--sample", "0"], "--sample must be at least 1"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["matrix", *argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err
    doc = json.loads(captured.out)
    VALIDATOR.validate(doc)
    assert message in doc["error"]


def test_disagreement_text_shows_the_walk() -> None:
    row = make_row(cpl="3", access="write", pte_w="0")
    d = Disagreement(row, "outcome", "#PF(0x7)", "ok", "mmu", 0x1008, "expected #PF(0x7), got ok",
                     "write to a read-only page", [("pte", 0x9000, 0x5005, 0x5065)])  # fmt: skip
    text = d.format()
    assert "outcome: expected #PF(0x7), got ok [mmu] at 0x1008" in text
    assert "cpl3 write" in text and "0x0000000000005005 -> 0x0000000000005065" in text
    assert dataclasses.asdict(d)["field"] == "outcome"


def test_long_runs_use_a_job_per_cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmpage.cli import matrix_cmd

    assert matrix_cmd.default_jobs(Selection("sample", 20000)) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert matrix_cmd.default_jobs(Selection("full")) == 2
    assert matrix_cmd.default_jobs(Selection("full", shard=(1, 100))) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert matrix_cmd.default_jobs(Selection("sample", 500_000)) == 4
