"""`codex exec --json`: JSON lines of thread, turn and item events.

Its `turn.completed.usage` is the thread's running total and its `input_tokens` includes the
cached ones; it names no model and no cost. An `item` of type `error` is a notice (e.g. model
metadata not found), not a failure: only `turn.failed` and `error` lines are errors, and an
`error` line that says `Reconnecting...` is a retry.
"""

from __future__ import annotations

from typing import Any

from .events import Error, FileChange, Result, Session, StreamEvent, Tool, Turn, Usage, error_kind
from .fields import count, integer, items, obj, text


class CodexJson:
    def __init__(self) -> None:
        self.in_thread = False
        self.failed: str | None = None
        self.last_message = ""

    def event(self, data: dict[str, Any]) -> list[StreamEvent]:
        kind = text(data, "type")
        if kind == "thread.started":
            self.in_thread = True
            return [Session(text(data, "thread_id") or "")]
        if not self.in_thread:
            # codex echoes its prompt (to stderr, which shares the log) before its thread
            # starts; a remediation prompt quotes the failed worker's stream: not this run's
            return []
        if kind == "turn.started":
            return [Turn()]
        if kind == "turn.completed":
            usage = obj(data, "usage")
            cached = count(usage, "cached_input_tokens")
            return [
                Usage(
                    input_tokens=max(0, count(usage, "input_tokens") - cached),
                    cached_input_tokens=cached,
                    output_tokens=count(usage, "output_tokens"),
                    final=True,
                )
            ]
        if kind == "turn.failed":
            message = text(obj(data, "error"), "message") or "turn failed"
            self.failed = message
            return [Error(message, error_kind(message))]
        if kind == "error":
            message = text(data, "message") or "error"
            return [Error(message, error_kind(message), retrying=message.startswith("Reconn"))]
        if kind == "item.completed":
            return self._item(obj(data, "item"))
        return []

    def _item(self, item: dict[str, Any]) -> list[StreamEvent]:
        kind = text(item, "type")
        if kind == "agent_message":
            self.last_message = text(item, "text") or self.last_message
        elif kind == "command_execution":
            return [Tool(text(item, "command") or "", integer(item, "exit_code"))]
        elif kind == "file_change":
            paths = tuple(p for c in items(item, "changes") if (p := text(c, "path")))
            return [FileChange(paths)]
        return []

    def exit(self, returncode: int) -> list[StreamEvent]:
        # codex has no result line: its verdict is the exit code and the last turn
        ok = returncode == 0 and self.failed is None
        return [Result(ok, self.failed if self.failed and not ok else self.last_message)]
