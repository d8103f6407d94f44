"""`codex exec --json`: does the phase, printing a codex-json stream (tests/agents/_streams.py)."""

import sys

import _agent
import _streams

_agent.start("codex")
_streams.record(_streams.codex_said())
if _streams.END == "ok":
    _agent.write_report("Status: PASS")
    _agent.write_completion()
_streams.emit(_streams.codex())
sys.exit(0 if _streams.END == "ok" else 1)
