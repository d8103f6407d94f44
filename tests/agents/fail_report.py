"""Exits 0 but reports `Status: FAIL` (completion files are written)."""

import _agent

_agent.start("fail-report")
_agent.write_report("Status: FAIL\n\nThe tests could not be made to pass.")
_agent.write_completion()
print("done: Status: FAIL")
