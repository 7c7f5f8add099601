"""The W+X audit (also across aliases) and the layout diff, on hand-made runs and real layouts."""

from __future__ import annotations

from kvmpage.layout.audit import audit
from kvmpage.layout.diff import diff, format_diff
from kvmpage.layout.dump import Run, coalesce, human_size
from kvmpage.layout.spec import build
from kvmpage.layout.toml_file import parse_layout
from kvmpage.paging.leaves import scan
from kvmpage.paging.walk import Rights

RX = Rights(writable=False, user=False, executable=True)
RW = Rights(writable=True, user=False, executable=False)
RWX = Rights(writable=True, user=False, executable=True)
R = Rights(writable=False, user=False, executable=False)


def run(virt: int, phys: int, count: int, rights: Rights, flags: int = 1) -> Run:
    return Run(virt, phys, 4096, 1, count, flags, rights)


def test_w_plus_x_through_one_address() -> None:
    findings = audit([run(0x1000, 0x5000, 2, RWX)])
    assert [(f.kind, f.virt, f.phys, f.phys_end) for f in findings] == [
        ("w+x", 0x1000, 0x5000, 0x7000)
    ]


def test_w_plus_x_across_aliases_reports_the_shared_frames_only() -> None:
    code = run(0xFFFF_C000_0000_0000, 0x10000, 4, RX)  # 0x10000..0x13fff
    alias = run(0xFFFF_D000_0000_0000, 0x12000, 4, RW)  # 0x12000..0x15fff
    (f,) = audit([code, alias])
    assert f.kind == "w+x-alias"
    assert (f.phys, f.phys_end) == (0x12000, 0x14000)
    assert f.virt == 0xFFFF_D000_0000_0000 and f.other_virt == 0xFFFF_C000_0000_2000
    assert "writable through 0xffffd00000000000-0xffffd00000001fff" in f.message
    assert "executable through 0xffffc00000002000-0xffffc00000003fff" in f.message


def test_no_finding_for_separate_frames_or_read_only_aliases() -> None:
    assert audit([run(0x1000, 0x5000, 1, RX), run(0x2000, 0x6000, 1, RW)]) == []
    assert audit([run(0x1000, 0x5000, 1, RX), run(0x2000, 0x5000, 1, R)]) == []


def test_alias_search_sees_a_long_target_starting_far_before() -> None:
    window = Run(0xFFFF_8880_0000_0000, 0, 2 << 20, 2, 8, 0x83, RW)  # 16M writable window
    code = run(0x40_0000, 0xF0_0000, 1, RX)
    (f,) = audit([code, window])
    assert f.phys == 0xF0_0000 and f.virt == 0xFFFF_8880_00F0_0000


URW = Rights(writable=True, user=True, executable=False)
UR = Rights(writable=False, user=True, executable=False)


def test_user_access_in_the_kernel_half_is_a_finding_and_the_user_half_is_not() -> None:
    kernel = 0xFFFF_8000_0000_0000
    findings = audit([run(0x40_0000, 0x1000, 1, UR), run(kernel, 0x2000, 3, UR)])
    assert [(f.kind, f.virt, f.phys, f.phys_end) for f in findings] == [
        ("user-kernel-half", kernel, 0x2000, 0x5000)
    ]
    assert audit([run(kernel, 0x2000, 3, R)]) == []  # supervisor-only there: fine


def test_a_page_table_page_writable_by_user_mode_or_the_kernel() -> None:
    tables = [0x9000, 0xB000]
    # a user-writable window over one table page; a kernel-writable one over both
    user = run(0x40_0000, 0x8000, 2, URW)
    kernel = run(0xFFFF_8880_0000_8000, 0x8000, 4, RW)
    found = {(f.kind, f.virt, f.phys, f.phys_end) for f in audit([user, kernel], tables=tables)}
    assert found == {  # at the virtual address of the first table page each run covers
        ("table-user-writable", 0x40_1000, 0x9000, 0xA000),
        ("table-writable", 0xFFFF_8880_0000_9000, 0x9000, 0xC000),
    }
    # read-only over the tables, or writable beside them: nothing
    assert audit([run(0x40_0000, 0x9000, 1, UR)], tables=tables) == []
    assert audit([run(0x40_0000, 0xA000, 1, URW)], tables=tables) == []
    # without the table list the audit cannot know, and says nothing of tables
    assert all(not f.kind.startswith("table") for f in audit([user, kernel]))


def test_a_user_frame_the_kernel_executes_through_another_address() -> None:
    user = run(0x40_0000, 0x7000, 2, URW)
    kernel_code = run(0xFFFF_FFFF_8000_0000, 0x8000, 1, RX)
    kinds = [f.kind for f in audit([user, kernel_code])]
    assert "user-exec-alias" in kinds
    (alias,) = [f for f in audit([user, kernel_code]) if f.kind == "user-exec-alias"]
    assert (alias.phys, alias.phys_end, alias.other_virt) == (0x8000, 0x9000, kernel_code.virt)
    # the same frame executable only by a user-half address is not this finding
    assert "user-exec-alias" not in [f.kind for f in audit([user, run(0x50_0000, 0x8000, 1, RX)])]


def _runs(text: str) -> list[Run]:
    built = build(parse_layout(text))
    try:
        return list(coalesce(scan(built.memory, built.p4_phys)))
    finally:
        built.close()


BASE = """
[[mapping]]
name = "a"
virt = 0x400000
phys = 0x800000
count = 4
flags = ["U"]
[[mapping]]
name = "b"
virt = 0x600000
phys = 0x900000
count = 2
flags = ["W", "NX"]
"""


def test_diff_of_identical_layouts_is_empty() -> None:
    assert diff(_runs(BASE), _runs(BASE)) == []
    assert format_diff([], "a", "b")[-1] == "  (no differences)"


def test_diff_added_removed_and_changed() -> None:
    other = BASE.replace('count = 4\nflags = ["U"]', 'count = 2\nflags = ["U", "W"]')
    other += '[[mapping]]\nname = "c"\nvirt = 0x700000\nphys = 0xa00000\n'
    changes = diff(_runs(BASE), _runs(other))
    summary = [(c.kind, c.virt, c.virt_end, c.fields) for c in changes]
    assert summary == [
        ("changed", 0x400000, 0x402000, ("flags", "rights")),
        ("removed", 0x402000, 0x404000, ()),
        ("added", 0x700000, 0x701000, ()),
    ]
    text = "\n".join(format_diff(changes, "old", "new"))
    assert "~ 0x0000000000400000-0x0000000000401fff     8K  flags, rights:" in text
    assert "- 0x0000000000402000" in text and "+ 0x0000000000700000" in text


def test_diff_sees_a_remap_and_a_page_size_change() -> None:
    moved = BASE.replace("phys = 0x900000", "phys = 0xb00000")
    (c,) = diff(_runs(BASE), _runs(moved))
    assert c.kind == "changed" and c.fields == ("phys",) and c.virt == 0x600000
    huge = BASE.replace('count = 2\nflags = ["W", "NX"]', 'page_size = "2M"\nflags = ["W", "NX"]')
    huge = huge.replace("phys = 0x900000", "phys = 0xa00000")
    kinds = {(c.kind, c.fields) for c in diff(_runs(BASE), _runs(huge))}
    assert ("changed", ("phys", "level")) in kinds  # PS is the level, not a flag change
    assert ("added", ()) in kinds


def test_human_size_is_exact() -> None:
    assert [human_size(n) for n in (4096, 2 << 20, 2032 << 10, 1 << 30, 100)] == [
        "4K", "2M", "2032K", "1G", "100B",
    ]  # fmt: skip
