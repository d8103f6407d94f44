"""Output judged whole as it streams: regexes searched in every byte a command prints, however
much of it its log file keeps — a test runner prints its summary last, exactly what a cut loses.

Patterns match within a bounded window (WINDOW characters of the lines before, whole lines
only), so memory stays flat; a match may not span more than that.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .fsutil import open_regular

WINDOW = 16 * 1024  # characters of earlier output a match may reach back into
READ_BYTES = 1024 * 1024  # one read of a file judged from disk
QUOTE_CHARS = 200  # of the line a match is on


@dataclasses.dataclass(frozen=True)
class Match:
    pattern: str
    line: int
    """1-based line of the match's start."""
    text: str
    """That line, stripped, at most QUOTE_CHARS characters."""


class StreamJudge:
    """Feed it chunks (bytes or text) in order, then `close()`: the first match of every
    pattern, with its line."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = {p: re.compile(p, re.MULTILINE) for p in dict.fromkeys(patterns)}
        self.found: dict[str, Match] = {}
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._window = ""
        """The last judged lines (at most WINDOW characters, from a line's start)."""
        self._line = 1
        """The line number of the window's first character."""
        self._pending = ""
        """The last, incomplete line (judged once it ends, or once it grows past WINDOW)."""

    def feed(self, chunk: bytes) -> None:
        self.feed_text(self._decoder.decode(chunk))

    def feed_text(self, text: str) -> None:
        text = self._pending + text
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < WINDOW:
            self._pending = text
            return
        cut = cut or len(text)  # one huge line: judged as it comes
        self._judge(text[:cut])
        self._pending = text[cut:]

    def close(self) -> dict[str, Match]:
        """Judge what is left; the first match of each pattern that matched."""
        self._judge(self._pending + self._decoder.decode(b"", final=True))
        self._pending = ""
        return self.found

    def _judge(self, new: str) -> None:
        if not new:
            return
        text = self._window + new
        for pattern, rx in self.patterns.items():
            if pattern in self.found:
                continue
            # a match that lies wholly in the window was found when it came in
            if m := rx.search(text):
                start = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.start())
                quote = text[start : end if end != -1 else len(text)].strip()[:QUOTE_CHARS]
                line = self._line + text.count("\n", 0, m.start())
                self.found[pattern] = Match(pattern, line, quote)
        keep = text[-WINDOW:]
        if len(keep) < len(text):
            start = keep.find("\n") + 1  # the window starts at a line's start: `^` stays true
            keep = keep[start:] if start else keep
        self._line += text.count("\n", 0, len(text) - len(keep))
        self._window = keep


def _pieces(path: Path, limit: int) -> Iterator[bytes]:
    """A file piece by piece; over `limit` bytes (a log the pump capped, written to directly
    besides) only its first and last `limit // 2`."""
    # never waits on a FIFO put where the log was: FileRefused for anything but a regular file
    fd, st = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = st.st_size
        left = limit // 2 if size > limit else size
        while left > 0 and (piece := f.read(min(READ_BYTES, left))):
            left -= len(piece)
            yield piece
        if size > limit:
            f.seek(size - limit // 2)
            while piece := f.read(READ_BYTES):
                yield piece


class OutputScanner:
    """A StreamJudge over a worker's output with every occurrence of `without` (the prompt an
    agent echoes) taken out first: the prompt is not the worker's output. Fed by the pump (the
    whole output, however much of it the log keeps) or from the log file."""

    def __init__(self, patterns: Iterable[str], without: str = "") -> None:
        self.judge = StreamJudge(patterns)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.without = without.strip()
        # the end of a piece may hold the start of `without`: it waits for the next piece
        self._hold = max(len(self.without) - 1, 0)
        self._blank = "\n" * self.without.count("\n")  # stands in for it: lines stay true
        self._carry = ""

    def feed(self, piece: bytes) -> None:
        text = self._carry + self._decoder.decode(piece)
        if self.without:
            text = text.replace(self.without, self._blank)
        self._carry = text[max(len(text) - self._hold, 0) :] if self._hold else ""
        self.judge.feed_text(text[: len(text) - len(self._carry)])

    def close(self) -> dict[str, Match]:
        text = self._carry + self._decoder.decode(b"", final=True)
        self.judge.feed_text(text.replace(self.without, self._blank) if self.without else text)
        return self.judge.close()


def scan_file(
    path: Path, patterns: Iterable[str], without: str = "", limit: int = 1 << 62
) -> dict[str, Match]:
    """Every pattern's first match in a whole file (its head and tail beyond `limit`), read
    piece by piece, without `without` (a thread: it reads the file)."""
    scanner = OutputScanner(patterns, without)
    try:
        for piece in _pieces(path, limit):
            scanner.feed(piece)
    except OSError:
        return {}
    return scanner.close()
