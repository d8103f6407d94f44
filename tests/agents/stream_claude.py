"""`claude -p --output-format stream-json --verbose`: does the phase, printing a
claude-stream-json stream (tests/agents/_streams.py)."""

import os
import sys

import _agent
import _streams

_agent.start("claude")
_streams.record(_streams.claude_said())
if _streams.END == "ok":
    _agent.write_report("Status: PASS")
    _agent.write_completion()
_streams.emit(_streams.claude(os.environ.get("STREAM_MODEL", "claude-sonnet-4-5-20250929")))
sys.exit(0 if _streams.END == "ok" else 1)
