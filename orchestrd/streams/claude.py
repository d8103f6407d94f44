"""`claude -p --output-format stream-json --verbose`: system, assistant, user,
rate_limit_event and a final result line.

An assistant message may come as several lines (one per content block) that repeat the same
`usage`: counts are kept per message id, and the result's `usage` and `total_cost_usd` (its
own estimate; `cost_usd` in old versions) replace them at the end. Anthropic's `input_tokens`
excludes the cache: cache writes count as input here, cache reads as cached input.
"""

from __future__ import annotations

from typing import Any

from .events import Error, FileChange, Result, Session, StreamEvent, Tool, Turn, Usage, error_kind
from .fields import count, integer, items, number, obj, text

_COUNTS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)
_FILE_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})


def _usage(
    usage: dict[str, Any], cost: float | None, model: str | None, final: bool = False
) -> Usage:
    return Usage(
        input_tokens=count(usage, "input_tokens") + count(usage, "cache_creation_input_tokens"),
        cached_input_tokens=count(usage, "cache_read_input_tokens"),
        output_tokens=count(usage, "output_tokens"),
        cost_usd=cost,
        model=model,
        final=final,
    )


class ClaudeStreamJson:
    def __init__(self) -> None:
        self.model: str | None = None
        self.messages: dict[str, dict[str, Any]] = {}

    def event(self, data: dict[str, Any]) -> list[StreamEvent]:
        kind = text(data, "type")
        if kind == "system":
            return self._system(data)
        if kind == "assistant":
            return self._assistant(obj(data, "message"))
        if kind == "rate_limit_event":
            info = obj(data, "rate_limit_info")
            if text(info, "status") != "rejected":
                return []  # allowed, or a warning that the limit is near
            limit = text(info, "rateLimitType") or "rate"
            resets = number(info, "resetsAt")
            return [Error(f"{limit} limit reached", "rate_limit", resets_at=resets)]
        if kind == "result":
            return self._result(data)
        return []

    def _system(self, data: dict[str, Any]) -> list[StreamEvent]:
        subtype = text(data, "subtype")
        if subtype == "init":
            self.model = text(data, "model")
            return [Session(text(data, "session_id") or "", self.model)]
        if subtype == "api_retry":
            status = integer(data, "error_status")
            message = (
                f"API error {status if status is not None else '?'}; retry "
                f"{integer(data, 'attempt')} of {integer(data, 'max_retries')}"
            )
            return [Error(message, error_kind(message, status), retrying=True)]
        return []

    def _assistant(self, message: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        key = text(message, "id") or f"#{len(self.messages)}"
        if key not in self.messages:
            events.append(Turn())
        usage = obj(message, "usage")
        if usage:
            self.messages[key] = usage  # the same message again repeats its usage: replace
            events.append(_usage(self._summed(), None, self.model))
        for block in items(message, "content"):
            if text(block, "type") != "tool_use":
                continue
            tool, args = text(block, "name") or "tool", obj(block, "input")
            if tool in _FILE_TOOLS and (path := text(args, "file_path")):
                events.append(FileChange((path,)))
            else:
                events.append(Tool(text(args, "command") or tool))
        return events

    def _result(self, data: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        cost = number(data, "total_cost_usd")
        if cost is None:
            cost = number(data, "cost_usd")
        if cost is not None and cost < 0:
            cost = None  # nonsense, not a refund
        if usage := obj(data, "usage"):
            events.append(_usage(usage, cost, self.model, final=True))
        elif cost is not None:  # a cost without counts: keep the counts summed so far
            events.append(_usage(self._summed(), cost, self.model, final=True))
        subtype = text(data, "subtype")
        is_error = data.get("is_error") is True
        final = text(data, "result") or ""
        ok = subtype == "success" and not is_error
        if not ok:
            message = final or subtype or "error"
            events.append(Error(message, error_kind(message)))
        events.append(Result(ok, final, subtype))
        return events

    def _summed(self) -> dict[str, int]:
        return {n: sum(count(u, n) for u in self.messages.values()) for n in _COUNTS}

    def exit(self, returncode: int) -> list[StreamEvent]:
        return []
