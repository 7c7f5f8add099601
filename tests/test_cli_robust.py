"""The command line under abuse: bad numbers, usage errors with ``--json``, output that cannot
be written (a full disk, a reader that went away), control characters in a layout file, and
a reproducer directory that cannot be written. One line on stderr, a true exit status, a JSON
document with ``--json``, never a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpage.cli import main

ROOT = Path(__file__).parent.parent
VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((ROOT / "docs" / "json-schema.json").read_text())
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    assert "Traceback" not in err
    return err.rstrip("\n")


# -- numbers on the command line -----------------------------------------------------------

BAD_NUMBERS = [
    ("fuzz", "--seconds", "-5"),
    ("fuzz", "--seconds", "0"),
    ("fuzz", "--seconds", "nan"),
    ("fuzz", "--seconds", "inf"),
    ("fuzz", "--seconds=-inf", "-inf"),  # (argparse reads a bare -inf as an option)
    ("fuzz", "--seconds", "1e400"),
    ("fuzz", "--seconds", "soon"),
    ("fuzz", "--cases", "0"),
    ("fuzz", "--cases", "-3"),
    ("fuzz", "--cases", "1.5"),
    ("fuzz", "--length", "0"),
    ("fuzz", "--length", "100000"),
    ("fuzz", "--seed", "-1"),
    ("fuzz", "--seed", str(1 << 32)),
    ("fuzz", "--seed", "x"),
    ("verify", "--limit", "-1"),
    ("verify", "--seed", "-1"),
    ("verify", "--seed", str(1 << 64)),
    ("dump", "--limit", "-1"),
    ("dump", "--limit", "ten"),
]


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=[" ".join(a) for a in BAD_NUMBERS])
def test_every_bad_number_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    words = argv[:2] if "=" in argv[1] else argv
    option = argv[1].split("=")[0]
    code, out, err = run(capsys, *words)
    line = one_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"kvmpage {argv[0]}: error: argument {option}: expected "), line
    assert repr(argv[2]) in line
    code, out, err = run(capsys, *words, "--json")
    doc = json.loads(out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["exit_code"] == 2 and doc["command"] == argv[0]
    assert option in doc["error"]
    one_line(err)


def test_good_numbers_still_parse(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "dump", "--limit", "0")[0] == 0
    assert run(capsys, "dump", "--limit", "0x10")[0] == 0


# -- usage errors with --json --------------------------------------------------------------

USAGE = [
    (["dump", "--bogus"], "dump", "unrecognized arguments: --bogus"),
    (["walk"], "walk", "required: VA"),
    (["verify", "--seed"], "verify", "expected one argument"),
    (["dump", "a.toml", "b.toml"], "dump", "unrecognized arguments: b.toml"),
    (["nope"], None, "invalid choice: 'nope'"),
    ([], None, "required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "command", "fragment"), USAGE)
def test_usage_errors_answer_with_the_json_error_document(
    capsys: pytest.CaptureFixture[str], argv: list[str], command: str | None, fragment: str
) -> None:
    code, out, err = run(capsys, *argv, "--json")
    doc = json.loads(out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["exit_code"] == 2 and doc["command"] == command
    assert fragment in doc["error"] and "--help" in doc["error"]
    one_line(err)
    code, out, err = run(capsys, *argv)  # without --json: the same line, no usage block
    assert code == 2 and out == "" and fragment in one_line(err)


# -- output that cannot be written ---------------------------------------------------------


class FailingStdout(io.StringIO):
    """A stdout whose writes fail with ``err`` once ``after`` characters went through."""

    def __init__(self, err: int, after: int = 0) -> None:
        super().__init__()
        self.err = err
        self.after = after

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.after:
            raise OSError(self.err, os.strerror(self.err))
        return super().write(text)


SOFTWARE_COMMANDS = [
    ["dump"],
    ["dump", "--json"],
    ["walk", "0x601234", "--software-only"],
    ["walk", "0x601234", "--software-only", "--json"],
    ["dump", "--help"],
]
KVM_COMMANDS = [
    ["verify"],
    ["verify", "--json"],
    ["walk", "0x601234"],
    ["walk", "0x601234", "--json"],
    ["host"],
    ["host", "--json"],
    ["fuzz", "--cases", "1", "--seconds", "30"],
    ["fuzz", "--cases", "1", "--seconds", "30", "--json"],
]


@pytest.mark.parametrize("argv", SOFTWARE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("err", [errno.EPIPE, errno.ENOSPC, errno.EIO])
def test_output_errors_are_an_exit_status_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    err: int,
) -> None:
    for after in (0, 200):  # at the first write, and in the middle of the output
        monkeypatch.setattr(sys, "stdout", FailingStdout(err, after))
        code = main(argv)
        stderr = capsys.readouterr().err
        if err == errno.EPIPE:
            assert code == 141 and stderr == ""
        else:
            line = one_line(stderr)
            assert code == 2 and f"cannot write the output: {os.strerror(err)}" in line


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("kvmpage")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kvmpage.cli"]


def _to_full_and_closed(argv: list[str]) -> list[tuple[str, int, str]]:
    """Run ``argv`` with stdout on /dev/full and on a pipe already closed by its reader, in
    parallel; (how, exit status, stderr) of each."""
    procs = []
    with open("/dev/full", "w") as full:
        procs.append(("full", subprocess.Popen([*_script(), *argv], stdout=full,
                                               stderr=subprocess.PIPE, text=True)))  # fmt: skip
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    procs.append(("closed pipe", subprocess.Popen([*_script(), *argv], stdout=write,
                                                  stderr=subprocess.PIPE, text=True)))  # fmt: skip
    os.close(write)
    return [(how, p.wait(timeout=120), p.communicate()[1]) for how, p in procs]


def _check_outcomes(outcomes: list[tuple[str, int, str]]) -> None:
    for how, code, err in outcomes:
        assert "Traceback" not in err and "Exception ignored" not in err, (how, err)
        progress = [line for line in err.splitlines() if line.startswith("fuzz")]  # fuzz's log
        rest = "".join(f"{line}\n" for line in err.splitlines() if line not in progress)
        if how == "full":
            assert code == 2, (how, code, err)
            assert "cannot write the output: No space left on device" in one_line(rest)
        else:
            assert code == 141 and rest == "", (how, code, err)


@pytest.mark.parametrize("argv", SOFTWARE_COMMANDS, ids=" ".join)
def test_the_console_script_to_a_full_disk_and_a_closed_pipe(argv: list[str]) -> None:
    _check_outcomes(_to_full_and_closed(argv))


@pytest.mark.kvm
@pytest.mark.parametrize("argv", KVM_COMMANDS, ids=" ".join)
def test_every_kvm_command_to_a_full_disk_and_a_closed_pipe(
    argv: list[str], tmp_path: Path
) -> None:
    if argv[0] == "fuzz":
        argv = [*argv, "--save", str(tmp_path)]
    _check_outcomes(_to_full_and_closed(argv))


# -- control characters from a layout file -------------------------------------------------

EVIL = ["forged\r\nhardware agrees: all fine", "\x1b[2J\x1b[31mred", "line\u2028sep", "rtl\u202e"]


def _evil_layout(tmp_path: Path, name: str = "evil.toml") -> Path:
    lines = [f'name = "{json.dumps(EVIL[0])[1:-1]}"']
    for i, text in enumerate(EVIL):
        lines += ["[[mapping]]", f"name = {json.dumps(text)}", f"virt = {0x400000 + i * 0x2000:#x}"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _no_control_characters(text: str) -> None:
    for ch in text:
        assert ch == "\n" or (ch.isprintable() and ch not in "\u202e\u2028"), repr(ch)


def test_names_with_control_characters_cannot_forge_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _evil_layout(tmp_path)
    code, out, err = run(capsys, "dump", str(path))
    assert code == 0 and err == ""
    _no_control_characters(out)
    assert not any(line.startswith("hardware agrees") for line in out.splitlines())
    assert "forged\\r\\nhardware agrees: all fine" in out and "\\x1b[2J\\x1b[31mred" in out
    assert "line\\u2028sep" in out and "rtl\\u202e" in out
    code, out, _ = run(capsys, "dump", str(path), "--json")  # JSON keeps the names exactly
    names = {n for r in json.loads(out)["runs"] for n in r["mappings"]}
    assert names == set(EVIL)


def test_control_characters_in_errors_and_paths(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[mapping]]\nname = "x\\ny: error: forged"\nvirt = 0x1000\nflags = ["NOPE"]\n')
    code, out, err = run(capsys, "dump", str(path))
    line = one_line(err)
    assert code == 2 and "x\\ny: error: forged" in line
    weird = _evil_layout(tmp_path, "we\nird\x1b.toml")
    code, out, err = run(capsys, "dump", str(weird))
    assert code == 0 and "we\\nird\\x1b.toml" in out.splitlines()[0]
    _no_control_characters(out)
    code, out, err = run(capsys, "walk", "0x400000", str(weird), "--software-only")
    assert code == 0 and "we\\nird\\x1b.toml" in out
    _no_control_characters(out)


# -- fuzz --save ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    ["missing-parent/sub", "a-file", "a-file/sub"],
)
def test_fuzz_save_is_checked_before_the_campaign(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / where
    code, out, err = run(capsys, "fuzz", "--seconds", "600", "--save", str(target))
    line = one_line(err)
    assert code == 2 and out == "" and line.startswith(f"kvmpage fuzz: error: --save {target}")
    assert "fuzz: seed" not in err  # nothing ran


def test_fuzz_save_may_be_created_in_a_writable_parent(tmp_path: Path) -> None:
    from kvmpage.cli.fuzz_cmd import check_save_dir

    check_save_dir(tmp_path / "new")
    check_save_dir(tmp_path)
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_fuzz_save_json_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "fuzz", "--save", str(tmp_path / "x" / "y"), "--json")
    doc: dict[str, Any] = json.loads(out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["command"] == "fuzz" and "--save" in doc["error"]


@pytest.mark.kvm
def test_a_reproducer_that_cannot_be_saved_still_prints_the_disagreement(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmpage.cli import common
    from kvmpage.verify import Predictor, Probe, fuzz

    class WritableEverywhere(Predictor):
        def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
            entries, addrs = super().walk_of(probe)
            return tuple(e | 2 for e in entries), addrs

    def disk_full(failure: object, directory: Path) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(common, "PREDICTOR", WritableEverywhere)
    monkeypatch.setattr(fuzz, "save_reproducer", disk_full)
    argv = ["fuzz", "--seed", "5", "--cases", "1", "--seconds", "60", "--save", str(tmp_path)]
    code, out, _ = run(capsys, *argv, "--quiet")
    assert code == 1
    assert "DISAGREEING CASE: case seed" in out and "DISAGREE [" in out
    assert "software walk" in out and "hardware side" in out  # in full, with both walks
    assert "reproducer NOT saved: cannot save the reproducer" in out
    assert "No space left on device" in out
    code, doc = main([*argv, "--json"]), json.loads(capsys.readouterr().out)
    VALIDATOR.validate(doc)
    first = doc["failures"][0]
    assert code == 1 and first["reproducer"] is None and "No space left" in first["save_error"]
    assert first["disagreement"].startswith("DISAGREE [")
    assert "software walk" in first["disagreement"]


@pytest.mark.kvm
def test_a_campaign_that_made_no_probe_is_not_a_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "fuzz", "--seconds", "1e-9", "--save", str(tmp_path))
    assert code == 2 and "0 cases" in out and "made no probe" in err.splitlines()[-1]
    code, out, _ = run(capsys, "fuzz", "--seconds", "1e-9", "--save", str(tmp_path), "--json")
    doc = json.loads(out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["exit_code"] == 2 and doc["probes"] == 0 and "no probe" in doc["error"]


@pytest.mark.parametrize(
    ("redirect", "code", "fragment"),
    [(">&-", 2, "cannot write the output"), ("2>&-", 0, ""), (">&- 2>&-", 2, "")],
)
def test_a_command_started_without_stdout_or_stderr(
    redirect: str, code: int, fragment: str
) -> None:
    script = " ".join(_script())
    done = subprocess.run(["sh", "-c", f"{script} dump {redirect}"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == code and "Traceback" not in done.stderr
    assert "internal error" not in done.stderr and fragment in done.stderr


@pytest.mark.parametrize("flag", ["--json", "--js", "--json=1"])
def test_json_is_recognised_however_it_is_spelled(
    capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    code, out, err = run(capsys, "dump", "--bogus", flag)
    doc = json.loads(out)
    VALIDATOR.validate(doc)
    assert code == 2 and doc["command"] == "dump"
    assert one_line(err).startswith("kvmpage dump: error: ")


def test_a_bad_diff_layout_fails_before_anything_is_built(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmpage.cli import dump_cmd

    built: list[object] = []
    monkeypatch.setattr(dump_cmd, "snapshot", lambda spec: built.append(spec))
    code, _, err = run(capsys, "dump", "--diff", "missing.toml")
    assert code == 2 and "missing.toml" in one_line(err) and built == []


def test_strict_with_an_image_is_honoured_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    # (what --strict then does is tested in test_image_cli.py; a missing image is still exit 2)
    code, out, err = run(capsys, "verify", "--image", "guest.elf", "--strict")
    assert code == 2 and out == "" and "guest.elf: cannot open" in one_line(err)
