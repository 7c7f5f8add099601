"""The ``kvmpage`` command.

    kvmpage verify [LAYOUT]       build a layout on KVM, check every mapping against the CPU
    kvmpage walk VA [LAYOUT]      one address level by level, then what the CPU did with it
    kvmpage dump [LAYOUT]         ptdump-style listing, the audit, --diff OTHER
    kvmpage host                  what this host's KVM can verify, and how that was established
    kvmpage fuzz                  random layouts and operations, every step verified on KVM
    kvmpage image info|strip      what a memory image holds; its page tables alone
    kvmpage matrix                the permission matrix: entry bits x CPU state x access, on KVM

LAYOUT is a TOML layout file (docs/layout.md); without it, the built-in layout. Exit status
(the table: docs/json-schema.md): 0 when the check passed, 1 when it ran and found a problem (a
disagreement; with ``--strict`` anything left unverified or an audit finding; a difference with
``dump --diff``), 2 when it could not run or could not write its output (the reason is one
line on stderr, and the JSON error document with ``--json``), 141 when the reader of stdout
went away, 128 + N after signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from kvmpage._early import COMMANDS
from kvmpage.cli.args import UsageError
from kvmpage.cli.errors import EXIT_ERROR
from kvmpage.cli.guard import (
    EXIT_BROKEN_PIPE,
    Interrupted,
    OutputError,
    discard_stdout,
    guarded_output,
    printable,
    say,
    signal_handlers,
)
from kvmpage.cli.parser import build_parser

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    if args.func == "verify":
        if args.image is not None:
            from kvmpage.cli.image_verify import cmd_verify_image

            args.all_leaves = args.all_leaves or args.all  # --all: every leaf, as --all-leaves
            return cmd_verify_image(args)
        _layout_only(args, "all_leaves")
        if args.oracle == "both":
            from kvmpage.cli.verify_both import cmd_verify_both

            return cmd_verify_both(args)
        from kvmpage.cli.verify_cmd import cmd_verify

        return cmd_verify(args)
    if args.func == "walk":
        if args.image is not None:
            from kvmpage.cli.image_walk import cmd_walk_image

            _no_layout(args)
            return cmd_walk_image(args)
        _layout_only(args)
        from kvmpage.cli.walk_cmd import cmd_walk

        return cmd_walk(args)
    if args.func == "dump":
        if args.image is not None:
            from kvmpage.cli.image_dump import cmd_dump_image

            _no_layout(args)
            return cmd_dump_image(args)
        _layout_only(args, "range", "diff_cr3", "include_recursive")
        from kvmpage.cli.dump_cmd import cmd_dump

        return cmd_dump(args)
    if args.func in ("image-info", "image-strip"):
        from kvmpage.cli.image_cmd import cmd_image

        return cmd_image(args)
    if args.func == "fuzz":
        from kvmpage.cli.fuzz_cmd import cmd_fuzz

        return cmd_fuzz(args)
    if args.func == "matrix":
        from kvmpage.cli.matrix_cmd import cmd_matrix

        return cmd_matrix(args)
    from kvmpage.cli.host_cmd import cmd_host

    return cmd_host(args)


def _no_layout(args: argparse.Namespace) -> None:
    """--image replaces LAYOUT: both is a mistake."""
    from kvmpage.cli.errors import CliError

    if getattr(args, "layout", None) is not None:
        raise CliError(f"give either LAYOUT ({args.layout}) or --image, not both")


def _layout_only(args: argparse.Namespace, *names: str) -> None:
    """Options that only mean something for an image, or the CPU options, without --image."""
    from kvmpage.cli.errors import CliError

    for name in (*names, "cpu", "cr3", "cr0", "cr4", "efer"):
        value = getattr(args, name, None)
        if value not in (None, False):
            raise CliError(f"--{name.replace('_', '-')} needs --image FILE (a memory image)")
    if getattr(args, "format", "text") != "text":
        raise CliError("--format ptdump needs --image FILE (a memory image)")


def _reason(e: BaseException, command: str) -> str:
    """The message a user sees for an error that stops a command: one line, control characters
    escaped (a layout file's names appear in it); a guest crash keeps its register dump."""
    from kvmpage.machine import KvmError
    from kvmpage.machine.errors import GuestCrashError, format_dump

    if isinstance(e, KvmError):
        other = "kvmpage walk --software-only" if command == "walk" else "kvmpage dump"
        return printable(f"{e} ({other} works without KVM)")
    if isinstance(e, GuestCrashError):
        dump = format_dump(e.dump)
        return printable(str(e).removesuffix("\n" + dump)) + "\n" + dump
    if isinstance(e, MemoryError):
        return "out of memory" + (f": {printable(str(e))}" if str(e) else "")
    return printable(str(e))


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON, also when argparse cannot parse it (then the
    usage error is the JSON error document): ``--json``, ``--json=...``, or an abbreviation
    argparse would accept (``--js``), before any ``--``."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return any(w.startswith("--j") and "--json".startswith(w.split("=")[0]) for w in words)


def _command_of(argv: Sequence[str]) -> str | None:
    """The command the line names (``image info`` with its action), or None."""
    for i, word in enumerate(argv):
        if word in COMMANDS:
            action = next((a for a in argv[i + 1 :] if a in ("info", "strip")), None)
            return f"image {action}" if word == "image" and action else word
    return None


def _error_json(command: str | None, code: int, reason: str) -> None:
    """The JSON error document (also for a usage error or a signal), if stdout still works."""
    from kvmpage.cli.output import SCHEMA_VERSION

    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "exit_code": code,
        "error": reason,
    }
    try:
        print(json.dumps(doc, indent=2), flush=True)
    except OutputError:
        discard_stdout()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kvmpage`` console script; returns the exit status.

    Whatever happens, the user gets one line on stderr (and with ``--json`` one JSON document on
    stdout) and a true exit status, never a traceback: see the module docstring for the codes.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(words)
    as_json = _wants_json(words)
    with signal_handlers(command or "") as signals, guarded_output() as stdout:
        try:
            args = build_parser().parse_args(words)
            as_json = bool(getattr(args, "json", as_json))
            code = _run(args)
            if signals.received:  # a handler's exception that some code swallowed
                raise Interrupted(signals.received[0])
            sys.stdout.flush()
            return code
        except SystemExit:  # --help, --version: argparse printed what was asked
            try:
                sys.stdout.flush()
            except OutputError as e:
                discard_stdout()
                return EXIT_BROKEN_PIPE if e.broken_pipe else EXIT_ERROR
            raise
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            line = signals.report(signum)
            if as_json and not stdout.started:
                _error_json(command, 128 + signum, line.split(": ", 1)[1])
            try:  # what was printed so far; a second signal ends a flush that blocks
                sys.stdout.flush()
            except OutputError:
                discard_stdout()
            return 128 + signum
        except OutputError as e:
            discard_stdout()
            if e.broken_pipe:  # the reader went away (``kvmpage dump | head``): stop quietly
                return EXIT_BROKEN_PIPE
            say(f"kvmpage{f' {command}' if command else ''}: error: {e}")
            return EXIT_ERROR
        except UsageError as e:
            prog = f"kvmpage {command}" if e.prog == "kvmpage" and command else e.prog
            reason = printable(f"{e} (see '{prog} --help')")
            say(f"{prog}: error: {reason}")
            if as_json:
                _error_json(command, EXIT_ERROR, reason)
            return EXIT_ERROR
        except Exception as e:
            return _failed(e, command or "", as_json)


def _failed(e: Exception, command: str, as_json: bool) -> int:
    """Exit status 2 and the reason, for an error that stopped the command."""
    from kvmpage.cli.errors import CliError
    from kvmpage.layout.spec import LayoutError
    from kvmpage.machine.errors import MachineError
    from kvmpage.panic import Panic

    known = (CliError, LayoutError, Panic, OSError, MachineError, RuntimeError, ValueError)
    if isinstance(e, (*known, MemoryError)):
        reason = _reason(e, command)
    else:  # a bug: still one line, and the traceback on request
        if os.environ.get("KVMPAGE_TRACEBACK") == "1":
            import traceback

            traceback.print_exception(e)
        reason = printable(
            f"internal error: {type(e).__name__}: {e} (KVMPAGE_TRACEBACK=1 shows where; "
            "please report it)"
        )
    say(f"kvmpage {command}: error: {reason}")
    if as_json:
        _error_json(command, EXIT_ERROR, reason)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
