"""Exits at once, leaving a double-forked, setsid'd child that closes every fd, clears its
environment and sleeps: invisible to the process group and to an environment scan."""

from __future__ import annotations

import os
import sys

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1], "w") as f:
            f.write(str(os.getpid()))
        os.closerange(0, 1024)
        os.execve("/bin/sleep", ["sleep", "300"], {})
    os._exit(0)
os.wait()
print("escaped", flush=True)
