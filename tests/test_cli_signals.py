"""Ctrl-C and SIGTERM at every stage of a command, on real processes: starting up (the machine
is being created), building a large layout, inside ``KVM_RUN``, and while printing into a pipe
that is full. Each time: one line on stderr, exit status 130 (SIGINT) or 143 (SIGTERM), and
nothing left behind. The child runs ``kvmpage.cli.main`` and, before it exits, reports its own
descriptors and mappings on an extra pipe, so that a leak shows although the kernel would clean
up at exit anyway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).parent.parent
KVM_RUN = 0xAE80  # _IO(KVMIO, 0x80)

CHILD = r"""
import gc, json, os, sys
report = int(os.environ["KVMPAGE_TEST_REPORT_FD"])

def snapshot():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    kvm_maps, big = 0, 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if "kvm" in line:
                kvm_maps += 1
            if hi - lo >= 256 << 20 and len(parts) < 6:  # anonymous, as large as guest RAM
                big += 1
    return {"fds": fds, "kvm_maps": kvm_maps, "big": big}

from kvmpage.cli import main
before = snapshot()
os.write(report, b"R")  # ready: main starts now
code = main(sys.argv[1:])
gc.collect()
os.write(report, json.dumps({"before": before, "after": snapshot()}).encode())
os.close(report)
sys.exit(code)
"""


def _layout(tmp_path: Path, mappings: int = 1, memory: str = "512M") -> Path:
    """A 256 MiB heap of 4 KiB pages (long to verify), plus ``mappings - 1`` small ones."""
    lines = [f'memory = "{memory}"', "[[mapping]]", 'name = "heap"', "virt = 0x1_0000_0000",
             'length = "256M"', 'flags = ["W", "NX"]']  # fmt: skip
    for i in range(mappings - 1):
        lines += ["[[mapping]]", f'name = "m{i}"', f"virt = {0x100_0000_0000 + 2 * i * 4096:#x}"]
    path = tmp_path / "big.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _syscall(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return []


_KVM_SEEN: dict[int, float] = {}


def _in_kvm_run(pid: int) -> bool:
    """Whether the main thread is inside ``KVM_RUN``: blocked in that ioctl, or (a vCPU runs
    on the CPU, so it is rarely blocked) with the ioctl on its kernel stack. Where the stack
    cannot be read (not root), a second after it opened /dev/kvm, when it mostly runs."""
    words = _syscall(pid)
    if len(words) > 2 and words[0] == "16" and int(words[2], 16) == KVM_RUN:
        return True
    try:
        return "kvm_vcpu_ioctl" in Path(f"/proc/{pid}/stack").read_text()
    except PermissionError:
        if _opened_kvm(pid):
            return time.monotonic() - _KVM_SEEN.setdefault(pid, time.monotonic()) > 1.0
        return False
    except OSError:
        return False


def _writing_stdout(pid: int) -> bool:
    words = _syscall(pid)
    return len(words) > 1 and words[0] == "1" and int(words[1], 16) == 1


def _opened_kvm(pid: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/kvm":
                return True
        except OSError:
            continue
    return False


def _interrupt(
    argv: list[str],
    when: Callable[[int], bool] | float,
    signum: int = signal.SIGINT,
    *,
    stdout: int | None = subprocess.PIPE,
) -> tuple[int, str, str, dict[str, Any]]:
    """Run the command in a child, send ``signum`` once ``when(pid)`` holds (or ``when``
    seconds after main started); (exit status, stdout, stderr, the child's report)."""
    read, write = os.pipe()
    env = {**os.environ, "KVMPAGE_TEST_REPORT_FD": str(write)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        pass_fds=(write,),
        env=env,
        cwd=ROOT,
    )
    os.close(write)
    try:
        assert os.read(read, 1) == b"R"
        deadline = time.monotonic() + 60
        if callable(when):
            while not when(proc.pid):
                assert proc.poll() is None, "the command ended before the stage was reached"
                assert time.monotonic() < deadline, "the stage was never reached"
        else:
            time.sleep(when)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        data = b""
        while chunk := os.read(read, 1 << 16):
            data += chunk
    finally:
        os.close(read)
        if proc.poll() is None:
            proc.kill()
    report = json.loads(data) if data else {}  # none when main() did not return
    return proc.returncode, (out or b"").decode(), err.decode(), report


def _check(code: int, err: str, report: dict[str, Any], command: str, signum: int) -> None:
    word = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[signal.Signals(signum)]
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if not line.startswith("fuzz")]  # fuzz's log
    assert lines == [f"kvmpage {command}: {word} ({name})"], err
    assert code == 128 + signum
    assert report, f"main() did not return: {err}"
    before, after = report["before"], report["after"]
    assert after["fds"] == before["fds"], "descriptors left open"
    assert after["kvm_maps"] == 0 and after["big"] == before["big"], "mappings left behind"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_while_the_machine_starts(tmp_path: Path, signum: int) -> None:
    code, _, err, report = _interrupt(["verify", str(_layout(tmp_path))], _opened_kvm, signum)
    _check(code, err, report, "verify", signum)


def test_while_a_large_layout_is_built(tmp_path: Path) -> None:
    layout = _layout(tmp_path, mappings=40_000)  # about a second to read and build
    code, _, err, report = _interrupt(["dump", str(layout)], 0.4)
    _check(code, err, report, "dump", signal.SIGINT)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_inside_kvm_run(tmp_path: Path, signum: int) -> None:
    layout = _layout(tmp_path)
    code, _, err, report = _interrupt(["verify", str(layout), "--quiet"], _in_kvm_run, signum)
    _check(code, err, report, "verify", signum)


def test_inside_kvm_run_with_json(tmp_path: Path) -> None:
    code, out, err, report = _interrupt(["verify", str(_layout(tmp_path)), "--json"], _in_kvm_run)
    _check(code, err, report, "verify", signal.SIGINT)
    doc = json.loads(out)
    assert doc["exit_code"] == 130 and doc["error"] == "interrupted (SIGINT)"


def test_while_printing_into_a_full_pipe(tmp_path: Path) -> None:
    layout = _layout(tmp_path, mappings=20_000)  # 20,000 lines: more than a pipe holds
    code, out, err, report = _interrupt(["dump", str(layout)], _writing_stdout)
    _check(code, err, report, "dump", signal.SIGINT)
    assert out.startswith("layout 'big'")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_during_a_fuzz_campaign(tmp_path: Path, signum: int) -> None:
    argv = ["fuzz", "--seconds", "60", "--save", str(tmp_path), "--quiet"]
    code, _, err, report = _interrupt(argv, 1.0, signum)
    _check(code, err, report, "fuzz", signum)


def test_the_console_script_exits_130_with_one_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("kvmpage")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "kvmpage.cli"]
    proc = subprocess.Popen([*argv, "verify", str(_layout(tmp_path))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not _in_kvm_run(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "kvmpage verify: interrupted (SIGINT)\n"


def _early_child(argv: list[str], name: str = "kvmpage") -> subprocess.CompletedProcess[str]:
    """A process that looks like the console script (``sys.argv[0]``), imports kvmpage, and
    is interrupted before any command code runs."""
    code = (
        "import os, signal, sys, time\n"
        f"sys.argv = [{name!r}, *{argv!r}]\n"
        "import kvmpage\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(10)\n"
        "print('not stopped')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_a_signal_before_main_is_one_line_too() -> None:
    """The console script handles signals from the first line of kvmpage it runs (before
    that, the interpreter is still starting: that part is Python's)."""
    done = _early_child(["verify", "--json"])
    assert done.returncode == 130 and done.stderr == "kvmpage verify: interrupted (SIGINT)\n"
    doc = json.loads(done.stdout)
    assert doc == {"schema_version": 2, "command": "verify", "exit_code": 130,
                   "error": "interrupted (SIGINT)"}  # fmt: skip
    from kvmpage import _early
    from kvmpage.cli.output import SCHEMA_VERSION

    assert _early.SCHEMA_VERSION == SCHEMA_VERSION


def test_the_early_handler_knows_every_command() -> None:
    """The one list of command words names exactly the parser's subcommands (a new command
    missing from it would print its errors and signals without its name)."""
    import argparse

    from kvmpage import _early
    from kvmpage.cli.parser import build_parser as _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(_early.COMMANDS) == set(sub.choices)


def test_importing_kvmpage_as_a_library_leaves_signals_alone() -> None:
    done = _early_child(["verify"], name="my-program")
    assert done.returncode != 130 and "KeyboardInterrupt" in done.stderr
