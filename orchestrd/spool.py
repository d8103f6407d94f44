"""The state directory's folders and the watched inbox: a dropped file is accepted into
`plans/<id>/` or moved to `rejected/` with `<name>.error` saying why — never lost, never left.
"""

from __future__ import annotations

import dataclasses
import fcntl
import grp
import os
import pwd
import stat
from pathlib import Path

from .config import Config
from .errors import OrchestrdError, PlanError
from .plan import Plan, parse_plan_bytes
from .state import PhaseState, PlanFolder, PlanState, atomic_write, dump_state

IGNORED_SUFFIXES = (".tmp", ".part", ".swp")


def is_candidate(name: str) -> bool:
    """Files still being written (dot files, *.tmp, *.part) are left alone until renamed."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class Accepted:
    plan: Plan
    folder: PlanFolder
    state: PlanState


@dataclasses.dataclass(frozen=True)
class Rejected:
    name: str
    reason: str
    moved_to: Path


class DaemonLockedError(OrchestrdError):
    """Another daemon already serves this state_dir."""


class Spool:
    """The folders under state_dir: inbox/, plans/, rejected/, archive/, control/."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.inbox = state_dir / "inbox"
        self.plans = state_dir / "plans"
        self.rejected = state_dir / "rejected"
        self.archive_dir = state_dir / "archive"
        self.control = state_dir / "control"
        self.lock_path = state_dir / "daemon.lock"
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        for d in (self.inbox, self.plans, self.rejected, self.archive_dir, self.control):
            d.mkdir(parents=True, exist_ok=True)

    # -- the daemon's lock: one daemon per state_dir, and the CLI can tell whether one runs --

    def lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonLockedError(
                f"{self.lock_path}: another orchestrd daemon serves {self.root}; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def daemon_running(self) -> bool:
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- plans --

    def folder(self, plan_id: str) -> PlanFolder:
        return PlanFolder(self.plans / plan_id)

    def known(self, plan_id: str) -> Path | None:
        for base in (self.plans, self.archive_dir):
            if (base / plan_id).exists():
                return base / plan_id
        return None

    def candidates(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.inbox)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_candidate(n))

    def take(
        self, name: str, config: Config, seq: int, after_start: bool = False
    ) -> Accepted | Rejected | None:
        """Accept or reject one inbox file. None if it vanished (someone took it back), or if
        `after_start` (the daemon's first scan) and it is the very plan accepted just before a
        crash that came before the inbox file was removed."""
        path = self.inbox / name
        try:
            raw, owner = read_plan_file(path, config.spool.max_plan_bytes)
        except FileNotFoundError:
            return None
        except PlanError as exc:
            return self.reject(name, str(exc))
        if config.allowed_submitters and not submitter_allowed(owner, config.allowed_submitters):
            return self.reject(
                name,
                f"inbox/{name}: owned by {_user_name(owner)}, who is not in allowed_submitters "
                f"({', '.join(config.allowed_submitters)}); submit as one of them or ask the "
                "operator to add you",
            )
        try:
            plan = parse_plan_bytes(raw, f"inbox/{name}", config)
        except PlanError as exc:
            return self.reject(name, str(exc))
        if (where := self.known(plan.id)) is not None:
            if (
                after_start
                and where.parent == self.plans
                and _same_bytes(PlanFolder(where).plan_file, raw)
            ):
                # only a crash leaves one; later, the same bytes again are a duplicate
                path.unlink(missing_ok=True)
                return None
            return self.reject(
                name,
                f"inbox/{name}: id: plan id {plan.id!r} is already known ({where}); "
                "give the plan a new id, or `orchestrd retry` the old one",
            )
        folder = self.folder(plan.id)
        folder.create()
        atomic_write(folder.plan_file, raw)
        state = PlanState(plan=plan.id, seq=seq, phases={p.id: PhaseState() for p in plan.phases})
        atomic_write(folder.state_file, dump_state(state))
        path.unlink(missing_ok=True)
        return Accepted(plan, folder, state)

    def reject(self, name: str, reason: str) -> Rejected:
        dest = self.rejected / name
        n = 1
        while dest.exists() or dest.with_name(dest.name + ".error").exists():
            n += 1
            dest = self.rejected / f"{name}.{n}"
        dest.with_name(dest.name + ".error").write_text(reason + "\n", encoding="utf-8")
        os.replace(self.inbox / name, dest)
        return Rejected(name, reason, dest)

    def set_aside(self, path: Path) -> Path:
        """Rename a corrupt file so it is kept for a person but not read again."""
        dest = path.with_name(path.name + ".corrupt")
        n = 1
        while dest.exists():
            n += 1
            dest = path.with_name(f"{path.name}.corrupt{n}")
        os.replace(path, dest)
        return dest


def read_plan_file(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """Read a dropped file safely: never follow a symlink, only regular files, bounded size.

    Returns the bytes and the owner's uid.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if path.is_symlink():
            raise PlanError(
                f"{path.name}: is a symbolic link; links are never followed — "
                "copy the file itself into the inbox"
            ) from None
        raise PlanError(f"{path.name}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlanError(f"{path.name}: not a regular file; drop plan files only")
        if st.st_size > max_bytes:
            raise PlanError(
                f"{path.name}: {st.st_size} bytes is over max_plan_bytes ({max_bytes}); "
                "plans are small TOML files"
            )
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise PlanError(f"{path.name}: over max_plan_bytes ({max_bytes}) while reading")
        return b"".join(chunks), st.st_uid
    finally:
        os.close(fd)


def submitter_allowed(uid: int, allowed: list[str]) -> bool:
    """Whether the user `uid` is named in `allowed`, directly (name or number) or by a group."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return str(uid) in allowed
    if user.pw_name in allowed or str(uid) in allowed:
        return True
    for name in allowed:
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid == user.pw_gid or user.pw_name in group.gr_mem:
            return True
    return False


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _same_bytes(path: Path, raw: bytes) -> bool:
    try:
        return path.read_bytes() == raw
    except OSError:
        return False
