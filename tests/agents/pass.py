"""Does the phase: a report with `Status: PASS` (or $AGENT_STATUS_LINE) and the completion files
with every marker (each followed by $AGENT_MARKER_SUFFIX, to test marker boundaries); prints
$AGENT_SAY if set (to put e.g. an `Error:` line in its log)."""

import _agent

_agent.start("pass")
_agent.finish_passing()
