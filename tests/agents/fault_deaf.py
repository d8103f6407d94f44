"""Hangs and ignores SIGTERM (only SIGKILL stops it), printing a line now and then; its pid goes
to `pids-<phase>-<attempt>.txt` in the repo once SIGTERM is ignored. With $DEAF_ONCE set, only
attempt 1 hangs: later attempts do the phase (a remediation that works)."""

import os
import signal
import time
from pathlib import Path

import _agent

env = os.environ
signal.signal(signal.SIGTERM, signal.SIG_IGN)
_agent.start("fault-deaf")
phase, attempt = env["ORCHESTRD_PHASE_ID"], env["ORCHESTRD_ATTEMPT"]
if env.get("DEAF_ONCE") and attempt != "1":
    _agent.finish_passing()
    raise SystemExit(0)
Path(f"pids-{phase}-{attempt}.txt").write_text(f"{os.getpid()}\n")
n = 0
while True:
    n += 1
    print(f"not listening {n}", flush=True)
    time.sleep(0.05)
