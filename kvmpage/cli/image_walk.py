"""``kvmpage walk --image FILE VA``: one address of a memory image, level by level, then what
the CPU does with it through the image's own tables (`kvmpage.verify.image_guest`)."""

from __future__ import annotations

import argparse

from kvmpage.cli.errors import EXIT_FAIL, EXIT_OK, CliError
from kvmpage.cli.image_dump import scan_view
from kvmpage.cli.image_source import (
    context_json,
    context_lines,
    image_json,
    image_line,
    open_source,
    regions_for,
    self_slots,
)
from kvmpage.cli.image_verify import image_oracles
from kvmpage.cli.output import emit_json, hexa
from kvmpage.cli.progress import Progress
from kvmpage.cli.walk_cmd import (
    HardwareProbe,
    hardware_probes,
    in_agent_slot,
    kvm_translate_line,
    parse_va,
    print_hardware,
    probes_json,
    walk_json,
)
from kvmpage.layout.walk import walk_lines
from kvmpage.verify import Verifier
from kvmpage.verify.image_guest import CannotVerify, image_on_machine, plan_guest


def cmd_walk_image(args: argparse.Namespace) -> int:
    """``kvmpage walk --image FILE VA``."""
    va = parse_va(args.va)
    image, ctx = open_source(args)
    try:
        w = image.walk(va, ctx)
        lines = walk_lines(w, ctx.cpu)
        region = regions_for(image, ctx, ()).name_of(va) if w.steps else ""
        if region:
            lines.append(f"  in region {region!r}")
        if w.phys is not None and not image.memory.contains(w.phys):
            lines.append(
                f"  (physical {w.phys:#x} is not in the image: the guest has no RAM there, so "
                "an access exits to kvmpage with that address, answered with its tag)"
            )
        probes: list[HardwareProbe] = []
        translated: int | None = None
        kvm_line = ""
        note = "(software walk only: no hardware check)"
        if not args.software_only:
            with Progress.for_args(args.quiet) as progress:
                progress.stage("starting a guest with the image's memory")
                view = scan_view(image, ctx)
                used = [(r.phys, r.phys + r.size) for r in view.runs]
                try:
                    (oracle,), _ = image_oracles(args.oracle, args.device, ctx)
                    plan = plan_guest(image, ctx, [oracle.profile],
                                      skip_top=self_slots(image, ctx), used=used)  # fmt: skip
                    with image_on_machine(image, ctx, plan, oracle) as guest:
                        if in_agent_slot(va, guest.agent_slot, ctx.levels):
                            note = f"(top-level slot {guest.agent_slot} is the guest agent's)"
                        else:
                            verifier = Verifier(
                                None, guest.machine, root=guest.root, skip_top=guest.skip_top,
                                cpu=guest.cpu,
                            )  # fmt: skip
                            progress.stage("probing")
                            probes = hardware_probes(verifier, va)
                            if w.steps and guest.machine.translate_oracle:
                                translated = guest.machine.translate(va)
                                kvm_line = kvm_translate_line(translated)
                except CannotVerify as e:
                    raise CliError(f"{image.path}: cannot probe on the CPU: {e} "
                                   "(--software-only walks it)") from None  # fmt: skip
        code = EXIT_FAIL if any(p.agree is False for p in probes) else EXIT_OK
        if args.json:
            emit_json(
                {
                    "command": "walk",
                    "exit_code": code,
                    "va": hexa(va),
                    "image": image_json(image),
                    "context": context_json(ctx),
                    "walk": walk_json(w, ctx.cpu),
                    "region": region or None,
                    "kvm_translate": None if translated is None else hexa(translated),
                    "hardware": probes_json(probes),
                }
            )
            return code
        print(image_line(image))
        print("\n".join(context_lines(ctx)))
        print("\n".join(lines))
        print_hardware(va, probes, kvm_line, note)
        return code
    finally:
        image.close()
