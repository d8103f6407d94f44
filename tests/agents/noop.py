"""Does the paperwork only: a `Status: PASS` report and the completion files, nothing else
(unlike the other agents it leaves no `.agent/` record in the repo)."""

import sys

import _agent

print("noop agent 0.1", file=sys.stderr)
_agent.finish_passing()
