"""The wrapper the slurm launcher's batch script runs on the node around every worker:
`python3 slurm_shim.py FOLDER` (FOLDER: the attempt's `<log>.slurm/`, on the shared
filesystem, with the `spec.json` the daemon wrote).

It is what makes a worker on another machine behave like a local one, whatever the site's
proctrack: a child subreaper (every descendant, a `setsid` escapee too, stays its child), the
worker in a process group of its own with exactly its environment and stdin /dev/null, its output
written to the worker's log with the same head + tail cap as the local launcher, its exit code
and signal written to `status.json` by the shim itself (Slurm's state is only a liveness signal:
a controller that crashed may call the job FAILED or run it again), and on SIGTERM every
descendant stopped (TERM, grace, KILL). It runs once per attempt: a job Slurm re-queued after a
controller crash finds its `ran` marker and exits at once.

Standard library only, and no import of orchestrd: it runs with the node's python3 and nothing
else installed. The daemon reads `status.json` (see SlurmWorker); it writes `stop` (the grace
of a stop, seconds) before it signals the job.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
TAIL_BYTES = 512 * 1024  # as the local launcher's
KILL_WAIT = 5.0  # after SIGKILL, how long the shim waits for its descendants to be gone


class Output:
    """The worker's output into its log: the head up to max_log_bytes minus the kept tail, the
    tail at the end after a marker saying what was cut (as the local launcher does)."""

    def __init__(self, log: Path, max_log_bytes: int) -> None:
        self.file = open(log, "ab", buffering=0)  # noqa: SIM115 - closed by finish()
        self.max = max_log_bytes
        self.tail_keep = min(TAIL_BYTES, max_log_bytes // 4)
        self.head = max_log_bytes - self.tail_keep
        self.total = 0
        self.tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        room = self.head - self.total
        self.total += len(chunk)
        if room > 0:
            self.file.write(chunk[:room])
        if room < len(chunk):
            self.tail += chunk[max(room, 0) :]
            if len(self.tail) > 2 * self.tail_keep:
                del self.tail[: -self.tail_keep]

    def finish(self) -> None:
        if self.tail:
            dropped = max(0, self.total - self.max)
            if dropped:
                del self.tail[: -self.tail_keep or len(self.tail)]
                self.file.write(
                    f"\n[orchestrd: log cut at max_log_bytes={self.max}; {dropped} more bytes "
                    f"dropped here; the last {len(self.tail)} follow]\n".encode()
                )
            self.file.write(bytes(self.tail))
        self.file.close()


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def descendants(root: int) -> dict[int, list[str]]:
    """Live processes below `root` (all of them: as a subreaper it is every orphan's parent)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, list[str]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if stats[pid][0] != "Z":
            found[pid] = stats[pid]
        todo += children.get(pid, [])
    return found


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


class Shim:
    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        self.folder = folder
        self.spec = spec
        self.tick = float(spec["tick"])
        self.status: dict[str, Any] = {
            "node": os.environ.get("SLURMD_NODENAME", os.uname().nodename),
            "returncode": None,
            "signal": None,
            "left": [],
            "stopped": [],
            "output_bytes": 0,
            "cpu": 0,
            "procs": [],
            "done": False,
        }
        self.stopping = False
        self.wake = threading.Event()
        """Set by SIGCHLD and SIGTERM: the loop looks at once, not at its next tick."""
        self.child: subprocess.Popen[bytes] | None = None

    def write(self) -> None:
        """status.json, replaced whole (a reader never sees half of it)."""
        tmp = self.folder / "status.json.tmp"
        tmp.write_text(json.dumps(self.status))
        os.replace(tmp, self.folder / "status.json")

    def run(self) -> int:
        output = Output(Path(self.spec["log"]), int(self.spec["max_log_bytes"]))
        if self.stopping or (self.folder / "stop").exists():
            # stopped before the worker started (the daemon waits for this shim's first word
            # before it signals: a SIGTERM before the handler was set would end the shim
            # unheard): the worker never runs
            output.finish()
            self.status.update(returncode=-signal.SIGTERM, signal="SIGTERM", done=True)
            self.write()
            return 128 + signal.SIGTERM
        try:
            self.child = subprocess.Popen(
                self.spec["argv"],
                env=self.spec["env"],
                cwd=self.spec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            output.feed(
                f"orchestrd shim: cannot execute {self.spec['argv'][0]!r}: {exc}\n".encode()
            )
            output.finish()
            self.status.update(returncode=127, done=True, output_bytes=output.total)
            self.write()
            return 127
        pump = threading.Thread(target=self._pump, args=(output,), daemon=True)
        pump.start()
        self.write()
        self._supervise()
        # a descendant that closed nothing may hold the pipe: after the stop, give up on it
        pump.join(self.spec["grace"] if self.status["signal"] else None)
        self.status.update(output_bytes=output.total, done=True, procs=[])
        with contextlib.suppress(OSError):
            output.finish()
        self.status["output_bytes"] = output.total
        self.write()
        rc = int(self.status["returncode"])
        return rc if rc >= 0 else 128 - rc

    def _pump(self, output: Output) -> None:
        assert self.child is not None and self.child.stdout is not None
        pipe = self.child.stdout.fileno()
        for chunk in iter(lambda: os.read(pipe, 65536), b""):
            output.feed(chunk)
            self.status["output_bytes"] = output.total

    def _reap(self) -> None:
        assert self.child is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                self.status["returncode"] = self.child.returncode
                self.write()

    def _supervise(self) -> None:
        """Until the worker and everything it started are gone, or a stop."""
        assert self.child is not None
        last = None
        while True:
            self._reap()
            below = descendants(os.getpid())
            if self.stopping:
                self._stop(below)
                return
            if self.status["returncode"] is not None and not below:
                return
            own = _stat(os.getpid()) or []
            cpu = sum(int(f[11]) + int(f[12]) for f in below.values())
            cpu += int(own[13]) + int(own[14]) if len(own) > 14 else 0
            sample = (cpu, sorted(below), self.status["output_bytes"])
            if sample != last:
                self.status.update(cpu=cpu, procs=sorted(below))
                self.write()
                last = sample
            self.wake.wait(self.tick)
            self.wake.clear()

    def _stop(self, below: dict[int, list[str]]) -> None:
        assert self.child is not None
        named = [[pid, command_line(pid)] for pid in sorted(below)]
        self.status["stopped"] = named
        if self.status["returncode"] is not None:  # what the worker left running
            self.status["left"] = named
        if not below:
            return
        try:
            grace = float((self.folder / "stop").read_text())
        except (OSError, ValueError):
            grace = float(self.spec["grace"])
        self.status["signal"] = "SIGTERM"
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._alive():
            time.sleep(0.02)
        if self._alive():
            self.status["signal"] = "SIGKILL"
            deadline = time.monotonic() + KILL_WAIT
            while time.monotonic() < deadline and self._alive():
                self._signal(signal.SIGKILL)
                time.sleep(0.02)

    def _alive(self) -> bool:
        self._reap()
        return bool(descendants(os.getpid()))

    def _signal(self, sig: signal.Signals) -> None:
        """The worker's group, then every descendant (one that left the group by setsid)."""
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, sig)
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def main(folder: Path) -> int:
    try:
        # once per attempt: a job run again (a re-queue after a controller crash) stops here
        os.close(os.open(folder / "ran", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        print(f"orchestrd shim: {folder} ran already; not running it twice", file=sys.stderr)
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("orchestrd shim: cannot become a child subreaper", file=sys.stderr)
    shim = Shim(folder, json.loads((folder / "spec.json").read_text()))

    def on_term(*_: object) -> None:
        shim.stopping = True
        shim.wake.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGCHLD, lambda *_: shim.wake.set())
    return shim.run()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
