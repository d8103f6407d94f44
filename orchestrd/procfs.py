"""CPU time of a worker's processes, read from /proc: is a silent worker thinking (a long build)
or idle (a hang)? Plain reads of a `/proc` root passed in, so tests can hand it a fake tree.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")

CpuSample = dict[tuple[int, int], int]
"""(pid, start time) → CPU clock ticks used by it and its reaped children."""


def parse_stat(raw: bytes) -> list[str] | None:
    """The fields of a /proc/<pid>/stat line after the command name (which may hold spaces
    and parentheses): [state, ppid, pgrp, …]; None if it is not one."""
    end = raw.rfind(b")")
    if end < 0:
        return None
    fields = raw[end + 2 :].decode("ascii", "replace").split()
    return fields if len(fields) >= 20 else None


def cpu_ticks(fields: list[str]) -> int:
    """utime + stime + cutime + cstime: a compiler a build waited for counts for the build."""
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def worker_cpu(leader: int, pgid: int, proc: Path = PROC) -> CpuSample:
    """CPU ticks of every live process in process group `pgid` or below `leader` (a child that
    left the group with setsid is still the worker's, and so is everything inside a worker's
    PID namespace), from one pass over `proc`."""
    stats: dict[int, list[str]] = {}
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return {}
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue  # gone since the listing
        fields = parse_stat(raw)
        if fields is not None and fields[0] not in ("Z", "X"):
            stats[int(entry.name)] = fields
    mine: dict[int, bool] = {leader: leader in stats}

    def belongs(pid: int) -> bool:
        chain = []
        while pid not in mine:
            fields = stats.get(pid)
            if fields is None or pid <= 1:
                mine[pid] = False
                break
            chain.append(pid)
            if int(fields[2]) == pgid:
                mine[pid] = True
                break
            pid = int(fields[1])
        for p in chain:
            mine[p] = mine[pid]
        return mine[chain[0]] if chain else mine[pid]

    return {
        (pid, int(fields[19])): cpu_ticks(fields) for pid, fields in stats.items() if belongs(pid)
    }


def cgroup_cpu(cgroup: Path) -> int | None:
    """`usage_usec` of a cgroup v2 folder's cpu.stat (every process in it, even one that left
    the process group); None when it cannot be read."""
    try:
        text = (cgroup / "cpu.stat").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value)
    return None


def busy(before: CpuSample, after: CpuSample) -> bool:
    """Did the group do anything between two samples: use CPU, or start or lose a process?"""
    return before != after
