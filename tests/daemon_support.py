"""The daemon under test: `orchestrd daemon` as a real subprocess on a temp state_dir, files
dropped into its inbox the way a careful tool does (tmp name, then rename), its audit log read
back as JSON lines, and the fake workers it launched found again by their pid files.

Every wait polls a condition with a deadline (`wait_for`); nothing sleeps a fixed long time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomli_w

from orchestrd.config import Config

REPO_ROOT = Path(__file__).parent.parent
AGENT = Path(__file__).parent / "agents" / "daemon_agent.py"
WAIT = 15.0  # generous deadline for conditions that normally hold within a second
TERMINAL_EVENTS = ("plan.succeeded", "plan.failed", "plan.cancelled")
END_EVENTS = (*TERMINAL_EVENTS, "plan.interrupted")  # a plan stops running


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def is_our_agent(pid: int) -> bool:
    try:
        return str(AGENT).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def profile(**env: object) -> dict[str, Any]:
    """A worker profile running tests/agents/daemon_agent.py with this environment."""
    return {
        "command": ["{python}", str(AGENT), "{prompt}"],
        "env": {k: str(v) for k, v in env.items()},
    }


class Daemon:
    """One state_dir and config under `tmp`, and the daemon processes started on them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.inbox = self.state_dir / "inbox"
        self.audit_path = self.state_dir / "audit.jsonl"
        self.config_path = tmp / "orchestrd.toml"
        self.pid_dir = tmp / "pids"
        self.hold_dir = tmp / "hold"
        self.proc: subprocess.Popen[bytes] | None = None
        self.python = sys.executable
        """The daemon's interpreter (workers run as another user need one they can execute)."""
        self.prefix: list[str] = []
        """Runs the daemon (e.g. setpriv: as another user, with capabilities)."""
        self.returncodes: list[int] = []
        self._stderr_paths: list[Path] = []
        self.write_config()

    # -- config and plans --

    def config_data(self, **overrides: Any) -> dict[str, Any]:
        pids = str(self.pid_dir)
        data: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "default_worker": "quick",
            "max_workers": 4,
            "allowed_repo_roots": [str(self.tmp)],
            "policy": {
                "poll_interval": "0.05s",
                "max_polls": 2000,  # 100 s: the tests stop long workers themselves
                "stop_grace": "0.2s",
                "max_remediations": 0,
            },
            "spool": {"rescan_interval": "0.2s"},
            "workers": {
                "quick": profile(AGENT_PID_DIR=pids, AGENT_SLEEP=0.1),
                # runs until the test releases its plan (`release`)
                "held": profile(AGENT_PID_DIR=pids, AGENT_HOLD_DIR=self.hold_dir),
                # attempt 1 of P01 runs until someone stops it; later attempts are quick
                "stuck": profile(AGENT_PID_DIR=pids, AGENT_FIRST_SLEEP=60),
                "stubborn": profile(AGENT_PID_DIR=pids, AGENT_FIRST_SLEEP=60, AGENT_IGNORE_TERM=1),
                "fail_once": profile(AGENT_PID_DIR=pids, AGENT_FAIL_ONCE="P02"),
            },
        }
        if os.geteuid() == 0 and "allow_root" in Config.model_fields:
            data["allow_root"] = True  # CI containers run tests as root
            # …with no other user the venv (under /root) and tmp_path are open to
            data["allow_root_workers"] = True
        data.update(overrides)
        return data

    def write_config(self, **overrides: Any) -> None:
        text = tomli_w.dumps(self.config_data(**overrides))
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.rename(tmp, self.config_path)

    def repo(self, name: str) -> Path:
        path = self.tmp / "repos" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def plan_data(
        self, plan_id: str, repo: str = "repo", phases: Iterable[str] = ("P01",), **fields: Any
    ) -> dict[str, Any]:
        return {
            "id": plan_id,
            "repo": str(self.repo(repo)),
            **fields,
            "phases": [
                {"id": p, "prompt": f"Do {p} of {plan_id}.", "markers": [f"@plan:{plan_id}.{p}"]}
                for p in phases
            ],
        }

    def drop(self, name: str, content: dict[str, Any] | str) -> Path:
        """Write `content` into the inbox as a dot-tmp file, then rename it to `name`."""
        text = content if isinstance(content, str) else tomli_w.dumps(content)
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.rename(tmp, self.inbox / name)
        return self.inbox / name

    def hold(self, *plan_ids: str) -> None:
        """Workers of these plans (profile `held`) will not finish until released."""
        self.hold_dir.mkdir(exist_ok=True)
        for plan_id in plan_ids:
            (self.hold_dir / plan_id).touch()

    def release(self, *plan_ids: str) -> None:
        for plan_id in plan_ids:
            (self.hold_dir / plan_id).unlink()

    def submit(self, plan_id: str, **kwargs: Any) -> None:
        self.drop(f"{plan_id}.toml", self.plan_data(plan_id, **kwargs))

    # -- the daemon process --

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ORCHESTRD_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.update(extra)
        return env

    def start(self, wait: bool = True, **env: str) -> subprocess.Popen[bytes]:
        """Start `orchestrd daemon` and (by default) wait for its `daemon.started`."""
        assert self.proc is None or self.proc.poll() is not None, "a daemon is already running"
        before = len(self.events("daemon.started"))
        stderr_path = self.tmp / f"daemon-{len(self._stderr_paths) + 1}.stderr"
        self._stderr_paths.append(stderr_path)
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    self.python,
                    "-m",
                    "orchestrd",
                    "daemon",
                    "--config",
                    str(self.config_path),
                ],
                cwd=self.tmp,
                env=self.env(**env),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        if wait:
            self.wait_for(
                lambda: len(self.events("daemon.started")) > before, what="daemon.started"
            )
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Send `sig` and wait for the daemon to exit; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.returncodes.append(rc)
        return rc

    def stderr(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self._stderr_paths if p.exists())

    def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
        """`wait_for`, failing at once (with its stderr) if the daemon exits meanwhile."""

        def check() -> Any:
            result = predicate()
            if not result and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) while waiting for "
                    f"{what or predicate}:\n{self.stderr()[-4000:]}"
                )
            return result

        try:
            return wait_for(check, timeout, what)
        except AssertionError as exc:
            tail = "\n".join(json.dumps(e) for e in self.events()[-15:])
            raise AssertionError(f"{exc}\nlast audit events:\n{tail}") from None

    # -- the audit log --

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The audit log's complete lines as dicts in file order, optionally filtered."""
        try:
            text = self.audit_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # a line still being written has no newline yet
        out = []
        for line in lines:
            e = json.loads(line)
            if event is not None and e["event"] != event:
                continue
            if all(e.get(k) == v for k, v in match.items()):
                out.append(e)
        return out

    def wait_event(
        self, event: str, count: int = 1, timeout: float = WAIT, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until the audit log holds `count` such events; returns them."""
        return self.wait_for(  # type: ignore[no-any-return]
            lambda: (found := self.events(event, **match)) and len(found) >= count and found,
            timeout,
            f"{count} x {event} {match or ''}",
        )

    def wait_plans_end(self, plan_ids: Iterable[str], timeout: float = WAIT) -> None:
        """Wait until every plan has succeeded, failed or been cancelled."""
        ids = set(plan_ids)
        self.wait_for(
            lambda: ids <= {e["plan"] for e in self.events() if e["event"] in TERMINAL_EVENTS},
            timeout,
            f"the end of plans {sorted(ids)}",
        )

    def worker_pids(self) -> list[int]:
        """Every worker pid this daemon reported starting (the audit log's worker.started)."""
        return [e["pid"] for e in self.events("worker.started")]

    def agent_pid(self, plan_id: str, phase: str = "P01", attempt: int = 1) -> int:
        """Wait for that agent's pid file (written once it is set up); its pid."""
        path = self.pid_dir / f"{plan_id}-{phase}-{attempt}.pid"
        return int(self.wait_for(lambda: path.exists() and path.read_text(), what=str(path)))

    def agent_pids(self) -> list[int]:
        """Every fake agent that wrote its pid file."""
        if not self.pid_dir.is_dir():
            return []
        return [int(p.read_text()) for p in self.pid_dir.glob("*.pid") if p.read_text()]

    def live_workers(self) -> list[int]:
        pids = set(self.worker_pids()) | set(self.agent_pids())
        return sorted(p for p in pids if alive(p) and is_our_agent(p))

    # -- the CLI --

    def cli(self, *args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`python -m orchestrd ARGS --config <ours>` as a real subprocess."""
        return subprocess.run(
            [sys.executable, "-m", "orchestrd", *map(str, args), "--config", str(self.config_path)],
            cwd=self.tmp,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- cleanup --

    def cleanup(self) -> list[int]:
        """Stop the daemon (SIGTERM, then SIGKILL) and kill any worker left; returns the
        workers that were still alive after the daemon was gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        leftovers = self.live_workers()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return leftovers


def concurrency(events: list[dict[str, Any]]) -> int:
    """The most workers alive at once, replaying worker.started … worker.exited/stopped."""
    running: set[int] = set()
    most = 0
    for e in events:
        if e["event"] == "worker.started":
            running.add(e["pid"])
            most = max(most, len(running))
        elif e["event"] in ("worker.exited", "worker.stopped", "worker.orphan_stopped"):
            running.discard(e["pid"])
    return most


def plans_overlapping_on_a_repo(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(repo, running plan, plan that started beside it) for every plan.started while another
    plan of the same repo had not ended."""
    repo_of: dict[str, str] = {}
    active: dict[str, str] = {}
    overlaps = []
    for e in events:
        if e["event"] == "plan.accepted":
            repo_of[e["plan"]] = e["repo"]
        elif e["event"] == "plan.started":
            repo = repo_of[e["plan"]]
            if repo in active:
                overlaps.append((repo, active[repo], e["plan"]))
            active[repo] = e["plan"]
        elif e["event"] in END_EVENTS:
            repo = repo_of.get(e["plan"], "")
            if active.get(repo) == e["plan"]:
                del active[repo]
    return overlaps


class DirectoryEvents:
    """The inotify events of one directory (Linux), to tell a file renamed into place from one
    written in place. Use as a context manager; `read()` returns (name, mask) pairs so far."""

    CREATE, CLOSE_WRITE, MOVED_TO = 0x100, 0x8, 0x80
    _HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        mask = self.CREATE | self.CLOSE_WRITE | self.MOVED_TO
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def __enter__(self) -> DirectoryEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self) -> list[tuple[str, int]]:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset < len(data):
            _, mask, _, length = self._HEADER.unpack_from(data, offset)
            start = offset + self._HEADER.size
            events.append((data[start : start + length].rstrip(b"\0").decode(), mask))
            offset = start + length
        return events
