"""Does every phase properly: the work, a report with real output, completion files with the
markers, a commit."""

import _agent
import _tricks

_agent.start("honest")
_tricks.honest()
