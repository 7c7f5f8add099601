"""Large layouts a table at a time: the pages that get only a CPL3 read at their first byte.

A layout of 262,144 pages cannot afford a `Probe`, an `Expectation` or even a `Leaf` per page.
Each `BulkGroup` of the plan becomes one `BulkChunk`: its pages are predicted per walk shape
(entries that differ only in address bits share one outcome), their frames tagged, read by the
guest, and compared with the results column by column; their leaf entries' A and D bits are
checked the same way. Whatever does not agree at once takes the per-page path, so the report
explains it like any other probe.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kvmpage.machine.protocol import R_CR2, R_ERROR, R_STATUS, R_VALUE, R_VECTOR, ST_FAULT, ST_OK
from kvmpage.paging.access import ADDRESS_MASK, AccessKind, Outcome
from kvmpage.paging.leaves import Leaf, LeafGroup
from kvmpage.verify.compare import AccessedDirty, agrees_raw
from kvmpage.verify.predict import Predictor
from kvmpage.verify.probes import TAG_PREFIX, BulkGroup, Coverage
from kvmpage.verify.session import RunResults
from kvmpage.verify.targets import BLOCKED, Targets

A = 0x20
_READ = AccessKind.READ
_FLAG_BITS = ~ADDRESS_MASK & ((1 << 64) - 1)


@dataclass(slots=True)
class BulkChunk:
    """The bulk pages of one group, ready to run: addresses, predictions, tags."""

    group: LeafGroup
    indices: list[int]  #: the group's entries read
    vas: list[int]  #: the address each read goes to
    outcomes: list[Outcome]  #: per page (the same object for pages of one walk shape)
    uniform: Outcome | None  #: the outcome of every page, when they all share it
    values: list[int | None]  #: what each read must return (None: nothing to check)
    tagged: list[int]  #: physical addresses given a tag (``TAG_PREFIX | address``)
    first: int = 0  #: index of the chunk's first read in the run's results

    def leaf(self, j: int) -> Leaf:
        """The `Leaf` of the chunk's page ``j``."""
        return self.group.leaf(self.indices[j])


def predict_chunk(
    group: LeafGroup,
    indices: list[int],
    predictor: Predictor,
    targets: Targets,
    coverage: Coverage,
) -> BulkChunk | None:
    """Predict the reads of one group's bulk pages and choose the frames to tag (dropping, and
    counting in ``coverage``, the reads that must not run: `Targets`); None when none is left.
    Nothing is written: `BulkReads` tags a chunk when the run is about to need it."""
    if targets.blocked_slot(group.base, 3):
        coverage.skip(BLOCKED, len(indices))
        return None
    words, base, span = group.words, group.base, group.span
    first, n = indices[0], len(indices)
    run = False
    if indices[-1] - first == n - 1:  # consecutive entries: slices, not per-page lists
        raws = words[first : first + n]
        vas = list(range(base + first * span, base + (first + n) * span, span))
        w0 = raws[0]
        end = w0 + (n - 1) * span
        run = not (end ^ w0) & _FLAG_BITS and raws == list(range(w0, end + 1, span))
    else:
        raws = [words[i] for i in indices]
        vas = [base + i * span for i in indices]
    uniform, outcomes = predictor.bulk_reads(group.parents, raws, vas, same_shape=run)
    chunk = BulkChunk(group, indices, vas, outcomes, uniform, [None] * n, [])
    if uniform is not None and uniform.fault is not None:
        return chunk
    if uniform is not None:
        if run:  # one physically contiguous run: frames and tags are ranges too
            p0 = raws[0] & ADDRESS_MASK & ~(span - 1)
            phys = list(range(p0, p0 + n * span, span))
        else:
            phys = [raw & ADDRESS_MASK & ~(span - 1) for raw in raws]
        if targets.all_taggable(phys):
            # below the agent's memory, addresses stay clear of the tag's prefix bits
            chunk.values[:] = (
                range(TAG_PREFIX | phys[0], (TAG_PREFIX | phys[0]) + n * span, span)
                if run
                else [TAG_PREFIX | p for p in phys]
            )
            chunk.tagged = phys
            return chunk
    kept = _prepare_each(chunk, raws, targets, coverage)
    return kept if kept.vas else None


def _prepare_each(
    chunk: BulkChunk, raws: list[int], targets: Targets, coverage: Coverage
) -> BulkChunk:
    """`predict_chunk` page by page, for a chunk with mixed outcomes or unusual frames."""
    span = chunk.group.span
    kept = BulkChunk(chunk.group, [], [], [], None, [], [], 0)
    for i, va, outcome, raw in zip(chunk.indices, chunk.vas, chunk.outcomes, raws, strict=True):
        value: int | None = None
        if outcome.fault is None:
            phys = raw & ADDRESS_MASK & ~(span - 1)
            why = targets.skip(phys, _READ, 3)
            if why is not None:
                coverage.skip(why)
                continue
            value = TAG_PREFIX | phys
            if targets.tagged(phys):  # (else an MMIO exit answers with the address's tag)
                kept.tagged.append(phys)
        kept.indices.append(i)
        kept.vas.append(va)
        kept.outcomes.append(outcome)
        kept.values.append(value)
    return kept


class BulkReads:
    """The bulk pages as the reads of a `Session.run` (a `ReadSource`), a group at a time.

    A group is predicted and its frames tagged only when the run asks for its reads, so in a
    pipelined run that work (the host's page faults on fresh memory, mostly) overlaps the
    guest's work on the batch before. `chunks` holds what was handed out, for the comparison.
    """

    def __init__(
        self,
        bulk: list[BulkGroup],
        predictor: Predictor,
        targets: Targets,
        coverage: Coverage,
        *,
        first_result: int = 0,
    ) -> None:
        """``first_result``: the index of the first bulk read among the run's results."""
        self.chunks: list[BulkChunk] = []
        self.pages = sum(len(b.indices) for b in bulk)  #: bulk pages planned (an upper bound)
        self._groups = iter(bulk)
        self._predictor = predictor
        self._targets = targets
        self._coverage = coverage
        self._next_result = first_result
        self._ready: list[int] = []  # addresses tagged and not handed out yet

    def take(self, limit: int) -> list[int]:
        """Up to ``limit`` more addresses, their frames tagged; fewer only at the end."""
        while len(self._ready) < limit:
            group = next(self._groups, None)
            if group is None:
                break
            chunk = predict_chunk(
                group.group, group.indices, self._predictor, self._targets, self._coverage,
            )  # fmt: skip
            if chunk is None:
                continue
            chunk.first = self._next_result + len(self._ready)
            if chunk.tagged:
                _store(self._targets.memory.words, chunk.tagged, _tags(chunk.tagged))
            self.chunks.append(chunk)
            self._ready += chunk.vas
        out, self._ready = self._ready[:limit], self._ready[limit:]
        self._next_result += len(out)
        return out


def _tags(phys: list[int]) -> list[int]:
    """The tag of each frame of ``phys`` (below 2**48, so ``TAG_PREFIX | p == TAG_PREFIX + p``)."""
    if phys and _contiguous(phys) and phys[-1] < 1 << 48:
        return list(range(TAG_PREFIX | phys[0], (TAG_PREFIX | phys[-1]) + 1, 4096))
    return [TAG_PREFIX | p for p in phys]


def _contiguous(phys: list[int]) -> bool:
    """Whether ``phys`` are consecutive 4 KiB frames."""
    p0 = phys[0]
    return phys[-1] - p0 == 4096 * (len(phys) - 1) and phys == list(
        range(p0, p0 + 4096 * len(phys), 4096)
    )


def _store(words: memoryview, phys: list[int], tags: list[int]) -> None:
    """Write ``tags[k]`` at ``phys[k]``; consecutive frames take one strided store."""
    if _contiguous(phys):
        first = phys[0] >> 3
        words[first : first + 512 * len(phys) : 512] = array("Q", tags)
        return
    for p, t in zip(phys, tags, strict=True):
        words[p >> 3] = t


def load(words: memoryview, phys: list[int]) -> list[int]:
    """The u64 at each of ``phys``; consecutive frames take one strided load."""
    if phys and _contiguous(phys):
        first = phys[0] >> 3
        return words[first : first + 512 * len(phys) : 512].tolist()
    return [words[p >> 3] for p in phys]


def changed_tags(words: memoryview, chunk: BulkChunk) -> list[tuple[int, int, int]]:
    """``(physical address, tag, page address)`` of every tag of ``chunk`` no longer in
    memory after the run."""
    tags = _tags(chunk.tagged)
    if load(words, chunk.tagged) == tags:
        return []
    stored = set(chunk.tagged)
    vas = [
        va
        for va, v in zip(chunk.vas, chunk.values, strict=True)
        if v is not None and v & ~TAG_PREFIX in stored
    ]
    return [
        (p, t, va) for p, t, va in zip(chunk.tagged, tags, vas, strict=True) if words[p >> 3] != t
    ]


def disagreeing(chunks: list[BulkChunk], results: RunResults) -> Iterator[tuple[BulkChunk, int]]:
    """``(chunk, page)`` for every bulk read whose result differs from its prediction; a chunk
    of one shape is compared a column at a time."""
    status, value = results.column(R_STATUS), results.column(R_VALUE)
    for chunk in chunks:
        a, n = chunk.first, len(chunk.vas)
        u = chunk.uniform
        if u is not None and u.fault is None and status[a : a + n] == [ST_OK] * n:
            if value[a : a + n] == chunk.values:
                continue
        elif u is not None and u.fault is not None and status[a : a + n] == [ST_FAULT] * n:
            f = u.fault
            if (
                results.column(R_VECTOR)[a : a + n] == [f.vector] * n
                and results.column(R_ERROR)[a : a + n] == [f.error_code] * n
                and (f.vector != 14 or results.column(R_CR2)[a : a + n] == chunk.vas)
            ):
                continue
        records = results.records(a, a + n)
        for j, rec in enumerate(records):
            if not agrees_raw(chunk.vas[j], False, chunk.outcomes[j], chunk.values[j], rec):
                yield chunk, j


def _leaf_rule(outcome: Outcome, level: int) -> Callable[[list[int], list[int]], bool] | None:
    """How the leaf entries of a uniform chunk must change, as a column test; None when the
    rule is not one of the simple ones (checked entry by entry instead)."""
    if level in outcome.d_must:
        return None
    if level in outcome.a_must:
        return lambda old, new: new == [x | A for x in old]
    if level in outcome.a_may:
        return lambda old, new: [x & ~A for x in new] == [x & ~A for x in old]
    return lambda old, new: new == old


def check_accessed_dirty(
    chunks: list[BulkChunk],
    ad: AccessedDirty,
    before: dict[int, list[int]],
    after: dict[int, list[int]],
) -> dict[int, set[int]]:
    """Check the chunks' leaf entries column-wise and add the rules for the entries above them
    to ``ad``. Returns the entries verified here (table frame -> entry indices); the entries of
    a chunk that fails, or that other probes also walk, go to ``ad`` one by one instead."""
    shared: dict[int, set[int]] = {}
    for addr in ad.entries():
        shared.setdefault(addr & ~0xFFF, set()).add((addr & 0xFFF) >> 3)
    verified: dict[int, set[int]] = {}
    for chunk in chunks:
        group = chunk.group
        table, addrs = group.table, group.parent_addrs
        u = chunk.uniform
        rule = _leaf_rule(u, group.level) if u is not None else None
        clash = shared.get(table)
        alone = clash is None or clash.isdisjoint(chunk.indices)
        if u is not None and rule is not None and alone:
            old, new = before[table], after[table]
            idx = chunk.indices
            if idx[-1] - idx[0] == len(idx) - 1:
                old_entries, new_entries = old[idx[0] : idx[-1] + 1], new[idx[0] : idx[-1] + 1]
            else:
                old_entries, new_entries = [old[i] for i in idx], [new[i] for i in idx]
            if rule(old_entries, new_entries):
                ad.add_parents(u, addrs)
                verified.setdefault(table, set()).update(chunk.indices)
                continue
        for i, outcome in zip(chunk.indices, chunk.outcomes, strict=True):
            ad.add_walk(outcome, addrs, table + 8 * i)
    return verified
