"""Exits 0 and writes the completion files, but never the report."""

import _agent

_agent.start("no-report")
_agent.write_completion()
print("done, but I forgot the report")
