"""A fast reader for the plain subset of TOML that layout files use; anything else is left to
``tomllib``.

``tomllib`` is a careful pure-Python parser: a layout of 60,000 mappings (300,000 lines) takes
it about a second, half the time ``kvmpage dump`` may spend on such a layout. Layout files
are written in a small, regular part of the language: bare keys, ``[table]`` and
``[[array-of-tables]]`` headers, and one-line values that are basic strings without escapes,
decimal or hexadecimal integers, booleans, and one-line arrays of those, with comments. `loads`
reads exactly that subset, line by line with one regular expression, several times faster;
it returns None as soon as a line (or a key defined twice, or a table redefined) falls
outside it, and the caller then parses the text with ``tomllib``, which also produces the
error message for a document that is not TOML. Where it answers, the answer is the one
``tomllib`` gives (``tests/test_layout_fasttoml.py`` checks that on the examples and on
generated documents).
"""

from __future__ import annotations

import re
from typing import Any

_WS = r"[ \t]*"
_KEY = r"[A-Za-z0-9_-]+"
_STRING = r'"[^"\\\x00-\x08\x0a-\x1f\x7f]*"'
_INT = r"0x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|[+-]?(?:0|[1-9](?:_?[0-9])*)"
_SCALAR = rf"(?:{_STRING}|{_INT}|true|false)"
_ARRAY = rf"\[{_WS}(?:{_SCALAR}{_WS},{_WS})*(?:{_SCALAR}{_WS})?\]"
_COMMENT = r"(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"
_LINE = re.compile(
    rf"{_WS}(?:(?P<key>{_KEY}){_WS}={_WS}(?P<value>{_SCALAR}|{_ARRAY})"
    rf"|\[\[{_WS}(?P<aot>{_KEY}){_WS}\]\]|\[{_WS}(?P<table>{_KEY}){_WS}\])?{_WS}{_COMMENT}"
)
_TOKEN = re.compile(rf"{_STRING}|{_INT}|true|false")


def _scalar(text: str) -> str | int | bool:
    first = text[0]
    if first == '"':
        return text[1:-1]
    if first == "t":
        return True
    if first == "f":
        return False
    return int(text.replace("_", ""), 0)


def loads(text: str) -> dict[str, Any] | None:
    """The document as ``tomllib.loads`` reads it, or None when it is outside the subset."""
    root: dict[str, Any] = {}
    current = root
    arrays_of_tables: set[str] = set()
    lines = text.split("\n")
    if lines[-1].endswith("\r"):
        return None  # a carriage return that does not end a line: tomllib says what is wrong
    match = _LINE.fullmatch
    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw  # CRLF line ends
        if not line:
            continue
        m = match(line)
        if m is None:
            return None
        key = m.group("key")
        if key is not None:
            if key in current:
                return None
            value = m.group("value")
            if value[0] == "[":
                current[key] = [_scalar(t) for t in _TOKEN.findall(value)]
            else:
                current[key] = _scalar(value)
            continue
        name = m.group("aot")
        if name is not None:
            if name not in root:
                root[name] = []
                arrays_of_tables.add(name)
            elif name not in arrays_of_tables:
                return None
            current = {}
            root[name].append(current)
            continue
        name = m.group("table")
        if name is not None:
            if name in root:
                return None
            current = root[name] = {}
    return root
