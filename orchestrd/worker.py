"""One worker process: launched headless in its own session, output to its own log file,
identified by PID + start time, and stopped as a whole process group with escalation.

This is the seam a cluster backend would implement: `launch(spec) -> LocalWorker` (wait, tail,
stop the tree) and a `WorkerHandle` that is plain data kept in the plan's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from .errors import OrchestrdError
from .fsutil import FileRefused, open_for_writing, read_tail
from .privsep import NSINIT, Identity, wrap

_GROUP_POLL = 0.02  # how often a stopping process group is looked at (seconds)
# The end of an output over its cap is kept (a test runner's summary, an agent's last error):
# at most this much, in memory only once the cap is hit (twice this at most, between trims).
TAIL_BYTES = 512 * 1024

OutputObserver = Callable[[bytes], None]
"""Fed every chunk of a worker's output as it is read, before any of it is cut."""


def use_pidfd_child_watcher() -> None:
    """On Python 3.11, asyncio waits for every child in a thread of its own (1,000 workers:
    1,000 threads); a pidfd watcher waits in the event loop instead, as 3.12+ does by default.
    Call from inside the running loop, before the first worker starts."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel may be too old (< 5.3)
    except OSError:
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


class WorkerStartError(OrchestrdError):
    """The worker's command could not be executed (missing binary, bad cwd, no permission)."""


class WorkerLogError(OrchestrdError):
    """The worker's output could not be written to its log (a full disk, a folder gone)."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path
    identity: Identity | None = None
    """Run as this user (through nsinit); None: as the daemon's user."""
    pid_namespace: bool = True
    """With an identity: alone in a user+PID namespace (see nsinit)."""


@dataclasses.dataclass(frozen=True)
class WorkerHandle:
    """What identifies a launched worker across daemon restarts (kept in state.toml)."""

    pid: int
    pgid: int
    start_time: int  # /proc/<pid>/stat field 22 (clock ticks since boot)
    boot_id: str
    log: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, …]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def process_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_same_process(handle: WorkerHandle) -> bool:
    """True if `handle.pid` is still the process we launched (PID reuse is ruled out)."""
    if handle.boot_id and handle.boot_id != BOOT_ID:
        return False
    return process_start_time(handle.pid) == handle.start_time


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass  # someone else's group with our number: fall through to /proc, which tells
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


async def _group_gone(pgid: int, leader: anyio.abc.Process | None) -> None:
    """Return once no live process is left in the group (reaping our own child as it goes)."""
    while True:
        if leader is not None and leader.returncode is None:
            with anyio.move_on_after(_GROUP_POLL):
                await leader.wait()
            continue
        if not await anyio.to_thread.run_sync(group_members, pgid):
            return
        await anyio.sleep(_GROUP_POLL)


async def _escalate(
    send: Callable[[signal.Signals], object], gone: Callable[[], Awaitable[None]], grace: float
) -> signal.Signals:
    """SIGTERM, wait up to `grace` for `gone`, then SIGKILL and wait again (bounded).
    Returns the last signal that was needed. The caller shields it from cancellation."""
    send(signal.SIGTERM)
    with anyio.move_on_after(grace) as waited:
        await gone()
    if not waited.cancelled_caught:
        return signal.SIGTERM
    send(signal.SIGKILL)
    with anyio.move_on_after(max(grace, 5.0)):
        await gone()
    return signal.SIGKILL


async def stop_group(
    pgid: int, grace: float, leader: anyio.abc.Process | None = None
) -> signal.Signals | None:
    """SIGTERM the group, wait up to `grace`, then SIGKILL. Survives cancellation (shielded).

    Returns the last signal that was needed, or None if the group was already gone.
    """
    with anyio.CancelScope(shield=True):
        # a live leader means a live group: no /proc scan (shutting 1,000 workers down would
        # otherwise scan every process on the machine once per worker)
        leader_alive = leader is not None and leader.returncode is None
        if not leader_alive and not await anyio.to_thread.run_sync(group_members, pgid):
            return None
        last = await _escalate(
            lambda sig: _signal_group(pgid, sig), lambda: _group_gone(pgid, leader), grace
        )
    return last


class LocalWorker:
    """A running local worker process (our child), with the task copying its output to the log.

    Output goes through a pipe so the log can be capped at `max_log_bytes`: its head and its
    tail are kept, what lies between is counted and dropped (the cut marked in the file), and
    the daemon's memory stays flat whatever the worker prints. An `on_output` observer sees
    every byte, cut or not.
    """

    def __init__(
        self,
        process: anyio.abc.Process,
        handle: WorkerHandle,
        argv: Sequence[str],
        max_log_bytes: int,
        on_output: OutputObserver | None = None,
    ) -> None:
        self.process = process
        self.argv = argv
        self.handle = handle
        self.started = time.monotonic()
        self.max_log_bytes = max_log_bytes
        self.on_output = on_output
        self.output_bytes = 0
        """Bytes the worker wrote, kept or not."""
        self.log_error: OSError | None = None
        """Why the log could not be written (its output was drained and dropped from then on)."""
        self.pumped = anyio.Event()
        self._tail_keep = min(TAIL_BYTES, max_log_bytes // 4)
        self._head = max_log_bytes - self._tail_keep
        self._tail: bytearray | None = None
        """Output after the head, trimmed to `_tail_keep` now and then; None below the head."""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def dropped_bytes(self) -> int:
        return max(0, self.output_bytes - self.max_log_bytes)

    async def wait(self) -> int:
        return await self.process.wait()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log_size(self) -> int:
        return self.output_bytes

    def tail(self, lines: int = 40, max_bytes: int = 16384) -> str:
        if self._tail:  # past the head the end is in memory until the output ends
            text = bytes(self._tail[-max_bytes:]).decode("utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return tail_file(Path(self.handle.log), lines, max_bytes)

    async def stop(self, grace: float) -> signal.Signals | None:
        """Stop the whole process tree of this worker (grandchildren included)."""
        return await stop_group(self.handle.pgid, grace, self.process)

    async def _pump(self) -> None:
        """Copy the worker's output to its log until every writer has closed the pipe.

        If the log cannot be written (a full disk), the output is still read — a worker blocked
        on a full pipe would look stalled — and dropped; `launch` then raises WorkerLogError.
        """
        assert self.process.stdout is not None
        log: anyio.AsyncFile[bytes] | None = None
        try:
            try:
                log = await anyio.open_file(self.handle.log, "ab", buffering=0)
            except OSError as exc:
                self.log_error = exc
            async for chunk in self.process.stdout:
                if self.on_output is not None:
                    self.on_output(chunk)
                room = self._head - self.output_bytes
                self.output_bytes += len(chunk)
                if room > 0 and log is not None:
                    log = await self._write(log, chunk[:room])
                if room < len(chunk):
                    self._keep_tail(chunk[max(room, 0) :])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the pipe went away with the process: nothing more to copy
        finally:
            # the tail is written even when the pump is given up (a descendant holds the pipe)
            with anyio.CancelScope(shield=True):
                if log is not None and self._tail is not None:
                    log = await self._write(log, self._cut() + bytes(self._tail))
                if log is not None:
                    with contextlib.suppress(OSError):
                        await log.aclose()
            self._tail = None
            self.pumped.set()

    def _keep_tail(self, data: bytes) -> None:
        if self._tail is None:
            self._tail = bytearray()
        self._tail += data
        if len(self._tail) > 2 * self._tail_keep:  # trimmed now and then, not at every chunk
            del self._tail[: -self._tail_keep]

    def _cut(self) -> bytes:
        """The marker between head and tail; the tail trimmed to what is kept."""
        assert self._tail is not None
        if not self.dropped_bytes:
            return b""
        del self._tail[: -self._tail_keep or len(self._tail)]
        return (
            f"\n[orchestrd: log cut at max_log_bytes={self.max_log_bytes}; "
            f"{self.dropped_bytes} more bytes dropped here; the last {len(self._tail)} "
            "follow]\n".encode()
        )

    async def _write(
        self, log: anyio.AsyncFile[bytes], data: bytes
    ) -> anyio.AsyncFile[bytes] | None:
        """Write all of `data` (a write may be short on a filling disk); on an error remember
        it and give up the log (None)."""
        view = memoryview(data)
        try:
            while view:
                view = view[await log.write(view) :]
        except OSError as exc:
            self.log_error = exc
            with contextlib.suppress(OSError):
                await log.aclose()
            return None
        return log


LOG_SCAN_BYTES = 4 * 1024 * 1024  # the end of the log is where runtime errors are


def log_without_prompt(log: Path, prompt: str, instead: str = "") -> str:
    """The end of a worker's log (LOG_SCAN_BYTES) with the prompt the agent echoed into it
    replaced by `instead`: the prompt is not the worker's output (a remediation prompt even
    quotes the failed worker's traceback). FileRefused if the worker replaced its log with
    something else than a file (a FIFO would block the reader)."""
    try:
        data, size = read_tail(log, LOG_SCAN_BYTES)
    except OSError:
        return ""
    text = _last_lines(data, size, LOG_SCAN_BYTES, 10**9)
    prompt = prompt.strip()
    return text.replace(prompt, instead) if prompt else text


def tail_file(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last `lines` lines of a file, reading at most `max_bytes` from its end. The worker
    may have replaced its log: anything but a regular file is not read ('')."""
    try:
        data, size = read_tail(path, max_bytes)
    except (OSError, FileRefused):
        return ""
    return _last_lines(data, size, max_bytes, lines)


def _last_lines(data: bytes, size: int, max_bytes: int, lines: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        # the first line was cut in two: half a line (half a secret, for the redactor) helps
        # nobody
        text = text[text.index("\n") + 1 :]
    return "\n".join(text.splitlines()[-lines:])


async def _open(spec: WorkerSpec) -> anyio.abc.Process:
    try:
        await anyio.Path(spec.log_path.parent).mkdir(parents=True, exist_ok=True)
        # created (or appended to) up front: a log folder we cannot write fails the start, and
        # so does a FIFO an earlier worker left at this path (it would block the log pump)
        os.close(await anyio.to_thread.run_sync(open_for_writing, spec.log_path, True))
    except OSError as exc:
        raise WorkerStartError(f"cannot open worker log {spec.log_path}: {exc.strerror}") from None
    except FileRefused as exc:
        raise WorkerStartError(f"cannot open worker log {spec.log_path}: it {exc}") from None
    if not spec.cwd.is_dir():
        raise WorkerStartError(f"the repo {spec.cwd} does not exist (any more)")
    argv = list(spec.argv)
    if spec.identity is not None:
        # nsinit reports an exec failure only in the log: find a missing binary here
        if argv and shutil.which(argv[0], path=spec.env.get("PATH", os.defpath)) is None:
            raise WorkerStartError(
                f"cannot execute {argv[0]!r}: not found; is it installed and on PATH?"
            )
        argv = wrap(argv, spec.pid_namespace, spec.log_path)
    as_user = spec.identity.process_kwargs() if spec.identity is not None else {}
    try:
        return await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env=dict(spec.env),
            start_new_session=True,
            **as_user,
        )
    except OSError as exc:
        if spec.identity is not None and isinstance(exc, PermissionError):
            raise WorkerStartError(
                f"cannot start a worker as {spec.identity.user}: {exc.strerror}; that user must "
                f"be able to execute {argv[0]} and read orchestrd's package (install it outside "
                "any private home folder, e.g. /opt/orchestrd)"
            ) from None
        raise WorkerStartError(
            f"cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
            + ("; is it installed and on PATH?" if isinstance(exc, FileNotFoundError) else "")
        ) from None
    except ValueError as exc:  # a NUL byte in argv or env: refused before anything runs
        raise WorkerStartError(f"cannot execute {spec.argv[0]!r}: {exc}") from None


@contextlib.asynccontextmanager
async def launch(
    spec: WorkerSpec, max_log_bytes: int, grace: float, on_output: OutputObserver | None = None
) -> AsyncIterator[LocalWorker]:
    """Run a headless worker for the body of the `async with`: stdin /dev/null, own session,
    output copied to its log (capped: head and tail kept) and fed to `on_output` whole. On the
    way out — normal, error or cancellation — whatever is left of its process group is stopped
    and the output drained.

    Raises WorkerStartError if it cannot be started, WorkerLogError (once it is stopped) if its
    output could not be written to its log.
    """
    process = await _open(spec)
    handle = WorkerHandle(
        pid=process.pid,
        pgid=process.pid,  # start_new_session: the worker leads its own group
        start_time=process_start_time(process.pid) or 0,
        boot_id=BOOT_ID,
        log=str(spec.log_path),
    )
    worker = LocalWorker(process, handle, spec.argv, max_log_bytes, on_output)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker._pump, name=f"log pump {process.pid}")
        try:
            yield worker
        finally:
            with anyio.CancelScope(shield=True):
                await worker.stop(grace)
                # a descendant that left the group (setsid) may still hold the pipe open:
                # after a grace, stop copying rather than wait for it
                with anyio.move_on_after(grace):
                    await worker.pumped.wait()
                tg.cancel_scope.cancel()
                await process.aclose()
    if worker.log_error is not None:
        exc = worker.log_error
        raise WorkerLogError(
            f"cannot write the log {spec.log_path}: {exc.strerror or exc}; the output of "
            f"{spec.argv[0]!r} was dropped from then on — free space on that file system or "
            "make the folder writable, then retry the plan"
        )


def processes_with_env(name: str, under: Path) -> dict[int, str]:
    """Live processes whose environment sets `name` to a path inside `under`, with that value.

    Workers, their verify commands and every descendant inherit `ORCHESTRD_LOG`, which points
    into their plan's `workers/` folder: this finds them after a crash even if their PID was
    never saved, or if they left the worker's process group (setsid). Only processes whose
    environment this user may read are seen (its own).
    """
    prefix = os.fsencode(name) + b"="
    root = os.fsencode(under) + b"/"
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                if item[len(prefix) :].startswith(root):
                    found[int(entry.name)] = os.fsdecode(item[len(prefix) :])
                break
    return found


def nsinit_processes(under: Path) -> dict[int, str]:
    """Live nsinit processes (workers run as the worker user) whose attempt log is inside
    `under`, with that log. Their environment is not this user's to read; their command line
    is anyone's, and the processes inside their namespace die with them."""
    found = {}
    root = os.fsencode(under) + b"/"
    marker = os.fsencode(NSINIT)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 5 and argv[3] == marker and argv[5].startswith(root):
            found[int(entry.name)] = os.fsdecode(argv[5])
    return found


async def stop_processes(pids: list[int], grace: float) -> signal.Signals | None:
    """SIGTERM each process (its whole group when it leads one), wait up to `grace`, SIGKILL
    what is left. Returns the last signal needed, None if all were gone already."""

    def send(sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)

    def alive() -> bool:
        return any((fields := _stat_fields(pid)) is not None and fields[0] != "Z" for pid in pids)

    async def all_gone() -> None:
        # not our children: nothing to await but /proc (as _group_gone does)
        while True:
            if not await anyio.to_thread.run_sync(alive):
                return
            await anyio.sleep(_GROUP_POLL)

    with anyio.CancelScope(shield=True):
        if not await anyio.to_thread.run_sync(alive):
            return None
        last = await _escalate(send, all_gone, grace)
    return last


async def stop_orphan(handle: WorkerHandle, grace: float) -> signal.Signals | None:
    """Stop a worker left by an earlier daemon run, if it is still the same process."""
    # the leader is gone (or its PID was reused): stop what is left of its group only if the
    # group's leader number is not a new process's group
    if not is_same_process(handle) and process_start_time(handle.pgid) is not None:
        return None
    return await stop_group(handle.pgid, grace)


def command_line(pid: int) -> str:
    """A process's command line, arguments joined by spaces ('' once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")[:500]


async def stop_respawned(log: str, under: Path, watch_for: float) -> dict[int, str]:
    """For `watch_for` seconds after a worker was stopped, stop every process that carries its
    `ORCHESTRD_LOG` (a helper of the agent starting the session again, or one that left its
    process group); returns their pids and command lines. Only processes whose environment
    this user can read are seen: a worker in its own PID namespace cannot outlive it anyway."""
    found: dict[int, str] = {}
    step = min(max(watch_for / 20, 0.02), 0.5)
    with anyio.move_on_after(watch_for):
        while True:
            live = await anyio.to_thread.run_sync(processes_with_env, "ORCHESTRD_LOG", under)
            pids = sorted(pid for pid, value in live.items() if value == log)
            if pids:
                for pid in pids:
                    found.setdefault(pid, command_line(pid))
                await stop_processes(pids, watch_for)
            await anyio.sleep(step)
    return found
