"""Prints what it got of secret-looking variables and the test's secret strings, the way a
worker dumping its environment or echoing a credential would; then records its environment
(`.agent/<phase>-<attempt>.json`). $SECRETS_SAY (a text) is printed too, and into an `Error:`
line so the log check quotes it.

With $SECRETS_HANG set it then hangs (to be stalled: its log tail goes into worker.stalled);
otherwise it does the phase and exits 0."""

import os
import time

import _agent

env = os.environ
_agent.start("fault-secrets")
for name, value in sorted(env.items()):
    if any(word in name for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
        print(f"{name}={value}", flush=True)
if say := env.get("SECRETS_SAY"):
    print(say, flush=True)
    print(f"Error: request failed with {say}", flush=True)
if env.get("SECRETS_HANG"):
    while True:
        time.sleep(0.05)
_agent.finish_passing()
