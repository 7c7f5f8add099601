"""Every rule id the code, the tests and docs/divergences.md cite is defined in docs/rules.md.

The ids (``MP-05``, ``L5-09``...) are how a reader gets from a test or a docstring to the rule it
depends on; an id that docs/rules.md does not define leads nowhere. Ranges (``MP-12..MP-15``)
cite their ends, so checking every id written checks those too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "rules.md"
#: a rule id: a family (A, P, T, FA, M, MP, R, C, TLB, I, L5, and 8 for the one outside them)
#: and two digits
ID = re.compile(r"\b(?:A|P|T|FA|M|MP|R|C|TLB|I|L5|8)-\d{2}\b")
DEFINED = re.compile(r"^- \*\*((?:A|P|T|FA|M|MP|R|C|TLB|I|L5|8)-\d{2})\*\*", re.M)


def _cited() -> dict[str, str]:
    """Each id cited anywhere but docs/rules.md, with the first file citing it."""
    out: dict[str, str] = {}
    here = Path(__file__).resolve()  # (this file writes made-up ids on purpose)
    files = [
        *(ROOT / "kvmpage").rglob("*.py"),
        *(p for p in (ROOT / "tests").glob("*.py") if p != here),
    ]
    files += [ROOT / "docs" / "divergences.md", ROOT / "README.md"]
    for path in sorted(files):
        for rule in ID.findall(path.read_text()):
            out.setdefault(rule, str(path.relative_to(ROOT)))
    return out


def test_every_cited_rule_id_is_defined() -> None:
    defined = set(DEFINED.findall(RULES.read_text()))
    cited = _cited()
    assert len(cited) > 150  # the pattern still finds what the sources cite
    missing = sorted(
        f"{rule} (cited in {where})" for rule, where in cited.items() if rule not in defined
    )
    assert not missing, "rule ids docs/rules.md does not define: " + ", ".join(missing)


def test_the_check_can_fail() -> None:
    assert ID.findall("see MP-05 and L5-09, not X-01") == ["MP-05", "L5-09"]
    assert "L5-99" not in set(DEFINED.findall(RULES.read_text()))
