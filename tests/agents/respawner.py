"""Hangs silently, with a helper that left its process group (setsid) and watches it: when
the agent is stopped, the helper starts the session again (a new process with the same
environment, `respawned-session` in its command line), as an agent's background helper
restarting a killed session does. Pids go to `pids-<phase>-<attempt>.txt`: agent, helper; the
respawned session's pid is appended when it starts."""

import os
import subprocess
import sys
import time
from pathlib import Path


def dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def helper(agent: int, pids: str) -> None:
    while not dead(agent):
        time.sleep(0.01)
    session = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1)", "respawned-session"],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    with open(pids, "a") as f:
        f.write(f"{session.pid}\n")


if sys.argv[1:2] == ["--helper"]:
    helper(int(sys.argv[2]), sys.argv[3])
    raise SystemExit(0)

import _agent  # noqa: E402 (the helper needs none of it)

_agent.start("respawner")
env = os.environ
pids = Path(f"pids-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}.txt").absolute()
pids.write_text(f"{os.getpid()} ")
watcher = subprocess.Popen(
    [sys.executable, __file__, "--helper", str(os.getpid()), str(pids)],
    stdin=subprocess.DEVNULL, start_new_session=True,
)
with pids.open("a") as f:
    f.write(f"{watcher.pid}\n")
while True:
    time.sleep(3600)
