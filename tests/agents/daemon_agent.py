"""The daemon tests' agent: records its pid, sleeps, then does the phase (a PASS report and the
completion files with their markers), steered by its profile's environment:

- AGENT_IGNORE_TERM: if set, SIGTERM is ignored (only SIGKILL stops it).
- AGENT_PID_DIR: write `<plan>-<phase>-<attempt>.pid` there (after the above), so tests can
  find it.
- AGENT_SLEEP: seconds to sleep before finishing (default 0.1).
- AGENT_FIRST_SLEEP: seconds to sleep instead on attempt 1 of phase P01 (a worker a test
  interrupts: SIGKILL/SIGTERM of the daemon, `orchestrd cancel`); later attempts are quick.
- AGENT_HOLD_DIR: then wait as long as the file `<dir>/<plan>` exists (a test releases it).
- AGENT_FAIL_ONCE: a phase id; its first attempt in a repo writes `Status: FAIL` and leaves
  `.failed-once-<plan>-<phase>` in the repo, every later attempt passes.
"""

import os
import signal
import time
from pathlib import Path

import _agent

env = os.environ
if env.get("AGENT_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
plan, phase, attempt = env["ORCHESTRD_PLAN_ID"], env["ORCHESTRD_PHASE_ID"], env["ORCHESTRD_ATTEMPT"]
if pid_dir := env.get("AGENT_PID_DIR"):
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    Path(pid_dir, f"{plan}-{phase}-{attempt}.pid").write_text(str(os.getpid()))
print(f"daemon agent: plan {plan}, phase {phase}, attempt {attempt}", flush=True)

delay = float(env.get("AGENT_SLEEP", "0.1"))
if phase == "P01" and attempt == "1" and "AGENT_FIRST_SLEEP" in env:
    delay = float(env["AGENT_FIRST_SLEEP"])
time.sleep(delay)
if hold_dir := env.get("AGENT_HOLD_DIR"):
    while Path(hold_dir, plan).exists():
        time.sleep(0.02)

failed_once = Path(f".failed-once-{plan}-{phase}")
if env.get("AGENT_FAIL_ONCE") == phase and not failed_once.exists():
    failed_once.write_text(attempt)
    _agent.write_report("Status: FAIL")
    print("failing this phase once, on purpose", flush=True)
else:
    _agent.finish_passing()
