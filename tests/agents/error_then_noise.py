"""Prints a runtime error early, then more than 4 MiB of harmless lines, then does the phase:
the error sits where a scan of the log's end never looks."""

import sys

import _agent

_agent.start("error-then-noise")
print("Traceback (most recent call last):\nRuntimeError: the migration failed", flush=True)
line = "progress: " + "." * 89 + "\n"
for _ in range(5 * 1024 * 1024 // len(line)):
    sys.stdout.write(line)
sys.stdout.flush()
_agent.finish_passing()
