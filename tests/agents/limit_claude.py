"""`claude -p --output-format stream-json --verbose` hitting its session limit: `system init`, a
`rate_limit_event` with status `rejected` and `resetsAt` ($AGENT_RESET_IN seconds from now,
default 0.3), then the `result` with `You've hit your session limit · resets 8pm
(Europe/Berlin)`, exit 1. After the first $AGENT_LIMIT_TIMES starts it does the phase."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import _agent
import _limits


def emit(**event: object) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


_agent.start("limit-claude")
session = str(uuid.uuid4())
emit(type="system", subtype="init", session_id=session, model="claude-sonnet-4-5", tools=[])
if _limits.limited():
    resets = time.time() + float(os.environ.get("AGENT_RESET_IN", "0.3"))
    emit(
        type="rate_limit_event",
        rate_limit_info={
            "status": "rejected",
            "resetsAt": int(resets),
            "rateLimitType": "five_hour",
        },
    )
    text = "You've hit your session limit · resets 8pm (Europe/Berlin)"
    emit(
        type="result",
        subtype="success",
        is_error=True,
        duration_ms=412,
        num_turns=1,
        result=text,
        session_id=session,
        total_cost_usd=0,
    )
    sys.exit(1)
_agent.finish_passing()
emit(
    type="result",
    subtype="success",
    is_error=False,
    duration_ms=1200,
    num_turns=2,
    result="done",
    session_id=session,
    total_cost_usd=0.01,
    usage={
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    },
)
