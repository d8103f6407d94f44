"""Ignores SIGTERM and spawns a grandchild that ignores it too, then hangs.

Writes `<pid> <grandchild pid>` to `pids-<phase>-<attempt>.txt` in its working directory once
the grandchild has SIGTERM ignored, and prints `ready`.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _agent

signal.signal(signal.SIGTERM, signal.SIG_IGN)
_agent.start("unkillable")
ready = Path(f"gc-ready-{os.getpid()}")
child = subprocess.Popen(
    [
        sys.executable,
        "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').close()\nwhile True: time.sleep(1)",
        str(ready),
    ],
    stdin=subprocess.DEVNULL,
)
while not ready.exists():
    time.sleep(0.005)
phase, attempt = os.environ["ORCHESTRD_PHASE_ID"], os.environ["ORCHESTRD_ATTEMPT"]
Path(f"pids-{phase}-{attempt}.txt").write_text(f"{os.getpid()} {child.pid}\n")
print("ready", flush=True)
while True:
    time.sleep(1)
