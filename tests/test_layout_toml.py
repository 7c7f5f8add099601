"""Layout files: the examples load, and every malformed file gets a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpage.cli.placement import agent_reserved, place
from kvmpage.layout.spec import LayoutError, build
from kvmpage.layout.toml_file import load_layout, parse_layout
from kvmpage.paging import PageTableFlags as F
from kvmpage.paging import Size2MiB, Size4KiB

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_builds(path: Path) -> None:
    spec = load_layout(path)
    assert spec.source == str(path) and spec.mappings
    built = build(spec, alloc_end=agent_reserved(spec.memory_size)[0])
    built.close()


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"kernel.toml", "recursive.toml", "wx-alias.toml"}


def test_defaults_and_values() -> None:
    spec = parse_layout(
        """
        memory = "16M"
        [mapper]
        kind = "recursive"
        recursive_index = 300
        [cpu]
        wp = false
        smap = true
        [[mapping]]
        virt = 0x400000
        [[mapping]]
        name = "data"
        virt = "0xffff_9000_0000_0000"
        phys = 0x200000
        page_size = "2MiB"
        length = "4M"
        flags = ["w", "NX", "GLOBAL"]
        """,
        "t.toml",
    )
    assert spec.memory_size == 16 << 20 and spec.kind == "recursive"
    assert spec.recursive_index == 300 and spec.reserved_p4 == frozenset({511})
    assert not spec.cpu.wp and spec.cpu.smap and not spec.cpu.smep and spec.cpu.nxe
    first, data = spec.mappings
    assert (first.name, first.size, first.count, first.phys) == ("mapping-1", Size4KiB, 1, None)
    assert first.flags == F.PRESENT
    assert data.virt == 0xFFFF_9000_0000_0000 and data.phys == 0x200000
    assert (data.size, data.count) == (Size2MiB, 2)
    assert data.flags == F.PRESENT | F.WRITABLE | F.NO_EXECUTE | F.GLOBAL
    assert data.where("phys") == "t.toml: [[mapping]] #2 (data), key 'phys'"


def test_largest_cuts_by_alignment_and_length() -> None:
    spec = parse_layout(
        """
        [[mapping]]
        name = "heap"
        virt = 0x1ff000
        length = 0x402000
        page_size = "largest"
        """
    )
    pieces = [(m.name, m.virt, m.size.SIZE, m.count) for m in spec.mappings]
    assert pieces == [
        ("heap[0]", 0x1FF000, 4096, 1),
        ("heap[1]", 0x200000, 2 << 20, 2),
        ("heap[2]", 0x600000, 4096, 1),
    ]


def test_largest_respects_physical_alignment_and_the_cap() -> None:
    spec = parse_layout(
        """
        max_page_size = "2M"
        memory = "64M"
        [[mapping]]
        virt = 0x200000
        phys = 0x201000
        length = "4M"
        page_size = "largest"
        """
    )
    assert {m.size for m in spec.mappings} == {Size4KiB}  # phys is not 2M-aligned
    capped = parse_layout(
        """
        max_page_size = "2M"
        [[mapping]]
        virt = 0x4000_0000
        length = "2M"
        page_size = "largest"
        """
    )
    assert [m.size for m in capped.mappings] == [Size2MiB]


M = '[[mapping]]\nname = "m"\n'

BAD = [
    # (file text, expected fragments of the message)
    ("memory = ", ["not valid TOML"]),
    ('name = "a"\nmemory = = 3', ["not valid TOML", "line 2"]),
    ("colour = 1", ["key 'colour'", "unknown key", "expected one of"]),
    (M + "virt = 0x1000\nflag = []", ["[[mapping]] #1 (m)", "key 'flag'", "unknown key"]),
    (
        M + 'virt = 0x1000\nflags = ["WRITEABLE"]',
        ["key 'flags'", "unknown flag 'WRITEABLE'", "did you mean 'WRITABLE'"],
    ),
    (M + 'virt = 0x1000\nflags = ["HUGE_PAGE"]', ["key 'flags'", "set by page_size"]),
    (M + "virt = 0x1000\nflags = 3", ["key 'flags'", "list of flag names"]),
    (M + 'virt = "x"', ["key 'virt'", "expected a non-negative integer"]),
    (M + "flags = []", ["key 'virt'", "missing"]),
    (M + 'virt = 0x201000\npage_size = "2M"', ["key 'virt'", "not aligned to 2MiB"]),
    (M + "virt = 0x1000\nphys = 0x1800", ["key 'phys'", "not aligned to 4KiB"]),
    (M + "virt = 0x8000_0000_0000", ["key 'virt'", "0x800000000000 is not canonical"]),
    (M + "virt = 0x1000\ncount = 2\nlength = 8192", ["key 'length'", "not both"]),
    (M + "virt = 0x1000\ncount = 0", ["key 'count'", "at least 1"]),
    (M + 'virt = 0x1000\nlength = "6K"', ["key 'length'", "multiple of the page size"]),
    (M + 'virt = 0x1000\npage_size = "3M"', ["key 'page_size'", '"4K", "2M", "1G"']),
    (M + 'virt = 0x1000\npage_size = "largest"\ncount = 2', ["key 'count'", "needs a length"]),
    (
        M + "virt = 0x400000\ncount = 4\n" + '[[mapping]]\nname = "n"\nvirt = 0x401000\n',
        ["[[mapping]] #2 (n)", "key 'virt'", "overlaps mapping 'm'", "0x400000..0x403fff"],
    ),
    (M + "virt = 0x1000\nphys = 0x4000000", ["key 'phys'", "outside guest memory"]),
    (M + "virt = 0x1000\nphys = 0x3c00000", ["key 'phys'", "agent's reserved memory"]),
    (
        "agent_slot = 511\n" + M + "virt = 0xffff_ff80_0000_0000",
        ["key 'virt'", "level-4 slot 511", "guest agent"],
    ),
    ('memory = "5M"', ["key 'memory'", "multiple of 2M"]),
    ('[mapper]\nkind = "ofset"', ["[mapper]", "key 'kind'", "offset, mapped, recursive"]),
    ('[mapper]\nkind = "recursive"', ["key 'recursive_index'", "missing"]),
    ("agent_slot = 511\n[mapper]\nrecursive_index = 511", ["key 'recursive_index'", "guest agent"]),
    ("[mapper]\nphys_offset = 0x8000_0000_0000", ["key 'phys_offset'", "canonical"]),
    ('[cpu]\nsmep = "yes"', ["[cpu]", "key 'smep'", "true or false"]),
    ("mapping = 3", ["key 'mapping'", "[[mapping]]"]),
    ('name = "empty"', ["key 'mapping'", "at least one mapping"]),
    (M + 'virt = "-0x1000"', ["key 'virt'", "non-negative integer"]),
    (M + 'virt = 0x1000\nlength = "16G"', ["key 'mapping'", "at most 2097152"]),
    (
        "[mapper]\nrecursive_index = 5\n" + M + "virt = 0x0000_0280_0000_0000",
        ["key 'virt'", "recursive slot 5"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_layouts_name_file_key_and_expectation(text: str, fragments: list[str]) -> None:
    """Read, then placed in a guest as the commands do (`place`: the agent's memory)."""
    with pytest.raises(LayoutError) as info:
        place(parse_layout(text, "bad.toml"))
    message = str(info.value)
    assert message.startswith("bad.toml: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"missing\.toml: cannot read the layout file"):
        load_layout(tmp_path / "missing.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(LayoutError, match="not UTF-8"):
        load_layout(binary)


def test_agent_slot_can_move() -> None:
    spec = parse_layout("agent_slot = 300\n" + M + "virt = 0xffff_ff80_0000_0000")
    assert spec.reserved_p4 == frozenset({300})
    with pytest.raises(LayoutError, match="slot 300"):
        parse_layout("agent_slot = 300\n" + M + "virt = 0xffff_9600_0000_0000")


def test_the_agent_moves_out_of_a_higher_half_kernels_way() -> None:
    """A layout that names no agent slot gets one it leaves free: 511 holds a -2 GiB kernel."""
    kernel = M + "virt = 0xffff_ffff_8000_0000\n"
    spec = parse_layout(kernel)
    assert spec.reserved_p4 == {510} and spec.agent_slot_chosen
    spec = parse_layout("[mapper]\nrecursive_index = 510\n" + kernel)
    assert spec.reserved_p4 == {509}
    named = parse_layout("agent_slot = 3\n" + M + "virt = 0x1000")
    assert named.reserved_p4 == {3} and not named.agent_slot_chosen


def test_a_layout_that_uses_every_slot_gets_a_clear_error() -> None:
    lower = M + 'virt = 0x0\npage_size = "1G"\nlength = "128T"\n'
    upper = '[[mapping]]\nname = "u"\nvirt = 0xffff_8000_0000_0000\npage_size = "1G"\n'
    with pytest.raises(LayoutError, match="every level-4 slot is used"):
        parse_layout('memory = "4M"\n' + lower + upper + 'length = "128T"\n')
