"""The random-kill loop's agent: appends `<plan> <phase> <attempt> <pid> <start time>` to
$LEDGER (one O_APPEND write: whole lines even when many run at once), sleeps $AGENT_SLEEP
seconds (default 0.15), then does the phase. The start time is `time.time()`, comparable with
the audit log's timestamps."""

import os
import time

import _agent

env = os.environ
line = (
    f"{env['ORCHESTRD_PLAN_ID']} {env['ORCHESTRD_PHASE_ID']} {env['ORCHESTRD_ATTEMPT']} "
    f"{os.getpid()} {time.time():.6f}\n"
)
fd = os.open(env["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, line.encode())
os.close(fd)
time.sleep(float(env.get("AGENT_SLEEP", "0.15")))
_agent.finish_passing()
