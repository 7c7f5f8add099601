"""What every ``kvmpage`` command that runs a layout shares: reading it, and a machine of the
chosen oracle with the layout built in it. The exit codes and `CliError` (`kvmpage.cli.errors`)
are re-exported here for the commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvmpage.cli.errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK, CliError
from kvmpage.cli.output import BUILTIN
from kvmpage.cli.placement import agent_slot_of, check_memory, place
from kvmpage.cli.progress import Progress
from kvmpage.layout.builtin import builtin_layout
from kvmpage.layout.spec import BuiltLayout, LayoutError, LayoutSpec
from kvmpage.layout.toml_file import load_layout

if TYPE_CHECKING:
    from kvmpage.machine import Machine
    from kvmpage.tcg import TcgMachine
    from kvmpage.verify import Verifier

#: The software predictor the commands use (None: kvmpage's own). Tests set a deliberately wrong
#: one to check that a disagreement reaches the output and the exit status.
PREDICTOR: Any = None

__all__ = ["EXIT_ERROR", "EXIT_FAIL", "EXIT_OK", "PREDICTOR", "CliError", "load_spec", "on_machine"]


def load_spec(arg: str | None, *, gbpages: bool = True) -> LayoutSpec:
    """The layout named on the command line: a TOML file, or the built-in one when omitted."""
    if arg is None or arg == BUILTIN:
        return builtin_layout(gbpages=gbpages)
    spec = load_layout(arg)
    place(spec)
    return spec


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
                    "; --oracle tcg checks 5-level tables on QEMU's TCG MMU (verify and walk), "
                    "kvmpage dump and walk --software-only show them"
                )
            raise LayoutError(f"{where}: {who} cannot verify {feature.upper()}{why}{hint}")
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
    progress.stage("starting the machine")
    check_memory(spec)
    slot = agent_slot_of(spec)
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
