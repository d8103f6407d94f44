"""Does the phase and prints claude's final `result` event, then never exits (the known
`claude -p` hang): silent, no CPU, until stopped."""

import json
import time

import _agent

_agent.start("result-then-hang")
print(
    json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"}), flush=True
)
_agent.finish_passing()
print(
    json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 900,
            "num_turns": 1,
            "result": "Done.",
            "session_id": "s-1",
            "total_cost_usd": 0.0,
        }
    ),
    flush=True,
)
while True:
    time.sleep(3600)
