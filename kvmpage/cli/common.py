"""What every ``kvmpage`` command shares: exit codes, errors, layouts, the machine.

Exit codes are the contract CI relies on: `EXIT_OK` when the check passed, `EXIT_FAIL` when it
ran and found something (a disagreement, a W+X finding with ``--strict``, a difference), and
`EXIT_ERROR` when it could not run (a bad layout file, no /dev/kvm...), with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvmpage.cli.output import BUILTIN
from kvmpage.cli.progress import Progress
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import BuiltLayout, LayoutError, LayoutSpec
from kvmpage.layout.toml_file import AGENT_SLOT, agent_reserved, load_layout

if TYPE_CHECKING:
    from kvmpage.machine import Machine
    from kvmpage.tcg import TcgMachine
    from kvmpage.verify import Verifier

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
#: The software predictor the commands use (None: kvmpage's own). Tests set a deliberately wrong
#: one to check that a disagreement reaches the output and the exit status.
PREDICTOR: Any = None


class CliError(Exception):
    """A reason the command could not run (exit status 2); the message is shown as it is."""


def load_spec(arg: str | None, *, gbpages: bool = True) -> LayoutSpec:
    """The layout named on the command line: a TOML file, or the built-in one when omitted."""
    if arg is None or arg == BUILTIN:
        return builtin_layout(gbpages=gbpages)
    return load_layout(arg)


def alloc_end(spec: LayoutSpec) -> int | None:
    """Where allocation stops in a software build: below the agent's memory for a layout file,
    so that ``dump`` shows the same physical addresses ``verify`` uses."""
    if not spec.source:
        return None
    slot = min(spec.reserved_p4) if spec.reserved_p4 else AGENT_SLOT
    return agent_reserved(spec.memory_size, slot)[0]


@contextmanager
def on_machine(
    spec: LayoutSpec,
    device: str,
    progress: Progress,
    *,
    oracle: str = "kvm",
    gbpages: bool | None = None,
) -> Iterator[tuple[Machine | TcgMachine, BuiltLayout, Verifier]]:
    """Start a machine of ``oracle`` (``kvm`` or ``tcg``), build ``spec`` in its memory, and
    yield (machine, built, verifier).

    Everything that could make the run meaningless is refused first, with a `LayoutError`
    naming the key: a page size or a CPU feature the oracle cannot verify, physical ranges in
    the agent's memory. ``gbpages``: whether the built-in layout keeps its 1 GiB page (default:
    when the oracle can verify one). The machine is closed on every path.
    """
    from kvmpage.cli.oracles import open_machine, profile_of, tcg_problem
    from kvmpage.layout.spec import build, check_page_sizes, check_physical
    from kvmpage.machine import host_profile
    from kvmpage.verify import Verifier

    progress.stage("probing the host's paging features")
    profile = host_profile(device) if oracle == "kvm" else profile_of(oracle, device)
    if gbpages is None:
        gbpages = profile.supports("1gib-pages")
    if not spec.source:
        spec = builtin_layout(gbpages=gbpages) if spec.name == BUILTIN else spec
    else:
        try:
            check_page_sizes(spec, gbpages=gbpages)
        except LayoutError as e:
            if oracle == "tcg" or tcg_problem() is not None:
                raise
            raise LayoutError(f"{e} (--oracle tcg can verify them)") from e
    for wanted, feature, key in (
        (spec.cpu.nxe, "nx", "nxe"),
        (spec.cpu.smep, "smep", "smep"),
        (spec.cpu.smap, "smap", "smap"),
        (spec.cpu.la57, "la57", "la57"),
    ):
        if wanted and not profile.supports(feature):
            evidence = profile.features.get(feature)
            why = f" ({evidence.evidence})" if evidence is not None else ""
            where = f"{spec.source}: [cpu], key {key!r}" if spec.source else "built-in layout"
            who = "this host" if oracle == "kvm" else f"the {oracle} oracle"
            hint = ""
            if feature == "la57" and oracle == "kvm":  # a 5-level layout: say what does work
                hint = (
                    "; kvmpage verify --oracle tcg checks 5-level tables on QEMU's TCG MMU, "
                    "kvmpage dump and walk --software-only show them"
                )
            raise LayoutError(f"{where}: {who} cannot verify {feature.upper()}{why}{hint}")
    progress.stage("starting the machine")
    slot = min(spec.reserved_p4) if spec.reserved_p4 else AGENT_SLOT
    with open_machine(
        oracle, spec.memory_size, device=device, agent_slot=slot, la57=spec.cpu.la57
    ) as machine:
        spec = replace(spec, reserved_p4=spec.reserved_p4 | {machine.agent_slot})
        if spec.source:
            check_physical(spec, machine.reserved)
        progress.stage("building the tables")
        built = build(spec, machine.memory, alloc_end=machine.reserved[0])
        extra = {} if PREDICTOR is None else {"predictor": PREDICTOR}
        verifier = Verifier(built.mapper, machine, cpu=spec.cpu, **extra)
        yield machine, built, verifier
