"""`codex exec --json` hitting a limit, as codex-cli prints it: thread and turn events, then an
`error` and a `turn.failed` with the limit message, exit 1. $AGENT_LIMIT picks the message:

- `at` (default): `You’ve hit your usage limit. Try again at 3:38 PM.` — U+2019, local time at
  minute resolution, $AGENT_RESET_IN seconds from now (default 0: this minute);
- `date`: the same with a date, `Try again at Dec 5th, 2026 3:38 PM.`;
- `later`: `You’ve hit your usage limit. Try again later.` (no reset: back off);
- `in`: a 429 in the stream, `… Please try again in 0.3s.` ($AGENT_RESET_IN, default 0.3);
- `429`: five `Reconnecting... n/5 (… 429 Too Many Requests …)` errors, then the final one.

After the first $AGENT_LIMIT_TIMES starts it does the phase (a PASS report, the completion
files) and ends its turn."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import uuid

import _agent
import _limits


def emit(**event: object) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


def ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def message(kind: str, reset_in: float) -> str:
    at = dt.datetime.now().astimezone() + dt.timedelta(seconds=reset_in)
    clock = at.strftime("%I:%M %p").lstrip("0")
    if kind == "at":
        return f"You’ve hit your usage limit. Try again at {clock}."
    if kind == "date":
        day = f"{at.strftime('%b')} {ordinal(at.day)}, {at.year}"
        return f"You’ve hit your usage limit. Try again at {day} {clock}."
    if kind == "later":
        return "You’ve hit your usage limit. Try again later."
    if kind == "in":
        return (
            "rate limit exceeded: Rate limit reached for gpt-5 in organization org-x on tokens "
            f"per min (TPM): Limit 30000, Used 30000, Requested 1200. Please try again in "
            f"{reset_in:g}s."
        )
    return "exceeded retry limit, last status: 429 Too Many Requests, request id: 9c1e1ab2"


_agent.start("limit-codex")
emit(type="thread.started", thread_id=str(uuid.uuid4()))
emit(type="turn.started")
if _limits.limited():
    kind = os.environ.get("AGENT_LIMIT", "at")
    reset_in = float(os.environ.get("AGENT_RESET_IN", "0.3" if kind == "in" else "0"))
    if kind == "429":
        for n in range(1, 6):
            emit(
                type="error",
                message=f"Reconnecting... {n}/5 (exceeded retry limit, last "
                "status: 429 Too Many Requests, request id: 9c1e1ab2)",
            )
    text = message(kind, reset_in)
    emit(type="error", message=text)
    emit(type="turn.failed", error={"message": text})
    sys.exit(1)
_agent.finish_passing()
emit(
    type="turn.completed",
    usage={
        "input_tokens": 1200,
        "cached_input_tokens": 200,
        "output_tokens": 80,
        "reasoning_output_tokens": 20,
    },
)
