"""cgroup v2 containment: where the writable hierarchy is, a cgroup per attempt (created, joined,
limited, killed whole with `cgroup.kill`, waited for through `cgroup.events`, removed), and why
containment falls back to process groups when none can be had.

All functions here touch only cgroupfs (kernel pseudo-files, never a worker's files): they do not
block on I/O, and the ones that wait are async.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Mapping
from pathlib import Path

import anyio

_POLL = 0.02  # how often a stopping cgroup's `populated` is looked at (seconds)
DAEMON_LEAF, WORKERS = "daemon", "workers"
LIMIT_FILES = {"memory_max": "memory.max", "pids_max": "pids.max", "cpu_weight": "cpu.weight"}
"""Profile key -> the cgroup file it is written to (the controller is the part before '.')."""
SKIPPED = (".control",)
"""Subgroups not ours to list: systemd runs ExecReload= in `.control` and leaves it behind."""


@dataclasses.dataclass(frozen=True)
class Tree:
    """Where this daemon's attempt cgroups go: `<base>/workers/<attempt>/`."""

    base: Path
    controllers: frozenset[str]
    """Controllers offered to the workers' cgroups (limits need them)."""

    @property
    def workers(self) -> Path:
        return self.base / WORKERS

    def attempt(self, name: str) -> Path:
        return self.workers / name


class Unavailable(Exception):
    """No writable cgroup v2 for the workers; the message says why (shown in daemon.started)."""


def v2_mount(mountinfo: str | None = None) -> Path | None:
    """The cgroup v2 mount point: /sys/fs/cgroup on unified hosts, often
    /sys/fs/cgroup/unified on hybrid ones (v1 controllers next to it)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def own_cgroup(pid: int | str = "self") -> str | None:
    """This process's v2 cgroup ('/…'): the `0::` line (v1 lines may come first)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _key_values(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def setup(parent: Path | None, leave_leaf: bool) -> Tree:
    """Make the workers' sub-tree ready, or raise Unavailable with the reason.

    `parent`: a configured cgroup directory (created if missing); None: this daemon's own
    cgroup. In its own cgroup (not the root one) the daemon first moves itself into the leaf
    `daemon/` when `leave_leaf` (always under systemd): a cgroup with processes may not hand
    controllers to its children (the no-internal-processes rule)."""
    mount = v2_mount()
    if mount is None:
        raise Unavailable("no cgroup v2 hierarchy is mounted")
    own = own_cgroup()
    if own is None:
        raise Unavailable("/proc/self/cgroup has no cgroup v2 ('0::') line")
    if parent is None:
        own_dir = mount / own.lstrip("/")
        # a restarted daemon found in its own leaf already: the tree is the one above it
        base = own_dir.parent if own_dir.name == DAEMON_LEAF else own_dir
        if own_dir.name != DAEMON_LEAF and own != "/" and leave_leaf:
            _move_self(base)
    else:
        base = parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not (base / "cgroup.procs").is_file():
            raise Unavailable(f"{base} is not a cgroup v2 directory (no cgroup.procs)")
        (base / WORKERS).mkdir(exist_ok=True)
        offered = _enable_controllers(base)
        if offered:
            offered &= _enable_controllers(base / WORKERS)
    except OSError as exc:
        raise Unavailable(f"cannot create {base / WORKERS}: {exc.strerror}") from None
    return Tree(base, frozenset(offered))


def _move_self(base: Path) -> None:
    leaf = base / DAEMON_LEAF
    try:
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", "0")  # moves every thread of this process
    except OSError as exc:
        raise Unavailable(f"cannot move the daemon into {leaf}: {exc.strerror}") from None


def _enable_controllers(group: Path) -> set[str]:
    """Hand the controllers limits use to `group`'s children; what was handed over. A missing
    controller is no failure (limits are then not set)."""
    wanted = {name.split(".")[0] for name in LIMIT_FILES.values()}
    try:
        available = set((group / "cgroup.controllers").read_text().split()) & wanted
    except OSError:
        return set()
    enabled = set()
    for name in sorted(available):
        with contextlib.suppress(OSError):  # busy (processes inside) or not delegated
            _write(group / "cgroup.subtree_control", f"+{name}")
            enabled.add(name)
    return enabled


async def create(path: Path, limits: Mapping[str, str | int], controllers: frozenset[str]) -> None:
    """A fresh attempt cgroup (a crash's leftover of the same name is emptied first) with the
    limits whose controller is there; OSError if it cannot be made."""
    if kill(path):
        with anyio.move_on_after(5):
            await wait_empty(path)
        remove(path)
    _make(path, limits, controllers)


def _make(path: Path, limits: Mapping[str, str | int], controllers: frozenset[str]) -> None:
    path.mkdir()
    for key, value in limits.items():
        name = LIMIT_FILES[key]
        if name.split(".")[0] in controllers:
            _write(path / name, str(value))


def missing_controllers(limits: Mapping[str, object], controllers: frozenset[str]) -> list[str]:
    return sorted({LIMIT_FILES[key].split(".")[0] for key in limits} - controllers)


def join(path: Path, pid: int) -> None:
    _write(path / "cgroup.procs", str(pid))


def populated(path: Path) -> bool:
    return _key_values(path / "cgroup.events").get("populated", "0") == "1"


def members(path: Path) -> list[int]:
    """Every live process in the cgroup and its subgroups (a zombie waits for its parent to
    reap it: nothing runs)."""
    pids: list[int] = []
    for folder, dirs, _files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in SKIPPED]
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(folder, "cgroup.procs").read_text().split()]
    return sorted(p for p in pids if not _zombie(p))


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # gone
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def kill(path: Path) -> bool:
    """SIGKILL every process in the cgroup and below at once (escapees included); False if
    it is gone already."""
    try:
        _write(path / "cgroup.kill", "1")
    except FileNotFoundError:
        return False
    return True


async def wait_empty(path: Path) -> None:
    """Return once `cgroup.events` says `populated 0` (or the cgroup is gone). Polled: the
    kernel signals a change of the file only to inotify/poll(2), and it comes within ms."""
    while populated(path):  # noqa: ASYNC110 - see above
        await anyio.sleep(_POLL)


def remove(path: Path) -> bool:
    """Remove an empty cgroup and its empty subgroups (deepest first); False if something is
    still inside (EBUSY) and it was left."""
    for folder, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return False
            raise
    return True


def oom_kills(path: Path) -> int:
    """How many processes of the cgroup the OOM killer killed (0 without the memory
    controller)."""
    return int(_key_values(path / "memory.events").get("oom_kill", "0"))


def leftover_attempts(tree: Tree) -> list[Path]:
    """Attempt cgroups an earlier daemon run left (recovery kills what is in them)."""
    try:
        return sorted(p for p in tree.workers.iterdir() if p.is_dir() and p.name not in SKIPPED)
    except OSError:
        return []
