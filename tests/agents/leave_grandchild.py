"""Does the phase and exits 0 at once, but leaves a background grandchild running (like a dev
server or a watcher started with `&`). Its pid goes to `pids-<phase>-<attempt>.txt`."""

import os
import subprocess
import sys
from pathlib import Path

import _agent

_agent.start("leave-grandchild")
child = subprocess.Popen(
    [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
    stdin=subprocess.DEVNULL,
)
phase, attempt = os.environ["ORCHESTRD_PHASE_ID"], os.environ["ORCHESTRD_ATTEMPT"]
Path(f"pids-{phase}-{attempt}.txt").write_text(f"{child.pid}\n")
_agent.finish_passing()
