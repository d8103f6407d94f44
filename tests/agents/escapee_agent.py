"""Does its phase and exits, leaving behind a double-forked setsid() child that closes every
fd, clears its environment and sleeps: outside the worker's process group, with no
ORCHESTRD_LOG to be found by. Writes its pid to `escapee-<phase>-<attempt>.txt` in the repo.
With AGENT_HANG=1 the agent itself then hangs (silently) instead of finishing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import _agent

env = os.environ
_agent.start("escapee")
pidfile = Path(f"escapee-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}.txt").resolve()


def sleeping(pidfile: Path) -> bool:
    try:
        return Path(f"/proc/{pidfile.read_text()}/cmdline").read_bytes().startswith(b"sleep")
    except OSError:
        return False


if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        pidfile.with_suffix(".tmp").write_text(str(os.getpid()))
        pidfile.with_suffix(".tmp").rename(pidfile)  # whole, or not there
        os.closerange(0, 1024)
        os.execve("/bin/sleep", ["sleep", "300"], {})
    os._exit(0)
os.wait()
while not sleeping(pidfile):  # running `sleep`, not merely about to
    time.sleep(0.005)
while env.get("AGENT_HANG") == "1":
    time.sleep(1)
_agent.finish_passing()
