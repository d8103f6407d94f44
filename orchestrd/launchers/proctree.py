"""Processes on this machine, for the local launcher: a worker's identity (PID + start time +
boot id: no PID reuse), its process group, stopping with escalation (SIGTERM, grace, SIGKILL),
and what an earlier daemon run left, found by environment or by nsinit's command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from .. import cgroups
from ..privsep import NSINIT

_GROUP_POLL = 0.02  # how often a stopping process group is looked at (seconds)


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


async def escalate(
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
        last = await escalate(
            lambda sig: _signal_group(pgid, sig), lambda: _group_gone(pgid, leader), grace
        )
    return last


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
        last = await escalate(send, all_gone, grace)
    return last


async def stop_orphan(handle: WorkerHandle, grace: float) -> signal.Signals | None:
    """Stop a worker left by an earlier daemon run, if it is still the same process."""
    # the leader is gone (or its PID was reused): stop what is left of its group only if the
    # group's leader number is not a new process's group
    if not is_same_process(handle) and process_start_time(handle.pgid) is not None:
        return None
    return await stop_group(handle.pgid, grace)


async def stop_respawned(log: str, watch_for: float) -> dict[int, str]:
    """For `watch_for` seconds after a worker was stopped, stop every process that carries its
    `ORCHESTRD_LOG` (a helper of the agent starting the session again, or one that left its
    process group); returns their pids and command lines. Only processes whose environment
    this user can read are seen."""
    found: dict[int, str] = {}
    under = Path(log).parent
    step = min(max(watch_for / 20, 0.02), 0.5)
    with anyio.move_on_after(watch_for):
        while True:
            live = await anyio.to_thread.run_sync(processes_with_env, "ORCHESTRD_LOG", under)
            pids = sorted(pid for pid, value in live.items() if value == log)
            if pids:
                for pid in pids:
                    found.setdefault(pid, cgroups.command_line(pid))
                await stop_processes(pids, watch_for)
            await anyio.sleep(step)
    return found
