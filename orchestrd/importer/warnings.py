"""Import warnings: what could not be turned into a check, with file and line, summarised
per kind."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

from ..audit import printable

MAX_WARNINGS_PER_KIND = 20
# a warning's kind: its message without what it quotes and without numbers
_WARNING_KIND = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\d+")
UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_CLOSERS = {"if": "fi", "case": "esac", "{": "}", "for": "done", "while": "done", "until": "done"}


@dataclasses.dataclass(frozen=True)
class ParseWarning:
    """Something in a phase file the importer did not turn into a plan field or a check."""

    file: Path
    line: int  # 1-based; 1 when it concerns the whole file
    message: str

    def __str__(self) -> str:
        # file names and quoted lines are someone else's bytes: nothing raw to a terminal
        return printable(f"{self.file}:{self.line}: warning: {self.message}")


class Warnings:
    """The import's warnings, at most MAX_WARNINGS_PER_KIND of a kind (a message with its
    quoted parts and numbers left out); the others are counted and summarised, so a file with
    a million odd lines costs neither a million lines on stderr nor in the plan's header."""

    def __init__(self) -> None:
        self.shown: list[ParseWarning] = []
        self.total = 0
        self._count: Counter[str] = Counter()
        self._first: dict[str, ParseWarning] = {}

    def add(self, warning: ParseWarning) -> None:
        kind = _WARNING_KIND.sub("_", warning.message)
        self.total += 1
        self._count[kind] += 1
        self._first.setdefault(kind, warning)
        if self._count[kind] <= MAX_WARNINGS_PER_KIND:
            self.shown.append(warning)

    def __iadd__(self, warnings: list[ParseWarning]) -> Warnings:
        for w in warnings:
            self.add(w)
        return self

    def summarised(self) -> list[ParseWarning]:
        """The warnings shown, then one line per kind with more: how many, and the first."""
        more = [
            ParseWarning(first.file, first.line, f"{self._count[kind] - MAX_WARNINGS_PER_KIND} "
                         f"more warning(s) like this one, not shown: {first.message}")
            for kind, first in self._first.items() if self._count[kind] > MAX_WARNINGS_PER_KIND
        ]  # fmt: skip
        return self.shown + more
