"""Prints 3 MiB of harmless lines, a runtime error, 3 MiB more, then does the phase: with
max_log_bytes = 1 MiB the error is in the middle that the log does not keep."""

import sys

import _agent

_agent.start("noise-error-noise")
line = "progress: " + "." * 89 + "\n"
n = 3 * 1024 * 1024 // len(line)
sys.stdout.write(line * n)
print("Traceback (most recent call last):\nRuntimeError: the migration failed", flush=True)
sys.stdout.write(line * n)
sys.stdout.flush()
_agent.finish_passing()
