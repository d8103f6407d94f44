"""Crashes half-way: a Python traceback in the log and exit code 1, nothing written."""

import _agent

_agent.start("crash")
print("working…", flush=True)
raise RuntimeError("the agent crashed")
