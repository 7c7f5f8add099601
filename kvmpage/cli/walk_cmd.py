"""``kvmpage walk VA [LAYOUT]``: one address level by level, then what the CPU did with it.

The software walk shows each level's index, entry address, raw entry, decoded flags and the
effective rights so far. Then six probes run on a machine with the layout (KVM, or QEMU's TCG
with ``--oracle tcg``, which also runs 5-level tables): read, write and
fetch at CPL3 and CPL0, each with the software's prediction, the CPU's outcome and the oracle
that produced it. The probes use the page's usual probe offsets (read +0, write +8, fetch
+0x40) and the verifier's tagging, so they never write a page table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpage.addr import is_canonical
from kvmpage.cli.common import EXIT_FAIL, EXIT_OK, CliError, load_spec, on_machine
from kvmpage.cli.guard import printable
from kvmpage.cli.output import MappingNames, cpu_line, emit_json, header, hexa, layout_json
from kvmpage.cli.progress import Progress
from kvmpage.layout.dump import flag_names
from kvmpage.layout.spec import BuiltLayout, build
from kvmpage.layout.walk import rights_so_far, walk_lines
from kvmpage.paging.arch import ADDRESS_MASK, LEVEL_NAMES, CpuState
from kvmpage.paging.walk import Walk, walk

if TYPE_CHECKING:
    from kvmpage.machine.protocol import Result
    from kvmpage.verify import Verifier


@dataclass(frozen=True)
class HardwareProbe:
    """One of the six probes: what software predicted, what the CPU did, whether they agree."""

    access: str
    cpl: int
    va: int
    oracle: str
    expected: str
    actual: str
    agree: bool | None  #: None when the probe was not run (``skipped`` says why)
    skipped: str = ""
    why: str = ""


def in_agent_slot(va: int, slot: int, levels: int = 4) -> bool:
    """Whether ``va`` is canonical and in the agent's slot of the top-level table."""
    return is_canonical(va, levels) and (va >> (3 + 9 * levels)) & 511 == slot


def parse_va(text: str) -> int:
    """A virtual address from the command line: 0x... hex or decimal, 64 bits."""
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise CliError(f"VA must be an address like 0x601000, got {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise CliError(f"VA must fit in 64 bits, got {text!r}")
    return value


def hardware_probes(verifier: Verifier, va: int) -> list[HardwareProbe]:
    """Run read/write/fetch at CPL3 and CPL0 on the page of ``va`` (`Verifier.probe`)."""
    from kvmpage.verify.compare import describe_expectation, describe_result

    out = []
    for c in verifier.probe(va):
        p = c.probe
        expected = describe_expectation(c.expectation, c.value, p.va)
        if c.result is None or c.verdict is None:
            out.append(
                HardwareProbe(
                    p.access.value, p.cpl, p.va, "-", expected, "not run", None, c.skipped
                )
            )
            continue
        out.append(
            HardwareProbe(
                p.access.value,
                p.cpl,
                p.va,
                c.result.oracle,
                expected,
                _describe(c.result, describe_result(c.result)),
                c.verdict.agree,
                why=c.verdict.why,
            )
        )
    return out


def pf_reason(code: int) -> str:
    """A page-fault error code in words: ``0x15`` is "protection, user, fetch"."""
    words = ["protection" if code & 1 else "not present"]
    words += [w for bit, w in ((1, "write"), (2, "user"), (3, "reserved bit"), (4, "fetch"))
              if code >> bit & 1]  # fmt: skip
    return ", ".join(words)


def _describe(result: Result, plain: str) -> str:
    """What the CPU did, with a read's tag decoded into the physical address it names."""
    from kvmpage.verify.probes import TAG_PREFIX

    if result.fault is not None and result.fault.vector == 14:
        return f"{plain} ({pf_reason(result.fault.error_code)})"
    if result.fault is not None or not result.ok:
        return plain
    if result.op.name.lower() == "write":
        return "ok: write completed"
    if result.value >> 48 == TAG_PREFIX >> 48:
        return f"ok: reached physical {result.value & ((1 << 48) - 1):#x} (its tag)"
    return plain


def walk_json(w: Walk, cpu: CpuState) -> dict[str, Any]:
    return {
        "steps": [
            {
                "level": s.level,
                "table": LEVEL_NAMES[s.level],
                "index": s.index,
                "entry_addr": hexa(s.entry_addr),
                "raw": hexa(s.raw),
                "flag_names": flag_names(s.raw & ~ADDRESS_MASK & ((1 << 64) - 1)).split(),
                "rights_so_far": str(rights) if rights is not None else None,
            }
            for s, rights in zip(w.steps, rights_so_far(w.steps, cpu), strict=True)
        ],
        "phys": hexa(w.phys) if w.phys is not None else None,
        "page_size": w.page_size,
        "stop": w.reason or None,
    }


def _translate_text(built: BuiltLayout, va: int) -> str:
    """The mapper's own answer (`Translate.translate`), compactly: a second software opinion."""
    from kvmpage.paging.mapper.translate import Mapped

    addr: Any = built.mapper.depth.addr_type(va)  # (a VirtAddr57 at 5 levels)
    result = built.mapper.translate(addr)
    if isinstance(result, Mapped):
        frame = result.frame
        return (
            f"Mapped(frame {frame.start_address().as_u64():#x} {frame.size_type.DEBUG_STR}, "
            f"offset {result.offset:#x}, leaf flags {flag_names(int(result.flags)) or '-'})"
        )
    return type(result).__name__.removesuffix("Result") + "()"


def _walk_lines(built: BuiltLayout, va: int) -> tuple[Walk, list[str]]:
    cpu = built.spec.cpu
    w = walk(built.memory, built.p4_phys, va, cpu)
    lines = walk_lines(w, cpu)
    if not w.steps:
        return w, lines
    lines.append(f"  mapper.translate: {_translate_text(built, va)}")
    names = MappingNames(built.spec).of(va, va + 1)
    if names:
        where = f" ({printable(built.spec.source)})" if built.spec.source else ""
        lines.append(f"  in mapping {names[0]!r} of the layout{where}")
    return w, lines


def cmd_walk(args: argparse.Namespace) -> int:
    """``kvmpage walk VA [LAYOUT]``."""
    if args.layout is not None and args.va.endswith(".toml"):
        args.va, args.layout = args.layout, args.va  # ``walk LAYOUT VA``: forgive the order
    va = parse_va(args.va)
    spec = load_spec(args.layout)
    probes: list[HardwareProbe] = []
    translated: int | None = None
    kvm_line = ""
    note = "(software walk only: no hardware check)"
    if args.software_only:
        from kvmpage.cli.placement import alloc_end

        built = build(spec, alloc_end=alloc_end(spec))
        try:
            w, lines = _walk_lines(built, va)
            head, layout = header(built), layout_json(built)
        finally:
            built.close()
    else:
        with (
            Progress.for_args(args.quiet) as progress,
            on_machine(spec, args.device, progress, oracle=args.oracle) as (
                machine,
                built,
                verifier,
            ),
        ):
            w, lines = _walk_lines(built, va)
            head, layout = header(built), layout_json(built)
            progress.stage("probing")
            if in_agent_slot(va, machine.agent_slot, spec.cpu.levels):
                note = (
                    f"(level-{spec.cpu.levels} slot {machine.agent_slot} is the guest agent's: "
                    "not probed)"
                )
            else:
                probes = hardware_probes(verifier, va)
                if w.steps and machine.translate_oracle:  # KVM's own walker too (the layout's CR3)
                    translated = machine.translate(va)
                    kvm_line = kvm_translate_line(translated)
    code = EXIT_FAIL if any(p.agree is False for p in probes) else EXIT_OK
    if args.json:
        emit_json(
            {
                "command": "walk",
                "exit_code": code,
                "va": hexa(va),
                "layout": layout,
                "walk": walk_json(w, spec.cpu),
                "kvm_translate": None if translated is None else hexa(translated),
                "hardware": probes_json(probes),
            }
        )
        return code
    print(head)
    print(cpu_line(spec.cpu))
    print("\n".join(lines))
    print_hardware(va, probes, kvm_line, note)
    return code


def probes_json(probes: list[HardwareProbe]) -> list[dict[str, Any]]:
    """The ``hardware`` list of the walk document."""
    return [
        {
            "access": p.access,
            "cpl": p.cpl,
            "va": hexa(p.va),
            "oracle": p.oracle,
            "expected": p.expected,
            "actual": p.actual,
            "agree": p.agree,
            "skipped": p.skipped or None,
        }
        for p in probes
    ]


def print_hardware(va: int, probes: list[HardwareProbe], kvm_line: str, note: str) -> None:
    """The six probes in words (or why there are none), then KVM_TRANSLATE's answer."""
    if not probes:
        print(note)
        return
    print(f"hardware, probing the page {va & ~0xFFF:#x} (read +0, write +8, fetch +0x40):")
    for p in probes:
        what = f"{p.access:<5} cpl{p.cpl}"
        if p.agree is None:
            print(f"  {what}  not run: {p.skipped}; software says {p.expected}")
            continue
        mark = "agree" if p.agree else "DISAGREE"
        print(f"  {what}  {p.actual:<64} [{p.oracle}] {mark}")
        if not p.agree:
            print(f"             software: {p.expected}; {p.why}")
    if kvm_line:
        print(kvm_line)


def kvm_translate_line(translated: int | None) -> str:
    return "  KVM_TRANSLATE (kvm-translate, addresses only): " + (
        "no valid translation" if translated is None else f"{translated:#x}"
    )
