"""What the command-line tests share: the JSON schema's validator, running ``kvmpage`` in
process, and a deliberately wrong software walk for the tests that must see a disagreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kvmpage.cli import main
from kvmpage.verify import Predictor
from kvmpage.verify.probes import Probe

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
SCHEMA = json.loads((ROOT / "docs" / "json-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``kvmpage ARGV`` in this process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """``kvmpage ARGV --json``: the exit status and the document, checked against the schema
    and against the exit status it reports."""
    code, out, _ = run(capsys, *argv, "--json")
    doc: dict[str, Any] = json.loads(out)
    VALIDATOR.validate(doc)
    assert doc["exit_code"] == code and doc["schema_version"] == 2
    return code, doc


class IgnoresNx(Predictor):
    """A deliberately wrong software walk: NX is never honoured."""

    def walk_of(self, probe: Probe) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entries, addrs = super().walk_of(probe)
        return tuple(e & ~(1 << 63) for e in entries), addrs
