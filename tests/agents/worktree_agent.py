"""Worktree plans' agent: does the phase as daemon_agent does (pid file, hold, a PASS report and
the completion files), then changes the repository as its plan's id says, uncommitted (the merge
commits what a plan leaves):

- `same…`: line 2 of `shared.txt` becomes the plan's id (two such plans conflict);
- `dup…`: `<plan>.py` defines `helper` (green alone, red beside another `dup` plan);
- any other: `<plan>.txt` holds the plan's id.

It fails if it does not run in the worktree the daemon says (ORCHESTRD_WORKTREE).
"""

import os
import sys
import time
from pathlib import Path

import _agent

env = os.environ
plan, phase, attempt = env["ORCHESTRD_PLAN_ID"], env["ORCHESTRD_PHASE_ID"], env["ORCHESTRD_ATTEMPT"]
if pid_dir := env.get("AGENT_PID_DIR"):
    Path(pid_dir).mkdir(parents=True, exist_ok=True)
    Path(pid_dir, f"{plan}-{phase}-{attempt}.pid").write_text(str(os.getpid()))
if env.get("ORCHESTRD_WORKTREE") and os.path.realpath(env["ORCHESTRD_WORKTREE"]) != os.getcwd():
    sys.exit(f"not in my worktree: {os.getcwd()} vs {env['ORCHESTRD_WORKTREE']}")
time.sleep(float(env.get("AGENT_SLEEP", "0.05")))
if hold_dir := env.get("AGENT_HOLD_DIR"):
    while Path(hold_dir, plan).exists():
        time.sleep(0.02)
if plan.startswith("same"):
    lines = Path("shared.txt").read_text().splitlines()
    lines[1] = plan
    Path("shared.txt").write_text("\n".join(lines) + "\n")
elif plan.startswith("dup"):
    Path(f"{plan}.py").write_text("def helper():\n    return 1\n")
else:
    Path(f"{plan}.txt").write_text(f"{plan}\n")
_agent.finish_passing()
