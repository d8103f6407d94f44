"""Leaves a family behind and exits 0 having done the phase: $SPAWN_CHILDREN children that each
fork a grandchild (every one ignoring SIGTERM and sleeping forever), all still in the worker's
process group — a build that started watchers and exited without waiting.

Writes every descendant's pid, one a line, to `pids-<phase>-<attempt>.txt` in the repo (once
all of them are up), and its own pid to $AGENT_PID_DIR/<plan>-<phase>-<attempt>.pid if set."""

import os
import signal
import sys
import time
from pathlib import Path

import _agent

env = os.environ
_agent.start("fault-spawn")
if pid_dir := env.get("AGENT_PID_DIR"):
    name = f"{env['ORCHESTRD_PLAN_ID']}-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}"
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    Path(pid_dir, f"{name}.pid").write_text(str(os.getpid()))
read_end, write_end = os.pipe()
children = int(env.get("SPAWN_CHILDREN", "3"))
for _ in range(children):
    if os.fork() == 0:  # child: fork a grandchild, then both linger
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.close(read_end)
        if os.fork() == 0:
            os.write(write_end, f"{os.getpid()}\n".encode())
        else:
            os.write(write_end, f"{os.getpid()}\n".encode())
        os.close(write_end)
        # stdout still points at orchestrd's pipe: the family keeps it open
        sys.stdout.flush()
        while True:
            time.sleep(1)
os.close(write_end)
pids: list[str] = []
with os.fdopen(read_end) as r:
    while len(pids) < 2 * children:
        line = r.readline()
        if not line:
            break
        pids.append(line.strip())
phase, attempt = env["ORCHESTRD_PHASE_ID"], env["ORCHESTRD_ATTEMPT"]
Path(f"pids-{phase}-{attempt}.txt").write_text("".join(f"{p}\n" for p in pids))
_agent.finish_passing()
