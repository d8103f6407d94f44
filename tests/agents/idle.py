"""Does nothing and exits 0: whatever report or completion file the repo already holds is left
as it was (an earlier run's, or a previous plan's with the same paths)."""

import _agent

_agent.start("idle")
print("nothing to do")
