"""Floods its output: $FLOOD_BYTES bytes (default 1 GiB) written to stdout in 1 MiB os.write
calls — as fast as a runaway `cat` of a binary — then does the phase and exits 0.

Writes its pid to $AGENT_PID_DIR/<plan>-<phase>-<attempt>.pid first, if set."""

import os
import sys
from pathlib import Path

import _agent

env = os.environ
if pid_dir := env.get("AGENT_PID_DIR"):
    name = f"{env['ORCHESTRD_PLAN_ID']}-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}"
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    Path(pid_dir, f"{name}.pid").write_text(str(os.getpid()))
total = int(env.get("FLOOD_BYTES", str(1 << 30)))
chunk = (b"flood " * 174763)[: 1 << 20]  # 1 MiB of text, newlines now and then
chunk = chunk.replace(b"flood flood ", b"flood\nflood ", 1)
out = sys.stdout.fileno()
written = 0
while written < total:
    view = memoryview(chunk)[: total - written]
    while view:
        n = os.write(out, view)
        view = view[n:]
        written += n
_agent.finish_passing()
