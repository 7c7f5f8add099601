"""A memory image's own tables on a KVM guest: the home for the agent, the RAM, the CPU state.

The guest's physical memory is laid out as the image's: every range the image holds is RAM at
the same address (a memslot each); everything else, holes included, is not RAM, so a leaf that
maps it makes the CPU exit to the host with the guest-physical address, which the verifier
answers with that address's tag (the exit's address *is* the hardware's translation). The
image's page-table pages are copied into that RAM byte for byte; the frames the probes reach
are tagged there; nothing is ever written to the image file (its bytes are only read).

The agent lives above the image: its code, stacks, descriptor tables and command array take
physical memory no segment and, where possible, no leaf uses, and a top-level slot the image
leaves empty, chosen automatically (the highest free one the host lets CPL3 use).

The CPU state is the image's (CR0.WP, CR4.SMEP/SMAP, EFER.NXE) as far as this host can run
it; what it cannot (LA57, PCID, protection keys, SMEP/SMAP without host support) is reported,
never passed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from kvmpage.image import Image, PagingContext
from kvmpage.machine import HostProfile, Machine, host_profile
from kvmpage.machine.agent import Placement
from kvmpage.machine.machine import DEFAULT_CAPACITY
from kvmpage.paging.arch import CpuState
from kvmpage.paging.leaves import table_frames

PAGE = 4096
LARGE = 2 << 20


class CannotVerify(ValueError):
    """The image cannot be put on this host's CPU (the reason names what is missing)."""


@dataclass
class ImageGuest:
    """An image's tables on a machine, and what differs from the image's own CPU."""

    machine: Machine
    root: int
    agent_slot: int
    skip_top: frozenset[int]
    cpu: CpuState  #: the state the guest runs (and the software predicts) under
    tables: int  #: page-table pages copied from the image
    #: what this host cannot run as the image did, in words (each is left unverified)
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


def run_state(ctx: PagingContext, profile: HostProfile) -> tuple[CpuState, list[str]]:
    """The CPU state the guest can run for ``ctx`` on this host, and what is left out."""
    want = ctx.cpu
    notes: list[str] = []
    if want.la57 and not profile.supports("la57"):
        raise CannotVerify(
            "the image uses 5-level paging (CR4.LA57) and this host cannot run it (kvmpage host: "
            "la57); dump and walk read it"
        )
    state = {}
    for name in ("smep", "smap", "nxe"):
        feature = "nx" if name == "nxe" else name
        on = getattr(want, name)
        if on and not profile.supports(feature):
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


@contextmanager
def image_on_machine(
    image: Image,
    ctx: PagingContext,
    *,
    device: str,
    skip_top: frozenset[int] = frozenset(),
    used: Sequence[tuple[int, int]] = (),
    capacity: int = DEFAULT_CAPACITY,
) -> Iterator[ImageGuest]:
    """Start a machine laid out as ``image`` with the tables of ``ctx`` in it (see the module
    docstring); ``used``: physical ranges the image's leaves map (kept clear of the agent).
    The machine is closed on every path."""
    profile = host_profile(device)
    cpu, notes = run_state(ctx, profile)
    memory = image.memory
    if not memory.contains(ctx.root, PAGE):
        raise CannotVerify(f"the top-level table at {ctx.root:#x} is not in the image")
    words = memory.table_words(ctx.root)
    slot = free_slot(words, profile.cpl3_blocked_slots, skip_top)
    ram = _ram(image)
    top = max(end for _, end in ram)
    limit = min(1 << profile.maxphyaddr, 1 << 46)
    size = _machine_size(top, capacity, slot, cpu.nxe, used, limit)
    frames = table_frames(memory, ctx.root, levels=ctx.levels)
    with Machine(size, capacity=capacity, agent_slot=slot, device=device, ram=ram) as machine:
        guest = machine.memory
        for frame in frames:  # (every one is in the image: table_frames leaves out the rest)
            guest.write(frame, memory.read(frame, PAGE))
        yield ImageGuest(machine, ctx.root, slot, skip_top, cpu, len(frames), notes)
