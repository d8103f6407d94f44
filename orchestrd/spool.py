"""The watched inbox and control requests, on the store's folders: a dropped file is accepted
into the plans or moved to the rejected folder with `<name>.error` saying why — never lost,
never left; a request is taken once and held to the same trust rules.
"""

from __future__ import annotations

import dataclasses
import fcntl
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from .audit import printable
from .config import Config
from .errors import OrchestrdError, PlanError
from .fsutil import KINDS, FileRefused, read_head, read_regular, write_all
from .plan import Plan, check_plan_id, parse_plan_bytes
from .state import PlanRecord, PlanState, atomic_write
from .store import PlanFolder, Store

IGNORED_SUFFIXES = (".tmp", ".part", ".swp")
REQUEST_KINDS = (".cancel", ".retry", ".resume", ".merge", ".unblock")
MAX_REQUEST_BYTES = 4096
"""A request's text (`resume --budget NAME=VALUE` lines); the others are empty."""


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


@dataclasses.dataclass(frozen=True)
class ControlRequest:
    """A cancel/retry request taken from control/: what it asks, who asked (the file's owner),
    and why it is refused (None: it may be acted on)."""

    file: str
    kind: str  # "cancel" | "retry" | "resume" | "unblock" (whose id names a profile)
    plan_id: str
    uid: int
    refused: str | None = None
    text: str = ""
    """What the file says (a resume's raised budgets, one NAME=VALUE a line)."""

    @property
    def requester(self) -> dict[str, object]:
        return requester(self.uid)


def requester(uid: int) -> dict[str, object]:
    """Who asked for a cancel or retry, for the audit log: the uid, and its user name (None
    where it has none)."""
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    return {"uid": uid, "user": user}


class DaemonLockedError(OrchestrdError):
    """Another daemon already serves this state_dir."""


class Spool(Store):
    """The inbox and control requests on the store's folders, and the daemon's lock."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self._lock_fd: int | None = None

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
        return lock_held(self.lock_path) is True

    def holder_alive(self, folder: Path) -> bool:
        """Whether a process still owns the plan in `folder`: its `orchestrd run` (which holds
        the folder's run.lock), or else the daemon. A plan left `running` by a killed process
        is interrupted in fact."""
        held = lock_held(PlanFolder(folder).run_lock)
        return held if held is not None else self.daemon_running()

    # -- control requests: the inbox's trust rules for cancel and retry --

    def request_names(self) -> list[str]:
        """The request files in control/ (the CLI writes each as `.NAME.PID.tmp` first)."""
        return sorted(e.name for e in os.scandir(self.control) if e.name.endswith(REQUEST_KINDS))

    def take_request(self, name: str, allowed: list[str]) -> ControlRequest | None:
        """Remove the request file `name` and say what it asks and whether it may: a regular
        file, owned by someone in `allowed` (allowed_submitters, when set), naming a plan id.
        None if it vanished; OSError if it cannot be removed (a folder named like one)."""
        path = self.control / name
        label = f"control/{display_name(name)}"
        stem, kind = os.path.splitext(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        text, unread = "", None
        if stat.S_ISREG(st.st_mode) and st.st_size:
            try:  # never following a link swapped in since the lstat
                raw = read_regular(path, MAX_REQUEST_BYTES, "a request's limit", follow=False)
                text = raw.decode("utf-8")
            except (OSError, FileRefused, UnicodeDecodeError) as exc:
                unread = f"{label}: its text cannot be read ({exc}); write NAME=VALUE lines"
        try:
            os.unlink(path)  # taken once, whatever it is: a refused request is not tried again
        except FileNotFoundError:
            return None
        refused = unread
        if not stat.S_ISREG(st.st_mode):
            what = (
                "a symbolic link"
                if stat.S_ISLNK(st.st_mode)
                else KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            )
            refused = (
                f"{label}: is {what}, not a regular file; requests are the empty files "
                "`orchestrd cancel`/`retry` write"
            )
        elif allowed and not submitter_allowed(st.st_uid, allowed):
            refused = (
                f"{label}: allowed_submitters: owned by {_user_name(st.st_uid)}, who is not in "
                f"allowed_submitters ({', '.join(allowed)}); ask as one of them or ask the "
                "operator to add you"
            )
        else:
            try:
                check_plan_id(stem, label)
            except PlanError as exc:
                refused = str(exc)
        return ControlRequest(display_name(name), kind.lstrip("."), stem, st.st_uid, refused, text)

    # -- plans --

    def candidates(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.inbox)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_candidate(n))

    def take(
        self,
        name: str,
        config: Config,
        seq: int,
        after_start: bool = False,
        redact: Callable[[str], str] = str,
    ) -> Accepted | Rejected | None:
        """Accept or reject one inbox file. None if it vanished (someone took it back), or if
        `after_start` (the daemon's first scan) and it is the very plan accepted just before a
        crash that came before the inbox file was removed.

        Whatever the file holds, the outcome is Accepted, Rejected or None: a hostile file never
        raises out of here (an OSError is left for the caller only when the spool's own folders
        cannot be written, e.g. a full disk, and the file stays to be tried again). `redact`
        is applied to the reason before it is written to `rejected/<name>.error`.
        """
        path = self.inbox / name
        label = f"inbox/{display_name(name)}"
        try:
            raw, owner = read_plan_file(path, config.spool.max_plan_bytes, label)
        except FileNotFoundError:
            return None
        except PlanError as exc:
            return self.reject(name, redact(str(exc)))
        if config.allowed_submitters and not submitter_allowed(owner, config.allowed_submitters):
            return self.reject(
                name,
                redact(
                    f"{label}: allowed_submitters: owned by {_user_name(owner)}, who is not in "
                    f"allowed_submitters ({', '.join(config.allowed_submitters)}); submit as one "
                    "of them or ask the operator to add you"
                ),
            )
        try:
            plan = parse_plan_bytes(raw, label, config)
            check_plan_id(plan.id, label)
        except PlanError as exc:
            return self.reject(name, redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - one hostile file must never stop the daemon
            # the parser should have named a key; say what happened instead of crashing
            return self.reject(
                name,
                redact(
                    f"{label}: cannot be validated ({type(exc).__name__}: {exc}); orchestrd "
                    "should have named the key here (please report it) — simplify the file "
                    "and check it with `orchestrd validate`"
                ),
            )
        if (where := self.located(plan.id)) is not None:
            if after_start and self.is_active(where) and _same_bytes(where.plan_file, raw):
                # only a crash leaves one; later, the same bytes again are a duplicate
                path.unlink(missing_ok=True)
                return None
            return self.reject(
                name,
                redact(
                    f"{label}: id: plan id {plan.id!r} is already known ({where.root}); "
                    "give the plan a new id, or `orchestrd retry` the old one"
                ),
            )
        # built under a name recovery ignores, then renamed into place: a crash leaves either
        # no plan folder (the inbox file is taken again) or a complete one (and the inbox
        # file, recognised at the next start by its bytes)
        staging = self.staging(plan.id)
        shutil.rmtree(staging.root, ignore_errors=True)
        staging.create()
        atomic_write(staging.plan_file, raw)
        state = PlanState.first(plan, seq)
        PlanRecord.write_first(staging.state_file, state)
        folder = self.put_in_place(staging, plan.id)
        path.unlink(missing_ok=True)
        return Accepted(plan, folder, state)

    def reject(self, name: str, reason: str) -> Rejected | None:
        """Move `inbox/<name>` (whatever it is: file, link, FIFO, folder) to `rejected/`, beside
        `<name>.error` saying why. None if it vanished meanwhile (taken back by its submitter).

        The names are bounded (a 255-byte inbox name plus `.error` would not fit) and the error
        file is created exclusively, never through a link someone left in rejected/.
        """
        base = _bounded_name(name)
        n = 1
        while True:
            dest = self.rejected / (base if n == 1 else f"{base}.{n}")
            error = dest.with_name(dest.name + ".error")
            if not os.path.lexists(dest) and not os.path.lexists(error):
                try:
                    fd = os.open(
                        error,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o640,
                    )
                except FileExistsError:
                    pass  # taken between the check and the open: try the next name
                else:
                    break
            n += 1
        try:
            write_all(fd, (reason + "\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)
        try:
            os.replace(self.inbox / name, dest)
        except FileNotFoundError:
            error.unlink(missing_ok=True)
            return None
        return Rejected(name, reason, dest)


def read_plan_file(path: Path, max_bytes: int, label: str | None = None) -> tuple[bytes, int]:
    """Read a dropped file safely: never follow a symlink, open nothing but a regular file, and
    read at most `max_bytes` (+1, to tell that there is more).

    Returns the bytes and the owner's uid; PlanError (naming `label`, default the file name)
    for anything else. Opening a FIFO or a device could block or act on hardware, so the entry
    is looked at with lstat first and only opened if it is a regular file.
    """
    label = label or path.name
    st = os.lstat(path)  # FileNotFoundError: it vanished, the caller's business
    if stat.S_ISLNK(st.st_mode):
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        raise PlanError(
            f"{label}: is a symbolic link{target}; links are never followed — copy the file "
            "itself into the inbox"
        )
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise PlanError(f"{label}: is {kind}, not a regular file; drop plan files only")
    if st.st_size > max_bytes:
        raise PlanError(
            f"{label}: {st.st_size} bytes is over [spool] max_plan_bytes ({max_bytes}); plans "
            "are small TOML files — put long prompts in prompt_file"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # ELOOP: swapped for a symlink since the lstat
        raise PlanError(
            f"{label}: cannot open: {exc.strerror}; drop a readable regular file"
        ) from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            raise PlanError(f"{label}: was replaced while being read; drop it again")
        chunks, total = [], 0
        # a file still growing (or one whose size lies, like /proc files) is cut off here
        while total <= max_bytes and (chunk := os.read(fd, min(65536, max_bytes + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise PlanError(
                f"{label}: over [spool] max_plan_bytes ({max_bytes}) while reading (it grew); "
                "drop the finished file, written elsewhere and renamed into the inbox"
            )
        return b"".join(chunks), fst.st_uid
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool | None:
    """Whether some process holds the flock on `path`; None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def hold_run_lock(folder: Path) -> int:
    """Take `folder/run.lock` for an `orchestrd run` (released when the process ends, however
    it ends); its descriptor. OrchestrdError if another process holds it."""
    fd = os.open(PlanFolder(folder).run_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OrchestrdError(
            f"{folder}: another `orchestrd run` of this plan is running; wait for it or "
            "give this run another id"
        ) from None
    return fd


def display_name(name: str) -> str:
    """A file name as text for messages and the audit log: bytes that are not UTF-8 (kept by
    os.scandir as surrogates, which no UTF-8 file can hold) and control characters are shown
    escaped (`\\xff`, `\\x1b`), so the name is readable and tells the file apart."""
    return printable(name, newlines=False)


def _bounded_name(name: str, limit: int = 200) -> str:
    """`name`, cut to `limit` bytes so `.error` and a `.N` suffix still fit in 255."""
    raw = os.fsencode(name)
    return name if len(raw) <= limit else os.fsdecode(raw[:limit])


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
    try:  # plans/ is where workers' logs are: whatever is there now is read safely
        return read_head(path, len(raw) + 1) == raw
    except (OSError, FileRefused):
        return False
