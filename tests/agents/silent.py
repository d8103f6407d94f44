"""Hangs in silence, as `codex exec` after `turn.started` and `claude -p` mid-stream do: alive,
printing nothing, using no CPU, until stopped. Its pid goes to `pids-<phase>-<attempt>.txt`."""

import os
import time
from pathlib import Path

import _agent

_agent.start("silent")
env = os.environ
Path(f"pids-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}.txt").write_text(
    f"{os.getpid()}\n"
)
print('{"type":"turn.started"}', flush=True)
while True:
    time.sleep(3600)
