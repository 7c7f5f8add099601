"""A differential campaign: random layouts and operation sequences, every step verified on KVM.

Each case picks a mapper kind and a random sequence of operations (``map_to`` of every page size
the host can verify, with random flags; ``unmap``; ``update_flags``; ``set_flags_p4/p3/p2_entry``;
``clean_up``). The sequence runs on a fresh machine, each operation followed by the flush its
token asks for and by a full verification. A case that disagrees is shrunk (operations are
removed while the disagreement stays) and saved as a layout file plus the operation list, so
that it can be replayed and read. The seed of every case is printed.

With ``levels=5`` the cases are 5-level ones (CR4.LA57, rule L5-15): 57-bit addresses in a few
level-5 slots, ``set_flags_p5_entry`` among the operations, and each case runs on a TCG machine
booted with LA57 (`kvmpage.tcg.TcgMachine`; no KVM host here has LA57), so every step is checked
by QEMU's MMU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from kvmpage.addr import PhysAddr, canonicalize
from kvmpage.machine import Machine
from kvmpage.paging import (
    PageTableFlags,
    PagingError,
    PhysFrame,
    PoolFrameAllocator,
    Size1GiB,
    Size2MiB,
    Size4KiB,
    TableMapper,
)
from kvmpage.paging.access import CpuState
from kvmpage.paging.leaves import scan
from kvmpage.paging.mapper import (
    MappedPageTable,
    OffsetPageTable,
    RecursivePageTable,
    recursive_table_address,
)
from kvmpage.paging.mapper.depth import depth_arg
from kvmpage.paging.page57 import PAGE_TYPES
from kvmpage.paging.table import PageTable
from kvmpage.verify import PlanOptions, Predictor, Verifier
from kvmpage.verify.report import Report

if TYPE_CHECKING:
    from kvmpage.tcg import TcgMachine

F = PageTableFlags
MEMORY = 32 << 20
RECURSIVE_INDEX = 300
PHYS_OFFSET = 0xFFFF_8880_0000_0000
#: the physical-memory offset of 5-level cases: Linux's 5-level direct map
PHYS_OFFSET_57 = 0xFF11_0000_0000_0000
SIZES: dict[str, Any] = {"4K": Size4KiB, "2M": Size2MiB, "1G": Size1GiB}
# a small universe of level-5 / level-4 / level-3 / level-2 slots, so that mappings share tables
# (level-5 slot 511 is the guest agent's, 300 the recursive one)
P5_SLOTS = (0, 1, 255, 256, 400)
P4_SLOTS = (0, 1, 256, 400)
P3_SLOTS = (0, 1, 3)
P2_SLOTS = (0, 1, 2)
P1_SLOTS = (0, 1, 2, 511)
LEAF_FLAGS = (F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE, F.GLOBAL, F.WRITE_THROUGH, F.NO_CACHE,
              F.ACCESSED, F.DIRTY, F.BIT_9)  # fmt: skip
PARENT_FLAGS = (F.WRITABLE, F.USER_ACCESSIBLE, F.NO_EXECUTE)
#: pages per map_range: beyond the campaign's full_limit, so the verifier's bulk path runs
RANGE_COUNTS = {"4K": (70, 300, 600, 1100), "2M": (2, 3), "1G": (2,)}


@dataclass(frozen=True)
class Op:
    """One operation of a case."""

    kind: str  #: map, map_range, unmap, update, set_p5 (5 levels), set_p4, set_p3, set_p2, clean
    size: str = "4K"
    va: int = 0
    flags: int = 0
    count: int = 1  #: pages mapped by a map_range

    def describe(self) -> str:
        if self.kind == "clean":
            return "clean_up"
        flags = " | ".join(PageTableFlags(self.flags).names()) or "empty"
        size = f"{self.count} x {self.size}" if self.kind == "map_range" else self.size
        return f"{self.kind} {size} {self.va:#x} [{flags}]"


@dataclass(frozen=True)
class Case:
    """A mapper kind and an operation sequence; ``seed`` made it; ``levels``: 4, or 5 for a
    5-level case (run on TCG with CR4.LA57)."""

    seed: int
    kind: str
    ops: tuple[Op, ...]
    levels: int = 4


@dataclass
class Failure:
    """A case, the step at which hardware and software disagreed, and that step's report."""

    case: Case
    step: int
    report: Report


@dataclass
class CampaignResult:
    """What a campaign did."""

    seed: int
    cases: int = 0
    steps: int = 0
    probes: int = 0
    failures: list[Failure] = field(default_factory=list)
    #: where each failure's reproducer was saved (same order), or None when it was not
    reproducers: list[Path | None] = field(default_factory=list)
    #: why a reproducer could not be saved (same order; "" when it was, or not asked)
    save_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"fuzz seed {self.seed}: {self.cases} cases, {self.steps} verified steps, "
            f"{self.probes} probes, {len(self.failures)} disagreeing cases, {self.seconds:.1f} s"
        )


def random_case(seed: int, sizes: Sequence[str], *, length: int = 12, levels: int = 4) -> Case:
    """A reproducible random case (of ``levels`` levels)."""
    depth_arg(levels)
    rng = random.Random(seed)
    kind = rng.choice(("offset", "mapped", "recursive"))
    ops: list[Op] = []
    mapped: list[tuple[str, int]] = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.45 or not mapped:
            size = rng.choice(sizes)
            va = _random_va(rng, size, levels)
            flags = int(F.PRESENT)
            for f in LEAF_FLAGS:
                if rng.random() < 0.35:
                    flags |= int(f)
            if rng.random() < 0.3:  # a run of pages: large enough for the bulk path
                count = rng.choice(RANGE_COUNTS[size])
                ops.append(Op("map_range", size, va, flags, count))
                span = SIZES[size].SIZE
                mapped += [(size, va + k * span) for k in (0, count // 2, count - 1)]
            else:
                ops.append(Op("map", size, va, flags))
                mapped.append((size, va))
            continue
        size, va = rng.choice(mapped)
        if roll < 0.6:
            ops.append(Op("unmap", size, va))
        elif roll < 0.75:
            flags = int(F.PRESENT) | sum(int(f) for f in LEAF_FLAGS if rng.random() < 0.35)
            ops.append(Op("update", size, va, flags))
        elif roll < 0.9:
            level = rng.choice(("set_p5", "set_p4", "set_p3", "set_p2")[5 - levels :])
            flags = int(F.PRESENT) | sum(int(f) for f in PARENT_FLAGS if rng.random() < 0.6)
            ops.append(Op(level, size, va, flags))
        else:
            ops.append(Op("clean"))
    return Case(seed, kind, tuple(ops), levels)


def _random_va(rng: random.Random, size: str, levels: int = 4) -> int:
    p5 = rng.choice(P5_SLOTS) if levels == 5 else 0
    p4 = rng.choice(P4_SLOTS)
    p3 = rng.choice(P3_SLOTS)
    p2 = rng.choice(P2_SLOTS) if size != "1G" else 0
    p1 = rng.choice(P1_SLOTS) if size == "4K" else 0
    va = (p5 << 48) | (p4 << 39) | (p3 << 30) | (p2 << 21) | (p1 << 12)
    return canonicalize(va, levels)


# -- running a case ------------------------------------------------------------------------------


def _machine(levels: int) -> Machine | TcgMachine:
    """A fresh machine for a case: KVM at 4 levels, TCG with CR4.LA57 at 5."""
    if levels == 5:
        from kvmpage.tcg import TcgMachine

        return TcgMachine(MEMORY, la57=True)
    return Machine(MEMORY, timeout=20.0)


class _World:
    """A fresh machine and an empty address space of the case's mapper kind and depth."""

    def __init__(self, kind: str, predictor: Callable[..., Predictor], levels: int = 4) -> None:
        self.machine: Any = _machine(levels)
        self.levels = levels
        self.pages = PAGE_TYPES[levels]  # Page, or Page57 at 5 levels
        try:
            memory = self.machine.memory
            self.alloc: PoolFrameAllocator[Size4KiB] = PoolFrameAllocator(
                0x1000, self.machine.reserved[0], memory=memory
            )
            top = self.alloc.allocate_frame()
            assert top is not None
            table = PageTable(memory, top.start_address().as_u64())
            addr: Any = depth_arg(levels).addr_type
            self.mapper: TableMapper
            if kind == "offset":
                offset = PHYS_OFFSET if levels == 4 else PHYS_OFFSET_57
                self.mapper = OffsetPageTable(table, addr(offset), levels=levels)
            elif kind == "mapped":
                self.mapper = MappedPageTable(table, _Direct(memory), levels=levels)
            else:
                table[RECURSIVE_INDEX] = top.start_address().as_u64() | int(F.PRESENT | F.WRITABLE)
                self.mapper = RecursivePageTable(
                    memory,
                    recursive_table_address(RECURSIVE_INDEX, levels=levels),
                    top,
                    levels=levels,
                )
            self.verifier = Verifier(
                self.mapper, self.machine, predictor=predictor, cpu=CpuState(la57=levels == 5)
            )
            self.frames: dict[tuple[str, int], int] = {}
        except BaseException:
            self.machine.close()
            raise

    def close(self) -> None:
        self.machine.close()

    def __enter__(self) -> _World:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.machine.__exit__(exc_type, exc, tb)  # also when Ctrl-C left views in the frames

    def apply(self, op: Op) -> None:
        """Apply ``op`` (mapper errors are part of the game: the tables stay as the crate left
        them) and flush as the token asks."""
        with contextlib.suppress(PagingError):
            self._apply(op)

    def _apply(self, op: Op) -> None:
        m = self.mapper
        if op.kind == "clean":
            m.clean_up(self.alloc)
            return
        size = SIZES[op.size]
        page: Any = self.pages[size]._make(op.va)  # (random_case makes aligned, canonical ones)
        if op.kind in ("map", "map_range"):
            phys = self.alloc.allocate_contiguous(size.SIZE * op.count, size.SIZE)
            if phys is None:
                return
            frame = cast(Any, PhysFrame)[size].containing_address(PhysAddr(phys))
            if op.kind == "map":
                m.map_to(page, frame, op.flags, self.alloc).flush()
            else:
                pages = type(page).range(page, page + op.count)
                m.map_range(pages, frame, op.flags, self.alloc).flush_all()
        elif op.kind == "unmap":
            m.unmap(page)[1].flush()
        elif op.kind == "update":
            m.update_flags(page, op.flags).flush()
        else:
            setter = {
                "set_p5": m.set_flags_p5_entry,
                "set_p4": m.set_flags_p4_entry,
                "set_p3": m.set_flags_p3_entry,
                "set_p2": m.set_flags_p2_entry,
            }[op.kind]
            setter(page, op.flags).flush_all()

    def mappings(self) -> list[tuple[int, int, int, int]]:
        """(virt, size, phys, flags) of every leaf the CPU would see now."""
        skip = self.verifier.skip_p4
        return [
            (leaf.virt, leaf.size, leaf.phys, leaf.raw & ~0x000F_FFFF_FFFF_F000)
            for leaf in scan(
                self.machine.memory, self.verifier.p4_phys, skip_p4=skip, cpu=self.verifier.cpu
            )
        ]


class _Direct:
    def __init__(self, memory: Any) -> None:
        self.memory = memory

    def frame_to_pointer(self, frame: Any) -> Any:
        return PageTable(self.memory, frame.start_address().as_u64())


def run_case(
    case: Case,
    *,
    predictor: Callable[..., Predictor] = Predictor,
    options: PlanOptions = PlanOptions(full_limit=64, sample=16),  # noqa: B008 (frozen)
    on_step: Callable[[Report], None] | None = None,
) -> Failure | None:
    """Run ``case`` step by step; the first disagreement, or None."""
    with _World(case.kind, predictor, case.levels) as world:
        for step, op in enumerate(case.ops):
            world.apply(op)
            extra = (op.va,) if op.kind != "clean" else ()
            report = world.verifier.verify(dataclasses.replace(options, extra=extra))
            if on_step is not None:
                on_step(report)
            if not report.ok:
                return Failure(case, step, report)
        return None


def shrink(failure: Failure, **kwargs: Any) -> Failure:
    """A smaller case that still disagrees: drop operations one at a time while it fails."""
    ops = list(failure.case.ops[: failure.step + 1])
    best = Failure(dataclasses.replace(failure.case, ops=tuple(ops)), failure.step, failure.report)
    i = 0
    while i < len(ops):
        candidate = dataclasses.replace(best.case, ops=tuple(ops[:i] + ops[i + 1 :]))
        result = run_case(candidate, **kwargs) if candidate.ops else None
        if result is not None:
            ops = list(candidate.ops[: result.step + 1])
            best = result
        else:
            i += 1
    return best


def campaign(
    seed: int,
    *,
    cases: int = 1_000_000,
    seconds: float = 60.0,
    sizes: Sequence[str] | None = None,
    length: int = 12,
    save_dir: Path | None = None,
    log: Callable[[str], None] = print,
    predictor: Callable[..., Predictor] = Predictor,
    levels: int = 4,
) -> CampaignResult:
    """Run random cases from ``seed`` until ``cases`` or ``seconds`` run out (``levels=5``:
    5-level cases on TCG with CR4.LA57; their default page sizes are 4K and 2M)."""
    depth_arg(levels)
    if sizes is None and levels == 5:
        # not 1G: QEMU sets A in a 1 GiB leaf before its checks (docs/tcg.md), and the random
        # operations make 1 GiB leaves every access faults on (update_flags over a table)
        sizes = ["4K", "2M"]
    elif sizes is None:
        with Machine(8 << 20) as m:
            sizes = ["4K", "2M"] + (["1G"] if m.host_profile().supports("1gib-pages") else [])
    result = CampaignResult(seed)
    where = ", 5 levels on TCG (CR4.LA57)" if levels == 5 else ""
    log(f"fuzz: seed {seed}, page sizes {', '.join(sizes)}{where}")
    t0 = time.perf_counter()
    rng = random.Random(seed)
    while result.cases < cases and time.perf_counter() - t0 < seconds:
        case = random_case(rng.randrange(1 << 32), sizes, length=length, levels=levels)
        result.cases += 1

        def count(report: Report) -> None:
            result.steps += 1
            result.probes += report.probes

        failure = run_case(case, predictor=predictor, on_step=count)
        if failure is None:
            continue
        log(
            f"fuzz: case seed {case.seed} ({case.kind}) disagrees at step {failure.step}; shrinking"
        )
        small = shrink(failure, predictor=predictor)
        result.failures.append(small)
        path: Path | None = None
        error = ""
        if save_dir is not None:
            try:
                path = save_reproducer(small, save_dir)
                log(f"fuzz: reproducer saved to {path}")
            except OSError as e:  # the failure itself is kept, and printed by the caller
                error = f"cannot save the reproducer in {save_dir}: {e.strerror or e}"
                log(f"fuzz: {error}")
        result.reproducers.append(path)
        result.save_errors.append(error)
    result.seconds = time.perf_counter() - t0
    log(result.summary())
    return result


# -- reproducers ---------------------------------------------------------------------------------


def save_reproducer(failure: Failure, directory: Path) -> Path:
    """Write the failing case as a layout file: its final mappings, the operations as comments."""
    directory.mkdir(parents=True, exist_ok=True)
    case = failure.case
    with _World(case.kind, Predictor, case.levels) as world:
        for op in case.ops[: failure.step + 1]:
            world.apply(op)
        mappings = world.mappings()
    path = directory / f"fuzz-{case.seed}.toml"
    path.write_text(reproducer_toml(failure, mappings))
    return path


def reproducer_toml(failure: Failure, mappings: list[tuple[int, int, int, int]]) -> str:
    """The layout file text (format: docs/layout.md)."""
    case = failure.case
    lines = [
        f"# kvmpage fuzz reproducer: case seed {case.seed}, disagreement at step {failure.step}",
        "# operations (each followed by its flush and a verification):",
        *(f"#   {i}: {op.describe()}" for i, op in enumerate(case.ops[: failure.step + 1])),
        "# first disagreement:",
        *(f"#   {line}" for line in failure.report.disagreements[0].format().splitlines()[:3]),
        f'name = "fuzz-{case.seed}"',
        f'memory = "{MEMORY >> 20}M"',
        "",
        "[mapper]",
        f'kind = "{case.kind}"',
    ]
    if case.kind == "offset":
        lines.append(f"phys_offset = {PHYS_OFFSET if case.levels == 4 else PHYS_OFFSET_57:#x}")
    if case.kind == "recursive":
        lines.append(f"recursive_index = {RECURSIVE_INDEX}")
    if case.levels == 5:
        lines += ["", "[cpu]", "la57 = true"]
    names = {4096: "4K", 2 << 20: "2M", 1 << 30: "1G"}
    for i, (virt, size, phys, flags) in enumerate(mappings):
        flag_list = ", ".join(f'"{n}"' for n in PageTableFlags(flags & ~0x80).names())
        lines += [
            "",
            "[[mapping]]",
            f'name = "m{i}"',
            f"virt = {virt:#x}",
            f"phys = {phys:#x}",
            f'page_size = "{names[size]}"',
            "count = 1",
            f"flags = [{flag_list}]",
        ]
    return "\n".join(lines) + "\n"
