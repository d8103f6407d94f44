"""Privilege separation: who workers run as (resolved once from `worker_user`/`worker_group`),
whether this daemon can switch to them at all, and the per-attempt hand-off folder through which
a worker gets its prompt and the failed attempt's log without any access to the state folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import grp
import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import Any

from .config import Config, WorkerProfile
from .errors import ConfigError

NSINIT = Path(__file__).with_name("nsinit.py")
_CAP_SETGID, _CAP_SETUID = 6, 7
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


@dataclasses.dataclass(frozen=True)
class Identity:
    """The user a worker runs as: uid, primary group, supplementary groups, HOME."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def process_kwargs(self) -> dict[str, Any]:
        """What subprocess needs to start a program as this user (setgroups, setresgid,
        setresuid in the child, before exec)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def env(self) -> dict[str, str]:
        """What a login as this user sets: agent CLIs keep their logins under HOME."""
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user}


@functools.cache
def resolve(user: str, group: str | None, key: str = "worker_user") -> Identity:
    """Look the user (and group) up once; ConfigError naming `key` if unknown or root."""
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise ConfigError(
            f"{key} = {user!r}: no such user; create it (systemd/orchestrd.sysusers creates "
            "orchestrd-worker) or name an existing one"
        ) from None
    if pw.pw_uid == 0:
        raise ConfigError(f"{key} = {user!r} is root; workers must never run as root")
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            raise ConfigError(
                f"{key.replace('user', 'group')} = {group!r}: no such group; create it or "
                "leave the key out (the user's primary group is used)"
            ) from None
    groups = tuple(dict.fromkeys([gid, *os.getgrouplist(pw.pw_name, gid)]))
    return Identity(pw.pw_name, pw.pw_uid, gid, groups, pw.pw_dir)


def can_switch_users() -> tuple[bool, str]:
    """Whether this process may set another uid and gid, and why not."""
    if os.geteuid() == 0:
        return True, "running as root"
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        return False, f"cannot read /proc/self/status: {exc.strerror}"
    eff = next(
        (int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:")), 0
    )
    if eff & (1 << _CAP_SETUID) and eff & (1 << _CAP_SETGID):
        return True, "CAP_SETUID and CAP_SETGID"
    return False, f"running as {pwd.getpwuid(os.geteuid()).pw_name} without CAP_SETUID/CAP_SETGID"


def separation(config: Config) -> tuple[bool, str]:
    """(privilege_separation, reason) for `daemon.started` and the run's first line."""
    able, why = can_switch_users()
    if not config.worker_user and os.geteuid() == 0:
        return False, "running as root without worker_user: workers run as root"
    if not config.worker_user:
        return False, "worker_user is not set: workers run as the daemon's user"
    if not able:
        return False, f"{why}: workers run as the daemon's user"
    return True, f"workers run as {config.worker_user} ({why})"


def identity_for(config: Config, profile: WorkerProfile | None) -> Identity | None:
    """Who this profile's workers run as; None when they run as the daemon's user."""
    user = (profile.worker_user if profile else None) or config.worker_user
    group = (profile.worker_group if profile else None) or config.worker_group
    if not user or not can_switch_users()[0]:
        return None
    return resolve(user, group)


def check_identities(config: Config) -> None:
    """Every worker user and group of the config exists, is not root, and is not in the
    daemon's group (its files are 0640: the group may read them). ConfigError otherwise."""
    found = []
    if config.worker_user:
        found.append(("worker_user", resolve(config.worker_user, config.worker_group)))
    for name, profile in config.workers.items():
        if profile.worker_user or profile.worker_group:
            key = f"workers.{name}.worker_user"
            found.append(
                (
                    key,
                    resolve(
                        profile.worker_user or config.worker_user or "",
                        profile.worker_group or config.worker_group,
                        key,
                    ),
                )
            )
    for key, who in found:
        if os.getegid() in who.groups:
            name = grp.getgrgid(os.getegid()).gr_name
            raise ConfigError(
                f"{key} = {who.user!r} is in the daemon's group {name!r}, which may read the "
                f"daemon's files; take it out (gpasswd -d {who.user} {name}) or pick another "
                "worker_group"
            )


def clear_ambient_capabilities() -> None:
    """Capabilities the unit grants the daemon (AmbientCapabilities=) must not reach what it
    runs: ambient ones survive exec and a uid change between two non-root users. Cleared, the
    daemon keeps them (permitted, effective) and every program it starts gets none."""
    libc = ctypes.CDLL(None, use_errno=True)
    # fails (EINVAL) only on kernels before 4.3, which have no ambient set to clear
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def wrap(argv: list[str], pid_namespace: bool, log: Path) -> list[str]:
    """The argv that runs `argv` through nsinit (see there), started as the worker's user;
    `log` lets recovery find it by its command line, which any user may read (unlike its
    environment). The interpreter must be one the worker user may execute."""
    return [
        sys.executable,
        "-I",
        "-S",
        str(NSINIT),
        "1" if pid_namespace else "0",
        str(log),
        "--",
        *argv,
    ]


def handoff_root(config: Config) -> Path:
    if config.handoff_dir is not None:
        return config.handoff_dir
    return config.state_dir.with_name(f"{config.state_dir.name}-handoff")


def make_handoff(folder: Path, who: Identity, prompt: str, failed_log: Path | None) -> None:
    """A folder only the daemon writes and the worker's group reads (0750/0640): the prompt and
    a copy of the failed attempt's log. Blocking: call through a thread."""
    for parent in (folder.parent.parent, folder.parent):  # the hand-off root, the plan's own
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if parent.stat().st_gid != who.gid:
            _give_group(parent, who.gid, 0o750)  # made by the daemon (tmpfiles makes the root)
    shutil.rmtree(folder, ignore_errors=True)  # a crash's leftover of the same attempt
    folder.mkdir(mode=0o750)
    files = [folder]
    (folder / "prompt.md").write_text(prompt, encoding="utf-8")
    files.append(folder / "prompt.md")
    if failed_log is not None:
        shutil.copyfile(failed_log, folder / "failed.log")
        files.append(folder / "failed.log")
    for path in files:
        _give_group(path, who.gid, 0o750 if path.is_dir() else 0o640)


def remove_handoff(folder: Path) -> None:
    """An attempt's hand-off folder, and its plan's once empty. Blocking: call through a thread."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # another attempt of the plan still has its own
        folder.parent.rmdir()


def _give_group(path: Path, gid: int, mode: int) -> None:
    os.chmod(path, mode)
    if os.stat(path).st_gid == gid:
        return  # inherited from a setgid hand-off root
    try:
        os.chown(path, -1, gid)  # root, or a member of the group (the unit's orchestrd user)
    except PermissionError:
        raise OSError(
            f"cannot give {path} to group {gid}: make the daemon's user a member of the worker "
            "group (systemd/orchestrd.sysusers does: m orchestrd orchestrd-worker)"
        ) from None
