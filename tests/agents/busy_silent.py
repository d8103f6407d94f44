"""A long build: prints nothing for $AGENT_BUSY seconds (default 1) while using the CPU (in a
child process, as a compiler would), then does the phase."""

import os
import subprocess
import sys

import _agent

_agent.start("busy-silent")
busy = float(os.environ.get("AGENT_BUSY", "1"))
subprocess.run(
    [
        sys.executable,
        "-c",
        f"import time\nend = time.monotonic() + {busy}\nwhile time.monotonic() < end: pass",
    ],
    check=True,
)
_agent.finish_passing()
