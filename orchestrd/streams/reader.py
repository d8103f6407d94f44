"""One worker's output read as its agent's event stream: bytes in, normalized events out.

Fed every chunk as it is pumped into the log. What cannot be read is counted, never fatal: a
line that is not a JSON object (the CLI's banner on stderr, a tool's output), a line whose
fields have an unexpected type, and a line over the cap (skipped). Unknown event types are
ignored: these formats grow.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from .events import StreamEvent
from .lines import MAX_LINE, LineSplitter


class Format(Protocol):
    """One agent CLI's format: a decoded line in, its normalized events out."""

    def event(self, data: dict[str, Any]) -> list[StreamEvent]: ...

    def exit(self, returncode: int) -> list[StreamEvent]: ...


class StreamReader:
    def __init__(self, fmt: Format, max_line: int = MAX_LINE) -> None:
        self.format = fmt
        self.lines = LineSplitter(max_line)
        self.parsed = 0
        """Lines that were JSON objects of the format (known type or not)."""
        self.unparsed = 0
        """Lines that were not: banners, prompt echoes, tool output, garbage, torn lines."""
        self.events = 0
        """Normalized events produced so far."""

    @property
    def skipped(self) -> int:
        """Lines longer than the cap, skipped unread."""
        return self.lines.skipped

    def feed(self, data: bytes) -> list[StreamEvent]:
        events = []
        for line in self.lines.feed(data):
            events += self._line(line)
        self.events += len(events)
        return events

    def finish(self, returncode: int | None = None) -> list[StreamEvent]:
        """The stream ended (the worker exited with `returncode`, or was stopped: None): a
        last line without its line break is read if it is whole."""
        events = []
        if (rest := self.lines.finish()) is not None:
            events += self._line(rest)
        if returncode is not None:
            events += self.format.exit(returncode)
        self.events += len(events)
        return events

    def _line(self, line: bytes) -> list[StreamEvent]:
        line = line.strip()
        if not line:
            return []
        if not line.startswith(b"{"):
            self.unparsed += 1
            return []
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
            self.unparsed += 1
            return []
        if not isinstance(data, dict):
            self.unparsed += 1
            return []
        self.parsed += 1
        return self.format.event(data)
