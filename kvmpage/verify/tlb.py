"""Which probes' answers depend on what a TLB still holds, for oracles that model no TLB.

A real CPU may keep using a translation after its table entry changed, until ``invlpg`` or a
CR3 reload removes it: a missing flush can show on KVM. QEMU's TCG (the ``tcg`` oracle) walks
the tables as they are for every probe, so there a missing flush can never show, and a probe
whose answer *would* depend on a stale entry must not be counted as agreeing with the software
(which predicts the current tables). `Unflushed` finds those probes before they run: a probe is
TLB-dependent when an entry of its walk was present when the guest last walked the tables,
has changed since, and no pending flush covers the probe's address:

- a CR3 reload covers everything (the machines run with CR4.PGE off, so no global entries);
- ``invlpg a`` covers the probe's 4 KiB page, and, when the changed entry was itself a leaf,
  the whole page it mapped (the TLB entry it could have left is that page's);
- an entry that was not present cannot have left a TLB entry (the architecture caches no
  not-present translation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: the reason `kvmpage.verify.probes.Coverage` counts such probes under
NOT_CHECKABLE = (
    "its answer depends on a stale TLB entry (a table entry it walks changed and no flush "
    "covered it), which this oracle does not model: not checkable here"
)
_P, _PS = 0x1, 0x80


@dataclass(frozen=True)
class Unflushed:
    """Table entries changed since the guest last walked them, and the flushes queued since.

    ``changed`` maps an entry's physical address to its old (present) value.
    """

    changed: dict[int, int] = field(default_factory=dict)
    invlpg: tuple[int, ...] = ()
    flush_all: bool = False

    @classmethod
    def between(
        cls,
        old: Mapping[int, bytes],
        new: Mapping[int, Sequence[int]],
        flushes: Sequence[tuple[str, int]],
    ) -> Unflushed:
        """From the frames as the guest last saw them (``old``: frame -> bytes), as they are
        now (``new``: frame -> 512 words) and the flushes queued since (``("invlpg", va)`` /
        ``("flush_all", 0)``)."""
        changed: dict[int, int] = {}
        for frame, before in old.items():
            after = new.get(frame)
            if after is None:
                continue
            words = memoryview(before).cast("Q")
            for i in range(512):
                value = words[i]
                if value != after[i] and value & _P:
                    changed[frame + 8 * i] = value
        return cls(
            changed,
            tuple(va for kind, va in flushes if kind == "invlpg"),
            any(kind == "flush_all" for kind, _ in flushes),
        )

    def __bool__(self) -> bool:
        """Whether some probe can depend on the TLB at all."""
        return bool(self.changed) and not self.flush_all

    def stale(self, va: int, entry_addrs: Sequence[int], depth: int = 4) -> bool:
        """Whether a probe at ``va`` whose walk reads ``entry_addrs`` (top level first, in a
        ``depth``-level hierarchy) could see a translation a flush should have removed."""
        if not self:
            return False
        for k, addr in enumerate(entry_addrs):
            value = self.changed.get(addr)
            if value is None:
                continue
            level = depth - k
            leaf = level == 1 or (level in (2, 3) and bool(value & _PS))
            span = 1 << (12 + 9 * (level - 1)) if leaf else 1 << 12
            if not any(a // span == va // span for a in self.invlpg):
                return True
        return False
