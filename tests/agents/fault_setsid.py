"""Starts a helper that leaves the worker's process group with setsid() (a daemonizing dev
server), then — on attempt 1 only — hangs silently until stopped; later attempts do the phase.
Writes `<own pid> <escaped pid>` to `pids-<phase>-<attempt>.txt` in the repo once both run."""

import os
import subprocess
import sys
import time
from pathlib import Path

import _agent

env = os.environ
phase, attempt = env["ORCHESTRD_PHASE_ID"], env["ORCHESTRD_ATTEMPT"]
if attempt != "1":
    _agent.start("fault-setsid")
    _agent.finish_passing()
    raise SystemExit(0)
escaped = subprocess.Popen(
    [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
    stdin=subprocess.DEVNULL,
    start_new_session=True,
)
Path(f"pids-{phase}-{attempt}.txt").write_text(f"{os.getpid()} {escaped.pid}\n")
while True:  # silent: it must not die of a write into a dead daemon's pipe
    time.sleep(1)
