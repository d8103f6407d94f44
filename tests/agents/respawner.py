"""Hangs silently, with a helper that left its process group (setsid) and watches it: 0.1 s
after the agent is stopped, the helper starts the session again (a new process with the
agent's environment, `respawned-session` in its command line) and exits, as an agent's
background helper restarting a killed session does. The helper itself runs without the
agent's environment (so only the respawned session carries ORCHESTRD_LOG). Pids go to
`pids-<phase>-<attempt>.txt`: agent, helper; the respawned session's pid is appended."""

import os
import subprocess
import sys
import time
from pathlib import Path


def dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def helper(agent: int, pids: str, env_file: str) -> None:
    env = dict(line.split("=", 1) for line in Path(env_file).read_text().split("\0") if line)
    while not dead(agent):
        time.sleep(0.01)
    time.sleep(0.1)
    session = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1)", "respawned-session"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    with open(pids, "a") as f:
        f.write(f"{session.pid}\n")


if sys.argv[1:2] == ["--helper"]:
    helper(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    raise SystemExit(0)

import _agent  # noqa: E402 (the helper needs none of it)

_agent.start("respawner")
env = os.environ
pids = Path(f"pids-{env['ORCHESTRD_PHASE_ID']}-{env['ORCHESTRD_ATTEMPT']}.txt").absolute()
pids.write_text(f"{os.getpid()} ")
env_file = pids.with_suffix(".env")
env_file.write_text("".join(f"{k}={v}\0" for k, v in env.items()))
watcher = subprocess.Popen(
    [sys.executable, __file__, "--helper", str(os.getpid()), str(pids), str(env_file)],
    stdin=subprocess.DEVNULL,
    start_new_session=True,
    env={"PATH": env.get("PATH", "")},
)
with pids.open("a") as f:
    f.write(f"{watcher.pid}\n")
while True:
    time.sleep(3600)
