"""A worker that tries what a hostile (or careless) agent does to its supervisor, run as the
worker user by tests/test_privsep.py with the system python (the venv's lies under /root).
It records who it is and what each attempt got (errno names) in `.agent/<phase>-<attempt>.json`,
then does the phase honestly:

- AGENT_ATTACK=1 (phase P01 only): forge its plan's state.toml (found from ORCHESTRD_LOG) to say
  every phase passed, append to the audit log (AGENT_AUDIT), write into plans/ and control/,
  SIGKILL the daemon (pid in AGENT_DAEMON_PID_FILE); after doing the phase, `pkill -9 -f
  python`, `killall -9 python3`, `kill -9 $PPID` and `kill -9 -1`.
- AGENT_PROMPT_LINK=<path> (phase P01): replace that (the next phase's prompt file) with a
  link to its plan's state.toml, which the daemon would read and hand on.
- AGENT_FAIL_FIRST=1: attempt 1 exits 1 without doing the phase (a remediation follows).
- AGENT_HOLD_FILE: wait while that file exists, after writing its pid next to it (`.pid`).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _agent

env = os.environ
facts: dict[str, object] = {
    "uid": os.getuid(),
    "euid": os.geteuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "home": env.get("HOME"),
    "user": env.get("USER"),
    "logname": env.get("LOGNAME"),
    "pid": os.getpid(),
}


def attempt(name: str, action: Callable[[], object]) -> None:
    try:
        action()
        facts[name] = "ok"
    except OSError as exc:
        facts[name] = errno.errorcode.get(exc.errno or 0, str(exc))


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


prompt_file = Path(sys.argv[1])
attempt("read_prompt", prompt_file.read_text)
if failed := env.get("ORCHESTRD_FAILED_LOG"):
    attempt("read_failed_log", Path(failed).read_text)
    if facts["read_prompt"] == "ok":
        facts["prompt_names_failed_log"] = failed in prompt_file.read_text()
log = Path(env["ORCHESTRD_LOG"])
plan_dir = log.parent.parent
if env.get("AGENT_ATTACK") and env["ORCHESTRD_PHASE_ID"] == "P01":
    forged = 'plan = "{0}"\nstatus = "running"\n' + "".join(
        f'[phases.P0{i}]\nstatus = "passed"\n' for i in (1, 2, 3)
    )
    attempt(
        "forge_state",
        lambda: (plan_dir / "state.toml").write_text(forged.format(env["ORCHESTRD_PLAN_ID"])),
    )
    attempt("append_audit", lambda: append(Path(env["AGENT_AUDIT"]), '{"event":"x"}\n'))
    attempt("write_plans", lambda: (plan_dir.parent / "forged").write_text("x"))
    attempt("write_control", lambda: (Path(env["AGENT_CONTROL"]) / "X.cancel").write_text(""))
    daemon_pid = int(Path(env["AGENT_DAEMON_PID_FILE"]).read_text())
    attempt("kill_daemon", lambda: os.kill(daemon_pid, signal.SIGKILL))
    facts["ppid_is_daemon"] = os.getppid() == daemon_pid
    attempt("kill_parent", lambda: os.kill(os.getppid(), signal.SIGKILL))
if (link := env.get("AGENT_PROMPT_LINK")) and env["ORCHESTRD_PHASE_ID"] == "P01":
    # the next phase's prompt file, which the daemon reads: made a link to its state file
    Path(link).unlink()
    Path(link).symlink_to(plan_dir / "state.toml")
if hold := env.get("AGENT_HOLD_FILE"):
    Path(hold + ".pid").write_text(str(os.getpid()))
    while Path(hold).exists():
        time.sleep(0.02)
try:  # whose prompt its hand-off folder holds now (after the hold: other attempts ran too)
    facts["prompt_for"] = next(
        (line for line in prompt_file.read_text().splitlines() if "worker contract" in line), ""
    )
except OSError as exc:
    facts["prompt_for"] = errno.errorcode.get(exc.errno or 0, str(exc))
facts["failed_log"] = env.get("ORCHESTRD_FAILED_LOG")
out = Path(".agent") / f"{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}.json"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps(facts), encoding="utf-8")
if env.get("AGENT_FAIL_FIRST") and env["ORCHESTRD_ATTEMPT"] == "1":
    print("attempt 1 gives up: the remediation worker must read this", flush=True)
    sys.exit(1)
_agent.finish_passing()
sys.stdout.flush()
if env.get("AGENT_ATTACK") and env["ORCHESTRD_PHASE_ID"] == "P01":
    # as agents "clean up": this python (the worker itself) may die of it, so it becomes a
    # shell first, whose command line does not say python
    os.execvp(
        "sh",
        [
            "sh",
            "-c",
            "p=pyth; pkill -9 -f ${p}on; killall -9 ${p}on3; kill -9 $PPID; kill -9 -1; exit 0",
        ],
    )
