"""Never finishes: prints a progress line every $AGENT_TICK seconds (default 0.05) forever."""

import os
import time

import _agent

_agent.start("hang")
tick = float(os.environ.get("AGENT_TICK", "0.05"))
n = 0
while True:
    n += 1
    print(f"thinking {n}", flush=True)
    time.sleep(tick)
