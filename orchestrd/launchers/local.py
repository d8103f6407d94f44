"""The local launcher: a worker as a child process of the daemon, headless in its own session,
contained in a cgroup v2 of its own per attempt where one can be had (`cgroup.kill` stops every
descendant at once, `setsid` escapees included), in its process group otherwise.

The child joins its cgroup before the worker's program runs: it is started behind a gate (its
stdin, a pipe), the daemon writes its PID into `cgroup.procs`, then opens the gate. The move is
the daemon's, not the child's: a worker started as the worker user cannot move itself out of the
daemon's cgroup (moving needs write access to the common ancestor's `cgroup.procs`), and a
user switch done by the child itself would need capabilities the daemon gives no child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from .. import cgroups, procfs
from ..config import Config
from ..fsutil import FileRefused, open_for_writing, write_all
from ..privsep import wrap
from ..worker import tail_file
from . import (
    Handle,
    Leftover,
    OutputObserver,
    Reaped,
    Worker,
    WorkerLogError,
    WorkerSpec,
    WorkerStartError,
)
from .proctree import (
    BOOT_ID,
    WorkerHandle,
    escalate,
    group_members,
    nsinit_processes,
    process_start_time,
    processes_with_env,
    stop_group,
    stop_orphan,
    stop_processes,
    stop_respawned,
)

KIND = "local"
# The end of an output over its cap is kept (a test runner's summary, an agent's last error):
# at most this much, in memory only once the cap is hit (twice this at most, between trims).
TAIL_BYTES = 512 * 1024
_GATE = 'read -r _ || exit 125; {}exec "$@" </dev/null'
"""The exec step of a worker run as the daemon's user: wait for the daemon to have moved this
process into its cgroup (a line on stdin), then run the worker with stdin /dev/null (and
without the PWD the shell exports, unless the worker's environment had one)."""


@dataclasses.dataclass(frozen=True)
class Containment:
    """How this daemon contains workers, and why (daemon.started says both)."""

    mode: str  # "cgroup" | "pgroup"
    reason: str
    tree: cgroups.Tree | None = None
    warnings: tuple[str, ...] = ()


def contain(
    parent: Path | None, state_dir: Path, under_systemd: bool, tag: str = ""
) -> Containment:
    """A cgroup tree for the workers, or process groups with the reason none could be had.

    Under systemd (Delegate=yes) the service's cgroup is the tree (the daemon moves itself into
    its `daemon/` leaf). Elsewhere the tree is `orchestrd-<id>` under `parent` or the daemon's
    own cgroup, `<id>` derived from the state folder: two daemons never share one, and a
    restarted daemon finds its predecessor's."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12] + (
        f"-{tag}" if tag else ""
    )
    try:
        if under_systemd and parent is None:
            tree = cgroups.setup(None, leave_leaf=True)
        else:
            base = parent or _own_dir()
            tree = cgroups.setup(base / f"orchestrd-{tag}", leave_leaf=False)
    except cgroups.Unavailable as exc:
        return Containment("pgroup", f"{exc}; workers are contained by process group only")
    where = f"a cgroup v2 per attempt under {tree.workers}"
    return Containment("cgroup", where, tree)


def _under_systemd() -> bool:
    """Started by systemd as a service (its cgroup is the service's: delegated with
    Delegate=yes), not merely from a shell on a systemd machine."""
    own = cgroups.own_cgroup() or ""
    return "INVOCATION_ID" in os.environ and own.endswith(".service")


def _own_dir() -> Path:
    mount, own = cgroups.v2_mount(), cgroups.own_cgroup()
    if mount is None or own is None:
        raise cgroups.Unavailable("no cgroup v2 hierarchy is mounted")
    return mount / own.lstrip("/")


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
        on_output: OutputObserver | None,
        cgroup: Path | None,
    ) -> None:
        self.process = process
        self.argv = argv
        self.local = handle
        self.cgroup = cgroup
        self.left_running: tuple[Leftover, ...] = ()
        self.alone = False
        """Alone in a PID namespace of its own (nothing of it can outlive its stop)."""
        self._oom = 0
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
    def placement(self) -> dict[str, str | int | float]:
        return {}  # this machine

    @property
    def dropped_bytes(self) -> int:
        return max(0, self.output_bytes - self.max_log_bytes)

    async def wait(self) -> int:
        return await self.process.wait()

    def cpu_sample(self) -> object:
        # its cgroup counts every process in it; else its group and everything below its leader
        if self.cgroup is not None and (used := procfs.cgroup_cpu(self.cgroup)) is not None:
            return (used, tuple(cgroups.members(self.cgroup)))
        return procfs.worker_cpu(self.local.pid, self.local.pgid)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log_size(self) -> int:
        return self.output_bytes

    def tail(self, lines: int = 40, max_bytes: int = 16384) -> str:
        if self._tail:  # past the head the end is in memory until the output ends
            text = bytes(self._tail[-max_bytes:]).decode("utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return tail_file(Path(self.local.log), lines, max_bytes)

    async def _pump(self) -> None:
        """Copy the worker's output to its log until every writer has closed the pipe.

        If the log cannot be written (a full disk), the output is still read — a worker blocked
        on a full pipe would look stalled — and dropped; `launch` then raises WorkerLogError.
        The log is a regular file of the state folder (opened never through a link, a FIFO
        refused): it is written on the loop, a chunk at a time, with no thread hop per write.
        """
        assert self.process.stdout is not None
        log: int | None = None
        try:
            try:
                log = open_for_writing(Path(self.local.log), append=True)
            except FileRefused as exc:
                self.log_error = OSError(errno.EINVAL, f"it {exc}")
            except OSError as exc:
                self.log_error = exc
            async for chunk in self.process.stdout:
                if self.on_output is not None:
                    self.on_output(chunk)
                room = self._head - self.output_bytes
                self.output_bytes += len(chunk)
                if room > 0 and log is not None:
                    log = self._write(log, chunk[:room])
                if room < len(chunk):
                    self._keep_tail(chunk[max(room, 0) :])
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the pipe went away with the process: nothing more to copy
        finally:
            # the tail is written even when the pump is given up (a descendant holds the pipe)
            if log is not None and self._tail is not None:
                log = self._write(log, self._cut() + bytes(self._tail))
            if log is not None:
                os.close(log)
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

    def _write(self, log: int, data: bytes) -> int | None:
        """Write all of `data` (a write may be short on a filling disk); on an error remember
        it and give up the log (None)."""
        try:
            write_all(log, data)
        except OSError as exc:
            self.log_error = exc
            os.close(log)
            return None
        return log

    @property
    def pid(self) -> int:
        return self.local.pid

    @property
    def oom_killed(self) -> bool:
        if self.cgroup is not None and self.cgroup.exists():
            self._oom = cgroups.oom_kills(self.cgroup)
        return self._oom > 0

    @property
    def handle(self) -> Handle:
        h = self.local
        return Handle(
            KIND,
            {
                "pid": h.pid,
                "pgid": h.pgid,
                "start_time": h.start_time,
                "boot_id": h.boot_id,
                "log": h.log,
                "cgroup": str(self.cgroup) if self.cgroup else None,
            },
        )

    async def stop(self, grace: float) -> signal.Signals | None:
        """SIGTERM the process group (and, in a cgroup, every process in it), wait `grace` or
        until the cgroup is empty, then `cgroup.kill`: escapees and all. On a worker that has
        exited, what it left running is added to `left_running` first."""
        if self.process.returncode is not None:
            pids = await anyio.to_thread.run_sync(self._members) if self._may_have_members() else []
            if not pids:
                return None
            self.left_running += tuple(Leftover(p, cgroups.command_line(p)) for p in pids)
        if self.cgroup is None:
            return await stop_group(self.local.pgid, grace, self.process)
        with anyio.CancelScope(shield=True):
            last = await _stop_cgroup(self.cgroup, [self.local.pgid], grace, self.process)
        return last

    def _may_have_members(self) -> bool:
        """Whether anything of the worker may be left (else no thread hop to look): in a
        process group, a signal 0 to the group tells at once when it is gone."""
        if self.cgroup is not None:
            return True
        try:
            os.killpg(self.local.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone's group with that number: group_members tells them apart
        return True

    def _members(self) -> list[int]:
        if self.cgroup is not None:
            return cgroups.members(self.cgroup)
        return group_members(self.local.pgid)

    async def finish(self, grace: float) -> None:
        """At the end of the attempt: stop what is left, remove the empty cgroup."""
        await self.stop(grace)
        if self.cgroup is not None:
            self.oom_killed  # noqa: B018 - read before the cgroup goes
            cgroups.remove(self.cgroup)


async def _stop_cgroup(
    path: Path, groups: Sequence[int], grace: float, leader: anyio.abc.Process | None = None
) -> signal.Signals:
    def send(sig: signal.Signals) -> None:
        if sig is signal.SIGKILL:
            cgroups.kill(path)
            return
        # the process groups, and every member (one that left its group by setsid too)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid in cgroups.members(path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    async def gone() -> None:
        if leader is not None:
            await leader.wait()
        await cgroups.wait_empty(path)

    return await escalate(send, gone, grace)


def _gated_argv(spec: WorkerSpec) -> list[str]:
    argv = list(spec.argv)
    if spec.identity is not None:
        return wrap(argv, spec.pid_namespace, spec.log_path, gate=True)
    gate = _GATE.format("" if "PWD" in spec.env else "unset PWD; ")
    return ["/bin/sh", "-c", gate, "orchestrd-gate", *argv]


def _check_executable(spec: WorkerSpec) -> None:
    """The exec step reports a failed exec only in the log: find a missing binary here."""
    name = spec.argv[0] if spec.argv else ""
    target = str(spec.cwd / name) if "/" in name else name
    if name and shutil.which(target, path=spec.env.get("PATH", os.defpath)) is not None:
        return
    why = "not found" if "/" not in name else "No such file or directory"
    if "/" in name and os.path.exists(target):
        why = "Permission denied (not an executable file)"
    raise WorkerStartError(f"cannot execute {name!r}: {why}; is it installed and on PATH?")


class LocalLauncher:
    kind = KIND

    def __init__(self, containment: Containment) -> None:
        self.containment = containment

    @classmethod
    def open(cls, config: Config | None, tag: str = "") -> LocalLauncher:
        if config is None:
            return cls(Containment("pgroup", "not set up (no daemon running)"))
        parent = config.containment.cgroup_parent
        return cls(contain(parent, config.state_dir, _under_systemd() and not tag, tag))

    def close(self) -> None:
        """Outside systemd the tree is the daemon's own making: removed when empty (a tree
        with workers left in it stays for the next start to reap)."""
        tree = self.containment.tree
        if tree is not None and tree.base.name.startswith("orchestrd-"):
            cgroups.remove(tree.base)

    def describe(self) -> dict[str, str]:
        c = self.containment
        where = {"cgroup": str(c.tree.workers)} if c.tree is not None else {}
        return {"containment": c.mode, "containment_reason": c.reason, **where}

    def warnings(self, limits: Mapping[str, object]) -> list[str]:
        tree = self.containment.tree
        if not limits:
            return []
        if tree is None:
            return [f"{', '.join(sorted(limits))}: not set, no cgroup containment"]
        missing = cgroups.missing_controllers(limits, tree.controllers)
        if not missing:
            return []
        return [
            f"{', '.join(sorted(limits))}: the {', '.join(missing)} controller(s) are not "
            f"delegated to {tree.workers}; those limits are not set"
        ]

    async def sweep(self, folders: Sequence[Path], grace: float) -> list[Reaped]:
        """Every attempt cgroup left in this daemon's tree (each daemon has a tree of its own),
        then processes whose environment (ORCHESTRD_LOG) or nsinit command line points into
        one of `folders`: in process-group containment, or started before cgroups were used
        (one look at every process serves all of them)."""
        found: list[Reaped] = []
        tree = self.containment.tree
        for path in cgroups.leftover_attempts(tree) if tree is not None else []:
            handle = Handle(KIND, {"cgroup": str(path)})
            found += [
                dataclasses.replace(r, found="in its cgroup")
                for r in await self.reap([handle], grace)
                if r.stopped
            ]
        strays = {}
        if folders:
            under = Path(os.path.commonpath(folders))
            found_all = await anyio.to_thread.run_sync(processes_with_env, "ORCHESTRD_LOG", under)
            found_all |= await anyio.to_thread.run_sync(nsinit_processes, under)
            prefixes = tuple(f"{folder}{os.sep}" for folder in folders)
            strays = {pid: log for pid, log in found_all.items() if log.startswith(prefixes)}
        if strays:
            sig = await stop_processes(sorted(strays), grace)
            found += [
                Reaped(Handle(KIND, {"pid": pid, "log": log}), sig, found="by its environment")
                for pid, log in sorted(strays.items())
            ]
        return found

    @contextlib.asynccontextmanager
    async def launch(
        self,
        spec: WorkerSpec,
        max_log_bytes: int,
        grace: float,
        on_output: OutputObserver | None = None,
    ) -> AsyncIterator[LocalWorker]:
        tree = self.containment.tree
        if tree is None:
            async with self._launch(spec, max_log_bytes, grace, on_output, None) as worker:
                yield worker
            return
        path = tree.attempt(spec.name or f"w{os.getpid()}.{time.monotonic_ns()}")
        try:
            await cgroups.create(path, spec.limits, tree.controllers)
        except OSError as exc:
            raise WorkerStartError(f"cannot create the cgroup {path}: {exc.strerror}") from None
        try:
            async with self._launch(spec, max_log_bytes, grace, on_output, path) as worker:
                yield worker
        finally:
            with anyio.CancelScope(shield=True):
                cgroups.kill(path)
                with anyio.move_on_after(5):
                    await cgroups.wait_empty(path)
                cgroups.remove(path)

    @contextlib.asynccontextmanager
    async def _launch(
        self,
        spec: WorkerSpec,
        max_log_bytes: int,
        grace: float,
        on_output: OutputObserver | None,
        path: Path | None,
    ) -> AsyncIterator[LocalWorker]:
        process = await _open(spec, path)
        handle = WorkerHandle(
            pid=process.pid,
            pgid=process.pid,
            start_time=process_start_time(process.pid) or 0,
            boot_id=BOOT_ID,
            log=str(spec.log_path),
        )
        worker = LocalWorker(process, handle, spec.argv, max_log_bytes, on_output, path)
        # alone in a PID namespace of its own, nothing of it outlives its stop
        worker.alone = spec.identity is not None and spec.pid_namespace
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker._pump, name=f"log pump {process.pid}")
            try:
                yield worker
            finally:
                with anyio.CancelScope(shield=True):
                    await worker.finish(grace)
                    # in process-group containment a setsid descendant may hold the pipe:
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

    async def respawned(self, worker: Worker, grace: float) -> list[Leftover]:
        assert isinstance(worker, LocalWorker)
        if worker.cgroup is not None or worker.alone:
            return []  # cgroup.kill, or the end of its PID namespace, took everything
        found = await stop_respawned(worker.local.log, grace)
        return [Leftover(pid, command) for pid, command in sorted(found.items())]

    async def reap(self, handles: Sequence[Handle], grace: float) -> list[Reaped]:
        reaped = []
        for handle in handles:
            f = handle.fields
            path = Path(str(f["cgroup"])) if f.get("cgroup") else None
            if path is not None and path.exists():
                left = tuple(Leftover(p, cgroups.command_line(p)) for p in cgroups.members(path))
                sig = await _stop_cgroup(path, [], grace) if left else None
                cgroups.remove(path)
                reaped.append(Reaped(handle, sig, left))
                continue
            if not f.get("pid"):
                reaped.append(Reaped(handle, None))
                continue
            legacy = WorkerHandle(
                pid=int(f["pid"] or 0),
                pgid=int(f.get("pgid") or f["pid"] or 0),
                start_time=int(f.get("start_time") or 0),
                boot_id=str(f.get("boot_id") or ""),
                log=str(f.get("log") or ""),
            )
            reaped.append(Reaped(handle, await stop_orphan(legacy, grace)))
        return reaped


async def _open(spec: WorkerSpec, cgroup: Path | None) -> anyio.abc.Process:
    try:
        # a folder and an empty file of the state folder: on the loop, cheaper than two
        # thread hops (open_for_writing never blocks: no link followed, a FIFO refused)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(open_for_writing(spec.log_path, True))
        except FileRefused as exc:
            raise WorkerStartError(f"cannot open worker log {spec.log_path}: it {exc}") from None
    except OSError as exc:
        raise WorkerStartError(f"cannot open worker log {spec.log_path}: {exc.strerror}") from None
    if not spec.cwd.is_dir():
        raise WorkerStartError(f"the repo {spec.cwd} does not exist (any more)")
    gated = cgroup is not None or spec.identity is not None
    if gated:
        _check_executable(spec)
    argv = (
        _gated_argv(spec)
        if cgroup is not None
        else (
            wrap(list(spec.argv), spec.pid_namespace, spec.log_path)
            if spec.identity
            else list(spec.argv)
        )
    )
    as_user = spec.identity.process_kwargs() if spec.identity is not None else {}
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC) if cgroup is not None else (-1, -1)
    try:
        process = await anyio.open_process(
            argv,
            stdin=gate_r if cgroup is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env=dict(spec.env),
            start_new_session=True,
            **as_user,
        )
    except OSError as exc:
        raise WorkerStartError(
            f"cannot execute {spec.argv[0]!r}: {exc.strerror or exc}"
            + (f" (as {spec.identity.user})" if spec.identity is not None else "")
        ) from None
    except ValueError as exc:  # a NUL byte in argv or env: refused before anything runs
        raise WorkerStartError(f"cannot execute {spec.argv[0]!r}: {exc}") from None
    except BaseException:
        if gate_w >= 0:
            os.close(gate_w)  # no process to open the gate for
        raise
    finally:
        if gate_r >= 0:
            os.close(gate_r)
    if cgroup is not None:
        await _open_gate(process, cgroup, gate_w)
    return process


async def _open_gate(process: anyio.abc.Process, cgroup: Path, gate_w: int) -> None:
    """Move the gated child into its cgroup, then let it run the worker; the gate's write end
    is closed whatever happens."""
    try:
        # moving a process between cgroups waits out an RCU grace period in the kernel
        # (6-17 ms, a third of the loop's busy time when phases follow each other): in a
        # thread, so the loop serves the other plans meanwhile
        await anyio.to_thread.run_sync(cgroups.join, cgroup, process.pid)
        # the thread call is not interrupted: a stop that came meanwhile lands here,
        # before the gate opens, not after the worker has started
        await anyio.lowlevel.checkpoint_if_cancelled()
        os.write(gate_w, b"\n")
    except OSError as exc:
        await _discard(process)
        raise WorkerStartError(f"cannot move the worker into {cgroup}: {exc.strerror}") from None
    except BaseException:  # cancelled: killed and reaped before its gate opened
        await _discard(process)
        raise
    finally:
        os.close(gate_w)


async def _discard(process: anyio.abc.Process) -> None:
    """Kill and reap a worker that never got past its gate."""
    with anyio.CancelScope(shield=True):
        process.kill()
        await process.aclose()
