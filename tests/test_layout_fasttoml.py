"""The fast reader of the plain TOML subset gives exactly what ``tomllib`` gives, or gives up.

Documents are assembled from lines in and out of the subset (and from lines that are not TOML
at all): wherever `fasttoml.loads` answers, the answer must equal ``tomllib.loads``; where
``tomllib`` refuses a document, `fasttoml.loads` must not accept it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpage.layout import fasttoml

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))

KEYS = ["name", "virt", "phys", "flags", "a", "b-c", "x_1", "true", "mapping", "cpu", "0"]
VALUES = [
    '"text"', '"with # hash"', '"tab\there"', '""', '"caf\u00e9"', "0", "+0", "-0", "42",
    "1_000", "-17", "0x400000", "0xffff_8880_0000_0000", "0xDEAD_beef", "true", "false",
    '["W", "NX"]', "[ ]", "[1, 2,]", '[ "a" , 3 , true ]',
    # outside the subset, valid TOML: tomllib decides
    "1.5", "'literal'", '"esc\\"aped"', "0o17", "0b101", "1979-05-27", "{ a = 1 }",
    '"""multi"""', "[[1], [2]]", "inf",
    # not TOML
    "00", "0X10", "-0x10", "1__0", "_1", '"unterminated', "[1, 2", "tru", "0x", '"a"b',
]  # fmt: skip
HEADERS = ["[mapper]", "[cpu]", "[[mapping]]", "[ mapper ]", "[[ mapping ]]", "[a.b]", '["q"]',
           "[[cpu]]", "[mapping]", "[]"]  # fmt: skip
EXTRA = ["", "   ", "# a comment", "\t# tabbed", "key =", "= 3", "a b = 1", "a = 1 2",
         'a = 1 # trailing', "a=1", "a\t=\t1", "a = 1\r", "\x07", "a = 1 # bell \x07"]  # fmt: skip

lines = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.sampled_from(HEADERS),
    st.sampled_from(EXTRA),
)


def _tomllib(text: str) -> dict[str, object] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


@settings(max_examples=600, deadline=None)
@given(st.lists(lines, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_the_fast_reader_agrees_with_tomllib_or_gives_up(body: list[str], newline: str) -> None:
    text = newline.join(body)
    fast = fasttoml.loads(text)
    if fast is not None:
        assert fast == _tomllib(text), text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_in_the_subset(path: Path) -> None:
    text = path.read_text()
    assert fasttoml.loads(text) == tomllib.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "a = 1\na = 2",  # a key twice
        "[mapper]\n[mapper]",  # a table twice
        "mapping = 3\n[[mapping]]",  # a value, then an array of tables of the same name
        "[cpu]\n[[cpu]]",
        "a = 1\n[a]",
        'a = "\\n"',  # an escape: tomllib's business
        "a = [\n1]",  # a multi-line array
    ],
)
def test_outside_the_subset_is_left_to_tomllib(text: str) -> None:
    assert fasttoml.loads(text) is None


def test_a_large_layout_reads_the_same() -> None:
    body = "\n".join(
        f'[[mapping]]\nname = "m{i}"\nvirt = {0x1000 * (i + 1):#x}\nflags = ["W", "NX"]\n'
        for i in range(2000)
    )
    assert fasttoml.loads(body) == tomllib.loads(body)
