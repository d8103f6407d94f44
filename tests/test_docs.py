"""The README stays true: its event table is the vocabulary, and every event the code emits is
in the vocabulary."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrd.audit import EVENTS

ROOT = Path(__file__).parent.parent


def test_readme_event_table_lists_exactly_the_vocabulary() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| event | meaning |") :]
    table = table[: table.index("\n\n")]
    listed = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, re.MULTILINE)
    assert listed == list(EVENTS)


def test_every_event_name_in_the_code_is_in_the_vocabulary() -> None:
    emitted: set[str] = set()
    for path in (ROOT / "orchestrd").rglob("*.py"):  # subpackages (orchestrd.web) too
        text = path.read_text(encoding="utf-8")
        emitted |= set(re.findall(r"\.(?:info|exception)\(\s*\"([a-z_]+\.[a-z_]+)\"", text))
        emitted |= set(re.findall(r"^\s+\w+\.\w+: \"([a-z]+\.[a-z_]+)\",$", text, re.MULTILINE))
    assert emitted, "the scan found no events: the pattern is stale"
    assert emitted - set(EVENTS) == set()
