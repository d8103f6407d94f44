"""`gemini -p … -o stream-json`: init, message, tool_use, tool_result, error and a final
result with the session's stats.

Counts come only with the result: `input_tokens` includes `cached`, and `total_tokens` also
counts the model's thoughts, billed as output. No cost. Its exit codes say what went wrong
when nothing else does (41 auth, 42 input, 52 config, 53 turn limit, 54 a fatal tool error).
"""

from __future__ import annotations

from typing import Any

from .events import Error, ErrorKind, Result, Session, StreamEvent, Tool, Turn, Usage, error_kind
from .fields import count, obj, text

EXIT_CODES: dict[int, tuple[ErrorKind, str]] = {
    41: ("auth", "authentication failed"),
    42: ("other", "invalid input"),
    52: ("other", "invalid configuration"),
    53: ("other", "turn limit reached"),
    54: ("other", "a tool failed fatally"),
}


class GeminiStreamJson:
    def __init__(self) -> None:
        self.model: str | None = None
        self.reply: list[str] = []
        self.in_reply = False
        self.result_seen = False

    def event(self, data: dict[str, Any]) -> list[StreamEvent]:
        kind = text(data, "type")
        if kind == "init":
            self.model = text(data, "model")
            return [Session(text(data, "session_id") or "", self.model)]
        if kind == "message":
            return self._message(data)
        if kind == "tool_use":
            self.in_reply = False
            params = obj(data, "parameters")
            return [Tool(text(params, "command") or text(data, "tool_name") or "tool")]
        if kind == "error":
            message = text(data, "message") or "error"
            # a warning is reported and the session goes on
            retrying = text(data, "severity") == "warning"
            return [Error(message, error_kind(message), retrying=retrying)]
        if kind == "result":
            return self._result(data)
        return []

    def _message(self, data: dict[str, Any]) -> list[StreamEvent]:
        if text(data, "role") != "assistant":
            self.in_reply = False
            return []
        content = text(data, "content") or ""
        events: list[StreamEvent] = []
        if not self.in_reply:
            events.append(Turn())
            self.reply = []  # the final text is the last reply, not every reply joined
        self.in_reply = True
        # a delta continues the message; a whole message replaces what came before
        self.reply = [*self.reply, content] if data.get("delta") is True else [content]
        return events

    def _result(self, data: dict[str, Any]) -> list[StreamEvent]:
        self.result_seen = True
        stats = obj(data, "stats")
        prompt = count(stats, "input_tokens")
        cached = min(count(stats, "cached"), prompt)
        output = max(count(stats, "output_tokens"), count(stats, "total_tokens") - prompt)
        events: list[StreamEvent] = [
            Usage(prompt - cached, cached, output, model=self.model, final=True)
        ]
        ok = text(data, "status") == "success"
        if not ok:
            error = obj(data, "error")
            message = text(error, "message") or text(data, "status") or "error"
            events.append(Error(message, error_kind(message)))
        events.append(Result(ok, "".join(self.reply), text(data, "status")))
        return events

    def exit(self, returncode: int) -> list[StreamEvent]:
        if returncode in EXIT_CODES:
            kind, what = EXIT_CODES[returncode]
            events: list[StreamEvent] = [Error(f"gemini exit {returncode}: {what}", kind)]
            return events + ([] if self.result_seen else [Result(False, "", what)])
        return []
