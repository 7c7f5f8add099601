"""Bounds before work: a layout that cannot be built fails when it is read, whatever its size.

``page_size = "largest"`` is split arithmetically (a TiB of 4 KiB pages used to be split a page
at a time, and never returned); the page count, the memory the host can give (a 28 GiB layout
used to fail late with a bare ENOMEM) and the room for ``phys = "allocate"`` are checked first;
the overlap check sorts and sweeps (it compared every pair: 85 s for 60,000 mappings; the
timing is measured by ``scripts/bench_layout.py``, not here)."""

from __future__ import annotations

import itertools
import random
import re
import resource
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpage.cli.placement import place
from kvmpage.kvm import limits
from kvmpage.kvm.limits import MemoryLimit, guest_memory_limit
from kvmpage.layout.spec import MAX_PAGES, LayoutError, LayoutSpec, MappingSpec, check
from kvmpage.layout.toml_file import _largest, parse_layout
from kvmpage.paging import PageSize, Size1GiB, Size2MiB, Size4KiB
from kvmpage.paging import PageTableFlags as F

P = F.PRESENT
SIZES: list[type[PageSize]] = [Size4KiB, Size2MiB, Size1GiB]


def _page_by_page(
    virt: int, phys: int | None, length: int, cap: type[PageSize]
) -> list[tuple[int, type[PageSize], int]]:
    """The rule, applied a page at a time: the largest aligned size that fits, merged."""
    out: list[tuple[int, type[PageSize], int]] = []
    offset = 0
    while offset < length:
        for s in (Size1GiB, Size2MiB, Size4KiB):
            if s.SIZE > cap.SIZE:
                continue
            at, left = virt + offset, length - offset
            both = at % s.SIZE == 0 and (phys is None or (phys + offset) % s.SIZE == 0)
            if both and left >= s.SIZE:
                if out and out[-1][1] is s:
                    out[-1] = (out[-1][0], s, out[-1][2] + 1)
                else:
                    out.append((offset, s, 1))
                offset += s.SIZE
                break
    return out


def _address(units: tuple[int, int, int]) -> int:
    """GiBs, 2 MiBs and 4 KiBs: addresses near every alignment the sizes care about."""
    return (units[0] << 30) + (units[1] << 21) + (units[2] << 12)


_UNITS = st.tuples(st.integers(0, 3), st.integers(0, 520), st.integers(0, 520))


@settings(max_examples=300, deadline=None)
@given(
    virt=_UNITS,
    phys=st.one_of(st.none(), _UNITS),
    length=_UNITS,
    cap=st.sampled_from(SIZES),
)
def test_largest_is_the_page_by_page_rule(
    virt: tuple[int, int, int],
    phys: tuple[int, int, int] | None,
    length: tuple[int, int, int],
    cap: type[PageSize],
) -> None:
    start = _address(virt)
    at = None if phys is None else _address(phys)
    only_4k = cap is Size4KiB or (at is not None and (start - at) % (2 << 20))
    if only_4k:  # keep the page-by-page reference short: at most a few thousand pages
        length = (0, length[1] % 5, length[2])
    size = _address(length) + 4096
    pieces = _largest("m", "o", start, at, size, P, cap)
    assert [(m.virt - start, m.size, m.count) for m in pieces] == _page_by_page(
        start, at, size, cap
    )
    assert len(pieces) <= 5  # up in size, then down: a handful of runs, never one per page
    for m in pieces:
        assert m.phys == (None if at is None else at + (m.virt - start))


def test_largest_over_a_tebibyte_of_small_pages_is_split_at_once() -> None:
    (only,) = _largest("m", "o", 1 << 40, None, 1 << 40, P, Size4KiB)
    assert (only.size, only.count) == (Size4KiB, 1 << 28)
    with pytest.raises(LayoutError, match=f"268435456 pages; kvmpage builds at most {MAX_PAGES}"):
        parse_layout(
            'max_page_size = "4K"\n[[mapping]]\nvirt = 0x100_0000_0000\npage_size = "largest"\n'
            'length = "1T"\n',
            "big.toml",
        )


def test_huge_counts_fail_before_anything_is_built() -> None:
    text = "[[mapping]]\nvirt = 0x1000\ncount = 1_000_000_000_000\n"
    with pytest.raises(LayoutError, match=r"^big\.toml: key 'mapping': the layout maps 10+ pages"):
        parse_layout(text, "big.toml")
    spec = LayoutSpec("py", (MappingSpec("m", 0x1000, Size4KiB, MAX_PAGES + 1, P),))
    with pytest.raises(LayoutError, match="at most"):  # a layout built from Python too
        check(spec)


def test_allocated_mappings_must_fit_below_the_agent() -> None:
    text = 'memory = "64M"\n[[mapping]]\nvirt = 0x4000_0000\npage_size = "2M"\nlength = "1G"\n'
    with pytest.raises(LayoutError) as info:
        place(parse_layout(text, "room.toml"))
    message = str(info.value)
    assert message.startswith("room.toml: key 'memory': ") and "allocate" in message


# -- memory against the host ---------------------------------------------------------------


def test_memory_beyond_the_agent_names_the_file_the_key_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "guest_memory_limit", lambda: MemoryLimit(1 << 50, "plenty"))
    place(parse_layout('memory = "27G"\n[[mapping]]\nvirt = 0x1000\n', "m.toml"))
    with pytest.raises(LayoutError) as info:
        place(parse_layout('memory = "28G"\n[[mapping]]\nvirt = 0x1000\n', "m.toml"))
    message = str(info.value)
    assert message.startswith("m.toml: key 'memory': 28G is more than this host can give")
    assert "at most 27G" in message and "guest agent" in message


def test_memory_beyond_the_host_names_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "guest_memory_limit", lambda: MemoryLimit(6 << 30, "the test's"))
    with pytest.raises(LayoutError) as info:
        place(parse_layout('memory = "8G"\n[[mapping]]\nvirt = 0x1000\n', "m.toml"))
    assert str(info.value) == (
        "m.toml: key 'memory': 8G is more than this host can give a guest: at most 6G, the "
        "limit of the test's"
    )


def test_memory_beyond_this_hosts_ram_and_swap_is_refused() -> None:
    info = limits._meminfo()
    ram = info["MemTotal"] + info.get("SwapTotal", 0)
    too_much = (ram >> 21) + 1 << 21  # the first 2 MiB multiple above RAM + swap
    if too_much > 27 << 30:
        pytest.skip("this host has more RAM and swap than the agent can address")
    with pytest.raises(LayoutError, match="RAM and swap"):
        place(parse_layout(f"memory = {too_much}\n[[mapping]]\nvirt = 0x1000\n", "m.toml"))


def test_guest_memory_limit_reads_each_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    gib = 1 << 30
    info = {"MemTotal": 16 * gib, "SwapTotal": 2 * gib, "CommitLimit": 10 * gib,
            "Committed_AS": 3 * gib}  # fmt: skip
    unlimited = (resource.RLIM_INFINITY,) * 2
    monkeypatch.setattr(limits, "_meminfo", lambda: info)
    monkeypatch.setattr(limits, "_overcommit_mode", lambda: 0)
    monkeypatch.setattr(resource, "getrlimit", lambda _: unlimited)
    assert guest_memory_limit().size == 18 * gib
    monkeypatch.setattr(limits, "_overcommit_mode", lambda: 2)
    strict = guest_memory_limit()
    assert strict.size == 7 * gib and "overcommit_memory = 2" in strict.why
    monkeypatch.setattr(resource, "getrlimit", lambda _: (5 * gib, 5 * gib))
    monkeypatch.setattr(limits, "_mapped_now", lambda: gib)
    capped = guest_memory_limit()
    assert capped.size == 4 * gib and "RLIMIT_AS" in capped.why
    monkeypatch.setattr(limits, "_meminfo", dict)
    monkeypatch.setattr(resource, "getrlimit", lambda _: unlimited)
    assert "KVM_MEM_MAX_NR_PAGES" in guest_memory_limit().why  # nothing else known


# -- overlaps ------------------------------------------------------------------------------


def _spec(ranges: list[tuple[int, int]]) -> LayoutSpec:
    return LayoutSpec(
        "t",
        tuple(MappingSpec(f"m{i}", v << 12, Size4KiB, n, P) for i, (v, n) in enumerate(ranges)),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 8)), min_size=1, max_size=40))
def test_overlap_check_finds_an_overlap_exactly_when_there_is_one(
    ranges: list[tuple[int, int]],
) -> None:
    clash = any(
        a[0] < b[0] + b[1] and b[0] < a[0] + a[1] for a, b in itertools.combinations(ranges, 2)
    )
    spec = _spec(ranges)
    if not clash:
        check(spec)
        return
    with pytest.raises(LayoutError, match="overlaps mapping") as info:
        check(spec)
    # the two mappings named really overlap, and the later one is the one blamed
    found = re.match(r"mapping '(m\d+)': .* overlaps mapping '(m\d+)'", str(info.value))
    assert found is not None, str(info.value)
    blamed, other = (spec.mappings[int(name[1:])] for name in found.groups())
    assert spec.mappings.index(blamed) > spec.mappings.index(other)
    assert blamed.virt < other.virt + other.length and other.virt < blamed.virt + blamed.length


def test_sixty_thousand_mappings_are_checked(tmp_path: Path) -> None:
    """The size the issue measured: checked once and correctly (the time is bench_layout's)."""
    order = list(range(60_000))
    random.Random(1).shuffle(order)
    spec = _spec([(2 * i, 1) for i in order])
    check(spec)
    clash = _spec([(2 * i, 1) for i in order] + [(2 * 30_000, 2)])
    with pytest.raises(LayoutError, match="overlaps mapping 'm"):
        check(clash)
