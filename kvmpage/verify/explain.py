"""How a disagreement is explained: both walks of the address, and what a flush had to do with it.

The software walk is the one the prediction used (its entries, as the table held them when the
probe was planned); the hardware side is the tables in guest memory after the run and, where
the machine has one, KVM_TRANSLATE's own answer. Past ``detail_limit`` disagreements in a run,
a disagreement keeps its one-line reason and counts stay exact, but the walks are left out, so
a systematically wrong prediction over a large layout is reported in seconds.
"""

from __future__ import annotations

from kvmpage.layout.walk import format_steps, format_walk, steps_of
from kvmpage.machine import ProbeMachine
from kvmpage.paging.arch import CpuState
from kvmpage.verify.compare import describe_expectation
from kvmpage.verify.predict import Expectation
from kvmpage.verify.session import Session


class Explainer:
    """Both walks of an address, for the disagreements of one verification run."""

    def __init__(
        self,
        machine: ProbeMachine,
        root: int,
        session: Session,
        detail_limit: int,
        cpu: CpuState = CpuState(),  # noqa: B008 (frozen)
    ) -> None:
        self.machine = machine
        self.root = root
        self.session = session
        self.detail_limit = detail_limit
        #: the CPU state the walks are shown under (its CR4.LA57: 4 or 5 levels)
        self.cpu = cpu
        self.explained = 0  #: disagreements of the current run explained with their walks

    def walks(self, va: int, exp: Expectation | None = None) -> tuple[list[str], list[str]]:
        """Both walks of ``va`` (the software's: ``exp``'s, or the tables' in memory), or a line
        saying why they are left out once `detail_limit` is reached."""
        if self.explained >= self.detail_limit:
            why = (
                f"  (walks left out: more than {self.detail_limit} disagreements in this run; "
                "Verifier(detail_limit=...) raises the limit)"
            )
            return [why], []
        self.explained += 1
        software = self._table_walk(va) if exp is None else self._software_walk(va, exp)
        return software, self.hardware_walk(va)

    def _software_walk(self, va: int, exp: Expectation) -> list[str]:
        lines = [f"walk of {va:#018x}"]
        lines += format_steps(steps_of(va, exp.entries, exp.entry_addrs, self.cpu.levels), self.cpu)
        lines.append(f"  -> {describe_expectation(exp, None, va)}")
        return lines

    def _table_walk(self, va: int) -> list[str]:
        return format_walk(self.machine.memory, self.root, va, self.cpu)

    def hardware_walk(self, va: int) -> list[str]:
        """The tables in guest memory now, and KVM_TRANSLATE where the machine has it."""
        lines = self._table_walk(va)
        if self.machine.translate_oracle is None:
            return lines
        got = self.machine.translate(va)
        lines.append("  KVM_TRANSLATE: " + ("no valid translation" if got is None else f"{got:#x}"))
        return lines

    def flush_note(self, va: int) -> str:
        """Why a stale translation may be to blame: tables changed and no flush covered ``va``."""
        flushes = self.session.last_flushes
        if any(kind == "invlpg" and v >> 12 == va >> 12 for kind, v in flushes):
            return ""
        if self.session.last_replayed and not any(k == "flush_all" for k, _ in flushes):
            return "tables changed since the last run and no flush covered this page"
        return ""
