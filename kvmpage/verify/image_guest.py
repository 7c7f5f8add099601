"""A memory image's own tables on a guest of either oracle: the agent's home, the RAM, the CPU.

One code path for both oracles: `plan_guest` decides the guest once (RAM, agent slot, memory
size, CPU state) from the profiles of the oracles that will run it, and `image_on_machine`
starts it on the machine an `ImageOracle` opens: a KVM `kvmpage.machine.Machine` or a
`kvmpage.tcg.TcgMachine` (QEMU's TCG MMU), laid out alike, so the same probes reach the same
physical addresses on both (``--oracle both`` compares them probe by probe).

The guest's physical memory is laid out as the image's: every range the image holds is RAM at
the same address (a memslot each on KVM, a RAM region each on TCG); everything else, holes
included, is not RAM, so a leaf that maps it makes the access leave the guest with the
guest-physical address (a KVM MMIO exit, a TCG MMIO callback), which the verifier answers with
that address's tag (the address *is* the MMU's translation). The image's page-table pages are
copied into that RAM byte for byte; the frames the probes reach are tagged there; nothing is
ever written to the image file (its bytes are only read).

The agent lives above the image: its code, stacks, descriptor tables and command array take
physical memory no segment and, where possible, no leaf uses, and a top-level slot the image
leaves empty, chosen automatically (the highest free one every oracle lets CPL3 use). In a
5-level image that is a level-5 slot (the tcg oracle only: KVM here cannot run LA57).

The CPU state is the image's (CR0.WP, CR4.SMEP/SMAP, EFER.NXE, CR4.LA57) as far as every
oracle can run it; what one cannot (LA57 on KVM, PCID, protection keys, SMEP/SMAP without
support) is reported, never passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmpage.image import Image, PagingContext
from kvmpage.machine import HostProfile, Machine, host_profile
from kvmpage.machine.agent import Placement
from kvmpage.machine.machine import DEFAULT_CAPACITY
from kvmpage.paging.arch import CpuState
from kvmpage.paging.leaves import table_frames

if TYPE_CHECKING:
    from kvmpage.tcg import TcgMachine

    GuestMachine = Machine | TcgMachine

PAGE = 4096
LARGE = 2 << 20


class CannotVerify(ValueError):
    """The image cannot be put on this host's CPU (the reason names what is missing)."""


@dataclass(frozen=True)
class GuestPlan:
    """The guest an image needs, decided once for every oracle that will run it (`plan_guest`):
    the same plan gives the same physical layout on KVM and on TCG."""

    cpu: CpuState  #: the state the guest runs (and the software predicts) under
    #: what the oracles cannot run as the image did, in words (each is left unverified)
    unverified: tuple[str, ...]
    agent_slot: int  #: the top-level slot of the image's root the agent takes
    skip_top: frozenset[int]  #: top-level slots not probed besides the agent's
    ram: tuple[tuple[int, int], ...]  #: the image's ranges, whole pages: the guest's RAM
    size: int  #: the machine's memory size (the agent's memory at its top)
    capacity: int


#: opens the machine for a plan (its memory size, agent slot, RAM and paging mode)
MachineFactory = Callable[[GuestPlan], AbstractContextManager["GuestMachine"]]


@dataclass(frozen=True)
class ImageOracle:
    """An oracle an image can run on: its name (``kvm``, ``tcg``), what it can check, and how
    to open its machine."""

    name: str
    profile: HostProfile
    open: MachineFactory


def kvm_oracle(device: str) -> ImageOracle:
    """The CPU through KVM (``device``, usually /dev/kvm); 4-level paging only."""

    def open_kvm(plan: GuestPlan) -> AbstractContextManager[GuestMachine]:
        if plan.cpu.la57:
            raise CannotVerify(_LA57_ON_KVM)
        return Machine(plan.size, capacity=plan.capacity, agent_slot=plan.agent_slot,
                       device=device, ram=plan.ram)  # fmt: skip

    return ImageOracle("kvm", host_profile(device), open_kvm)


def tcg_oracle() -> ImageOracle:
    """QEMU's TCG MMU through Unicorn (`kvmpage.tcg`); 4- and 5-level paging. Raises
    `kvmpage.tcg.TcgUnavailable` when Unicorn is missing."""
    from kvmpage.tcg import TcgMachine
    from kvmpage.tcg.machine import tcg_profile

    def open_tcg(plan: GuestPlan) -> AbstractContextManager[GuestMachine]:
        return TcgMachine(plan.size, capacity=plan.capacity, agent_slot=plan.agent_slot,
                          la57=plan.cpu.la57, ram=plan.ram)  # fmt: skip

    return ImageOracle("tcg", tcg_profile(), open_tcg)


_LA57_ON_KVM = (
    "the image uses 5-level paging (CR4.LA57) and KVM on this host cannot run it (kvmpage host: "
    "la57); --oracle tcg checks it on QEMU's TCG MMU, dump and walk read it"
)


@dataclass
class ImageGuest:
    """An image's tables on a machine, and what differs from the image's own CPU."""

    machine: GuestMachine
    oracle: str  #: the oracle's name (``kvm``, ``tcg``)
    root: int
    agent_slot: int
    skip_top: frozenset[int]
    cpu: CpuState  #: the state the guest runs (and the software predicts) under
    tables: int  #: page-table pages copied from the image
    #: what the oracles cannot run as the image did, in words (each is left unverified)
    unverified: list[str] = field(default_factory=list)


def free_slot(words: Sequence[int], blocked: frozenset[int], skip: frozenset[int]) -> int:
    """The top-level slot for the agent: the highest empty one in the kernel half the host lets
    CPL3 use, else the highest empty one at all."""
    free = [i for i in range(511, -1, -1) if not words[i] & 1 and i not in blocked | skip]
    if not free:
        raise CannotVerify(
            "every top-level slot of the image's tables is in use: the kvmpage agent needs one "
            "empty slot for its code and data"
        )
    upper = [i for i in free if i >= 256]
    return upper[0] if upper else free[0]


def _ram(image: Image) -> list[tuple[int, int]]:
    """The image's ranges, trimmed to whole pages (a memslot holds whole pages)."""
    out = []
    for s in image.segments:
        start = -(-s.start // PAGE) * PAGE
        end = s.end // PAGE * PAGE
        if start < end:
            out.append((start, end))
    return out


def _machine_size(
    top: int, capacity: int, slot: int, nx: bool, used: Sequence[tuple[int, int]], limit: int
) -> int:
    """The machine size: the agent's reserved memory (and the doorbell page after it) at the
    first 2 MiB boundary at or above ``top`` that is clear of every range in ``used`` (frames
    the image's leaves map), so that no probe of the image reaches the agent."""
    probe = Placement(64 << 20, capacity, slot, nx=nx)
    need = probe.memory_size - probe.reserved[0] + PAGE  # reserved memory, then the doorbell
    start = -(-top // LARGE) * LARGE
    for a, end in sorted(used):
        if end <= start:
            continue
        if a >= start + need:
            break
        start = -(-end // LARGE) * LARGE
    size = start + need - PAGE
    if size > limit:
        raise CannotVerify(
            f"the image spans guest-physical memory up to {top:#x}: with the agent above it the "
            f"guest needs {size:#x} bytes, more than this host's guest-physical address space "
            f"({limit:#x})"
        )
    return size


def run_state(
    ctx: PagingContext, profiles: HostProfile | Sequence[HostProfile]
) -> tuple[CpuState, list[str]]:
    """The CPU state every one of ``profiles`` can run for ``ctx``, and what is left out."""
    every = [profiles] if isinstance(profiles, HostProfile) else list(profiles)
    want = ctx.cpu
    notes: list[str] = []
    if want.la57 and not all(p.supports("la57") for p in every):
        raise CannotVerify(_LA57_ON_KVM)
    state = {}
    for name in ("smep", "smap", "nxe"):
        feature = "nx" if name == "nxe" else name
        on = getattr(want, name)
        if on and not all(p.supports(feature) for p in every):
            notes.append(
                f"{feature.upper()}: the image runs with it, this host cannot; probes run and are "
                "predicted without it"
            )
            on = False
        state[name] = on
    if ctx.pcid is not None:
        notes.append(
            f"PCID: the image runs with CR4.PCIDE (PCID {ctx.pcid:#x}); the guest runs without "
            "(it only tags TLB entries, the translations are the same)"
        )
    if ctx.cr4 & (1 << 22):
        notes.append("protection keys (CR4.PKE): not modelled, the guest runs without them")
    cpu = CpuState(wp=want.wp, smep=state["smep"], smap=state["smap"], nxe=state["nxe"],
                   ac=False, la57=want.la57)  # fmt: skip
    return cpu, notes


def plan_guest(
    image: Image,
    ctx: PagingContext,
    profiles: Sequence[HostProfile],
    *,
    skip_top: frozenset[int] = frozenset(),
    used: Sequence[tuple[int, int]] = (),
    capacity: int = DEFAULT_CAPACITY,
) -> GuestPlan:
    """The guest for the tables of ``ctx`` that every oracle of ``profiles`` can run (see the
    module docstring); ``used``: physical ranges the image's leaves map (kept clear of the
    agent). Raises `CannotVerify` with the reason when there is none."""
    if not profiles:
        raise ValueError("plan_guest needs the profile of at least one oracle")
    cpu, notes = run_state(ctx, profiles)
    memory = image.memory
    if not memory.contains(ctx.root, PAGE):
        raise CannotVerify(f"the top-level table at {ctx.root:#x} is not in the image")
    words = memory.table_words(ctx.root)
    blocked = frozenset().union(*(p.cpl3_blocked_slots for p in profiles))
    slot = free_slot(words, blocked, skip_top)
    ram = _ram(image)
    top = max(end for _, end in ram)
    limit = min(min(1 << p.maxphyaddr for p in profiles), 1 << 46)
    size = _machine_size(top, capacity, slot, cpu.nxe, used, limit)
    return GuestPlan(cpu, tuple(notes), slot, skip_top, tuple(ram), size, capacity)


@contextmanager
def image_on_machine(
    image: Image, ctx: PagingContext, plan: GuestPlan, oracle: ImageOracle
) -> Iterator[ImageGuest]:
    """Start ``oracle``'s machine as ``plan`` says, with the tables of ``ctx`` copied in (see
    the module docstring). The machine is closed on every path."""
    memory = image.memory
    frames = table_frames(memory, ctx.root, levels=ctx.levels)
    with oracle.open(plan) as machine:
        guest = machine.memory
        for frame in frames:  # (every one is in the image: table_frames leaves out the rest)
            guest.write(frame, memory.read(frame, PAGE))
        yield ImageGuest(machine, oracle.name, ctx.root, plan.agent_slot, plan.skip_top,
                         plan.cpu, len(frames), list(plan.unverified))  # fmt: skip
