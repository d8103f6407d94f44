"""What every fake agent does first, copying real agent CLI habits (`codex exec`, `claude -p`).

It prints a header and its prompt to stderr, reads stdin to EOF if stdin is open (an agent CLI
that finds an open stdin waits on it forever; orchestrd must hand it /dev/null), and records
what it saw (argv, env, session, stdin, open fds) to `.agent/<phase>-<attempt>.json` in its
working directory, so tests can assert the worker contract from inside the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def start(name: str) -> str:
    """Header, prompt echo, stdin, record; returns the prompt (argv[1], like `codex exec`)."""
    prompt = sys.argv[1] if len(sys.argv) > 1 else ""
    phase = os.environ.get("ORCHESTRD_PHASE_ID", "?")
    print(f"{name} agent 0.1 — phase {phase}, workdir {os.getcwd()}", file=sys.stderr)
    print("--------\nuser\n" + prompt, file=sys.stderr, flush=True)
    stdin_bytes = -1
    if sys.stdin is not None and not sys.stdin.isatty():
        stdin_bytes = len(sys.stdin.buffer.read())  # blocks forever on an open pipe
    record(prompt, stdin_bytes)
    return prompt


def record(prompt: str, stdin_bytes: int) -> None:
    st, null = os.fstat(0), os.stat(os.devnull)
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir used is closed by now
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    facts = {
        "argv": sys.argv,
        "prompt": prompt,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "stdin_is_devnull": os.path.samestat(st, null),
        "stdin_bytes": stdin_bytes,
        "fds": fds,
    }
    env = os.environ
    out = Path(".agent") / f"{env.get('ORCHESTRD_PHASE_ID')}-{env.get('ORCHESTRD_ATTEMPT')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(facts), encoding="utf-8")


def write_report(status_line: str) -> None:
    report = Path(os.environ["ORCHESTRD_REPORT"])
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {os.environ['ORCHESTRD_PHASE_ID']} worker report\n\n{status_line}\n")


def write_completion(marker_suffix: str = "") -> None:
    markers = [m for m in os.environ.get("ORCHESTRD_MARKERS", "").splitlines() if m]
    for name in filter(None, os.environ.get("ORCHESTRD_COMPLETION", "").split(os.pathsep)):
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"- {m}{marker_suffix}\n" for m in markers)
        path.write_text(f"# {os.environ['ORCHESTRD_PHASE_ID']} done\n{body}")


def finish_passing() -> None:
    """The work a passing agent leaves behind: a PASS report and the completion files."""
    write_report(os.environ.get("AGENT_STATUS_LINE", "Status: PASS"))
    write_completion(os.environ.get("AGENT_MARKER_SUFFIX", ""))
    if say := os.environ.get("AGENT_SAY"):
        print(say)
    print("done: Status: PASS")
