"""Splitting a worker's output into lines as it arrives, with a cap: a line longer than the cap
is skipped (counted, its bytes dropped as they come), never buffered without bound."""

from __future__ import annotations

MAX_LINE = 1024 * 1024
"""Longest line kept (bytes): one stream event; a tool's output dumped whole can be larger."""


class LineSplitter:
    """Bytes in (any chunking), whole lines out (without the line break)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.skipped = 0
        """Lines longer than `max_line`, dropped."""
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False  # the over-long line ends here; it was counted
            elif len(self._buf) + end - start > self.max_line:
                self.skipped += 1
            else:
                lines.append(_strip_cr(bytes(self._buf) + data[start:end]))
            self._buf.clear()
            start = end + 1
        if not self._skipping and start < len(data):
            if len(self._buf) + len(data) - start > self.max_line:
                self.skipped += 1
                self._skipping = True
                self._buf.clear()
            else:
                self._buf += data[start:]
        return lines

    def finish(self) -> bytes | None:
        """What is left after the last line break (a stream cut off mid-line), if anything."""
        rest = None if self._skipping or not self._buf else _strip_cr(bytes(self._buf))
        self._buf.clear()
        self._skipping = False
        return rest


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line
