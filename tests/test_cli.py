"""The ``kvmpage`` command: exit codes, output, JSON documents checked against the schema.

Software-only commands run anywhere; those that need /dev/kvm are marked ``kvm``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from cli_support import SCHEMA, VALIDATOR, run, run_json

from kvmpage.cli import main
from kvmpage.cli.progress import Progress

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


def test_schema_is_a_valid_json_schema_and_rejects_drift() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    bad = {"schema_version": 2, "command": "dump", "exit_code": 0}
    assert not VALIDATOR.is_valid(bad)
    assert not VALIDATOR.is_valid({"schema_version": 1, "command": "host", "exit_code": 0})


# -- dump (software only) -----------------------------------------------------------------------


def test_dump_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "dump")
    assert code == 0 and err == ""
    assert out.startswith("layout 'builtin': offset mapper")
    assert "0x0000000000400000-0x0000000000403fff    16K  4x4K" in out
    assert "U r-x" in out and "10 runs" in out
    # the built-in physical-memory window makes code writable through a second address, and
    # the page tables writable (the direct map of a kernel does the same)
    assert "audit: 3 findings (table-writable 1, w+x-alias 2)" in out


def test_dump_json_matches_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "dump")
    assert code == 0 and doc["command"] == "dump"
    assert doc["runs"][0]["virt"] == "0x400000" and doc["runs"][0]["rights_text"] == "U r-x"
    assert {f["kind"] for f in doc["audit"]} == {"w+x-alias", "table-writable"}
    assert doc["mapped_bytes"] == sum(r["size"] for r in doc["runs"])


def test_dump_strict_fails_on_a_w_x_alias(capsys: pytest.CaptureFixture[str]) -> None:
    layout = str(EXAMPLES / "wx-alias.toml")
    code, out, _ = run(capsys, "dump", layout)
    assert code == 0 and "audit: 1 finding (w+x-alias 1)" in out
    code, out, _ = run(capsys, "dump", layout, "--strict")
    assert code == 1
    code, doc = run_json(capsys, "dump", layout, "--strict")
    assert code == 1 and doc["audit"][0]["kind"] == "w+x-alias"


def test_dump_clean_layout_has_no_finding(capsys: pytest.CaptureFixture[str]) -> None:
    hardened = str(EXAMPLES / "kernel-hardened.toml")
    code, out, _ = run(capsys, "dump", hardened, "--strict")
    # its direct map, like a kernel's, makes the page tables writable: the only finding
    assert code == 1 and "audit: 1 finding (table-writable 1)" in out
    code, out, _ = run(capsys, "dump", hardened, "--strict", "--allow", "table-writable")
    assert code == 0 and "audit: no finding" in out


def test_dump_diff(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = str(EXAMPLES / "kernel-hardened.toml"), str(EXAMPLES / "kernel.toml")
    code, out, _ = run(capsys, "dump", a, "--diff", b)
    assert code == 1
    assert f"--- {a}" in out and f"+++ {b}" in out
    assert "~ 0xffff888003000000-0xffff8880031fffff     2M  flags, rights:" in out
    code, doc = run_json(capsys, "dump", a, "--diff", b)
    assert code == 1 and len(doc["diff"]["changes"]) == 2
    assert run(capsys, "dump", a, "--diff", a)[0] == 0
    assert "(no differences)" in run(capsys, "dump", "--diff", "builtin")[1]


# -- walk, software only ------------------------------------------------------------------------


def test_walk_software_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "walk", "0x601234", "--software-only")
    assert code == 0
    assert "PML4 [  0]" in out and "PT   [  1]" in out and "so far: U rw-" in out
    assert "-> physical 0xa234 (4 KiB page)" in out
    assert "mapper.translate: Mapped(frame 0xa000 4KiB, offset 0x234" in out
    assert "no hardware check" in out
    code, doc = run_json(capsys, "walk", "0x603000", "--software-only")
    assert doc["walk"]["phys"] is None and "not present" in doc["walk"]["stop"]
    assert doc["hardware"] == []


def test_walk_non_canonical_software_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "walk", "0x800000000000", "--software-only")
    assert code == 0 and "not canonical" in out


@pytest.mark.parametrize("va", ["hello", "0x1_0000_0000_0000_0000", "-5"])
def test_walk_bad_address_exits_2(capsys: pytest.CaptureFixture[str], va: str) -> None:
    code, out, err = run(capsys, "walk", va, "--software-only")
    assert code == 2 and out == ""
    assert err.startswith("kvmpage walk: error: VA must") and "Traceback" not in err


# -- errors, help ------------------------------------------------------------------------------


def test_bad_layout_file_exits_2_with_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mapping]]\nname = "x"\nvirt = 0x1000\nflags = ["WRITEABLE"]\n')
    for command in (["dump"], ["verify"], ["walk", "0x1000"]):
        code, out, err = run(capsys, *command, str(bad))
        assert code == 2 and out == ""
        assert f"error: {bad}: [[mapping]] #1 (x), key 'flags': unknown flag 'WRITEABLE'" in err
    code, doc = run_json(capsys, "dump", str(bad))
    assert code == 2 and "WRITEABLE" in doc["error"]


def test_missing_layout_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dump", "no-such-layout.toml")
    assert code == 2 and "no-such-layout.toml: cannot read the layout file" in err


@pytest.mark.parametrize("command", [["verify"], ["walk", "0x1000"], ["host"]])
def test_no_kvm_device_exits_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], command: list[str], tmp_path: Path
) -> None:
    device = str(tmp_path / "kvm")
    code, out, err = run(capsys, *command, "--device", device)
    assert code == 2 and out == ""
    assert err.startswith(f"kvmpage {command[0]}: error:") and device in err
    assert ("--software-only" if command[0] == "walk" else "kvmpage dump") in err
    assert "Traceback" not in err
    code, doc = run_json(capsys, *command, "--device", device)
    assert code == 2 and device in doc["error"]


@pytest.mark.parametrize("command", [[], ["verify"], ["walk"], ["dump"], ["host"]])
def test_help_has_examples(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "kvmpage" in out
    if command and command[0] != "host":
        assert "exit status" in out


# -- progress ---------------------------------------------------------------------------------


def test_progress_shows_only_after_the_delay_and_erases_itself() -> None:
    stream = io.StringIO()
    with Progress(enabled=True, delay=0.05, stream=stream) as p:
        p.stage("probing")
        deadline = time.monotonic() + 60  # a hang guard: the line shows once its thread runs
        while "probing (" not in stream.getvalue():
            assert time.monotonic() < deadline, "the progress line never showed"
            time.sleep(0.01)
    text = stream.getvalue()
    assert "probing (" in text and text.endswith("\r\033[K")
    quick = io.StringIO()
    with Progress(enabled=True, delay=5, stream=quick):
        pass
    assert quick.getvalue() == ""
    silent = io.StringIO()
    with Progress(enabled=False, delay=0, stream=silent):
        time.sleep(0.05)
    assert silent.getvalue() == ""


def test_progress_is_off_when_stderr_is_not_a_terminal() -> None:
    assert not Progress.for_args(quiet=False).enabled  # pytest captures stderr
    assert not Progress.for_args(quiet=True).enabled


# -- the console script ------------------------------------------------------------------------


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("kvmpage")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvmpage.cli"]


def test_console_script_dump_and_error() -> None:
    ok = subprocess.run([*_script(), "dump"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "10 runs" in ok.stdout
    bad = subprocess.run(
        [*_script(), "dump", "nope.toml"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.toml" in bad.stderr
    module = subprocess.run(
        [sys.executable, "-m", "kvmpage.cli", "dump", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert module.returncode == 0 and VALIDATOR.is_valid(json.loads(module.stdout))


def test_console_script_survives_a_closed_pipe() -> None:
    proc = subprocess.Popen(
        [*_script(), "dump", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    # 141: the reader went away (0 when the whole document fitted in the pipe before)
    assert proc.wait(timeout=30) in (0, 141)
    assert proc.stderr.read() == ""


def test_walk_accepts_the_layout_first(capsys: pytest.CaptureFixture[str]) -> None:
    layout = str(EXAMPLES / "kernel.toml")
    code, out, _ = run(capsys, "walk", layout, "0x600000", "--software-only")
    assert code == 0 and "in mapping 'user-data'" in out


MALFORMED = {
    "overlap": (
        '[[mapping]]\nname = "a"\nvirt = 0x400000\ncount = 4\n'
        '[[mapping]]\nname = "b"\nvirt = 0x402000\n',
        "[[mapping]] #2 (b), key 'virt': 0x402000..0x402fff overlaps mapping 'a'",
    ),
    "misaligned": (
        '[[mapping]]\nname = "a"\nvirt = 0x401000\npage_size = "2M"\n',
        "[[mapping]] #1 (a), key 'virt': virtual start 0x401000 is not aligned to 2MiB",
    ),
    "non-canonical": (
        '[[mapping]]\nname = "a"\nvirt = 0x1234_0000_0000_0000\n',
        "key 'virt': 0x1234000000000000 is not canonical",
    ),
    "outside-memory": (
        'memory = "16M"\n[[mapping]]\nname = "a"\nvirt = 0x400000\nphys = 0x2000000\n',
        "key 'phys': physical range 0x2000000..0x2000fff is outside guest memory",
    ),
    "agent-memory": (
        'memory = "16M"\n[[mapping]]\nname = "a"\nvirt = 0x400000\nphys = 0xf00000\n',
        "overlaps the guest agent's reserved memory",
    ),
    "agent-slot": (
        'agent_slot = 511\n[[mapping]]\nname = "a"\nvirt = 0xffff_ff80_0000_1000\n',
        "key 'virt': touches level-4 slot 511",
    ),
    "unknown-flag": (
        '[[mapping]]\nname = "a"\nvirt = 0x1000\nflags = ["EXECUTE"]\n',
        "key 'flags': unknown flag 'EXECUTE'",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["verify", "dump"])
def test_malformed_layout_files_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str, command: str
) -> None:
    text, expected = MALFORMED[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    code, out, err = run(capsys, command, str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"kvmpage {command}: error: {path}: ") and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_diff_with_a_bad_layout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dump", "--diff", "missing.toml")
    assert code == 2 and "missing.toml: cannot read" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("kvmpage ")
