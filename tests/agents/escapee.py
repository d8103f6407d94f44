"""Exits at once, leaving a double-forked, setsid'd child that closes every fd, clears its
environment and sleeps: invisible to the process group and to an environment scan."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def sleeping(pidfile: str) -> bool:
    try:
        pid = Path(pidfile).read_text()
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    except OSError:
        return False


if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        tmp = sys.argv[1] + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.rename(tmp, sys.argv[1])  # whole, or not there
        os.closerange(0, 1024)
        os.execve("/bin/sleep", ["sleep", "300"], {})
    os._exit(0)
os.wait()
while not sleeping(sys.argv[1]):  # running `sleep`, not merely about to
    time.sleep(0.005)
print("escaped", flush=True)
