"""Where a layout file goes in a guest, and whether it fits there.

A layout describes an address space (`kvmpage.layout`); a machine hosts it beside the kvmpage
agent, which keeps memory at the top of guest RAM and one top-level slot (`kvmpage.machine`).
The commands join the two here, so neither imports the other: the agent's reserved range for a
layout's memory size and slot, where allocation must stop so that ``dump`` shows the physical
addresses ``verify`` uses, and the checks that fail a layout file early, naming its key, rather
than with a bare ENOMEM or a build error later: memory within what the agent can address and
this host can give, fixed physical ranges outside the agent's memory, and ``phys = "allocate"``
mappings that fit below it.
"""

from __future__ import annotations

from kvmpage.layout.spec import LayoutError, LayoutSpec, check_physical

#: The agent's top-level slot when a layout reserves none (`kvmpage.machine`'s default).
DEFAULT_AGENT_SLOT = 511

__all__ = ["agent_reserved", "agent_slot_of", "alloc_end", "check_memory", "place"]


def agent_reserved(memory_size: int, slot: int = DEFAULT_AGENT_SLOT) -> tuple[int, int]:
    """The physical range a machine of ``memory_size`` bytes keeps for its agent (imported on
    use: ``kvmpage dump`` of the built-in layout never starts a machine)."""
    from kvmpage.machine import agent_reserved as reserved_by_agent

    return reserved_by_agent(memory_size, slot)


def agent_slot_of(spec: LayoutSpec) -> int:
    """The top-level slot the agent takes for ``spec`` (the one it reserves, else the default)."""
    return min(spec.reserved_p4) if spec.reserved_p4 else DEFAULT_AGENT_SLOT


def alloc_end(spec: LayoutSpec) -> int | None:
    """Where allocation stops in a software build: below the agent's memory for a layout file,
    so that ``dump`` shows the same physical addresses ``verify`` uses (None: a Python layout,
    built to the end of its memory)."""
    if not spec.source:
        return None
    return agent_reserved(spec.memory_size, agent_slot_of(spec))[0]


def check_memory(spec: LayoutSpec) -> None:
    """``spec.memory_size`` within what the agent can address and this host can give; the
    message says which limit it is and where it comes from."""
    from kvmpage.machine import memory_limit

    limit = memory_limit()
    if spec.memory_size > limit.size:
        raise LayoutError(
            f"{_key(spec, 'memory')}{_size_text(spec.memory_size)} is more than this host can "
            f"give a guest: at most {_size_text(limit.size)}, the limit of {limit.why}"
        )


def place(spec: LayoutSpec) -> None:
    """Refuse a layout file that cannot go in a guest (`check_memory`, fixed physical ranges in
    or beyond the agent's memory, allocated mappings that cannot fit below it), before
    anything is built. A Python layout (no ``source``) is only checked for memory."""
    check_memory(spec)
    if not spec.source:
        return
    reserved = agent_reserved(spec.memory_size, agent_slot_of(spec))
    check_physical(spec, reserved)
    # A lower bound: only the allocated mappings' own bytes and the level-4 table (alignment
    # and the other tables need more), so that a layout far too big fails here.
    need = sum(m.length for m in spec.mappings if m.phys is None)
    room = reserved[0] - 0x2000  # the first frame is never allocated, the next is the root
    if need > room:
        raise LayoutError(
            f'{_key(spec, "memory")}the mappings with phys = "allocate" need at least {need:#x} '
            f"bytes, more than the {room:#x} bytes below the guest agent's memory at "
            f"{reserved[0]:#x}: raise 'memory'"
        )


def _key(spec: LayoutSpec, key: str) -> str:
    """The prefix of a layout file's error about ``key`` (as `kvmpage.layout` writes them)."""
    return f"{spec.source}: key {key!r}: " if spec.source else ""


def _size_text(n: int) -> str:
    """``28G``, ``23.4G (25125634048 bytes)``: exact when round, else with the byte count."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            if n % (1 << shift) == 0:
                return f"{n >> shift}{unit}"
            return f"{n / (1 << shift):.1f}{unit} ({n} bytes)"
    return f"{n} bytes"
