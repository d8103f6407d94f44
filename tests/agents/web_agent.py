"""The status page tests' agent: prints markup into its log, keeps logging while the test holds
its plan, then passes, or leaves a placeholder in its report (a failed check at file:line).

- AGENT_HOLD_DIR: print a `tick N` line every 50 ms as long as `<dir>/<plan>` exists.
- AGENT_PRINT_KIB: print this many KiB of filler lines first (a long log).
- AGENT_TODO_REPORT: if set, the report keeps a `[TODO]` placeholder (evidence rule fails).
"""

import os
import time
from pathlib import Path

import _agent

_agent.start("web")
env = os.environ
print("log line: <script>window.pwnedLog = 1</script> <b>bold?</b>", flush=True)
if secret := env.get("WEB_API_KEY"):
    print(f"using key {secret}", flush=True)  # the page shows it redacted, as the audit log
for i in range(int(env.get("AGENT_PRINT_KIB", "0")) * 16):
    print(f"filler {i:08d} " + "x" * 47, flush=False)  # 64-byte lines
plan = env["ORCHESTRD_PLAN_ID"]
n = 0
while (hold := env.get("AGENT_HOLD_DIR")) and Path(hold, plan).exists():
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.05)
if env.get("AGENT_TODO_REPORT"):
    _agent.write_report("Status: PASS\n\nEvidence: [TODO]")
    _agent.write_completion()
else:
    _agent.finish_passing()
