"""`gemini -p … -o stream-json`: does the phase, printing a gemini-stream-json stream
(tests/agents/_streams.py)."""

import os
import sys

import _agent
import _streams

_agent.start("gemini")
_streams.record(_streams.gemini_said())
if _streams.END == "ok":
    _agent.write_report("Status: PASS")
    _agent.write_completion()
_streams.emit(_streams.gemini(os.environ.get("STREAM_MODEL", "gemini-2.5-pro")))
sys.exit(0 if _streams.END == "ok" else 1)
