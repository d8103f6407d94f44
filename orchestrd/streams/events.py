"""The normalized events every stream adapter produces, whatever the agent CLI printed, and the
one place an error message is sorted into a kind (rate limit, auth, overloaded, other).

No internal imports: usage, budgets and liveness read these and never the raw bytes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Literal

ErrorKind = Literal["rate_limit", "auth", "overloaded", "other"]


@dataclasses.dataclass(frozen=True)
class Session:
    """The agent's session (codex: thread) began; `model` is None when the CLI does not say."""

    name: ClassVar[str] = "session"
    id: str
    model: str | None = None


@dataclasses.dataclass(frozen=True)
class Turn:
    """A model turn began."""

    name: ClassVar[str] = "turn"


@dataclasses.dataclass(frozen=True)
class Usage:
    """The running total of this worker's stream so far (adapters turn per-message counts into
    totals), in three kinds that do not overlap: input not read from a cache, input read from a
    cache, and output (reasoning included)."""

    name: ClassVar[str] = "usage"
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    """The CLI's own figure, when it gives one (claude); never computed here."""
    model: str | None = None
    final: bool = False
    """The closing count of a turn or run (codex `turn.completed`, a `result`): the agent is
    done, and a worker over a budget here is let finish rather than stopped."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.output_tokens


@dataclasses.dataclass(frozen=True)
class Tool:
    """The agent ran a tool (a shell command, or the tool's name); exit code where known."""

    name: ClassVar[str] = "tool"
    command: str
    exit_code: int | None = None


@dataclasses.dataclass(frozen=True)
class FileChange:
    """The agent changed files (the paths it names)."""

    name: ClassVar[str] = "file_change"
    paths: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Error:
    """Something went wrong; `retrying` when the CLI says it tries again by itself (a passing
    hiccup, not the end of the turn); `resets_at` (epoch seconds) when a limit says when."""

    name: ClassVar[str] = "error"
    message: str
    kind: ErrorKind = "other"
    retrying: bool = False
    resets_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """The agent's own verdict on its run and its final text (`reason`: the CLI's word for
    how it ended, e.g. claude's `error_max_turns`)."""

    name: ClassVar[str] = "result"
    ok: bool
    text: str = ""
    reason: str | None = None


StreamEvent = Session | Turn | Usage | Tool | FileChange | Error | Result

# Checked in this order: "429 Too Many Requests" is a rate limit even if it says "retry".
_KINDS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    (
        "rate_limit",
        re.compile(
            r"\b429\b|rate.?limit|too many requests|usage limit|session limit|quota|"
            r"resource.?exhausted|try again (?:at|later|in)",
            re.IGNORECASE,
        ),
    ),
    (
        "auth",
        re.compile(
            r"\b40[13]\b|unauthori[sz]ed|authenticat|forbidden|api.?key|log ?in\b|credential|"
            r"permission denied by the api|expired token",
            re.IGNORECASE,
        ),
    ),
    (
        "overloaded",
        re.compile(
            r"\b(?:500|502|503|504|529)\b|overloaded|unavailable|capacity|server error",
            re.IGNORECASE,
        ),
    ),
)
_STATUS_KINDS: dict[int, ErrorKind] = {
    429: "rate_limit",
    401: "auth",
    403: "auth",
    500: "overloaded",
    502: "overloaded",
    503: "overloaded",
    504: "overloaded",
    529: "overloaded",
}


def error_kind(message: str, status: int | None = None) -> ErrorKind:
    """The kind of an error from its HTTP status when the CLI gives one, else its words."""
    if status in _STATUS_KINDS:
        return _STATUS_KINDS[status]
    for kind, pattern in _KINDS:
        if pattern.search(message):
            return kind
    return "other"
